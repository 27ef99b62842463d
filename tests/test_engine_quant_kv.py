"""Engine-specific activation quantisation and KV-cache defaults, and the additive latency transfer of the
GPU fits: exact kernel and byte counts, the format-over-dtype precedence, and the layout check's evidence."""

from __future__ import annotations

import dataclasses
import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

from apex_plan.engine.load import resolve_engine_profile
from apex_plan.estimate.shard import build_shard
from apex_plan.estimate.step_cost import build_step_cost, kernel_count_fields
from apex_plan.hardware.load import load_gpu, make_cluster
from apex_plan.model.load import load_model
from apex_plan.plan.spec import Plan

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "bench" / "silicon"


def _fields(model: str, engine: str, fused: bool | None = None) -> dict:
    m = load_model(model)
    plan = Plan(tp=8, weight_dtype="fp8")
    prof = resolve_engine_profile(engine)
    if fused is not None:
        prof = dataclasses.replace(prof, quantization=dataclasses.replace(prof.quantization, fused_activation_quant=fused))
    return kernel_count_fields(m, plan, build_shard(m, plan), prof, prof.quantization.activation_scales)


def test_trtllm_fuses_per_tensor_fp8_quantisation_exactly():
    fused, unfused = _fields("llama-3.1-70b", "trtllm", True), _fields("llama-3.1-70b", "trtllm", False)
    # four quantised GEMM inputs per dense layer (qkv, o, gate_up, down), one kernel each when not fused
    assert unfused["kernels_per_dense_layer"] - fused["kernels_per_dense_layer"] == 4
    assert unfused["elem_kernels_per_layer"] - fused["elem_kernels_per_layer"] == 4
    # the fused producer writes fp8 itself: no read-quantise-write pass over the GEMM inputs
    m = load_model("llama-3.1-70b")
    k_sum = sum(g.k for g in build_shard(m, Plan(tp=8, weight_dtype="fp8")).gemms if g.kind in (0, 2))
    assert unfused["elem_bytes_per_token"] - fused["elem_bytes_per_token"] == pytest.approx(k_sum * (2.0 + 1.0))
    assert resolve_engine_profile("trtllm").quantization.fused_activation_quant


def test_block_fp8_keeps_its_quantise_kernel_where_per_tensor_is_fused():
    # DeepSeek-V3's checkpoint is 128x128 block fp8: fp8_quantize_1x128 runs before each block-scaled GEMM
    fused, unfused = _fields("deepseek-v3", "trtllm", True), _fields("deepseek-v3", "trtllm", False)
    assert fused == unfused


def test_fused_quantisation_never_slows_a_step():
    m, gpu = load_model("llama-3.1-70b"), load_gpu("b200-sxm-180gb")
    plan = Plan(tp=4, weight_dtype="fp8", kv_dtype="fp8")
    prof = resolve_engine_profile("trtllm")
    times = []
    for fused in (True, False):
        p = dataclasses.replace(prof, quantization=dataclasses.replace(prof.quantization, fused_activation_quant=fused))
        sc = build_step_cost(m, gpu, plan, make_cluster(gpu, 4), profile=p)
        times.append([sc.decode_time_s(b, 2048) for b in (1, 16, 128)] + [sc.prefill_time_s(4096)])
    assert all(f < u for f, u in zip(*times))


