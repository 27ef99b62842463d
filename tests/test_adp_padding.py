"""vLLM data parallelism pads every DP rank's step to the busiest rank's tokens, and the padding runs through
the MoE like real tokens (profile `layouts.adp_padding`): in every step up to 0.16, only in CUDA-graph steps
from 0.17 (vLLM PR #34102). SGLang and TRT-LLM do not pad this way; adp = 1 never takes the lock-step path."""

from __future__ import annotations

import dataclasses

import numpy as np

from apex_plan.engine.load import resolve_engine_profile
from apex_plan.hardware.load import load_gpu, make_cluster
from apex_plan.model.load import load_model
from apex_plan.plan.spec import EngineConfig, Plan
from apex_plan.simulate.run import simulate
from apex_plan.workload.spec import Trace, Workload

H200 = load_gpu("h200-sxm-141gb")
QWEN_MOE = load_model("qwen3-235b-a22b")
PLAN = Plan(tp=1, adp=2, weight_dtype="fp8", kv_dtype="bf16")


def _pad(engine: str) -> int:
    prof = resolve_engine_profile(engine)
    return prof.adp_pad_tokens()


def test_profiles_say_who_pads_and_when():
    """vLLM 0.12 pads every step (no token limit); 0.17 on and an unnumbered vLLM only CUDA-graph steps
    (the profile's largest captured step); SGLang and TRT-LLM never."""
    assert _pad("vllm@0.12.0") >= 1 << 30
    assert _pad("vllm@0.16.0") >= 1 << 30
    graph_max = resolve_engine_profile("vllm@0.18.0").graphs.max_batch
    assert _pad("vllm@0.18.0") == graph_max == _pad("vllm") > 0
    assert _pad("sglang") == 0 and _pad("trtllm") == 0


def _ttft_ms(engine: str, padding: str | None, prompt: int) -> float:
    """One request at a time (the other DP rank idle): the mean TTFT of 4 requests, far apart."""
    prof = resolve_engine_profile(engine)
    if padding is not None:
        prof = dataclasses.replace(prof, layouts=dataclasses.replace(prof.layouts, adp_padding=padding))
    trace = Trace(np.arange(4) * 30.0, np.full(4, prompt, np.int64), np.full(4, 8, np.int64))
    cfg = EngineConfig(name=engine, profile=prof, max_num_seqs=8)
    res = simulate(QWEN_MOE, make_cluster(H200, PLAN.num_gpus), PLAN, cfg, Workload(trace))
    assert res.feasible and res.metrics.completed == 4
    return res.metrics.latency.ttft_ms.mean


def test_padding_makes_the_idle_rank_push_the_prefill_through_the_experts():
    """A 2000-token prefill on one of two ranks: padded (0.12), the experts see 2 x 2000 tokens and the
    first token comes later than unpadded; from 0.17 an eager prefill step is not padded."""
    padded, unpadded = _ttft_ms("vllm@0.12.0", None, 2000), _ttft_ms("vllm@0.12.0", "none", 2000)
    assert padded > 1.1 * unpadded
    assert _ttft_ms("vllm@0.18.0", None, 2000) == _ttft_ms("vllm@0.18.0", "none", 2000)


def test_padded_replica_step_pushes_the_busiest_ranks_tokens_through_every_ranks_experts():
    """The analytic replica step (StepCost.replica_step_s) pads as the simulator does: with a skewed
    replica, padding makes the step longer than the replica's mean through the experts, equal to the
    busiest rank's step at its own tokens, and balanced ranks are unchanged."""
    from apex_plan.estimate import kernels as K
    from apex_plan.estimate.step_cost import build_step_cost
    prof = resolve_engine_profile("vllm@0.12.0")
    sc = build_step_cost(QWEN_MOE, H200, PLAN, make_cluster(H200, PLAN.num_gpus), profile=prof)
    skew = [K.make_batch(chunk=2000), K.make_batch()]   # one rank prefills, the other is idle
    assert skew[1].size == 0
    even = [K.make_batch(decodes=4, context=2000)] * 2
    pad = _pad("vllm@0.12.0")
    padded = sc.replica_step_s(skew, pad_tokens=pad)
    assert padded > sc.replica_step_s(skew)
    assert padded == float(K.rank_batch_step_time(sc.cost, skew[0], 0, 2000.0)[0])
    assert sc.replica_step_s(even, pad_tokens=pad) == sc.replica_step_s(even)
