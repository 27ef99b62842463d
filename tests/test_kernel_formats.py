"""Per-format kernel physics of the GPU profiles (the `kernel_formats:` sections fitted by
scripts/fit_gpu_constants.py to aiconfigurator-core's per-op tables): bounds, datasheet order per format,
the fallback from a format without its own fit, bad input, and (where the wheel and pyarrow are present)
the written values against a refit of the tables."""

from __future__ import annotations

import importlib.util
import itertools
import os
import sys
from pathlib import Path

import pytest

from apex_plan.errors import InputError
from apex_plan.hardware.formats import compute_dtype, gemm_fit, moe_fit
from apex_plan.hardware.load import gpu_from_dict, list_gpus, load_gpu

GPUS = {name: load_gpu(name) for name in list_gpus()}
FITTED = [n for n, g in GPUS.items() if g.kernel_formats.gemm or g.kernel_formats.moe]
ROOT = Path(__file__).resolve().parents[1]
WHEEL = Path(os.environ.get("APEX_PLAN_AIC_WHEEL", ROOT.parent / "aic" / "core"))


def test_the_nvidia_profiles_carry_per_format_fits():
    for name in ("h100-sxm-80gb", "h200-sxm-141gb", "b200-sxm-180gb", "b300-sxm-288gb", "gb200-nvl72"):
        k = GPUS[name].kernel_formats
        assert {"fp8", "fp8-block"} <= set(k.gemm) and "fp8-block" in k.moe and k.mla is not None, name
    for name in ("b200-sxm-180gb", "gb200-nvl72"):
        assert "nvfp4" in GPUS[name].kernel_formats.gemm and "nvfp4" in GPUS[name].kernel_formats.moe


@pytest.mark.parametrize("name", FITTED)
def test_fits_are_physical(name):
    g = GPUS[name]
    for fmt, f in {**g.kernel_formats.gemm, **{f"moe {k}": v for k, v in g.kernel_formats.moe.items()}}.items():
        assert 0.0 < f.compute_efficiency <= 0.98 and 0.0 < f.bandwidth_efficiency <= 0.98, fmt
        assert f.latency_us >= 0.0 and f.error_pct >= 0.0, fmt
        assert g.supports(f.peak_dtype), f"{name} {fmt}: peak dtype {f.peak_dtype} has no datasheet peak"
    for fmt, f in g.kernel_formats.moe.items():
        # a fused-MoE layer (routing + two grouped GEMMs + activation) costs at least two GEMMs' fixed time
        assert f.latency_us >= 2 * gemm_fit(g, fmt, "bf16").latency_us - 0.02, fmt
    m = g.kernel_formats.mla
    if m is not None:
        for v in (m.prefill_efficiency, m.decode_compute_efficiency, m.decode_bandwidth_efficiency):
            assert 0.0 < v <= 0.98


def _dominates(a, b, dtype) -> bool:
    return (a.peak_tflops.get(dtype, 0.0) >= b.peak_tflops.get(dtype, 0.0) and a.mem_bw_gbps >= b.mem_bw_gbps
            and a.intra_node_bw_gbps >= b.intra_node_bw_gbps)


@pytest.mark.parametrize("a,b", [(a, b) for a, b in itertools.permutations(FITTED, 2)
                                 if GPUS[a].vendor == GPUS[b].vendor])
def test_datasheet_order_holds_per_format(a, b):
    ga, gb = GPUS[a], GPUS[b]
    for op in ("gemm", "moe"):
        for fmt, fb in getattr(gb.kernel_formats, op).items():
            fa = getattr(ga.kernel_formats, op).get(fmt)
            if fa is None or fa.peak_dtype != fb.peak_dtype or not _dominates(ga, gb, fb.peak_dtype):
                continue
            dt = fb.peak_dtype
            assert ga.peak_tflops[dt] * fa.compute_efficiency >= gb.peak_tflops[dt] * fb.compute_efficiency * (1 - 1e-3), (op, fmt)
            assert ga.mem_bw_gbps * fa.bandwidth_efficiency >= gb.mem_bw_gbps * fb.bandwidth_efficiency * (1 - 1e-3), (op, fmt)


