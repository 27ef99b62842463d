"""GPU physics keeps datasheet order: a GPU whose datasheet bf16 peak, HBM bandwidth and NVLink (GPU-to-GPU)
bandwidth all match or beat another's of the same vendor must also reach at least its achievable FLOP/s
(peak x compute_efficiency) and bytes/s (bandwidth x bandwidth_efficiency), and its estimated steps must
not be slower. Guards the calibration sections fitted by scripts/fit_gpu_constants.py."""

from __future__ import annotations

import itertools

import pytest

from apex_plan.estimate.step_cost import build_step_cost
from apex_plan.hardware.load import hardware_dir, list_gpus, load_gpu, make_cluster
from apex_plan.model.load import load_model
from apex_plan.plan.spec import Plan

GPUS = {name: load_gpu(name) for name in list_gpus()}
NVIDIA = sorted(n for n, g in GPUS.items() if g.vendor == "nvidia")
# NVIDIA profiles whose calibration is fitted to aiconfigurator-core's per-op tables (H100: end-to-end fit)
TABLE_FITTED = ["h200-sxm-141gb", "b200-sxm-180gb", "b300-sxm-288gb", "gb200-nvl72", "gb300-nvl72",
                "a100-sxm-80gb", "l40s"]


def matches_or_beats(a, b) -> bool:
    """Datasheet order: every one of a's bf16 peak, HBM bandwidth and NVLink bandwidth >= b's."""
    return (a.peak_tflops["bf16"] >= b.peak_tflops["bf16"] and a.mem_bw_gbps >= b.mem_bw_gbps
            and a.intra_node_bw_gbps >= b.intra_node_bw_gbps)


def achievable_tflops(g) -> float:
    return g.peak_tflops["bf16"] * g.calibration.compute_efficiency


def achievable_gbps(g) -> float:
    return g.mem_bw_gbps * g.calibration.bandwidth_efficiency


PAIRS = [(a, b) for a, b in itertools.permutations(sorted(GPUS), 2)
         if GPUS[a].vendor == GPUS[b].vendor and matches_or_beats(GPUS[a], GPUS[b])]


def test_the_ordered_pairs_cover_the_nvidia_line_up():
    assert len(NVIDIA) >= 8
    for pair in [("h200-sxm-141gb", "h100-sxm-80gb"), ("h100-sxm-80gb", "a100-sxm-80gb"),
                 ("b200-sxm-180gb", "h200-sxm-141gb"), ("gb200-nvl72", "b200-sxm-180gb"),
                 ("gb300-nvl72", "b300-sxm-288gb"), ("b300-sxm-288gb", "b200-sxm-180gb"),
                 ("b200-sxm-180gb", "b300-sxm-288gb")]:       # equal datasheets: ordered both ways
        assert pair in PAIRS
    assert ("a100-sxm-80gb", "l40s") not in PAIRS and ("l40s", "a100-sxm-80gb") not in PAIRS  # L40S: more FLOP/s


@pytest.mark.parametrize("a,b", PAIRS, ids=[f"{a}>={b}" for a, b in PAIRS])
def test_achievable_figures_keep_datasheet_order(a, b):
    ga, gb = GPUS[a], GPUS[b]
    assert achievable_tflops(ga) >= achievable_tflops(gb) * (1 - 1e-9), (
        f"{a} computes slower than {b}: {achievable_tflops(ga):.0f} < {achievable_tflops(gb):.0f} TFLOP/s")
    assert achievable_gbps(ga) >= achievable_gbps(gb) * (1 - 1e-9), (
        f"{a} streams slower than {b}: {achievable_gbps(ga):.0f} < {achievable_gbps(gb):.0f} GB/s")
    # prefill attention FLOP/s and collective link bytes/s follow the same datasheet figures
    ca, cb = ga.calibration, gb.calibration
    tol = 1 - 1e-9
    assert ga.peak_tflops["bf16"] * ca.attention_efficiency >= gb.peak_tflops["bf16"] * cb.attention_efficiency * tol
    assert (ga.peak_tflops["bf16"] * ca.prefill_attention_efficiency
            >= gb.peak_tflops["bf16"] * cb.prefill_attention_efficiency * tol)
    assert ga.intra_node_bw_gbps * ca.link_efficiency >= gb.intra_node_bw_gbps * cb.link_efficiency * tol
    if (ga.num_sms, ga.peak_tflops["bf16"], ga.intra_node_bw_gbps) == (gb.num_sms, gb.peak_tflops["bf16"],
                                                                      gb.intra_node_bw_gbps):   # same chip
        assert ca.kernel_latency_us <= cb.kernel_latency_us
        assert ca.allreduce_latency_us <= cb.allreduce_latency_us
        assert ca.custom_allreduce_latency_us <= cb.custom_allreduce_latency_us


