"""The API server's serial front end (host.frontend_token_us x prompt tokens,
simulate.kernels.frontend_ready): requests pass it one at a time in send order before the engine sees them, so a
burst reaches the engine spread out by the service times; zero service is the simulation without it exactly;
every request is still served once, open and closed loop."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import yaml

from apex_plan.engine.load import engine_dir
from apex_plan.hardware.load import load_gpu, make_cluster
from apex_plan.model.load import load_model
from apex_plan.plan.spec import EngineConfig, Plan
from apex_plan.simulate.run import simulate
from apex_plan.workload.spec import Trace, Workload
from apex_plan.workload.synthetic import LengthDist, closed_loop, synthetic_trace

from test_simulate import check_conservation

PROMPT, OUTPUT, N = 2000, 4, 8


def _profile(tmp_path: Path, token_us: float) -> str:
    """A copy of the vLLM V1 profile with the front end's time per prompt token set."""
    src = engine_dir() / "vllm-v1.yaml"
    doc = yaml.safe_load(src.read_text())
    doc["host"]["frontend_token_us"] = token_us
    out = tmp_path / f"vllm-fe-{token_us:g}.yaml"
    out.write_text(yaml.safe_dump(doc))
    return str(out)


def _sim(workload: Workload, engine: str):
    plan = Plan(1, 1, 1)
    return simulate(load_model("llama-3.1-8b"), make_cluster(load_gpu("h100-sxm-80gb"), 1), plan,
                    EngineConfig(name=engine, max_model_len=8192), workload)


def test_a_burst_reaches_the_engine_one_service_time_apart(tmp_path):
    token_us = 50.5
    service_s = token_us * PROMPT * 1e-6                         # 0.101 s a request
    tr = Trace(np.zeros(N), np.full(N, PROMPT), np.full(N, OUTPUT))
    res = _sim(Workload(tr), _profile(tmp_path, token_us))
    check_conservation(res, tr)
    order = np.argsort(res.times.scheduled_s, kind="stable")
    np.testing.assert_array_equal(order, np.arange(N))          # first come, first served through the front end
    # request i reaches the engine (i + 1) service times after the burst, and cannot be scheduled before that
    reach = service_s * np.arange(1, N + 1)
    assert np.all(res.times.scheduled_s >= reach - 1e-12)
    assert np.all(res.times.first_token_s > reach)


def test_zero_service_is_the_simulation_without_it(tmp_path):
    tr = synthetic_trace(40, LengthDist("uniform", low=300, high=900), LengthDist("uniform", low=60, high=180),
                         20.0, seed=3)
    base = _sim(Workload(tr), _profile(tmp_path, 0.0))
    src = engine_dir() / "vllm-v1.yaml"
    doc = yaml.safe_load(src.read_text())
    doc["host"].pop("frontend_token_us", None)                  # an absent field: its default, 0
    plain = tmp_path / "vllm-no-fe.yaml"
    plain.write_text(yaml.safe_dump(doc))
    other = _sim(Workload(tr), str(plain))
    for a, b in zip((base.times.first_token_s, base.times.finish_s, base.times.scheduled_s),
                    (other.times.first_token_s, other.times.finish_s, other.times.scheduled_s)):
        np.testing.assert_array_equal(a, b)


def test_closed_loop_conserves_requests_through_the_front_end(tmp_path):
    tr = synthetic_trace(48, LengthDist("constant", mean=PROMPT), LengthDist("constant", mean=32), 1.0, seed=1)
    res = _sim(closed_loop(tr, 8), _profile(tmp_path, 20.0))
    check_conservation(res, tr, closed=True)
