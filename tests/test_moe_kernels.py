"""Each engine's own fused-MoE kernel (`moe_kernels:` of a GPU profile, scripts/fit_moe_kernels.py): parsing and
bad input, the expert rows taking the engine's fit (and the calibration without one), and the grouped GEMM's
row-tile padding as a bound on the expert rows' time."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest

from apex_plan.abi import OP_EXPERTS
from apex_plan.engine.load import resolve_engine_profile
from apex_plan.errors import InputError
from apex_plan.estimate import kernels as K
from apex_plan.estimate.step_cost import build_step_cost
from apex_plan.hardware.formats import engine_moe_fit
from apex_plan.hardware.load import gpu_from_dict, hardware_dir
from apex_plan.model.load import load_model
from apex_plan.plan.spec import Plan
from apex_plan.yamlio import load_yaml

FIT = {"peak": "fp8", "compute_efficiency": 0.3, "bandwidth_efficiency": 0.6, "latency_us": 30.0,
       "latency_per_expert_us": 0.1, "tile_rows": 64, "error_pct": 20}


def _h200(moe_kernels=None) -> dict:
    doc = load_yaml((hardware_dir() / "h200-sxm-141gb.yaml").read_text())
    doc.pop("moe_kernels", None)
    if moe_kernels is not None:
        doc["moe_kernels"] = moe_kernels
    return doc


def _expert_rows(gpu, engine: str):
    model = load_model("deepseek-ai/DeepSeek-V3")
    sc = build_step_cost(model, gpu, Plan(tp=8, weight_dtype="fp8"), profile=resolve_engine_profile(engine))
    return sc, [o for o in sc.cost.ops if o["shape"] == OP_EXPERTS]


def test_the_engine_fit_is_parsed_and_found_by_family_and_format():
    gpu = gpu_from_dict(_h200({"vllm": {"fp8-block": FIT}}), "h200.yaml")
    fit = engine_moe_fit(gpu, "vllm", "fp8-block")
    assert fit is not None and fit.tile_rows == 64 and fit.latency_per_expert_us == pytest.approx(0.1)
    assert engine_moe_fit(gpu, "sglang", "fp8-block") is None      # another engine: no fit of its own
    assert engine_moe_fit(gpu, "vllm", "fp8") is None              # no fallback across formats


def test_expert_rows_run_at_the_engines_own_kernel_and_others_keep_the_calibration():
    gpu = gpu_from_dict(_h200({"vllm": {"fp8-block": FIT}}), "h200.yaml")
    _, rows = _expert_rows(gpu, "vllm")
    assert len(rows) == 2
    for o in rows:
        assert o["efficiency"] == pytest.approx(0.3) and o["tile_rows"] == 64
        assert o["bytes_per_s"] == pytest.approx(gpu.mem_bw_gbps * 1e9 * 0.6)
        assert o["peak_flops_per_s"] == pytest.approx(gpu.peak_flops("fp8"))
    c = gpu.calibration
    _, rows = _expert_rows(gpu, "trtllm")
    for o in rows:
        assert o["efficiency"] == pytest.approx(c.compute_efficiency) and o["tile_rows"] == 0
        assert o["bytes_per_s"] == pytest.approx(gpu.mem_bw_gbps * 1e9 * c.bandwidth_efficiency)


def test_tile_padding_never_makes_the_experts_faster_and_bounds_them_by_whole_tiles():
    # a compute-bound kernel (low compute efficiency): the padded FLOPs set the time
    base = _h200({"vllm": {"fp8-block": {**FIT, "compute_efficiency": 0.05, "bandwidth_efficiency": 0.9, "tile_rows": 0}}})
    times = []
    for tile in (0, 16, 64, 128):
        doc = copy.deepcopy(base)
        doc["moe_kernels"]["vllm"]["fp8-block"]["tile_rows"] = tile
        sc, _ = _expert_rows(gpu_from_dict(doc, "h200.yaml"), "vllm")
        t, br = sc.step_s(chunk=1500)              # 1500 x 8 / 256 = 47 rows per expert: padding matters
        times.append(br["gemm"])
    assert times == sorted(times)                  # a larger tile pads more rows
    assert times[-1] > times[0]                    # 47 rows per expert in 128-row tiles: 2.7x the FLOPs
    # one decode token: each touched expert computes a single row padded to a whole 128-row tile
    doc = copy.deepcopy(base)
    doc["moe_kernels"]["vllm"]["fp8-block"]["tile_rows"] = 128
    sc, rows = _expert_rows(gpu_from_dict(doc, "h200.yaml"), "vllm")
    o = rows[0]
    m_e = o["route_frac"]                          # expert-token copies of one token on this GPU
    active = o["experts"] * (1.0 - (1.0 - o["active_p"]) ** (m_e / (o["experts"] * o["active_p"])))
    t, flops, byts = K._op_time(sc.cost.params[0], K.empty_shape(0), o, 1.0, 1.0)
    padded_s = 2.0 * active * 128 * o["k"] * o["n"] / (o["peak_flops_per_s"] * o["efficiency"])
    assert flops == pytest.approx(2.0 * m_e * o["k"] * o["n"])   # reported FLOPs: the real ones
    assert t >= max(padded_s, byts / o["bytes_per_s"]) + o["latency_s"] - 1e-12


@pytest.mark.parametrize("section,field", [
    ({"tgi": {"fp8": FIT}}, "moe_kernels.tgi"),
    ({"vllm": {"fp9": FIT}}, "moe_kernels.vllm.fp9"),
    ({"vllm": {"fp8": {**FIT, "bandwidth_efficiency": 1.4}}}, "moe_kernels.vllm.fp8.bandwidth_efficiency"),
    ({"vllm": {"fp8": {**FIT, "tile_rows": -16}}}, "moe_kernels.vllm.fp8.tile_rows"),
    ({"vllm": {"fp8": {**FIT, "tile": 64}}}, "moe_kernels.vllm.fp8.tile"),
    ("fast", "moe_kernels"),
])
def test_bad_moe_kernels_name_the_field(section, field):
    with pytest.raises(InputError) as e:
        gpu_from_dict(_h200(section), "my-gpu.yaml")
    assert field in str(e.value) and "my-gpu.yaml" in str(e.value)


def test_the_fit_script_refuses_a_folder_without_the_wheel(tmp_path: Path):
    import subprocess
    import sys
    root = Path(__file__).resolve().parents[1]
    r = subprocess.run([sys.executable, str(root / "scripts" / "fit_moe_kernels.py"), str(tmp_path)],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and str(tmp_path) in r.stderr and "Traceback" not in r.stderr


def test_expert_rows_carry_the_layers_fixed_time_over_its_two_grouped_gemms():
    # 30 us + 0.1 us x 32 experts held (256 experts over ep 8) per layer, half on each grouped-GEMM row
    gpu = gpu_from_dict(_h200({"vllm": {"fp8-block": FIT}}), "h200.yaml")
    model = load_model("deepseek-ai/DeepSeek-V3")
    sc = build_step_cost(model, gpu, Plan(tp=8, ep=8, weight_dtype="fp8"), profile=resolve_engine_profile("vllm"))
    rows = [o for o in sc.cost.ops if o["shape"] == OP_EXPERTS]
    assert len(rows) == 2
    for o in rows:
        assert o["experts"] == 32
        assert o["latency_s"] == pytest.approx((30.0 + 0.1 * 32) / 2.0 * 1e-6)
    # a fit whose fixed time is below the calibrated kernel latency keeps that latency
    tiny = gpu_from_dict(_h200({"vllm": {"fp8-block": {**FIT, "latency_us": 0.0, "latency_per_expert_us": 0.0}}}), "h200.yaml")
    _, rows = _expert_rows(tiny, "vllm")
    assert all(o["latency_s"] == pytest.approx(tiny.calibration.kernel_latency_us * 1e-6) for o in rows)
    # more fixed time never makes a decode step faster
    slow = gpu_from_dict(_h200({"vllm": {"fp8-block": {**FIT, "latency_us": 90.0}}}), "h200.yaml")
    fast_sc, _ = _expert_rows(gpu, "vllm")
    slow_sc, _ = _expert_rows(slow, "vllm")
    assert slow_sc.decode_time_s(8, 1000) > fast_sc.decode_time_s(8, 1000)


@pytest.mark.parametrize("section, written_by", [("moe_kernels", "WRITTEN"), ("moe_compute_kernels", "COMPUTE_WRITTEN")])
def test_built_in_profiles_hold_only_what_the_fit_script_writes(section, written_by):
    import sys
    root = Path(__file__).resolve().parents[1]
    sys.path.insert(0, str(root / "scripts"))
    try:
        import fit_moe_kernels as F
    finally:
        sys.path.pop(0)
    for table_gpu, name in F.GPUS.items():
        doc = load_yaml((hardware_dir() / f"{name}.yaml").read_text())
        written = {e: set(f) for e, f in (doc.get(section) or {}).items()}
        allowed = getattr(F, written_by).get(table_gpu, {})
        for engine, fmts in written.items():
            assert fmts <= set(allowed.get(engine, ())), (name, section, engine, fmts)


def _b200(compute=None) -> dict:
    doc = load_yaml((hardware_dir() / "b200-sxm-180gb.yaml").read_text())
    doc.pop("moe_kernels", None)
    doc.pop("moe_compute_kernels", None)
    if compute is not None:
        doc["moe_compute_kernels"] = compute
    return doc


def test_a_compute_only_fit_sets_the_experts_flop_rate_and_leaves_decode_where_it_was():
    low = {**FIT, "compute_efficiency": 0.15}
    gpu = gpu_from_dict(_b200({"sglang": {"fp8-block": low}}), "b200.yaml")
    plain = gpu_from_dict(_b200(), "b200.yaml")
    sc, rows = _expert_rows(gpu, "sglang")
    base, _ = _expert_rows(plain, "sglang")
    c = gpu.calibration
    assert len(rows) == 2
    for o in rows:
        # the kernel's own FLOP rate; bytes/s, fixed time and tiles stay the dense calibration's
        assert o["efficiency"] == pytest.approx(0.15) and o["tile_rows"] == 0
        assert o["peak_flops_per_s"] == pytest.approx(gpu.peak_flops("fp8"))
        assert o["bytes_per_s"] == pytest.approx(gpu.mem_bw_gbps * 1e9 * c.bandwidth_efficiency)
        assert o["latency_s"] == pytest.approx(c.kernel_latency_us * 1e-6)
    # a bandwidth-bound decode step costs what it did; a compute-bound 8K prefill costs more, and its expert
    # rows at least their FLOPs at the kernel's rate
    assert sc.decode_time_s(8, 1000) == pytest.approx(base.decode_time_s(8, 1000), rel=1e-9)
    assert sc.prefill_time_s(8192) > base.prefill_time_s(8192)
    p = sc.params[0]
    sh = K.aggregate(K.make_batch(0, 0, 8192, 0, True), p["window_tokens"], p["topk_tokens"], p["window2_tokens"], 0)
    model = load_model("deepseek-ai/DeepSeek-V3")
    for o in rows:
        t = K._op_time(p, sh, o, 8192.0, 8192.0)[0]
        flops = 2.0 * 8192 * model.experts_per_token * o["k"] * o["n"]
        assert t >= flops / (o["peak_flops_per_s"] * 0.15)
    # another engine, or a format without a compute fit, keeps the calibration whole
    _, rows = _expert_rows(gpu, "trtllm")
    assert all(o["efficiency"] == pytest.approx(c.compute_efficiency) for o in rows)
