"""Dense GEMMs with a measured shape term (`gemm_shapes:`): the roofline lower bounds hold, time rises with M,
efficiency rises with K, a decode GEMM's weight bytes run at the format's measured ratio to bf16's bytes/s, the numpy mirror (estimate.gemm_time) is the step-cost kernel's GEMM rows, the lookup
keeps a format's tensor-core dtype, and the loader names bad fields."""

from __future__ import annotations

import numpy as np
import pytest

from apex_plan.abi import GEMM_DENSE_MLP, GEMM_ROUTED_EXPERTS
from apex_plan.errors import InputError
from apex_plan.estimate.gemm_time import gemm_time_s
from apex_plan.estimate.gemms import Gemm
from apex_plan.estimate.step_cost import build_step_cost, gemm_rates
from apex_plan.hardware.formats import gemm_shape
from apex_plan.hardware.load import gpu_from_dict, load_gpu
from apex_plan.model.load import load_model
from apex_plan.model.quant import format_bytes
from apex_plan.plan.spec import Plan

GPUS = [load_gpu(n) for n in ("h100-sxm-80gb", "h200-sxm-141gb", "b200-sxm-180gb", "b300-sxm-288gb")]
FORMATS = ("bf16", "fp8", "fp8-block", "nvfp4")
M = np.array([1, 2, 8, 16, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384], float)
KN = ((4096, 6144), (4096, 28672), (14336, 4096), (1792, 4096), (8192, 1280), (7168, 2112))


def _rates(gpu, fmt, k, n):
    return gemm_rates(gpu, "bf16")(Gemm("t", k, n, GEMM_DENSE_MLP, w_bytes=format_bytes(fmt), fmt=fmt))


@pytest.mark.parametrize("gpu", GPUS, ids=lambda g: g.name)
def test_profiles_carry_a_shape_term_per_measured_format(gpu):
    shapes = gpu.kernel_formats.gemm_shapes
    assert {"fp8", "fp8-block"} <= set(shapes) and "bf16" not in shapes   # bf16: the calibration's plain figures
    for s in shapes.values():
        assert 0.2 < s.compute_efficiency <= 0.98 and 0.0 <= s.k_overhead <= 4096


@pytest.mark.parametrize("gpu", GPUS, ids=lambda g: g.name)
@pytest.mark.parametrize("fmt", FORMATS)
def test_gemm_time_holds_the_roofline_lower_bounds_and_rises_with_m(gpu, fmt):
    if fmt == "nvfp4" and not gpu.supports("fp4"):
        pytest.skip("no fp4 tensor cores")
    peak = gpu.peak_flops({"nvfp4": "fp4", "fp8-block": "fp8"}.get(fmt, fmt))
    for k, n in KN:
        t = gemm_time_s(_rates(gpu, fmt, k, n), M, k, n, format_bytes(fmt))
        assert np.all(t >= 2.0 * M * k * n / peak)                                            # FLOPs at the dense peak
        assert np.all(t >= (k * n * format_bytes(fmt) + M * (k + n) * 2.0) / (gpu.mem_bw_gbps * 1e9))  # bytes at HBM
        assert np.all(np.diff(t) >= 0.0)                                                      # monotone in M


@pytest.mark.parametrize("gpu", GPUS, ids=lambda g: g.name)
def test_compute_bound_efficiency_rises_with_k(gpu):
    """A fixed cost per output tile: at large M the FLOP rate climbs with K towards the shape's efficiency."""
    fmt, m, n = "fp8", 16384.0, 8192
    ks = np.array([512, 1024, 2048, 4096, 8192, 16384], float)
    t = np.array([gemm_time_s(_rates(gpu, fmt, int(k), n), m, k, n, 1.0) for k in ks])
    rate = 2.0 * m * ks * n / t
    assert np.all(np.diff(rate) > 0.0)
    assert rate[-1] / rate[1] > 1.2          # 1K-deep tiles pay their fill/drain: > 20 % below 16K-deep ones
    assert rate[-1] < gpu.peak_flops("fp8") * gpu.kernel_formats.gemm_shapes["fp8"].compute_efficiency


