"""Host-time bounds from measured runs (apex_plan.calibrate.host_bounds): Little's-law decoding counts, the
per-request bound, and the shipped profiles' host constants against the shared runs (skipped without them)."""

from __future__ import annotations

from pathlib import Path

import pytest

from apex_plan.calibrate.host_bounds import (RunBound, decoding_requests, per_seq_bound_ms, read_bounds,
                                             read_excluded, run_bound)

SILICON = Path(__file__).resolve().parents[2] / "shared" / "bench" / "silicon"
FILES = [SILICON / "calibration.csv", SILICON / "calibration-h200-b200.csv"]
# Runs of gpt-oss-120b on vLLM at concurrency 512 that Little's law shows holding ~100 of 512 requests
# decoding, the signature of their siblings in excluded.csv (RUNNING_BELOW_DECLARED): they bound nothing
UNDER_ADMITTED = ("2026_04_06_gpt_oss_120b_h100_sxm_vllm_fp4_agg_1024x1024_c512_tp8_ep1_1134",)


def test_decoding_count_is_littles_law():
    # 10 requests, 100 ms TTFT, 101 outputs at 10 ms: each decodes 1000 of its 1100 ms
    assert decoding_requests(100.0, 10.0, 101, 10) == pytest.approx(10 * 1000 / 1100)
    assert decoding_requests(100.0, 10.0, 101, 10, ranks=2) == pytest.approx(5 * 1000 / 1100)
    assert decoding_requests(0.0, 10.0, 101, 8) == pytest.approx(8.0)         # no TTFT: all decoding
    assert decoding_requests(50.0, 10.0, 1, 8) == 0.0                          # one output token: no decode


def test_decoding_count_falls_as_ttft_grows():
    counts = [decoding_requests(t, 20.0, 256, 64) for t in (0.0, 100.0, 1000.0, 10000.0)]
    assert all(a > b for a, b in zip(counts, counts[1:]))
    assert counts[0] == pytest.approx(64.0)


def test_per_seq_bound_is_exact_and_tight():
    assert per_seq_bound_ms(25.0, 1.0, 480.0) == pytest.approx(0.05)
    assert per_seq_bound_ms(25.0, 1.0, 0.0) == float("inf")
    b = RunBound("r", "p", "g", "m", decoding=480.0, tpot_ms=25.0, step_ms=1.0, per_seq_ms=0.05, bound_ms=0.05, cap=512)
    assert b.host_ms == pytest.approx(25.0) and not b.violated
    assert RunBound("r", "p", "g", "m", 480.0, 25.0, 1.0, 0.051, 0.05, 512).violated
    assert not b.cap_breached and RunBound("r", "p", "g", "m", 480.0, 25.0, 1.0, 0.05, 0.05, 400).cap_breached


def _row(**kw):
    row = dict(id="x", backend="sglang", backend_version="0.5.6", model_path="m", system="h200_sxm", mode="agg",
               isl="1000", osl="501", batch_size="64", tp_size="1", attention_dp_size="", concurrency="64",
               silicon_ttft_ms="0", silicon_tpot_ms="20")
    row.update(kw)
    return row


def test_run_bound_reads_a_row_with_its_profiles_constants():
    b = run_bound(_row())
    assert b is not None and b.profile == "sglang-0.5.3" and b.gpu == "h200-sxm-141gb"
    assert b.decoding == pytest.approx(64.0)
    assert b.bound_ms == pytest.approx((20.0 - b.step_ms) / 64.0)
    assert run_bound(_row(mode="disagg")) is None
    assert run_bound(_row(system="tpu_v5")) is None
    assert run_bound(_row(silicon_tpot_ms="n/a")) is None


@pytest.fixture(scope="module")
def shared_bounds():
    if not all(p.is_file() for p in FILES):
        pytest.skip("../shared/bench/silicon not present")
    return read_bounds(FILES, read_excluded(SILICON / "excluded.csv") | set(UNDER_ADMITTED))


def test_profiles_host_time_fits_every_measured_step(shared_bounds):
    # step_ms + per_seq_ms x decoding <= measured TPOT on every aggregated run: the host time alone
    # would otherwise make the run slower than measured whatever the GPU
    broken = [(b.profile, b.gpu, b.id, round(b.host_ms, 2), round(b.tpot_ms, 2)) for b in shared_bounds if b.violated]
    assert not broken, broken
    assert {b.profile for b in shared_bounds} >= {"vllm-v1", "sglang-0.5.3", "trtllm-1"}
