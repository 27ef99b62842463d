"""MLA prefill attention runs at the GPU's fitted MLA context efficiency (hardware profile kernel_formats.mla,
from the measured MLA context tables), other attention at the calibration's; decode keeps the calibration's."""

from __future__ import annotations

import pytest

from apex_plan.abi import OP_ATTENTION
from apex_plan.estimate.step_cost import build_step_cost
from apex_plan.hardware.load import load_gpu, make_cluster
from apex_plan.model.load import load_model
from apex_plan.plan.spec import Plan


def _attention_rows(model: str, gpu_name: str):
    gpu = load_gpu(gpu_name)
    sc = build_step_cost(load_model(model), gpu, Plan(tp=8, weight_dtype="fp8", kv_dtype="fp8"), make_cluster(gpu, 8))
    return gpu, sc, [r for r in sc.cost.ops if r["shape"] == OP_ATTENTION]


@pytest.mark.parametrize("gpu_name", ["b200-sxm-180gb", "h200-sxm-141gb", "h100-sxm-80gb"])
def test_mla_prefill_takes_the_fitted_mla_efficiency(gpu_name):
    gpu, _, rows = _attention_rows("deepseek-v3", gpu_name)
    assert gpu.kernel_formats.mla is not None
    assert [r["efficiency"] for r in rows] == [pytest.approx(gpu.kernel_formats.mla.prefill_efficiency)]
    assert [r["decode_efficiency"] for r in rows] == [pytest.approx(gpu.calibration.attention_efficiency)]


def test_gqa_attention_takes_the_prefill_kernel_and_mla_without_tables_the_calibration():
    gpu, _, rows = _attention_rows("llama-3.1-70b", "b200-sxm-180gb")
    assert {round(float(r["efficiency"]), 6) for r in rows} == {round(gpu.calibration.prefill_attention_for("vllm"), 6)}
    a100 = load_gpu("a100-sxm-80gb")
    assert a100.kernel_formats.mla is None
    sc = build_step_cost(load_model("deepseek-v3"), a100, Plan(tp=8, weight_dtype="bf16", kv_dtype="bf16"),
                         make_cluster(a100, 8))
    rows = [r for r in sc.cost.ops if r["shape"] == OP_ATTENTION]
    assert [r["efficiency"] for r in rows] == [pytest.approx(a100.calibration.attention_efficiency)]


def test_a_faster_mla_kernel_shortens_a_long_prefill_only():
    # B200's MLA context fit (0.372) beats its hd128 attention figure (0.345): an 8K prefill gets faster by the
    # attention share alone, and a decode step (absorbed form at the calibration's rates) does not move
    gpu = load_gpu("b200-sxm-180gb")
    model, plan = load_model("deepseek-v3"), Plan(tp=8, weight_dtype="fp8", kv_dtype="fp8")
    import dataclasses
    plain = dataclasses.replace(gpu, kernel_formats=dataclasses.replace(gpu.kernel_formats, mla=None))
    fast = build_step_cost(model, gpu, plan, make_cluster(gpu, 8))
    slow = build_step_cost(model, plain, plan, make_cluster(plain, 8))
    t_fast, br_fast = fast.step_s(chunk=8192)
    t_slow, br_slow = slow.step_s(chunk=8192)
    assert br_fast["attention"] < br_slow["attention"]
    assert t_slow - t_fast == pytest.approx(br_slow["attention"] - br_fast["attention"], rel=1e-6)
    assert fast.decode_time_s(32, 2048) == pytest.approx(slow.decode_time_s(32, 2048))
