"""Event-loop simulator: request conservation, preemption, monotonicity, latency lower bounds, CLI output."""

from __future__ import annotations

import csv
import io
import json
import math
import subprocess
import sys
from functools import lru_cache
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from apex_plan.cli import app
from apex_plan.hardware.load import load_gpu, make_cluster
from apex_plan.model.load import load_model
from apex_plan.plan.spec import EngineConfig, Plan
from apex_plan.simulate import kernels as SK
from apex_plan.simulate.run import simulate
from apex_plan.workload.spec import Trace, Workload
from apex_plan.workload.synthetic import LengthDist, closed_loop, preset_trace, synthetic_trace

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
BENCH = SHARED / "bench" / "vllm-h100"
ROOT = Path(__file__).resolve().parents[1]


@lru_cache(maxsize=None)
def gpu():
    return load_gpu("h100-sxm-80gb")


@lru_cache(maxsize=None)
def model(name="llama-3.1-70b"):
    return load_model(name)


def cluster(n=8):
    return make_cluster(gpu(), n)


def check_conservation(res, trace: Trace, closed: bool = False):
    """Every request of `trace` finishes exactly once, with all its output tokens, in causal order."""
    assert res.feasible, res.reason
    t = res.times
    n = len(trace)
    m = res.metrics
    assert m.requests == n and m.completed == n and m.rejected == 0
    assert m.requests_refused_too_long == 0
    assert np.all(t.finish_s >= 0) and np.all(t.first_token_s >= 0) and np.all(t.scheduled_s >= 0)
    np.testing.assert_array_equal(t.output_tokens, trace.output_tokens)
    np.testing.assert_array_equal(t.prompt_tokens, trace.prompt_tokens)
    if not closed:
        np.testing.assert_array_equal(t.arrival_s, trace.arrival_s)
    assert np.all(t.arrival_s <= t.scheduled_s)
    assert np.all(t.scheduled_s <= t.first_token_s)
    assert np.all(t.first_token_s <= t.finish_s)
    # one-token requests finish in the step that gives their first token; longer ones later
    one = t.output_tokens == 1
    np.testing.assert_array_equal(t.first_token_s[one], t.finish_s[one])
    assert np.all(t.finish_s[~one] > t.first_token_s[~one])
    # token conservation: each request runs prompt + output - 1 tokens through the model (its last
    # token is sampled, never fed back); preemption by recompute only adds to that
    needed = int((trace.prompt_tokens + trace.output_tokens - 1).sum())
    processed = int(res.engine_stats["tokens"].sum())
    if m.memory.preemptions == 0:
        assert processed == needed
        assert np.all(t.preemptions == 0)
    else:
        assert processed > needed
    assert int(t.preemptions.sum()) == m.memory.preemptions
    assert m.makespan_s == pytest.approx(float(t.finish_s.max() - t.arrival_s[0]), rel=1e-9)
    assert 0 < m.busy_fraction <= 1 + 1e-9
    assert m.memory.peak_utilization <= 1.0


@pytest.mark.parametrize("chunked", [False, True], ids=["nochunk", "chunked"])
@pytest.mark.parametrize("dp,tp,pp", [(1, 8, 1), (2, 4, 1), (1, 4, 2), (2, 2, 2)],
                         ids=["dp1tp8", "dp2tp4", "tp4pp2", "dp2tp2pp2"])
def test_conservation(chunked, dp, tp, pp):
    tr = preset_trace("summarization" if chunked else "chat", 3.0, 120, seed=dp * 10 + pp)
    eng = EngineConfig(chunked_prefill=chunked, max_model_len=8192)
    res = simulate(model(), cluster(), Plan(dp, tp, pp), eng, Workload(tr))
    check_conservation(res, tr)
    assert res.engine_stats.shape[0] == dp * pp
    if dp > 1 or pp > 1:
        # round-robin / least-unfinished routing gives every engine work
        assert np.all(res.engine_stats["steps"] > 0)