def test_efficiencies_are_physical():
    for name, g in GPUS.items():
        c = g.calibration
        for frac in (c.compute_efficiency, c.bandwidth_efficiency, c.attention_efficiency, c.prefill_attention_efficiency,
                     c.link_efficiency):
            assert 0.0 < frac <= 0.98, name
        assert c.kernel_latency_us >= 0 and c.custom_allreduce_latency_us >= 0, name
        assert c.allreduce_latency_us >= c.custom_allreduce_latency_us, name


def test_h200_steps_are_never_slower_than_h100():
    model = load_model("llama-3.1-70b")
    plan = Plan(tp=8, weight_dtype="bf16", kv_dtype="bf16")
    h100, h200 = (build_step_cost(model, GPUS[n], plan, make_cluster(GPUS[n], 8))
                  for n in ("h100-sxm-80gb", "h200-sxm-141gb"))
    for batch, ctx in ((1, 512), (64, 2048), (256, 8192)):
        assert h200.decode_time_s(batch, ctx) <= h100.decode_time_s(batch, ctx)
    for prompt in (512, 8192):
        assert h200.prefill_time_s(prompt) <= h100.prefill_time_s(prompt) * (1 + 1e-9)


# (stronger, weaker): datasheet order (matches_or_beats) on the same or an older chip; each engine's own kernels
ENGINE_ORDER_PAIRS = [("h200-sxm-141gb", "h100-sxm-80gb"), ("b300-sxm-288gb", "b200-sxm-180gb"),
                      ("gb200-nvl72", "b200-sxm-180gb"), ("gb300-nvl72", "b300-sxm-288gb")]
ORDER_CASES = [("llama-3.1-70b", Plan(tp=8, weight_dtype="fp8", kv_dtype="fp8")),
               ("gpt-oss-120b", Plan(tp=2, weight_dtype="fp4", kv_dtype="fp8")),
               ("qwen3-235b-a22b", Plan(tp=8, ep=8, weight_dtype="fp8", kv_dtype="fp8")),
               ("deepseek-r1", Plan(tp=8, weight_dtype="fp8", kv_dtype="fp8"))]


# H200 vLLM runs the block-fp8 Triton MoE kernel of its tables (the H200 vLLM Qwen3-235B-A22B-FP8 rows took it), H100
# vLLM the dense calibration its MiniMax-M2.5 rows took (with the kernel: TP4 EP4 TPOT +11..+24 % over the measured
# where it is -13..+10 % now; scripts/fit_moe_kernels.py docstring): DeepSeek-R1 decode at batch 1 is 15 % slower
# on H200. Known, not fixed: the two campaigns disagree on one kernel. Strict: it fails once the order holds.
_KNOWN = {("h200-sxm-141gb", "h100-sxm-80gb", "vllm"): "H200 vLLM block-fp8 MoE: Triton tables; H100: dense calibration"}
ORDER_PARAMS = [pytest.param(a, b, e, id=f"{a}>={b}-{e}",
                             marks=[pytest.mark.xfail(strict=True, reason=_KNOWN[(a, b, e)])] if (a, b, e) in _KNOWN else [])
                for a, b in ENGINE_ORDER_PAIRS for e in ("vllm", "sglang", "trtllm")]


