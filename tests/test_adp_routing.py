"""How an attention-DP instance hands a new request to one of its ranks, per engine (profile
`layouts.adp_routing`): SGLang in turn, TRT-LLM and vLLM to the least loaded rank; the replica is
chosen first by --routing. Counted from each rank's processed tokens: a request of P prompt and O
output tokens costs its rank exactly P + O - 1 tokens (the prompt once, every later token decoded)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from apex_plan.engine.load import resolve_engine_profile
from apex_plan.hardware.load import load_gpu, make_cluster
from apex_plan.model.load import load_model
from apex_plan.plan.spec import EngineConfig, Plan
from apex_plan.simulate.run import simulate
from apex_plan.workload.spec import Trace, Workload

H200 = load_gpu("h200-sxm-141gb")
QWEN_MOE = load_model("qwen3-235b-a22b")
PROMPT = 128


def _profile(engine: str, routing: str):
    prof = resolve_engine_profile(engine)
    return dataclasses.replace(prof, layouts=dataclasses.replace(prof.layouts, adp_routing=routing))


def _rank_requests(plan: Plan, engine: str, routing: str, outputs, gap_s: float, replica_routing="round_robin"):
    """Open loop: requests of PROMPT tokens and the given outputs, one every gap_s; returns the
    requests each rank served (from its tokens) and the per-rank tokens."""
    n = len(outputs)
    out = np.asarray(outputs, np.int64)
    trace = Trace(np.arange(n) * gap_s, np.full(n, PROMPT, np.int64), out)
    cfg = EngineConfig(name=engine, profile=_profile(engine, routing), max_num_seqs=64, routing=replica_routing)
    res = simulate(QWEN_MOE, make_cluster(H200, plan.num_gpus), plan, cfg, Workload(trace))
    assert res.feasible and res.metrics.completed == n
    return res.engine_stats["tokens"]


def test_profiles_name_each_engines_rank_routing():
    assert resolve_engine_profile("sglang").layouts.adp_routing == "round_robin"
    assert resolve_engine_profile("trtllm").layouts.adp_routing == "least_loaded"
    assert resolve_engine_profile("vllm").layouts.adp_routing == "least_loaded"


def test_round_robin_hands_requests_out_in_turn():
    """One long request, then short ones each finished before the next arrives: in turn, the ranks
    take requests 0, 1, 0, 1, ... whatever their load."""
    plan = Plan(tp=1, adp=2, ep=2, weight_dtype="fp8", kv_dtype="fp8")
    outputs = [400] + [2] * 5
    tokens = _rank_requests(plan, "sglang", "round_robin", outputs, gap_s=2.0)
    per = [PROMPT + o - 1 for o in outputs]
    assert tokens.tolist() == [sum(per[0::2]), sum(per[1::2])]


def test_least_loaded_keeps_new_requests_off_the_busy_rank():
    """The same arrivals under least-loaded routing: while the long request runs on rank 0, every
    short one goes to rank 1 (fewer unfinished requests)."""
    plan = Plan(tp=1, adp=2, ep=2, weight_dtype="fp8", kv_dtype="fp8")
    outputs = [400] + [2] * 5
    tokens = _rank_requests(plan, "trtllm", "least_loaded", outputs, gap_s=0.5)
    per = [PROMPT + o - 1 for o in outputs]
    assert tokens.tolist() == [per[0], sum(per[1:])]


@pytest.mark.parametrize("routing", ["round_robin", "least_loaded"])
def test_replica_first_then_rank(routing):
    """Two replicas of two ranks, replicas in turn: requests alternate between the replicas, and
    inside each the engine's rule spreads them; every request is served once (token conservation)."""
    plan = Plan(tp=1, dp=2, adp=2, ep=2, weight_dtype="fp8", kv_dtype="fp8")
    outputs = [8] * 8
    tokens = _rank_requests(plan, "trtllm", routing, outputs, gap_s=1.0)
    per = PROMPT + 8 - 1
    assert tokens.sum() == 8 * per
    # replica g holds ranks 2g and 2g + 1 and takes four requests; each finishes before the next arrives, so
    # in turn gives each rank two, and least loaded (every rank idle, the first wins ties) gives its first rank all
    want = [2 * per] * 4 if routing == "round_robin" else [4 * per, 0, 4 * per, 0]
    assert tokens.tolist() == want


def test_sglang_disaggregated_prefill_ranks_follow_the_bootstrap_room():
    """SGLang under disaggregation: a prefill instance runs each request on rank room % ranks, the room
    drawn uniformly at random per request (the router's), so its ranks' prompt tokens are exactly the
    sums over the requests whose room lands there; the decode instance hands requests out in turn."""
    from apex_plan.plan.disagg import DisaggPlan
    from apex_plan.simulate import disagg as D

    n, out = 40, 6
    trace = Trace(np.arange(n) * 0.5, np.full(n, PROMPT, np.int64), np.full(n, out, np.int64))
    pre = Plan(tp=1, adp=4, ep=4, weight_dtype="fp8", kv_dtype="fp8")
    dec = Plan(tp=1, adp=2, ep=2, weight_dtype="fp8", kv_dtype="fp8")
    res = D.simulate_disagg(QWEN_MOE, make_cluster(H200, 8), DisaggPlan(pre, dec), EngineConfig(name="sglang"),
                            Workload(trace))
    assert res.feasible, res.reason
    rooms = np.random.default_rng(D.BOOTSTRAP_ROOM_SEED).integers(0, 2 ** 62, n)
    tok = res.estats["tokens"]
    assert tok[:4].tolist() == [PROMPT * int((rooms % 4 == k).sum()) for k in range(4)]
    assert tok[:4].tolist() != [PROMPT * n // 4] * 4                 # not the in-turn split
    assert tok[-2:].tolist() == [(out - 1) * n // 2] * 2               # decode: in turn, every later token decoded
