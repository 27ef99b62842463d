"""SGLang's future-token admission (schedule_policy.py PrefillAdder, scheduler.py new_token_ratio): exact
ratio arithmetic, off for the other engines, and on a KV-bound closed loop fewer preemptions with every
request still served once."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from apex_plan.engine.load import resolve_engine_profile
from apex_plan.hardware.load import load_gpu, make_cluster
from apex_plan.model.load import load_model
from apex_plan.plan.spec import EngineConfig, Plan
from apex_plan.simulate.run import simulate
from apex_plan.simulate.scheduler import admission_fields
from apex_plan.workload.synthetic import LengthDist, closed_loop, synthetic_trace


def test_ratio_arithmetic_is_sglangs():
    f = admission_fields(resolve_engine_profile("sglang@0.5.9").scheduler)
    assert f["admit_ratio_init"] == 0.7                              # SGLANG_INIT_NEW_TOKEN_RATIO
    assert f["admit_ratio_min"] == pytest.approx(0.7 * 0.14)         # x SGLANG_MIN_NEW_TOKEN_RATIO_FACTOR
    assert f["admit_ratio_decay"] == pytest.approx((0.7 - 0.098) / 600)  # over SGLANG_NEW_TOKEN_RATIO_DECAY_STEPS
    assert f["admit_clip_tokens"] == 4096 and f["admit_retract_steps"] == 20
    assert admission_fields(resolve_engine_profile("sglang@0.5.1").scheduler) == f


@pytest.mark.parametrize("engine", ["vllm", "trtllm", "vllm@0.6.0"])
def test_other_engines_reserve_nothing(engine):
    f = admission_fields(resolve_engine_profile(engine).scheduler)
    assert f["admit_ratio_init"] == 0.0 and f["admit_ratio_decay"] == 0.0
    assert admission_fields(None) == f


def _run(ratio: float, conc: int = 48):
    prof = resolve_engine_profile("sglang@0.5.9")
    prof = dataclasses.replace(prof, scheduler=dataclasses.replace(prof.scheduler, new_token_ratio=ratio))
    gpu = load_gpu("h100-sxm-80gb")
    tr = synthetic_trace(4 * conc, LengthDist("uniform", low=1500, high=2500), LengthDist("uniform", low=1500, high=2500),
                         None, seed=3)
    res = simulate(load_model("llama-3.1-70b"), make_cluster(gpu, 2), Plan(1, 2, 1),
                   EngineConfig(name="sglang@0.5.9", profile=prof, max_model_len=8192), closed_loop(tr, conc))
    return res, tr


def test_admission_preempts_less_and_serves_every_request_once():
    free, held = _run(0.0), _run(0.7)
    (a, tr), (b, _) = free, held
    for res in (a, b):
        assert res.feasible, res.reason
        m = res.metrics
        assert m.completed == len(tr) and m.rejected == 0
        assert np.all(res.times.finish_s > res.times.first_token_s)
        # the engine processes prompt + output - 1 tokens of each request, recomputation only adds to that
        assert int(res.engine_stats["tokens"].sum()) >= int((tr.prompt_tokens + tr.output_tokens - 1).sum())
    # the pool cannot hold 48 growing sequences: without the reservation the engine over-admits and recomputes
    assert a.metrics.memory.preemptions > 0
    assert b.metrics.memory.preemptions < a.metrics.memory.preemptions