@pytest.mark.parametrize("strong,weak,engine", ORDER_PARAMS)
def test_each_engines_steps_keep_datasheet_order(strong, weak, engine):
    """With each engine's own kernels (MoE, all-reduce) a GPU in datasheet order runs no step slower than the
    other (3 % slack: per-op fits of two tables). Caught H200 gpt-oss-120b on SGLang 1.7x and TRT-LLM 1.4x
    slower than H100 (H200 ran the Triton MXFP4 MoE kernel of its tables, H100 the dense calibration) and
    GB300 SGLang decode 10 % slower than B300 (no SGLang all-reduce fit on GB300)."""
    from apex_plan.engine.load import resolve_engine_profile
    assert matches_or_beats(GPUS[strong], GPUS[weak])
    prof = resolve_engine_profile(engine)
    for name, plan in ORDER_CASES:
        model = load_model(name)
        s, w = (build_step_cost(model, GPUS[g], plan, make_cluster(GPUS[g], plan.num_gpus), profile=prof)
                for g in (strong, weak))
        for batch, ctx in ((1, 1024), (16, 2048), (64, 4096)):
            assert s.decode_time_s(batch, ctx) <= w.decode_time_s(batch, ctx) * 1.03, (name, batch)
        for prompt in (1024, 8192):
            assert s.prefill_time_s(prompt) <= w.prefill_time_s(prompt) * 1.03, (name, prompt)


@pytest.mark.parametrize("name", TABLE_FITTED)
def test_fitted_profiles_cite_their_tables(name):
    text = (hardware_dir() / f"{name}.yaml").read_text()
    cal = text[text.index("\ncalibration:"):]
    assert "aiconfigurator-core" in cal and "scripts/fit_gpu_constants.py" in cal and "ratio to H100" in cal
    assert "error" in cal and "default, not yet calibrated" not in cal and "NOT calibrated" not in cal


def test_step_cost_charges_each_engine_its_own_allreduce():
    """A TP plan's small all-reduce latency is the engine family's kernel on that GPU (B200: TRT-LLM's and
    SGLang's one-shot kernels are faster than vLLM's), exactly as the profile lists it."""
    from apex_plan.engine.load import resolve_engine_profile
    model, gpu = load_model("llama-3.1-70b"), GPUS["b200-sxm-180gb"]
    plan = Plan(tp=8, weight_dtype="fp8")
    seen = {}
    for fam in ("vllm@0.6.0", "vllm", "sglang", "trtllm"):
        prof = resolve_engine_profile(fam)
        p = build_step_cost(model, gpu, plan, make_cluster(gpu, 8), profile=prof).params
        seen[fam] = float(p["allreduce_latency_s"][0])
        kernel = prof.collectives.allreduce_kernel or prof.family
        assert seen[fam] == pytest.approx(gpu.calibration.custom_allreduce_us(kernel) * 1e-6)
        assert float(p["allreduce_nccl_latency_s"][0]) >= seen[fam]
    assert seen["trtllm"] < seen["vllm@0.6.0"] and seen["sglang"] < seen["vllm@0.6.0"]
    # vLLM V1's fused AllReduce + RMSNorm runs FlashInfer's port of TRT-LLM's kernel (engine profile allreduce_kernel)
    assert seen["vllm"] == seen["trtllm"]


