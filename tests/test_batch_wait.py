"""TRT-LLM batch waiting (py_executor.py `_waiting_requests`, llm_args.py batch_wait_timeout_iters /
batch_wait_max_tokens_ratio): off by default; while generations run, a lone context waits up to the timeout
(its TTFT grows by at most that many steps); a context that already fills the token ratio, or an engine with
no generation running, does not wait; every request is still served once; bad settings are one line, exit 2."""

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
from apex_plan.simulate.scheduler import batch_wait_fields
from apex_plan.workload.synthetic import LengthDist, closed_loop, synthetic_trace

PROMPT, OUTPUT = 1024, 256


def _run(conc: int, iters: int = 0, ratio: float = 0.0, engine: str = "trtllm"):
    tr = synthetic_trace(5 * conc, LengthDist("constant", mean=PROMPT), LengthDist("constant", mean=OUTPUT), None, seed=1)
    res = simulate(load_model("llama-3.1-8b"), make_cluster(load_gpu("h100-sxm-80gb"), 1), Plan(1, 1, 1),
                   EngineConfig(name=engine, max_model_len=4096, batch_wait_iters=iters, batch_wait_tokens_ratio=ratio),
                   closed_loop(tr, conc))
    assert res.feasible, res.reason
    return res, tr


def test_off_by_default():
    assert batch_wait_fields(None) == dict(batch_wait_iters=0, batch_wait_ratio=0.0)
    res, _ = _run(4)
    assert res.engine.batch_wait_iters == 0 and res.engine.batch_wait_tokens_ratio == 0.0


def test_a_lone_context_waits_at_most_the_timeout():
    off, tr = _run(4)
    on, _ = _run(4, iters=20, ratio=0.9)
    for res in (off, on):
        assert res.metrics.completed == len(tr) and res.metrics.rejected == 0
        assert np.all(res.times.finish_s > res.times.first_token_s)
    t_off, t_on = off.metrics.latency.ttft_ms.mean, on.metrics.latency.ttft_ms.mean
    assert t_on > t_off                                     # 4 prompts of 1024 never reach 0.9 x 8192 tokens
    # a held context sits out at most 20 decode-only steps, each no longer than a request's mean step (ms), plus
    # at most one step lost to the order the held contexts go in
    step_ms = max(off.metrics.latency.tpot_ms.p99, on.metrics.latency.tpot_ms.p99)
    assert t_on - t_off <= 21 * step_ms
    longer, _ = _run(4, iters=40, ratio=0.9)
    assert longer.metrics.latency.ttft_ms.mean >= t_on              # monotone in the timeout


def test_no_wait_when_the_ratio_is_met_or_nothing_generates():
    off, _ = _run(4)
    met, _ = _run(4, iters=20, ratio=0.05)                  # one 1024-token prompt is over 0.05 x 8192
    assert met.metrics.latency.ttft_ms.mean == off.metrics.latency.ttft_ms.mean
    assert met.metrics.latency.tpot_ms.mean == off.metrics.latency.tpot_ms.mean
    alone_off, _ = _run(1)
    alone_on, _ = _run(1, iters=20, ratio=0.9)              # no generation running beside the context
    assert alone_on.metrics.latency.ttft_ms.mean == alone_off.metrics.latency.ttft_ms.mean


@pytest.mark.parametrize("iters,ratio,engine", [(-1, 0.0, "trtllm"), (0, 1.5, "trtllm"), (20, 0.9, "vllm")])
def test_bad_settings_are_refused(iters, ratio, engine):
    with pytest.raises(InputError):
        _run(2, iters, ratio, engine)


def test_cli_refuses_batch_wait_on_vllm_in_one_line():
    p = subprocess.run([sys.executable, "-m", "apex_plan", "simulate", "--model", "llama-3.1-8b", "--gpu",
                        "h100-sxm-80gb", "--gpus", "1", "--engine", "vllm", "--prompt-tokens", "512", "--output-tokens",
                        "64", "--concurrency", "2", "--batch-wait-iters", "20"], capture_output=True, text=True)
    assert p.returncode == 2
    assert "--batch-wait-iters" in p.stderr and "Traceback" not in p.stderr
    assert len(p.stderr.strip().splitlines()) == 1
