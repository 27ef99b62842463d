"""MoE layers under expert parallelism and attention DP (issue 17 item 2): expert load by tokens per
step, the token exchange's bytes, lock-step attention-DP steps, and the engines' layout rules."""

from __future__ import annotations

import dataclasses
import itertools
import math

import numpy as np
import pytest

from apex_plan import abi
from apex_plan.engine.load import resolve_engine_profile
from apex_plan.estimate import kernels as K
from apex_plan.estimate import moe as MOE
from apex_plan.estimate.step_cost import build_step_cost
from apex_plan.hardware.load import load_gpu, make_cluster
from apex_plan.model.load import load_model
from apex_plan.plan import moe_layout as ML
from apex_plan.plan.spec import EngineConfig, Plan
from apex_plan.simulate.run import simulate
from apex_plan.workload.spec import Trace, Workload

H200 = load_gpu("h200-sxm-141gb")
DSV3 = load_model("deepseek-v3")
TRTLLM = resolve_engine_profile("trtllm")


def _expert_row(sc):
    return next(o for o in sc.cost.ops if o["shape"] == abi.OP_EXPERTS)


# ---- expert load ------------------------------------------------------------------------------------

def test_expected_distinct_experts_exact_by_enumeration():
    """E (1 - (1 - k/E)^T) equals the mean number of distinct experts over every way T tokens pick k of E."""
    E, k, T = 6, 2, 3
    pairs = list(itertools.combinations(range(E), k))
    touched = [len(set().union(*picks)) for picks in itertools.product(pairs, repeat=T)]
    assert MOE.expected_distinct_experts(E, k, T) == pytest.approx(sum(touched) / len(touched), rel=1e-12)