def test_conservation_closed_loop_and_least_loaded():
    tr = synthetic_trace(150, LengthDist("uniform", low=16, high=1024), LengthDist("uniform", low=1, high=300),
                         None, seed=4)
    eng = EngineConfig(max_model_len=8192, routing="least_loaded")
    res = simulate(model(), cluster(), Plan(2, 4, 1), eng, closed_loop(tr, 24))
    check_conservation(res, tr, closed=True)
    # closed loop: the first wave of `concurrency` requests is sent at 0; every later request is sent
    # after an earlier one finished (de-synchronised profile: plus a small client jitter)
    t = res.times
    assert np.all(t.arrival_s[:24] == 0.0)
    assert np.all(np.diff(t.arrival_s[24:]) >= 0)
    # a lock-step engine profile: each later arrival is exactly an earlier finish
    lock = simulate(model(), cluster(), Plan(1, 8, 1), EngineConfig(max_model_len=8192, name="sglang@0.5.1"),
                    closed_loop(tr, 24))
    check_conservation(lock, tr, closed=True)
    assert np.all(lock.times.arrival_s[:24] == 0.0)
    assert np.all(np.isin(lock.times.arrival_s[24:], lock.times.finish_s))


def test_preemption_under_memory_pressure():
    """Llama-3.1-70B on TP2 with gpu_memory_utilization 0.86 leaves a few hundred KV blocks; long
    creation outputs at 4 req/s overflow them, so sequences are preempted and recomputed, and still
    every request completes with all its tokens."""
    tr = preset_trace("creation", 4.0, 150, seed=1)
    eng = EngineConfig(gpu_memory_utilization=0.86, max_model_len=4096, name="vllm@0.6.0")
    res = simulate(model(), cluster(), Plan(1, 2, 1), eng, Workload(tr))
    assert res.metrics.memory.blocks_per_engine < 1000
    assert res.metrics.memory.preemptions > 0
    assert res.metrics.memory.peak_utilization == pytest.approx(1.0, abs=0.02)
    check_conservation(res, tr)
    # the same trace with room to spare: no preemption, and the work is served sooner
    roomy = simulate(model(), cluster(), Plan(1, 8, 1), EngineConfig(max_model_len=4096), Workload(tr))
    check_conservation(roomy, tr)
    assert roomy.metrics.memory.preemptions == 0
    assert roomy.metrics.latency.e2e_s.mean < res.metrics.latency.e2e_s.mean


def test_preemption_with_chunked_prefill_small_max_model_len():
    tr = synthetic_trace(120, LengthDist("uniform", low=200, high=1500), LengthDist("uniform", low=500, high=2000),
                         6.0, seed=7)
    eng = EngineConfig(gpu_memory_utilization=0.86, max_model_len=4096, chunked_prefill=True, name="vllm@0.6.0")
    res = simulate(model(), cluster(), Plan(1, 2, 1), eng, Workload(tr))
    assert res.metrics.memory.preemptions > 0
    check_conservation(res, tr)


def test_too_long_prompts_refused_not_lost():
    tr = synthetic_trace(40, LengthDist("uniform", low=100, high=3000), LengthDist("constant", mean=20), 2.0, seed=3)
    res = simulate(model(), cluster(), Plan(1, 8, 1), EngineConfig(max_model_len=2048), Workload(tr))
    too_long = int((tr.prompt_tokens >= 2048).sum())
    assert too_long > 0
    assert res.metrics.requests_refused_too_long == too_long
    assert res.metrics.completed == len(tr) - too_long


# ---- monotonicity -------------------------------------------------------------------------------

@pytest.mark.parametrize("chunked", [False, True], ids=["nochunk", "chunked"])
def test_higher_rate_never_lowers_mean_ttft(chunked):
    base = preset_trace("chat", 1.0, 300, seed=3)
    eng = EngineConfig(chunked_prefill=chunked, max_model_len=8192)
    ttft = []
    for factor in (1.0, 2.0, 4.0, 8.0):
        tr = Trace(base.arrival_s / factor, base.prompt_tokens, base.output_tokens)
        res = simulate(model(), cluster(), Plan(1, 8, 1), eng, Workload(tr))
        check_conservation(res, tr)
        ttft.append(res.metrics.latency.ttft_ms.mean)
    assert all(b >= a for a, b in zip(ttft, ttft[1:])), ttft
    assert ttft[-1] > ttft[0]