def test_formats_without_a_fit_fall_back_to_their_nearest_kernels():
    h100, b200, mi300 = GPUS["h100-sxm-80gb"], GPUS["b200-sxm-180gb"], GPUS["mi300x"]
    c = h100.calibration
    bf16 = gemm_fit(h100, "bf16", "bf16")                      # bf16: the calibration section's figures
    assert (bf16.peak_dtype, bf16.compute_efficiency, bf16.bandwidth_efficiency, bf16.latency_us) == (
        "bf16", c.compute_efficiency, c.bandwidth_efficiency, c.kernel_latency_us)
    assert gemm_fit(h100, "mxfp8", "bf16") == h100.kernel_formats.gemm["fp8-block"]
    # 4-bit weights on Hopper: no fp4 tensor cores, weight-only kernels at the bf16 peak
    assert compute_dtype(h100, "nvfp4", "bf16") == "bf16" and compute_dtype(b200, "nvfp4", "bf16") == "fp4"
    assert moe_fit(h100, "nvfp4", "bf16") == h100.kernel_formats.moe["int4"]
    assert moe_fit(b200, "mxfp4", "bf16") == b200.kernel_formats.moe["mxfp4"]
    assert gemm_fit(b200, "mxfp4", "bf16") == b200.kernel_formats.gemm["nvfp4"]
    # no fits at all (AMD profiles): the calibration at the format's own peak, a MoE layer = two GEMM latencies
    f = moe_fit(mi300, "fp8", "bf16")
    assert f.peak_dtype == "fp8" and f.latency_us == 2 * mi300.calibration.kernel_latency_us


def _doc(**kernel_formats):
    return {"name": "x", "vendor": "nvidia", "memory_gib": 80, "mem_bw_gbps": 3350, "peak_tflops": {"bf16": 989, "fp8": 1979},
            "intra_node_bw_gbps": 450, "pcie_gbps": 64, "tdp_w": 700, "idle_w": 70, "num_sms": 132,
            "kernel_formats": kernel_formats}


@pytest.mark.parametrize("section,field", [
    ({"gemm": {"fp9": {"peak": "fp8", "compute_efficiency": 0.5, "bandwidth_efficiency": 0.5, "latency_us": 5}}},
     "kernel_formats.gemm.fp9"),
    ({"gemm": {"fp8": {"peak": "fp8", "compute_efficiency": 1.5, "bandwidth_efficiency": 0.5, "latency_us": 5}}},
     "kernel_formats.gemm.fp8.compute_efficiency"),
    ({"moe": {"fp8": {"peak": "fp7", "compute_efficiency": 0.5, "bandwidth_efficiency": 0.5, "latency_us": 5}}},
     "kernel_formats.moe.fp8.peak"),
    ({"moe": {"fp8": {"peak": "fp8", "compute_efficiency": 0.5, "bandwidth_efficiency": 0.5}}},
     "kernel_formats.moe.fp8.latency_us"),
    ({"mla": {"prefill_efficiency": 0.5, "decode_compute_efficiency": 0.5, "decode_bandwidth_efficiency": 0.5,
              "latency_us": -1}}, "kernel_formats.mla.latency_us"),
    ({"attention": {}}, "kernel_formats.attention"),
])
def test_bad_kernel_formats_name_the_field(section, field):
    with pytest.raises(InputError) as e:
        gpu_from_dict(_doc(**section), "my-gpu.yaml")
    assert field in str(e.value) and "my-gpu.yaml" in str(e.value)


def _have_fit_deps() -> bool:
    return all(importlib.util.find_spec(m) for m in ("pyarrow", "scipy", "pandas")) and (WHEEL / "aiconfigurator_core").is_dir()


@pytest.mark.skipif(not _have_fit_deps(), reason="needs the unpacked aiconfigurator-core wheel, pandas, pyarrow, scipy")
def test_written_errors_match_a_refit_of_the_tables():
    sys.path.insert(0, str(ROOT / "scripts"))
    import fit_kernel_formats as kf
    g = GPUS["h200-sxm-141gb"]
    moe, _ = kf.fit_moe(WHEEL, "h200_sxm", g)
    dense, _ = kf.fit_dense(WHEEL, "h200_sxm", g)
    for dtype, ((ce, be, lat), err, n) in ((k, v) for k, v in moe.items() if not k.startswith("_")):
        fmt = kf.DTYPES[dtype][0]
        assert abs(g.kernel_formats.moe[fmt].error_pct - kf.pct(err)) < 1.0, fmt
        assert abs(g.kernel_formats.moe[fmt].latency_us - max(lat, 2 * gemm_fit(g, fmt, "bf16").latency_us)) < 0.01, fmt
    for dtype, (_, err, n) in dense.items():
        if dtype != "bfloat16":
            assert abs(g.kernel_formats.gemm[kf.DTYPES[dtype][0]].error_pct - kf.pct(err)) < 1.0, dtype
    # grouped GEMMs at few tokens per expert are far from dense GEMM efficiency (the point of the MoE fit)
    assert moe["fp8_block"][0][0] < 0.6 * dense["fp8_block"][0][0]