def test_expected_rank_copies_exact_by_enumeration():
    """Distinct EP ranks a token's top-k experts land on, against every pick (E=8, ep=4, k=3)."""
    E, ep, k = 8, 4, 3
    picks = list(itertools.combinations(range(E), k))
    ranks = [len({e // (E // ep) for e in p}) for p in picks]
    assert MOE.expected_rank_copies(E, k, ep) == pytest.approx(sum(ranks) / len(ranks), rel=1e-12)
    assert MOE.expected_rank_copies(E, k, 1) == 1.0


def test_expected_max_z_is_the_mean_maximum_of_normals():
    """Blom's approximation against the known means of the largest of 2 and 8 standard normals."""
    assert MOE.expected_max_z(1) == 0.0
    assert MOE.expected_max_z(2) == pytest.approx(1 / math.sqrt(math.pi), abs=0.03)   # 0.5642 (Blom: 0.589)
    assert MOE.expected_max_z(8) == pytest.approx(1.4236, abs=0.02)


def test_kernel_touches_expected_experts_without_ep():
    """At ep = 1 the expert row reads E(1 - (1 - k/E)^T) experts whole for T tokens (no imbalance)."""
    sc = build_step_cost(DSV3, H200, Plan(tp=8, weight_dtype="fp8", kv_dtype="fp8"), profile=TRTLLM)
    p, o = sc.cost.params[0], _expert_row(sc)
    assert MOE.busiest_rank_load(p, o, 5.0) == 1.0
    T = 5.0
    active = o["experts"] * (1.0 - (1.0 - o["active_p"]) ** T)
    assert active == pytest.approx(MOE.expected_distinct_experts(DSV3.num_experts, DSV3.experts_per_token, T))


def test_imbalance_tends_to_its_constant_as_tokens_grow():
    """The busiest EP rank's load over the mean falls with tokens per step toward moe_imbalance."""
    sc = build_step_cost(DSV3, H200, Plan(tp=8, ep=8, weight_dtype="fp8", kv_dtype="fp8"), profile=TRTLLM)
    p, o = sc.cost.params[0], _expert_row(sc)
    c = p["moe_imbalance"]
    loads = [MOE.busiest_rank_load(p, o, float(t)) for t in (1, 4, 16, 64, 256, 4096, 1 << 20, 1 << 30)]
    assert all(a > b for a, b in zip(loads, loads[1:]))
    assert loads[0] <= DSV3.experts_per_token and loads[0] <= p["ep"]   # never above every copy on one rank
    assert loads[-1] == pytest.approx(c, rel=1e-3)
    assert loads[-2] - c < 0.01 < loads[2] - c


# ---- token exchange ---------------------------------------------------------------------------------

def _adp_cost(gpus, dispatch="allgather", decode_kernel="low_latency", ep=None, weight="fp8"):
    prof = dataclasses.replace(TRTLLM, layouts=dataclasses.replace(TRTLLM.layouts, moe_dispatch=dispatch,
                                                                      a2a_decode_kernel=decode_kernel))
    cluster = make_cluster(H200, gpus)
    plan = Plan(tp=1, adp=gpus, ep=ep or gpus, weight_dtype=weight, kv_dtype="fp8")
    return build_step_cost(DSV3, H200, plan, cluster, profile=prof).cost.params[0]


def test_allgather_bytes_exact_inside_a_node():
    """ADP8 on one H200 node: each GPU gathers the other 7 ranks' tokens (fp8 + 1/32 scales) and
    reduce-scatters the bf16 output back, both at NVLink bandwidth."""
    p = _adp_cost(8)
    m = 64.0
    h = DSV3.hidden_size                               # 7168
    gather = 7 * m * h * (1.0 + 4.0 / 128.0)
    scatter = 7 * m * h * 2.0
    want = 2 * p["a2a_latency_s"] + (gather + scatter) / p["a2a_bytes_per_s"]
    assert MOE.comm_s(p, m, m, True, 1.0) == pytest.approx(want, rel=1e-12)


def test_alltoall_bytes_exact_low_latency_and_normal():
    """DeepEP-style dispatch on ADP8/EP8: decode (low latency) sends one copy per routed expert, a
    prefill (normal kernels) one per destination rank; 7/8 of them leave the GPU."""
    p = _adp_cost(8, dispatch="alltoall")
    m, h, k = 32.0, DSV3.hidden_size, DSV3.experts_per_token
    per_copy = h * (1.0 + 4.0 / 128.0) + h * 2.0        # fp8 dispatch + bf16 combine
    ll = 2 * p["a2a_latency_s"] + m * k * 7 / 8 * per_copy / p["a2a_bytes_per_s"]
    assert MOE.comm_s(p, m, m, True, 1.0) == pytest.approx(ll, rel=1e-12)
    copies = MOE.expected_rank_copies(DSV3.num_experts, k, 8)
    normal = 2 * p["a2a_latency_s"] + m * copies * 7 / 8 * per_copy / p["a2a_bytes_per_s"]
    assert MOE.comm_s(p, m, m, False, 1.0) == pytest.approx(normal, rel=1e-12)
    assert copies < k


def test_exchange_across_nodes_goes_over_rdma():
    """ADP16 over two 8-GPU nodes: 8 of a GPU's 15 peers are across the RDMA link, which sets the pace."""
    p = _adp_cost(16)
    assert p["a2a_domain_gpus"] == 8 and p["a2a_ranks"] == 16
    m, h = 16.0, DSV3.hidden_size
    gather = 15 * m * h * (1.0 + 4.0 / 128.0)
    scatter = 15 * m * h * 2.0
    phase = lambda b: p["a2a_latency_s"] + max(b * 7 / 15 / p["a2a_bytes_per_s"], b * 8 / 15 / p["a2a_rdma_bytes_per_s"])
    assert MOE.comm_s(p, m, m, True, 1.0) == pytest.approx(phase(gather) + phase(scatter), rel=1e-12)
    assert p["a2a_latency_s"] > _adp_cost(8)["a2a_latency_s"]


def test_no_exchange_without_attention_dp():
    sc = build_step_cost(DSV3, H200, Plan(tp=8, ep=8, weight_dtype="fp8", kv_dtype="fp8"), profile=TRTLLM)
    assert sc.cost.params[0]["a2a_kind"] == MOE.A2A_NONE
    assert MOE.comm_s(sc.cost.params[0], 64.0, 64.0, True, 1.0) == 0.0


# ---- lock-step attention DP ---------------------------------------------------------------------------

def test_replica_step_waits_for_the_busiest_rank():
    """A lock-step step lasts the busiest rank's time; its experts see the replica's mean tokens, so
    moving sequences between ranks at the same total changes only the attention side."""
    cluster = make_cluster(H200, 8)
    sc = build_step_cost(DSV3, H200, Plan(tp=1, adp=8, ep=8, weight_dtype="fp8", kv_dtype="fp8"), cluster,
                         profile=TRTLLM)
    even = [K.make_batch(decodes=8, context=2048)] * 8
    skew = [K.make_batch(decodes=57, context=2048)] + [K.make_batch(decodes=1, context=2048)] * 7
    t_even, t_skew = sc.replica_step_s(even), sc.replica_step_s(skew)
    assert t_skew > t_even
    busiest = float(K.rank_batch_step_time(sc.cost, skew[0], 0, 8.0)[0])
    assert t_skew == pytest.approx(busiest, rel=1e-12)
    # balanced ranks: the replica step is the per-rank step_time every rank shares
    assert t_even == pytest.approx(sc.step_s(decodes=8, context=2048)[0], rel=1e-12)


def _closed(plan, engine, conc=8, prompt=512, output=64, lockstep=None, model=None, gpus=8):
    model = model or DSV3
    trace = Trace(np.zeros(4 * conc), np.full(4 * conc, prompt, np.int64), np.full(4 * conc, output, np.int64))
    return simulate(model, make_cluster(H200, gpus), plan, EngineConfig(name=engine, max_num_seqs=conc),
                    Workload(trace, "closed", conc))


def test_adp1_unchanged_by_lockstep_code_path():
    """adp = 1, ep = 1, aggregated: the lock-step path is never taken and today's numbers stand; the
    same plan's times equal those of a simulation that steps ranks on their own (two code paths)."""
    plan = Plan(tp=8, weight_dtype="fp8", kv_dtype="fp8")
    a = _closed(plan, "sglang")
    b = _closed(plan, "trtllm")
    for res in (a, b):
        assert res.feasible
    # rank_step_time with a rank's own tokens is step_time
    sc = build_step_cost(DSV3, H200, plan, profile=TRTLLM)
    batch = K.make_batch(decodes=16, context=1500, chunk=256, cached=0)
    assert float(K.rank_batch_step_time(sc.cost, batch, 0, float((batch["new_tokens"] * batch["count"]).sum()))[0]) \
        == float(K.batch_step_time(sc.cost, batch, 0)[0])


# ---- engine layout rules ------------------------------------------------------------------------------

def test_engine_layout_rules():
    """SGLang/TRT-LLM accept any ep dividing the instance and default to expert TP; vLLM's EP is all
    GPUs or none; vLLM 0.6 has neither EP nor attention DP."""
    sglang, vllm, v06 = (resolve_engine_profile(n) for n in ("sglang", "vllm", "vllm@0.6.0"))
    assert ML.ep_degrees(sglang, DSV3, 1, 8) == [1, 2, 4, 8]
    assert ML.ep_degrees(vllm, DSV3, 2, 4) == [1, 8]
    assert ML.ep_degrees(v06, DSV3, 8) == [1]
    assert ML.default_ep(TRTLLM, DSV3, 1, 8) == 1
    assert (1, 8) in ML.attention_splits(TRTLLM, 8) and ML.attention_splits(v06, 8) == [(8, 1)]
    cluster = make_cluster(H200, 16)
    plans = ML.instance_layouts(TRTLLM, DSV3, cluster, 16, weight_dtype="fp8", kv_dtype="fp8",
                                allow_cross_node_tp=True)
    assert Plan(tp=1, adp=16, ep=16, weight_dtype="fp8", kv_dtype="fp8") in plans
    assert all(p.tp * p.adp == 16 and (p.tp * p.adp) % p.ep == 0 for p in plans)
    dense = load_model("llama-3.1-8b")
    assert all(p.ep == 1 for p in ML.instance_layouts(TRTLLM, dense, make_cluster(H200, 8), 8))


def test_exchange_inside_an_nvl72_domain_stays_on_nvlink():
    """ADP16 on an NVL72 rack spans 4 compute trays of 4 GPUs but one NVLink domain: no RDMA share. TRT-LLM at
    ep 8 (= top-k: its MNNVL all-to-all needs more) all-gathers there."""
    gb200 = load_gpu("gb200-nvl72")
    cluster = make_cluster(gb200, 16)
    plan = Plan(tp=1, adp=16, ep=8, weight_dtype="fp8", kv_dtype="fp8")
    p = build_step_cost(DSV3, gb200, plan, cluster, profile=TRTLLM).cost.params[0]
    assert cluster.num_nodes == 4 and p["a2a_domain_gpus"] == 16
    m, h = 16.0, DSV3.hidden_size
    want = 2 * p["a2a_latency_s"] + 15 * m * h * (1.0 + 4.0 / 128.0 + 2.0) / p["a2a_bytes_per_s"]
    assert MOE.comm_s(p, m, m, True, 1.0) == pytest.approx(want, rel=1e-12)


def test_lockstep_ranks_share_every_step():
    """In a lock-step attention-DP replica every rank is busy for every step of the replica (an idle
    rank joins with an empty batch), so all ranks count the same steps and busy seconds, even with
    fewer requests in flight than ranks (so the ranks' token counts differ)."""
    plan = Plan(tp=1, adp=4, ep=4, weight_dtype="fp8", kv_dtype="fp8")
    model = load_model("qwen3-235b-a22b")
    trace = Trace(np.zeros(6), np.full(6, 256, np.int64), np.full(6, 32, np.int64))
    res = simulate(model, make_cluster(H200, 4), plan, EngineConfig(name="sglang", max_num_seqs=8),
                   Workload(trace, "closed", 3))
    st = res.engine_stats
    assert res.feasible and st.shape[0] == 4
    assert len(set(st["steps"].tolist())) == 1 and np.ptp(st["busy_s"]) < 1e-12
    assert st["tokens"].sum() == 6 * 256 + 6 * 31    # every prompt prefilled once, every later token decoded once
    assert st["tokens"].min() < st["tokens"].max()


def test_popularity_skew_grows_with_ep_from_one_to_its_measured_plateau():
    """The routing skew left with many tokens: none without EP, the GPU profile's value at ep 8,
    growing by the same step per doubling of ep up to 32 and flat past it (module docstring)."""
    c8 = H200.calibration.moe_imbalance
    assert MOE.popularity_skew(c8, 1) == 1.0
    assert MOE.popularity_skew(c8, 8) == pytest.approx(c8, rel=1e-12)
    skews = [MOE.popularity_skew(c8, e) for e in (1, 2, 4, 8, 16, 32, 64, 256)]
    steps = np.diff(skews[:6])
    assert np.allclose(steps, (c8 - 1.0) / 3.0, rtol=1e-12)      # equal steps per doubling, 1 -> 32
    assert skews[5] == skews[6] == skews[7]                       # flat past ep 32
    for ep in (2, 4, 16):                                         # the step cost carries the plan's ep's skew
        sc = build_step_cost(DSV3, H200, Plan(tp=ep, ep=ep, weight_dtype="fp8", kv_dtype="fp8"), profile=TRTLLM)
        assert sc.cost.params[0]["moe_imbalance"] == pytest.approx(MOE.popularity_skew(c8, ep), rel=1e-12)


def test_sglang_dp_buffer_bytes_exact_sum_len_and_max_len():
    """SGLang DP attention (dp_buffer) on ADP8 in one H200 node: a step with a prefill all-reduces the
    bf16 sum-of-tokens buffer twice (ring: 2 x 7/8 of it per GPU each); a balanced decode step takes the
    padded all-gather + reduce-scatter (7/8 of 8 x max rows each way); a decode step whose busiest rank
    holds most of the tokens (2 S <= 8 M) stays on the all-reduces, as DpPaddingMode picks."""
    p = _adp_cost(8, dispatch="dp_buffer")
    h, row = DSV3.hidden_size, DSV3.hidden_size * 2.0
    lat, bw = p["a2a_latency_s"], p["a2a_bytes_per_s"]
    m_mean = 100.0
    s = 8 * m_mean
    sum_len = 2 * (lat + 2 * 7 / 8 * s * row / bw)
    assert MOE.comm_s(p, 400.0, m_mean, False, 1.0) == pytest.approx(sum_len, rel=1e-12)     # prefill in the step
    max_len = 2 * (lat + 7 / 8 * 8 * 120.0 * row / bw)                                       # M = 120 < S / 4
    assert MOE.comm_s(p, 120.0, m_mean, True, 1.0) == pytest.approx(max_len, rel=1e-12)
    assert max_len < sum_len
    assert MOE.comm_s(p, 400.0, m_mean, True, 1.0) == pytest.approx(sum_len, rel=1e-12)      # 2 S = 1600 <= 8 x 400
    assert h == 7168
    assert resolve_engine_profile("sglang").layouts.moe_dispatch == "dp_buffer"