def test_kv_default_prefers_the_attention_format_over_the_dtype():
    vllm = resolve_engine_profile("vllm")
    assert vllm.default_kv_dtype("fp4", "nvfp4") == "fp8"      # ModelOpt NVFP4 checkpoint: fp8 cache
    assert vllm.default_kv_dtype("fp4", "bf16") == "bf16"      # gpt-oss: bf16 attention beside mxfp4 experts
    assert vllm.default_kv_dtype("fp8", "fp8") == "fp8"        # per-tensor fp8 (ModelOpt): kv_cache_quant_algo FP8
    assert vllm.default_kv_dtype("fp8", "fp8-block") == "bf16" # block-fp8 checkpoints state no KV format
    assert vllm.default_kv_dtype("bf16") == "bf16"
    sglang = resolve_engine_profile("sglang")
    assert sglang.default_kv_dtype("fp4", "nvfp4") == "fp8"    # model_runner configure_kv_cache_dtype
    assert sglang.default_kv_dtype("fp8", "fp8-block") == "bf16"
    assert sglang.default_kv_dtype("bf16", "bf16") == "bf16"
    trt = resolve_engine_profile("trtllm")
    assert trt.default_kv_dtype("fp8", "fp8-block") == "fp8"   # the dtype entry when no format entry exists


def test_simulate_picks_the_checkpoint_kv_cache():
    out = subprocess.run([sys.executable, "-m", "apex_plan", "simulate", "--model", "llama-3.1-70b", "--gpu",
                          "b200-sxm-180gb", "--gpus", "1", "--weight-dtype", "fp4", "--engine", "vllm",
                          "--prompt-tokens", "256", "--output-tokens", "16", "--concurrency", "2", "--format", "json"],
                         capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert out.returncode == 0, out.stderr
    assert '"kv_dtype": "fp8"' in out.stdout


def _fit_module():
    spec = importlib.util.spec_from_file_location("fit_gpu_constants", ROOT / "scripts" / "fit_gpu_constants.py")
    mod = importlib.util.module_from_spec(spec)
    sys.path.insert(0, str(ROOT / "scripts"))
    try:
        spec.loader.exec_module(mod)
    except ImportError as e:                        # pandas / scipy are the script's own extras
        pytest.skip(f"scripts/fit_gpu_constants.py needs {e.name}")
    finally:
        sys.path.remove(str(ROOT / "scripts"))
    return mod


def test_latencies_transfer_additively_and_efficiencies_by_ratio():
    mod = _fit_module()
    anchor = load_gpu("h100-sxm-80gb").calibration
    fit_h = {k: 1.0 for k in mod.FITTED}
    fit_h.update(kernel_latency_us=3.0, custom_allreduce_latency_us=5.0, allreduce_latency_us=11.0)
    fit_x = dict(fit_h, compute_efficiency=0.5, kernel_latency_us=2.5, custom_allreduce_latency_us=8.0)
    vals = mod.transfer(fit_x, fit_h, anchor)
    assert vals["kernel_latency_us"] == pytest.approx(anchor.kernel_latency_us - 0.5)
    assert vals["custom_allreduce_latency_us"] == pytest.approx(anchor.custom_allreduce_latency_us + 3.0)
    assert vals["compute_efficiency"] == pytest.approx(anchor.compute_efficiency * 0.5)
    assert vals["allreduce_latency_us"] >= vals["custom_allreduce_latency_us"]
    same = mod.transfer(fit_h, fit_h, anchor)             # the anchor's own tables give back the anchor
    for k in mod.FITTED:
        want = min(getattr(anchor, k), mod.MAX_FRACTION) if k in mod.FRACTIONS else getattr(anchor, k)
        assert same[k] == pytest.approx(max(want, same["custom_allreduce_latency_us"]) if k == "allreduce_latency_us"
                                        else want), k


@pytest.mark.skipif(not (SHARED / "calibration-h200-b200.csv").is_file(), reason="../shared absent")
def test_layout_check_finds_the_twin_of_a_mislabeled_row(tmp_path):
    out = tmp_path / "exclude.csv"
    p = subprocess.run([sys.executable, "scripts/check_layouts.py", str(SHARED / "calibration-h200-b200.csv"),
                        "--no-predict", "--exclude-out", str(out)], capture_output=True, text=True, cwd=ROOT,
                       timeout=300, env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})
    assert p.returncode == 0, p.stderr
    line = next(x for x in p.stdout.splitlines() if x.startswith("dsr1_b200_sglang_fp4_agg_8192x1024_c4_cfg202"))
    assert "tp16 -> 4" in line and "c4_tp4_0_ep4_0_311" in line     # identical 317.145 ms / 9.152 ms twin
    ids = out.read_text().splitlines()
    assert ids[0] == "id" and "dsr1_b200_sglang_fp4_agg_8192x1024_c4_cfg202" in ids
    assert len(ids) == len(set(ids))


