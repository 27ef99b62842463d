"""SGLang's receive interval (--scheduler-recv-interval; srt/managers/scheduler_recv_skipper.py, scheduler.py
recv_requests): a busy scheduler takes new requests only every N decode steps (at once after a prefill step, at
once when idle), so an arrival waits at most N - 1 decode steps more than with N = 1; N = 1 is today's simulation
exactly; every request is still served once; bad settings are one line, exit 2."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from apex_plan.errors import InputError
from apex_plan.hardware.load import load_gpu, make_cluster
from apex_plan.model.load import load_model
from apex_plan.plan.spec import EngineConfig, Plan
from apex_plan.simulate.run import simulate
from apex_plan.simulate.scheduler import recv_fields
from apex_plan.workload.spec import Trace, Workload
from apex_plan.workload.synthetic import LengthDist, closed_loop, synthetic_trace

from test_simulate import check_conservation

PROMPT, LONG, SHORT = 512, 400, 8


def _sim(workload, n=None, engine="sglang@0.5.9", plan=Plan(1, 1, 1)):
    cfg = EngineConfig(name=engine, max_model_len=4096, recv_interval=n)
    return simulate(load_model("llama-3.1-8b"), make_cluster(load_gpu("h100-sxm-80gb"), plan.num_gpus), plan, cfg,
                    workload)


def _pair(t_b: float) -> Workload:
    """A long request at t = 0 and a short one arriving at `t_b` while it decodes."""
    return Workload(Trace(np.array([0.0, t_b]), np.array([PROMPT, PROMPT]), np.array([LONG, SHORT])))


def test_default_is_every_step_and_n1_is_today():
    assert recv_fields(None) == dict(recv_interval=1)
    tr = synthetic_trace(40, LengthDist("uniform", low=300, high=900), LengthDist("uniform", low=60, high=180),
                         20.0, seed=3)
    base, one = _sim(Workload(tr)), _sim(Workload(tr), 1)
    assert base.engine.recv_interval == 1 and one.engine.recv_interval == 1
    for a, b in zip((base.times.first_token_s, base.times.finish_s, base.times.scheduled_s),
                    (one.times.first_token_s, one.times.finish_s, one.times.scheduled_s)):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("n", [2, 5, 10])
def test_an_arrival_waits_at_most_n_minus_1_decode_steps(n):
    alone = _sim(Workload(Trace(np.zeros(1), np.array([PROMPT]), np.array([LONG]))))
    step_s = (alone.times.finish_s[0] - alone.times.first_token_s[0]) / (LONG - 1)   # one decode step of one
    t0 = alone.times.first_token_s[0]
    waits = []
    for k in range(2 * n):                          # arrivals over two poll cycles of the long request's decode
        t_b = t0 + (20 + k + 0.5) * step_s
        every, polled = _sim(_pair(t_b)), _sim(_pair(t_b), n)
        extra = polled.times.scheduled_s[1] - every.times.scheduled_s[1]
        # a step holding the short request's prefill is longer than a decode step: compare in those steps' time
        assert -1e-9 <= extra <= (n - 1) * step_s * 1.05 + 1e-9
        waits.append(extra / step_s)
        assert polled.times.first_token_s[1] - t_b >= every.times.first_token_s[1] - t_b - 1e-9
    assert max(waits) >= n - 1.5                   # some arrival just misses a poll and waits the whole interval
    assert min(waits) <= 0.5                       # one arriving just before a poll does not wait


def test_an_idle_engine_takes_a_request_at_once():
    one = Workload(Trace(np.zeros(1), np.array([PROMPT]), np.array([LONG])))
    np.testing.assert_array_equal(_sim(one).times.first_token_s, _sim(one, 30).times.first_token_s)
    c1 = closed_loop(synthetic_trace(4, LengthDist("constant", mean=PROMPT), LengthDist("constant", mean=64), None),
                     1)
    assert _sim(c1, 30).metrics.latency.ttft_ms.mean == pytest.approx(_sim(c1).metrics.latency.ttft_ms.mean)


@pytest.mark.parametrize("n", [3, 30])
def test_conservation_open_and_closed(n):
    tr = synthetic_trace(60, LengthDist("uniform", low=140, high=1260), LengthDist("uniform", low=9, high=171),
                         40.0, seed=5)
    check_conservation(_sim(Workload(tr), n), tr)
    res = _sim(closed_loop(tr, 8), n)
    check_conservation(res, tr, closed=True)
    assert res.metrics.latency.ttft_ms.mean > _sim(closed_loop(tr, 8)).metrics.latency.ttft_ms.mean


def test_attention_dp_refuses_an_asked_interval():
    model = load_model("qwen3-30b-a3b")
    plan = Plan(1, 1, 1, adp=2)
    wl = closed_loop(synthetic_trace(8, LengthDist("constant", mean=PROMPT), LengthDist("constant", mean=32), None), 4)
    cfg = EngineConfig(name="sglang@0.5.9", max_model_len=4096, recv_interval=10)
    res = simulate(model, make_cluster(load_gpu("h100-sxm-80gb"), 2), plan, cfg, wl)
    assert not res.feasible and "--scheduler-recv-interval" in res.reason


@pytest.mark.parametrize("n,engine", [(0, "sglang@0.5.9"), (10, "vllm"), (10, "trtllm")])
def test_bad_settings_are_refused(n, engine):
    with pytest.raises(InputError):
        _sim(Workload(Trace(np.zeros(1), np.array([PROMPT]), np.array([SHORT]))), n, engine)


def test_cli_flag_flows_and_refuses_vllm_in_one_line():
    base = [sys.executable, "-m", "apex_plan", "simulate", "--model", "llama-3.1-8b", "--gpu", "h100-sxm-80gb",
            "--gpus", "1", "--prompt-tokens", "512", "--output-tokens", "64", "--concurrency", "2"]
    p = subprocess.run(base + ["--engine", "vllm", "--scheduler-recv-interval", "10"], capture_output=True, text=True)
    assert p.returncode == 2
    assert "--scheduler-recv-interval" in p.stderr and "Traceback" not in p.stderr
    assert len(p.stderr.strip().splitlines()) == 1
    p = subprocess.run(base + ["--engine", "sglang@0.5.9", "--scheduler-recv-interval", "10", "--format", "json"],
                       capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    assert '"recv_interval": 10' in p.stdout