def test_closed_loop_concurrency_raises_throughput_and_tpot():
    tr = preset_trace("chat", None, 400, seed=3)
    thr, tpot = [], []
    for c in (1, 4, 16, 64):
        res = simulate(model(), cluster(), Plan(1, 8, 1), EngineConfig(max_model_len=8192), closed_loop(tr, c))
        check_conservation(res, tr, closed=True)
        thr.append(res.metrics.throughput.output_tokens_per_s)
        tpot.append(res.metrics.latency.tpot_ms.mean)
    assert all(b > a for a, b in zip(thr, thr[1:])), thr
    assert all(b > a for a, b in zip(tpot, tpot[1:])), tpot


# ---- latency lower bounds -----------------------------------------------------------------------

@pytest.mark.parametrize("chunked", [False, True], ids=["nochunk", "chunked"])
@pytest.mark.parametrize("dp,tp,pp", [(1, 8, 1), (2, 2, 2)], ids=["dp1tp8", "dp2tp2pp2"])
def test_ttft_and_tpot_lower_bounds(chunked, dp, tp, pp):
    tr = preset_trace("summarization", 2.0, 80, seed=5)
    eng = EngineConfig(chunked_prefill=chunked, max_model_len=8192)
    res = simulate(model(), cluster(), Plan(dp, tp, pp), eng, Workload(tr))
    check_conservation(res, tr)
    sc = res.step_cost
    chunk = res.engine.max_batched_tokens if res.engine.chunked_prefill else None
    frontend = res.engine.profile.host.frontend_ms * 1e-3
    alone = {p: sc.prefill_time_s(int(p), chunk) for p in np.unique(tr.prompt_tokens)}
    lower = np.array([alone[p] for p in tr.prompt_tokens]) + frontend
    ttft = res.times.ttft_s
    assert np.all(ttft >= lower * (1 - 1e-9)), float((ttft / lower).min())
    # every inter-token gap is at least one decode step of a single sequence
    min_ctx = int(tr.prompt_tokens.min())
    floor = sc.decode_time_s(1, min_ctx)
    assert res.metrics.latency.tpot_ms.mean * 1e-3 >= floor
    assert np.all(res.times.tpot_s >= floor * (1 - 1e-9))


def test_single_request_matches_step_costs():
    """A lone request: TTFT = its serial front end + prefill + frontend, and its decode steps are batch-1 steps."""
    tr = Trace(np.array([0.0]), np.array([1000], np.int64), np.array([50], np.int64))
    res = simulate(model(), cluster(), Plan(1, 8, 1), EngineConfig(max_model_len=8192, chunked_prefill=False),
                   Workload(tr))
    check_conservation(res, tr)
    sc = res.step_cost
    host = res.engine.profile.host
    frontend = host.frontend_ms * 1e-3 + host.serial_frontend_s(1000)
    assert res.times.ttft_s[0] == pytest.approx(sc.prefill_time_s(1000) + frontend, rel=1e-9)
    decode = sum(sc.decode_time_s(1, 1000 + i) for i in range(1, 50))
    assert res.times.finish_s[0] - res.times.first_token_s[0] == pytest.approx(decode, rel=1e-9)


# ---- CLI end to end on a measured run -----------------------------------------------------------