@pytest.mark.skipif(not (SHARED / "calibration.csv").is_file(), reason="../shared absent")
def test_layout_check_reads_tp_m_by_adp_m_rows_as_the_m_gpu_layout_their_id_names():
    p = subprocess.run([sys.executable, "scripts/check_layouts.py", str(SHARED / "calibration.csv"), "--no-predict"],
                       capture_output=True, text=True, cwd=ROOT, timeout=300,
                       env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})
    assert p.returncode == 0, p.stderr
    # declares tp 4 x adp 4 with the experts over 16 GPUs; its id names tp4_ep4
    line = next(x for x in p.stdout.splitlines() if x.startswith("2026_04_06_minimax_m2_5_h100_sxm_vllm_fp8_agg_1024x1"))
    assert "tp4xadp4 -> 4" in line and "id names tp4_ep4" in line
    import importlib.util
    spec = importlib.util.spec_from_file_location("check_layouts", ROOT / "scripts" / "check_layouts.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    row = {"mode": "agg", "tp_size": "4", "attention_dp_size": "4", "moe_tp_size": "1", "moe_ep_size": "16",
           "batch_size": "16"}
    assert mod.suspect_m(row) == 4 and mod.suspect_m(dict(row, moe_ep_size="4")) == 0
    q = mod.as_m_gpus(row, 4)          # one TP4 EP4 engine holding all 4 x 16 requests
    assert (q["tp_size"], q["attention_dp_size"], q["moe_ep_size"], q["batch_size"]) == ("4", "1", "4", "64")


def test_layout_check_names_a_missing_file():
    p = subprocess.run([sys.executable, "scripts/check_layouts.py", "nope.csv", "--no-predict"], capture_output=True,
                       text=True, cwd=ROOT, timeout=120, env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})
    assert p.returncode == 2 and "nope.csv" in p.stderr and "Traceback" not in p.stderr


def test_partly_fused_quantisation_counts_only_unfused_inputs():
    """vLLM's default fusion passes quantise in RMSNorm and SiLU-and-mul but not after attention: of a dense
    layer's four W8A8 GEMM inputs (qkv, o, gate_up, down) only o keeps its quantise kernel and bytes, exactly;
    block-scaled fp8 keeps all four."""
    from apex_plan.engine.load import resolve_engine_profile
    from apex_plan.estimate.step_cost import gemm_input_producer, kernel_count_fields
    from apex_plan.estimate.shard import build_shard
    from apex_plan.model.load import load_model
    from apex_plan.plan.spec import Plan
    prof = resolve_engine_profile("vllm")
    assert set(prof.quantization.fused_quant_producers) == {"norm", "activation"}
    model = load_model("llama-3.1-70b")
    plan = Plan(tp=2, weight_dtype="fp8")
    shard = build_shard(model, plan)
    none = dataclasses.replace(prof, quantization=dataclasses.replace(prof.quantization, fused_quant_producers=()))
    part = kernel_count_fields(model, plan, shard, prof, "static")
    full = kernel_count_fields(model, plan, shard, none, "static")
    per = prof.quantization.kernels_per_gemm_static
    assert full["kernels_per_dense_layer"] - part["kernels_per_dense_layer"] == 3 * per
    assert full["elem_kernels_per_layer"] - part["elem_kernels_per_layer"] == 3 * per
    o_k = sum(g.k for g in shard.gemms if gemm_input_producer(g) == "attention")
    base = shard.elem_bytes_per_token_layer
    assert part["elem_bytes_per_token"] - base == pytest.approx(o_k * (1 * 2.0 + 1.0))   # read bf16 once, write fp8
    assert full["elem_bytes_per_token"] > part["elem_bytes_per_token"]
    blocky = dataclasses.replace(shard, gemms=tuple(dataclasses.replace(g, fmt="fp8-block") for g in shard.gemms))
    assert kernel_count_fields(model, plan, blocky, prof, "static")["kernels_per_dense_layer"] == full["kernels_per_dense_layer"]


