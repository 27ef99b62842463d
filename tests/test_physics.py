"""Physics of measured closed loops (apex_plan.calibrate.physics): prompt FLOPs, causal pairs, and the share of
the dense peak a run's prefills need by Little's law (rows built in the test; the shared CSV is not read)."""

from __future__ import annotations

import pytest

from apex_plan.calibrate.physics import causal_pairs, decode_flops, prompt_flops, run_physics
from apex_plan.calibrate.runs import case_from_row
from apex_plan.model.load import load_model
from apex_plan.model.params import param_counts


def _row(ttft_ms: float, tpot_ms: float, conc: int = 64, isl: int = 2000, osl: int = 100, tp: int = 1) -> dict:
    return {"id": "t", "backend": "vllm", "backend_version": "0.12.0", "model_path": "nvidia/Llama-3.1-8B-Instruct-FP8",
            "system": "h200_sxm", "precision": "fp8", "mode": "agg", "isl": str(isl), "osl": str(osl),
            "batch_size": str(conc), "tp_size": str(tp), "pp_size": "1", "concurrency": str(conc),
            "silicon_ttft_ms": str(ttft_ms), "silicon_tpot_ms": str(tpot_ms)}


def test_causal_pairs_full_and_windowed():
    assert causal_pairs(4) == 10                      # 1 + 2 + 3 + 4 keys
    assert causal_pairs(4, seen=2) == 1 + 2 + 2 + 2   # the window caps each query at 2 keys
    assert causal_pairs(4, seen=8) == causal_pairs(4)


def test_prompt_flops_are_two_per_weight_plus_quadratic_attention():
    m = load_model("llama-3.1-8b")
    pc = param_counts(m)
    mm1, at1 = prompt_flops(m, 1000)
    mm2, at2 = prompt_flops(m, 2000)
    assert mm1 == pytest.approx(2 * 1000 * (pc.active_matmul - pc.lm_head) + 2 * pc.lm_head)
    assert 13.9e9 < mm1 / 1000 < 14.1e9                # Llama-3.1-8B: ~7.0 G matmul weights outside the embedding
    assert at2 / at1 == pytest.approx(4.0, rel=0.01)  # causal attention grows with isl^2
    # 32 layers x 32 heads x (128 + 128) x 2 FLOPs per pair x ~isl^2 / 2 pairs
    assert at1 == pytest.approx(32 * 2 * 32 * 256 * 1000 * 1001 / 2)
    assert decode_flops(m, 1000, 1) == 0.0


def test_fast_run_needs_most_of_the_peak_and_slow_run_little():
    fast = run_physics(case_from_row(_row(121.7, 9.74), 1))
    # lifetime 0.1217 + 99 x 0.00974 s = 1.086 s: 58.9 requests/s of 2000 prompt tokens on one H200
    assert fast.requests_per_s == pytest.approx(64 / 1.08596, rel=1e-3)
    assert 0.8 < fast.prefill_peak_share < 1.0
    assert fast.prefill_fit_share > 1.0            # at the fitted fp8 GEMM efficiency (~0.52) it exceeds the GPU's time
    assert fast.decoding == pytest.approx(64 * 99 * 9.74 / (121.7 + 99 * 9.74))
    slow = run_physics(case_from_row(_row(1217.0, 97.4), 1))
    assert slow.prefill_peak_share == pytest.approx(fast.prefill_peak_share / 10, rel=1e-6)
    four = run_physics(case_from_row(_row(121.7, 9.74, tp=4), 1))
    assert four.gpus == 4 and four.prefill_peak_share == pytest.approx(fast.prefill_peak_share / 4)
    assert fast.kv_pool_tokens > fast.kv_tokens_held > 64 * 2000   # the loop's KV fits one H200's pool