@pytest.mark.parametrize("gpu", GPUS, ids=lambda g: g.name)
def test_decode_weight_bytes_run_at_the_formats_ratio_to_bf16(gpu):
    """One token through a 64 MB+ weight: memory-bound, so time = latency + bytes / (HBM x calibration x ratio)."""
    k, n, cal = 8192, 28672, gpu.calibration
    for fmt, shape in gpu.kernel_formats.gemm_shapes.items():
        assert 0.5 < shape.bandwidth_ratio < 1.2            # the tables' small-M fits: 0.78-1.04 of bf16's bytes/s
        byts = k * n * format_bytes(fmt) + (k + n) * 2.0
        t = float(gemm_time_s(_rates(gpu, fmt, k, n), 1, k, n, format_bytes(fmt)))
        want = byts / (gpu.mem_bw_gbps * 1e9 * cal.bandwidth_efficiency * shape.bandwidth_ratio)
        assert t - cal.kernel_latency_us * 1e-6 == pytest.approx(want, rel=1e-12)
    if gpu.supports("fp4"):                                  # Blackwell nvfp4 decode GEMMs: ~0.8 of bf16's bytes/s
        assert gpu.kernel_formats.gemm_shapes["nvfp4"].bandwidth_ratio < 0.9


def test_mirror_is_the_kernels_gemm_rows():
    model, gpu = load_model("llama-3.1-8b"), GPUS[1]
    sc = build_step_cost(model, gpu, Plan(tp=2, weight_dtype="fp8"))
    rates, st = gemm_rates(gpu, "bf16"), sc.shard.largest_stage
    for m in (8, 512, 4096):
        want = sum(st.gemm_layers(g) * float(gemm_time_s(rates(g), m, g.k, g.n, g.w_bytes))
                   for g in sc.shard.gemms if st.gemm_layers(g) > 0)
        got = sc.step_s(chunk=m, samples=False)[1]["gemm"]
        assert got == pytest.approx(want, rel=1e-9)


def test_lookup_keeps_the_tensor_core_dtype():
    b200 = GPUS[2]
    shapes = b200.kernel_formats.gemm_shapes
    assert gemm_shape(b200, "mxfp4", "bf16") is shapes["nvfp4"]      # fp4 tensor cores: the nvfp4 kernels' shape
    assert gemm_shape(b200, "int4", "bf16") is None                  # weight-only int4 computes in bf16: no shape
    assert gemm_shape(b200, "bf16", "bf16") is None
    assert gemm_shape(GPUS[0], "int8", "bf16") is None              # int8 tensor cores: no fp8 kernels' shape
    assert gemm_shape(GPUS[0], "fp8-block", "bf16") is GPUS[0].kernel_formats.gemm_shapes["fp8-block"]
    assert gemm_shape(load_gpu("mi300x"), "fp8", "bf16") is None      # no shape term: the calibration's figures
    experts = Gemm("e", 4096, 1024, GEMM_ROUTED_EXPERTS, 8, 1.0, 0.1, 8, w_bytes=1.0, fmt="fp8")
    assert gemm_rates(GPUS[0], "bf16")(experts).get("k_overhead", 0.0) == 0.0


def _doc(shapes):
    return {"name": "x", "vendor": "nvidia", "memory_gib": 80, "mem_bw_gbps": 3350, "peak_tflops": {"bf16": 989},
            "intra_node_bw_gbps": 450, "pcie_gbps": 64, "tdp_w": 700, "idle_w": 70, "num_sms": 132,
            "gemm_shapes": shapes}


@pytest.mark.parametrize("shapes,field", [
    ({"fp9": {"compute_efficiency": 0.5, "k_overhead": 100}}, "gemm_shapes.fp9"),
    ({"fp8": {"compute_efficiency": 1.5, "k_overhead": 100}}, "gemm_shapes.fp8.compute_efficiency"),
    ({"fp8": {"compute_efficiency": 0.5, "k_overhead": -1}}, "gemm_shapes.fp8.k_overhead"),
    ({"fp8": {"compute_efficiency": 0.5, "k_overhead": 1, "tile": 2}}, "gemm_shapes.fp8.tile"),
    ({"fp8": {"compute_efficiency": 0.5}}, "gemm_shapes.fp8.k_overhead"),
    ({"fp8": {"compute_efficiency": 0.5, "k_overhead": 1, "bandwidth_ratio": 3.0}}, "gemm_shapes.fp8.bandwidth_ratio"),
    ({"fp8": {"compute_efficiency": 0.5, "k_overhead": 1, "bandwidth_ratio": "x"}}, "gemm_shapes.fp8.bandwidth_ratio"),
])
def test_bad_gemm_shapes_name_the_field(shapes, field):
    with pytest.raises(InputError) as e:
        gpu_from_dict(_doc(shapes), "my-gpu.yaml")
    assert field in str(e.value) and "my-gpu.yaml" in str(e.value)


def test_bandwidth_ratio_defaults_to_one():
    gpu = gpu_from_dict(_doc({"fp8": {"compute_efficiency": 0.5, "k_overhead": 100}}), "my-gpu.yaml")
    assert gpu.kernel_formats.gemm_shapes["fp8"].bandwidth_ratio == 1.0