@pytest.mark.parametrize("value, fix", [("7.0", "mapping"), ("{tensorrt: 7.0}", "trtllm"), ("{vllm: -1}", "non-negative")])
def test_engine_allreduce_bad_input_names_the_field(tmp_path, value, fix):
    from apex_plan.errors import InputError
    text = (hardware_dir() / "h100-sxm-80gb.yaml").read_text()
    lines = [l for l in text.splitlines() if "custom_allreduce_latency_us_by_engine" not in l]
    at = next(i for i, l in enumerate(lines) if l.strip().startswith("custom_allreduce_latency_us:"))
    lines.insert(at + 1, f"  custom_allreduce_latency_us_by_engine: {value}")
    path = tmp_path / "gpu.yaml"
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(InputError) as e:
        load_gpu(str(path))
    msg = str(e.value)
    assert "custom_allreduce_latency_us_by_engine" in msg and fix in msg


@pytest.mark.parametrize("a,b", PAIRS, ids=[f"{a}>={b}" for a, b in PAIRS])
def test_each_engines_prefill_attention_keeps_datasheet_order(a, b):
    ga, gb = GPUS[a], GPUS[b]
    for fam in ("vllm", "sglang", "trtllm"):
        fa, fb = ga.calibration.prefill_attention_for(fam), gb.calibration.prefill_attention_for(fam)
        assert 0.0 < fa <= 0.98 and ga.peak_tflops["bf16"] * fa >= gb.peak_tflops["bf16"] * fb * (1 - 1e-9), fam


def test_prefill_attention_runs_each_engines_own_kernel():
    """A fresh prefill's attention rows take the engine family's measured prefill kernel on the chip (H100:
    TRT-LLM's FMHA below FlashAttention-3); vLLM 0.6's FlashAttention-2 backend the calibration's figure; decode
    the calibration's figure for all; a longer prefill's attention time scales inversely with that figure."""
    from apex_plan.abi import OP_ATTENTION
    from apex_plan.engine.load import resolve_engine_profile
    model, gpu = load_model("llama-3.1-8b"), GPUS["h100-sxm-80gb"]
    c = gpu.calibration
    times = {}
    for eng, want in (("vllm", c.prefill_attention_for("vllm")), ("sglang", c.prefill_attention_for("sglang")),
                      ("trtllm", c.prefill_attention_for("trtllm")), ("vllm@0.6.0", c.attention_efficiency)):
        sc = build_step_cost(model, gpu, Plan(tp=1), make_cluster(gpu, 1), profile=resolve_engine_profile(eng))
        (row,) = [r for r in sc.cost.ops if r["shape"] == OP_ATTENTION]
        assert row["efficiency"] == pytest.approx(want) and row["decode_efficiency"] == c.attention_efficiency
        times[eng] = sc.step_s(chunk=8192)[1]["attention"]
    assert c.prefill_attention_for("trtllm") < c.prefill_attention_for("vllm")
    assert times["trtllm"] > times["vllm"] and times["vllm@0.6.0"] > times["vllm"]
    # 8K tokens: compute-bound, so the time ratio is the efficiency ratio (latencies per layer aside)
    assert times["vllm@0.6.0"] / times["vllm"] == pytest.approx(c.prefill_attention_for("vllm") / c.attention_efficiency,
                                                               rel=0.02)


@pytest.mark.parametrize("value, fix", [("0.5", "mapping"), ("{vllm: 1.5}", "(0, 1]"), ("{flashattn: 0.5}", "vllm")])
def test_prefill_attention_bad_input_names_the_field(tmp_path, value, fix):
    from apex_plan.errors import InputError
    text = (hardware_dir() / "h100-sxm-80gb.yaml").read_text()
    lines = [l for l in text.splitlines() if "prefill_attention_efficiency_by_engine" not in l]
    at = next(i for i, l in enumerate(lines) if l.strip().startswith("prefill_attention_efficiency:"))
    lines.insert(at + 1, f"  prefill_attention_efficiency_by_engine: {value}")
    path = tmp_path / "gpu.yaml"
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(InputError) as e:
        load_gpu(str(path))
    msg = str(e.value)
    assert "prefill_attention_efficiency_by_engine" in msg and fix in msg