def test_cli_bench_lmsys_tp8_tpot_within_10pct():
    if not BENCH.is_dir():
        pytest.skip("../shared/bench/vllm-h100 not present")
    rows = {r["experiment"]: r for r in csv.DictReader(open(BENCH / "calibration.csv"))}
    row = rows["llama-3.1-70b.lmsys_05.dp1tp8"]
    cmd = [sys.executable, "-m", "apex_plan", "simulate", "--model", row["model"], "--gpu", row["gpu"],
           "--gpus", row["gpus"], "--plan", f"dp={row['dp']},tp={row['tp']},pp={row['pp']}",
           "--weight-dtype", row["weight_dtype"], "--kv-dtype", row["kv_dtype"],
           "--trace", str(BENCH / row["trace"]), "--engine", "vllm@0.6.0",
           "--gpu-memory-utilization", row["gpu_memory_utilization"], "--format", "json"]
    if row.get("max_model_len"):
        cmd += ["--max-model-len", row["max_model_len"]]
    if row.get("custom_allreduce") == "False":
        cmd += ["--no-custom-allreduce"]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert p.returncode == 0, p.stderr
    doc = json.loads(p.stdout)
    assert doc["schema_version"]
    assert doc["feasible"] is True
    ttft = doc["metrics"]["ttft_ms"]["mean"]
    tpot = doc["metrics"]["tpot_ms"]["mean"]
    assert isinstance(ttft, float) and ttft > 0
    measured_tpot_ms = float(row["tpot_mean_s"]) * 1e3
    assert measured_tpot_ms == pytest.approx(14.137)
    assert abs(tpot - measured_tpot_ms) / measured_tpot_ms <= 0.10, (tpot, measured_tpot_ms)
    assert doc["metrics"]["completed"] == int(row["requests"])


# ---- output formats -----------------------------------------------------------------------------

SIM_ARGS = ["simulate", "--model", "llama-3.1-70b", "--gpu", "h100-sxm-80gb", "--gpus", "8", "--plan",
            "dp=2,tp=4,pp=1", "--workload", "chat", "--rate", "3", "--num-requests", "60", "--max-model-len", "8192",
            "--ttft-slo", "500ms", "--tpot-slo", "50ms"]


def _invoke(args):
    r = CliRunner().invoke(app, args)
    assert r.exit_code == 0, (r.output, r.exception)
    return r.stdout


def test_json_csv_and_output_file(tmp_path):
    j1 = _invoke(SIM_ARGS + ["--format", "json"])
    j2 = _invoke(SIM_ARGS + ["--format", "json"])
    assert j1 == j2                               # deterministic, byte for byte
    doc = json.loads(j1)
    assert doc["schema_version"] and doc["feasible"] is True
    assert doc["metrics"]["completed"] == 60
    for k in ("ttft_ms", "tpot_ms", "e2e_s", "throughput", "kv_cache", "energy", "slo"):
        assert k in doc["metrics"]
    assert 0 <= doc["metrics"]["slo"]["attainment"] <= 1
    out = tmp_path / "sim.json"
    assert _invoke(SIM_ARGS + ["--format", "json", "--output", str(out)]) == ""
    assert out.read_bytes() == j1.encode()
    c = _invoke(SIM_ARGS + ["--format", "csv"])
    rows = list(csv.reader(io.StringIO(c)))
    assert len(rows) == 2 and len(rows[0]) == len(rows[1]) > 10
    rec = dict(zip(*rows))
    assert rec["metrics.completed"] == "60"
    assert float(rec["metrics.ttft_ms.mean"]) == pytest.approx(doc["metrics"]["ttft_ms"]["mean"], rel=1e-5)
    out_csv = tmp_path / "sim.csv"
    _invoke(SIM_ARGS + ["--format", "csv", "--output", str(out_csv)])
    assert out_csv.read_bytes() == c.encode()


def test_json_identical_across_processes():
    """Two separate processes (fresh interpreter, numba cache) print byte-identical JSON."""
    cmd = [sys.executable, "-m", "apex_plan"] + SIM_ARGS + ["--format", "json"]
    a = subprocess.run(cmd, capture_output=True, timeout=120, cwd=ROOT)
    b = subprocess.run(cmd, capture_output=True, timeout=120, cwd=ROOT)
    assert a.returncode == 0 and b.returncode == 0, a.stderr
    assert a.stdout == b.stdout
    assert a.stdout.decode() == _invoke(SIM_ARGS + ["--format", "json"])
