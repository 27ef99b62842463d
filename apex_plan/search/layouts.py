"""Which layouts the chosen engine can run: the plan space is the engine's, not the estimator's.

`supported_layout(engine, plan)` takes any object with `family` ("vllm" | "sglang" | "trtllm"),
`name`, `supports_ep`, `supports_pp`, `supports_attention_dp`, and says why the engine cannot run the plan, or None.
`profile_caps(profile)` reads them from an engine profile's `layouts` (engine_profiles/*.yaml);
`engine_caps(name)` guesses them from a bare engine name.
"""

from __future__ import annotations

from dataclasses import dataclass

from apex_plan.engine.load import FAMILIES
from apex_plan.plan.spec import Plan

# vLLM releases without expert parallelism: 0.6.0 shards every expert over the TP ranks (fused_moe);
# `--enable-expert-parallel` arrived in a later release
VLLM_NO_EP = ("vllm-0.6", "vllm-0.6.0", "vllm@0.6", "vllm@0.6.0", "vllm-v0")


@dataclass(frozen=True)
class EngineCaps:
    """What an engine can lay out (stand-in for the engine profile's declaration)."""

    family: str
    name: str
    supports_ep: bool
    supports_pp: bool
    supports_attention_dp: bool
    moe_dispatch: str = "allgather"     # how attention-DP ranks' MoE tokens move (engine.all2all)


def profile_caps(profile) -> EngineCaps:
    """The layouts an engine profile declares."""
    lay = profile.layouts
    return EngineCaps(profile.family, profile.label, lay.expert_parallel, lay.pipeline_parallel, lay.attention_dp,
                      lay.moe_dispatch)


def engine_caps(name: str) -> EngineCaps:
    """Capabilities from an engine name: vLLM 0.6 names ('vllm@0.6.0', 'vllm-0.6': TP and PP, no EP),
    other 'vllm*' names (the newest vLLM: EP, PP, attention-DP), 'sglang*' and 'trtllm*' (EP, PP,
    attention-DP)."""
    low = name.lower()
    family = next((f for f in FAMILIES if low.startswith(f)), "vllm")
    if family == "vllm":
        return EngineCaps(family, name, low not in VLLM_NO_EP, True, low not in VLLM_NO_EP)
    return EngineCaps(family, name, True, True, True)


def supported_layout(engine, plan: Plan) -> str | None:
    """Why `engine` cannot run `plan`, or None when it can."""
    if plan.ep > 1 and not engine.supports_ep:
        return f"engine {engine.name} has no expert parallelism (experts are sharded over the TP ranks)"
    ranks = plan.tp * getattr(plan, "adp", 1)
    if engine.family == "vllm" and plan.ep > 1 and plan.ep != ranks:
        return (f"engine {engine.name}: --enable-expert-parallel spreads the experts over all {ranks} TP x DP ranks "
                f"(ep must equal tp x adp)")
    if plan.pp > 1 and not engine.supports_pp:
        return f"engine {engine.name} has no pipeline parallelism"
    if getattr(plan, "adp", 1) > 1 and not engine.supports_attention_dp:
        return f"engine {engine.name} has no data-parallel attention"
    if getattr(engine, "moe_dispatch", "") == "alltoall" and getattr(plan, "adp", 1) > 1 and plan.ep != ranks:
        # DeepEP sends each token to the ranks holding its experts: SGLang sets ep_size = tp_size with
        # --moe-a2a-backend deepep (srt/server_args.py _handle_a2a_moe), vLLM needs --enable-expert-parallel
        return (f"engine {engine.name}: the DeepEP all-to-all spreads the experts over all {ranks} ranks "
                f"(ep must equal tp x adp)")
    return None