def test_fused_quant_producers_bad_value_is_one_line(tmp_path):
    from apex_plan.errors import InputError
    from apex_plan.engine.load import engine_dir, load_engine_file
    text = (engine_dir() / "vllm-v1.yaml").read_text().replace("fused_quant_producers: [norm, activation]",
                                                              "fused_quant_producers: [norm, silu]")
    path = tmp_path / "eng.yaml"
    path.write_text(text)
    with pytest.raises(InputError) as e:
        load_engine_file(path)
    assert "quantization.fused_quant_producers" in str(e.value) and "activation" in str(e.value)


def test_kv_default_per_gpu_wins_where_the_deployments_pass_one_and_only_there():
    vllm = resolve_engine_profile("vllm")
    # InferenceX's vLLM recipes on B200 pass --kv-cache-dtype fp8 for every checkpoint, gpt-oss's bf16 attention too
    assert vllm.default_kv_dtype("fp4", "bf16", "b200-sxm-180gb") == "fp8"
    assert vllm.default_kv_dtype("fp8", "fp8-block", "b200-sxm-180gb") == "fp8"
    # elsewhere the checkpoint's rule holds (H100 / H200 recipes differ by model)
    for gpu in ("h100-sxm-80gb", "h200-sxm-141gb", ""):
        assert vllm.default_kv_dtype("fp4", "bf16", gpu) == "bf16"
        assert vllm.default_kv_dtype("fp4", "nvfp4", gpu) == "fp8"
    # other engines carry no per-GPU entry
    assert resolve_engine_profile("sglang").default_kv_dtype("bf16", "bf16", "b200-sxm-180gb") == "bf16"


def test_kv_by_gpu_is_validated_and_round_trips():
    from apex_plan.engine.load import profile_from_dict, profile_to_dict
    from apex_plan.errors import InputError
    doc = profile_to_dict(resolve_engine_profile("vllm-v1"))
    assert doc["kv_cache_dtype_by_gpu"] == {"b200-sxm-180gb": "fp8"}
    assert profile_from_dict(doc, "x.yaml").kv_cache_dtype_by_gpu == {"b200-sxm-180gb": "fp8"}
    with pytest.raises(InputError, match="kv_cache_dtype_by_gpu"):
        profile_from_dict({**doc, "kv_cache_dtype_by_gpu": {"b200-sxm-180gb": "fp16"}}, "x.yaml")
    assert "kv_cache_dtype_by_gpu" not in profile_to_dict(resolve_engine_profile("sglang"))


def test_simulate_takes_the_gpus_kv_default_and_an_explicit_dtype_still_wins():
    base = [sys.executable, "-m", "apex_plan", "simulate", "--model", "openai/gpt-oss-120b", "--gpu", "b200-sxm-180gb",
            "--gpus", "1", "--weight-dtype", "fp4", "--engine", "vllm@0.15.1", "--prompt-tokens", "256",
            "--output-tokens", "16", "--concurrency", "2", "--format", "json"]
    for extra, want in (([], "fp8"), (["--kv-cache-dtype", "bf16"], "bf16")):
        out = subprocess.run(base + extra, capture_output=True, text=True, cwd=ROOT, timeout=300)
        assert out.returncode == 0, out.stderr
        assert f'"kv_dtype": "{want}"' in out.stdout
