"""Redundant expert slots: an ep that does not divide a model's experts runs where the engine pads them
(EPLB: vLLM num_redundant_experts, SGLang --ep-num-redundant-experts, TRT-LLM num_slots)."""

from __future__ import annotations

import pytest

from apex_plan.engine.load import resolve_engine_profile
from apex_plan.estimate import gemms as G
from apex_plan.hardware.load import load_gpu, make_cluster
from apex_plan.model.load import load_model
from apex_plan.plan.enumerate import plan_reason
from apex_plan.plan.moe_layout import ep_degrees
from apex_plan.plan.spec import Plan, expert_slots
from apex_plan.report.launch import launch_command, parse_launch
from apex_plan.simulate.engine import resolve_engine
from apex_plan.plan.spec import EngineConfig


@pytest.mark.parametrize("experts,ep,slots", [(256, 48, 288), (256, 72, 288), (256, 36, 288), (256, 10, 260),
                                              (256, 32, 256), (256, 8, 256), (128, 1, 128), (7, 4, 8)])
def test_slots_are_the_fewest_multiple_of_ep(experts, ep, slots):
    assert expert_slots(experts, ep) == slots            # vLLM's auto count: 256 at ep 10 takes 4 redundant
    assert slots % ep == 0 and slots - experts < ep


def _routed(model, plan):
    return [g for g in G.moe(model, plan) if g.name.startswith("experts_")]


def test_expert_weights_and_routing_per_gpu_with_slots():
    ds = load_model("deepseek-r1")
    for ep, per_gpu in ((32, 8), (48, 6), (72, 4)):      # 256 experts, or 288 slots at ep 48 / 72
        plan = Plan(tp=1, ep=ep, adp=ep, weight_dtype="fp4", kv_dtype="fp8")
        gu, down = _routed(ds, plan)
        inter = ds.expert_intermediate_size            # expert TP = tp x adp / ep = 1
        assert gu.copies == down.copies == gu.experts == per_gpu
        assert gu.weight_params == per_gpu * ds.hidden_size * 2 * inter      # gate and up, exact
        assert down.weight_params == per_gpu * inter * ds.hidden_size
        # each token's top-k copies land on the ranks in proportion to their slots: k x adp / ep per local token
        assert gu.route_frac == pytest.approx(ds.experts_per_token * ep / ep)
        assert gu.active_p == pytest.approx(ds.experts_per_token / expert_slots(ds.num_experts, ep))


def test_plan_rule_refuses_without_redundant_slots_and_takes_them_with():
    ds = load_model("deepseek-r1")
    cl = make_cluster(load_gpu("gb200-nvl72"), 48, 4)
    plan = Plan(tp=1, ep=48, adp=48, weight_dtype="fp4", kv_dtype="fp8")
    kind, why = plan_reason(ds, cl, plan)
    assert kind == "divisibility" and "ep=48 does not divide 256 experts" in why
    assert plan_reason(ds, cl, plan, redundant_experts=True) is None
    for name in ("trtllm", "sglang", "vllm"):
        assert resolve_engine_profile(name).layouts.redundant_experts
        assert 48 in ep_degrees(resolve_engine_profile(name), ds, 1, 48)


@pytest.mark.parametrize("family,needle", [("sglang", "--enable-eplb --ep-num-redundant-experts 32"),
                                           ("vllm", "--enable-eplb --eplb-config '{\"num_redundant_experts\": 32}'"),
                                           ("trtllm", "num_slots: 288")])
def test_launch_asks_for_the_redundant_slots(family, needle):
    ds = load_model("deepseek-r1")
    plan = Plan(tp=1, ep=48, adp=48, weight_dtype="fp4", kv_dtype="fp8")
    eng = resolve_engine(EngineConfig(name=family, max_num_seqs=64), ds)
    cmd = launch_command(family, "deepseek-ai/DeepSeek-R1", plan, eng, True, False, ds.num_experts)
    assert needle in cmd
    got = parse_launch(cmd)
    assert got["ep"] == 48 and got["tp"] * got["adp"] == 48        # trtllm-serve: tp_size counts every GPU
    even = launch_command(family, "deepseek-ai/DeepSeek-R1", Plan(tp=1, ep=32, adp=32, weight_dtype="fp4",
                                                                    kv_dtype="fp8"), eng, True, False, ds.num_experts)
    assert "eplb" not in even and "num_slots" not in even


def test_trtllm_runs_the_mnnvl_alltoall_only_on_nvl72_above_top_k():
    """TRT-LLM select_alltoall_method_type: attention DP with moe_ep_size > top_k on an MNNVL system (NVL72)
    takes the all-to-all; on HGX nodes, or at ep <= top_k, the AllGather."""
    from apex_plan.estimate import moe as MOE
    from apex_plan.estimate.step_cost import moe_fields
    ds = load_model("deepseek-r1")
    prof = resolve_engine_profile("trtllm")
    for gpu_name, per_node, ep, want in (("gb200-nvl72", 4, 32, "alltoall"), ("gb200-nvl72", 4, 8, "allgather"),
                                         ("b200-sxm-180gb", 8, 32, "allgather")):
        gpu = load_gpu(gpu_name)
        cl = make_cluster(gpu, 32, per_node)
        plan = Plan(tp=1, ep=ep, adp=32, weight_dtype="fp4", kv_dtype="fp8")
        got = moe_fields(ds, gpu, plan, cl, prof)
        assert got["a2a_kind"] == MOE.A2A_KINDS[want], (gpu_name, ep)
        if want == "alltoall":
            assert got["a2a_ll_decode"] == 0.0           # one copy per destination rank
    # SGLang and vLLM keep their own dispatch on NVL72 (their all-to-all is DeepEP's, asked for by flag)
    gpu = load_gpu("gb200-nvl72")
    for name in ("sglang", "vllm"):
        got = moe_fields(ds, gpu, Plan(tp=1, ep=32, adp=32, weight_dtype="fp4", kv_dtype="fp8"),
                         make_cluster(gpu, 32, 4), resolve_engine_profile(name))
        assert got["a2a_kind"] == MOE.A2A_KINDS[resolve_engine_profile(name).layouts.moe_dispatch]


def test_disaggregated_role_flags_stay_ahead_of_the_command_comments():
    """The role flags a disaggregated deployment adds go into the command, not into its trailing '# ...' notes
    (the redundant-slot note of trtllm-serve, the checkpoint note)."""
    from apex_plan.plan.disagg import DisaggPlan
    from apex_plan.report.launch import disagg_launch
    ds = load_model("deepseek-r1")
    pre = Plan(dp=1, tp=1, ep=4, adp=4, weight_dtype="fp4", kv_dtype="fp8")
    dec = Plan(dp=1, tp=1, ep=48, adp=48, weight_dtype="fp4", kv_dtype="fp8")
    for family, flag in (("trtllm", "--extra_llm_api_options decode.yaml"), ("sglang", "--disaggregation-mode decode"),
                         ("vllm", "--kv-transfer-config")):
        eng = resolve_engine(EngineConfig(name=family, max_num_seqs=64), ds)
        la = disagg_launch(family, "deepseek-ai/DeepSeek-R1", DisaggPlan(pre, dec, 64), eng, eng, prequantized=False,
                           num_experts=ds.num_experts)
        command = la.decode.split("  # ", 1)[0]
        assert flag in command, (family, la.decode)
        assert "  # " in la.decode                       # the checkpoint note (and trtllm's slots) kept after it
