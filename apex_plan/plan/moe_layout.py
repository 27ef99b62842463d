"""Attention-DP and expert-parallel layouts of one engine instance, as each engine runs them.

An instance of G GPUs (per pipeline stage) runs attention as `adp` data-parallel ranks of `tp` GPUs
(tp x adp = G) and its MoE layers `ep`-way over those G GPUs (expert TP = G / ep). Which (tp, adp, ep)
an engine accepts, and the MoE layout it picks when none is given, come from the engine profile's
`layouts` section (engine_profiles/*.yaml, sources beside each value):

* SGLang: `--tp-size G` is the instance; `--enable-dp-attention --dp-size adp` splits attention into
  adp ranks of G / adp GPUs; `--ep-size` divides G and defaults to 1 (experts TP-sharded over G).
* TRT-LLM: `tp_size` is the instance (tensorrt_llm/mapping.py: moe_tp_size x moe_ep_size = tp_size);
  `enable_attention_dp` makes attention tp 1 with adp = tp_size; moe_ep_size defaults to 1.
* vLLM V1: `--tensor-parallel-size tp --data-parallel-size adp`; `--enable-expert-parallel` puts the
  experts on every one of the tp x adp GPUs (ep = G), otherwise they are TP-sharded over G.

`search` and `serving` enumerate with `instance_layouts`; `simulate` takes a user's plan as given.
"""

from __future__ import annotations

from apex_plan.hardware.spec import ClusterSpec
from apex_plan.model.spec import ModelSpec
from apex_plan.plan.enumerate import plan_reason
from apex_plan.plan.spec import Plan


def _divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


def _layouts(profile):
    """The profile's `layouts` section, or an object with the same fields (search.layouts.EngineCaps)."""
    return getattr(profile, "layouts", profile)


def _pads(profile) -> bool:
    """Whether the engine pads the experts to a multiple of ep with redundant slots (layouts.redundant_experts)."""
    return getattr(_layouts(profile), "redundant_experts", False)


def ep_degrees(profile, model: ModelSpec, tp: int, adp: int = 1) -> list[int]:
    """Expert-parallel degrees the engine runs for attention tp x adp (ascending): 1 for a dense model
    or an engine without EP; every divisor of tp x adp that divides the experts ('divisors'); or
    1 and tp x adp ('all': vLLM's --enable-expert-parallel is all or nothing); a degree that does not divide
    the experts only on an engine that adds redundant expert slots (layouts.redundant_experts)."""
    lay = _layouts(profile)
    ranks = tp * adp
    if not model.is_moe or not getattr(lay, "expert_parallel", True):
        return [1]
    if getattr(lay, "ep_degrees", "divisors") == "all":
        cands = [1, ranks]
    else:
        cands = _divisors(ranks)
    return sorted({e for e in cands if e == 1 or _pads(profile) or model.num_experts % e == 0})


def default_ep(profile, model: ModelSpec, tp: int, adp: int = 1) -> int:
    """The MoE layout the engine runs when none is asked for: ep = 1 (experts TP-sharded over the
    instance) or ep = tp x adp ('all'), falling back to 1 when the experts do not divide."""
    lay = _layouts(profile)
    if not model.is_moe or not getattr(lay, "expert_parallel", True):
        return 1
    ranks = tp * adp
    if getattr(lay, "default_ep", "none") == "all" and (_pads(profile) or model.num_experts % ranks == 0):
        return ranks
    return 1


def attention_splits(profile, gpus: int) -> list[tuple[int, int]]:
    """(tp, adp) pairs with tp x adp = `gpus` the engine runs: adp = 1 always; adp > 1 only on
    engines with attention DP."""
    lay = _layouts(profile)
    adp_ok = getattr(lay, "attention_dp", False)
    return [(gpus // a, a) for a in _divisors(gpus) if a == 1 or adp_ok]


def instance_layouts(profile, model: ModelSpec, cluster: ClusterSpec, gpus: int, pp: int = 1,
                     weight_dtype: str = "bf16", kv_dtype: str = "bf16",
                     allow_cross_node_tp: bool = False) -> list[Plan]:
    """Every (tp, adp, ep) layout of one instance of `gpus` GPUs per stage that the engine runs and
    the model and cluster allow (`plan_reason`: heads, experts, placement, dtypes), as dp=1 plans."""
    out = []
    for tp, adp in attention_splits(profile, gpus):
        for ep in ep_degrees(profile, model, tp, adp):
            plan = Plan(tp=tp, pp=pp, ep=ep, adp=adp, weight_dtype=weight_dtype, kv_dtype=kv_dtype)
            if plan_reason(model, cluster, plan, allow_cross_node_tp, redundant_experts=_pads(profile)) is None:
                out.append(plan)
    return out
