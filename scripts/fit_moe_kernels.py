"""Fit each engine's own fused-MoE kernel per GPU and weight format to aiconfigurator-core's measured
MoE tables and write the `moe_kernels:` section of every GPU profile.

Why per engine: the three engines run different grouped-GEMM kernels for the same checkpoint, and the
kernels differ by up to 4x at the same shape. gpt-oss-120b's MXFP4 experts on B200 run TRT-LLM's
trtllm-gen W4A8 kernel (MXFP4 weights x MXFP8 activations: 273 us per layer at 32 tokens) where the
W4A16 kernel of the same table takes 1,183 us; on H200 (no fp4 tensor cores) every engine runs a
weight-only W4A16 kernel at about 2.7 TB/s of the 4.8. One fit per format over the fastest kernel of
any engine (scripts/fit_kernel_formats.py) charges each engine the best kernel any of them has.

Which kernel an engine runs: the one the measured deployments configure, else the engine's default (the
table's `kernel_source` names the module the collector drove); first match in `KERNELS` order, in any
of that table's versions (nearest `TARGET_VERSION` first). The deployments are the InferenceMAX launch
scripts (SemiAnalysisAI/InferenceX benchmarks/*.sh):
* TRT-LLM (PyTorch flow; tensorrt_llm/_torch/modules/fused_moe/create_moe.py, MoeConfig.backend default
  CUTLASS): CutlassFusedMoE (`moe_torch_flow_cutlass`) for bf16, fp8 and Hopper fp8-block. On Blackwell
  the DeepSeek and gpt-oss scripts set `moe_config.backend: TRTLLM` (dsr1_fp8_b200_trt.sh and
  dsr1_fp4_b200_trt.sh below 256 concurrent requests, gptoss_fp4_b200_trt.sh after the gpt-oss deployment
  guide): TRTLLMGenFusedMoE, the TRT-LLM-gen kernels FlashInfer also ships, read from vLLM's FlashInfer
  TRT-LLM-gen tables for fp8-block and nvfp4 (TRT-LLM's own table holds DeepGEMM / CUTLASS for them)
  and from TRT-LLM's W4A8 MXFP4 x MXFP8 table for gpt-oss. On Hopper gpt-oss runs `moe_config.backend:
  TRITON` (gptoss_fp4_h200_trt.sh): the W4A16 table (`moe_torch_flow`).
* vLLM (model_executor/layers/fused_moe, the quantisation method's kernel selection): Triton fused_moe
  on Hopper for bf16, per-tensor and block fp8 (`vllm_fused_moe`); FlashInfer TRT-LLM-gen on Blackwell;
  gpt-oss MXFP4 with MXFP8 activations on Blackwell (gptoss_fp4_b200.sh sets
  VLLM_USE_FLASHINFER_MOE_MXFP4_MXFP8=1; quantization/mxfp4.py get_mxfp4_backend: SM100_FI_MXFP4_MXFP8_TRTLLM,
  the TRT-LLM-gen W4A8 kernel, read from TRT-LLM's table of it: 12% fit error on 54 shapes against 43% for
  vLLM's, whose modular path adds its own permute)
  and Marlin W4A16 on Hopper (gptoss_fp4_h200.sh sets VLLM_MXFP4_USE_MARLIN=1); Marlin for int4.
* SGLang (srt/layers/moe/moe_runner, server_args.py `moe_runner_backend` auto): Triton fused_moe on
  Hopper, FlashInfer TRT-LLM-gen on Blackwell (`sglang_flashinfer_trtllm_moe`), Marlin for int4.
Kernels for non-gated MLPs (`nongated`, Nemotron) are another op and are never used.

Model (one MoE layer on one GPU; balanced routing as the tables measure it, rows without expert parallelism:
the tables' ep > 1 rows time one rank under the collector's own token split, which this model does not
follow (62% error on B200 TRT-LLM W4A8 against 12% without them); expert parallelism is the estimator's
imbalance model, estimate/moe.py. Least squares on log time, physical bounds; error = rms log error as a
percentage):
    a = tokens x topk assignments, e = experts held, active = min(e, a) experts
    each read whole, r = a / active rows per active expert padded to whole tiles of T rows:
    FLOPs = 2 x active x ceil(r / T) x T x H x I x 3 (gate, up, down of H x I, I = inter / tp),
    bytes = active x 3 H I x w + a (2 H + 3 I) x 2 (bf16 activations in and out, intermediates),
    t = max(FLOPs / (peak x ce), bytes / (HBM x be)) + latency + latency_per_expert x e,
T in TILES chosen by the lowest error (0: no padding). The latency is the whole layer's fixed time:
routing, permute, both grouped GEMMs' launches, finalize (what the engine's MoE op runs besides the
router GEMM, which the tables take as input); part of it grows with the experts held (the permute /
expand / finalize kernels and the grouped GEMM's problem list walk every expert: 256-expert DeepSeek
layers take 50-100 us at one token on TRT-LLM's CUTLASS kernels, 128-expert gpt-oss layers 25 us).

The figures are absolute (this script's fit of the engine's own kernel, no end-to-end anchor): the
estimator's expert rows take them, fixed time included, in place of the dense-GEMM calibration
(estimate/moe.py expert_rates); an engine x format without a written fit keeps that calibration.

What is written (`WRITTEN`), decided per engine x GPU x format on the measured runs of
../shared/bench/silicon (calibration.csv on H100, calibration-h200-b200.csv; TPOT / TTFT MAPE of each
group against the dense calibration, 2026-12-04): the Hopper Triton fused-MoE kernels on H200, whose tables'
fixed time shows in service (estimate/moe.py docstring). H200 TRT-LLM gpt-oss-120b TPOT 30.8 -> 16.6 %
(bias -30.5 -> +3.4 %), H200 vLLM Qwen3-235B-A22B-FP8 TTFT 46.5 -> 32.1 %, TPOT 48.5 -> 39.4 %. Left off,
each with what it did when written:
* SGLang fp8-block on H200 (the same Triton kernel): Qwen3-235B-A22B-FP8 TPOT 28.0 -> 17.3 %, TTFT 64.9 -> 60.6 %,
  but DeepSeek-R1 / V3 fp8 TPOT 5.6 / 3.7 -> 6.7 / 5.6 % and TTFT 5.0 / 14.1 -> 6.1 / 17.2 % (bias -2 -> +5 %);
  off while no DeepSeek group may get worse. The kernel is one; what differs between the two models is elsewhere.
* Blackwell (every engine's TRT-LLM-gen / FlashInfer kernels): B200 gpt-oss TPOT bias is already +18 % (TRT-LLM)
  and +21 % (vLLM) over the measured with the dense calibration; the kernels' fits took them to +26 / +29 %
  and TTFT 12.6 -> 16.9 %, 23.6 -> 30.3 %; the B200 DeepSeek groups moved both ways (R1 TPOT worse by 7-10
  points). Their gap is not the MoE kernel.
* vLLM Marlin MXFP4 on Hopper: its table is Kimi-K3's shapes under a "situ-as-silu" stand-in (collection_meta
  of vllm 0.24.0); on gpt-oss it triples the prefill (H200 vLLM gpt-oss TTFT 17.2 -> 49.2 %, H100 23.9 -> 54.9 %).
  The measured rows ask for that rate (README 'vLLM serving recipes against the profile': the H100 0.18 rows'
  prefill scales as 1/tp at ~183 TFLOP/s of experts, the compute fit's 0.183 x peak); what breaks TTFT with it is
  the vLLM front end fitted around the dense rate and the 5 x C window's first wave, not the kernel.
* TRT-LLM CUTLASS on Hopper (fp8-block): H100 Qwen3-235B TTFT 15.3 -> 21.9 %; H200 DeepSeek TPOT both ways.
* H100: its engines' host constants were fitted on the H100 rows with the dense MoE cost (engine_profiles
  calibration notes); with its Triton kernels on, H100 vLLM MiniMax-M2.5 TPOT 15.0 -> 19.2 % (bias -10.3 ->
  +6.0 %). Switching H100 vLLM on needs that joint refit. H100 SGLang and TRT-LLM take the H200 rule (their bf16 and
  MXFP4 Triton kernels from H100's own tables): no H100 row runs them (the H100 TRT-LLM gpt-oss-120b rows declare
  fp8), and without them H100 ran gpt-oss-120b 1.4-2.3x faster than H200 end to end (scripts/check_gpu_order.py).

usage: python scripts/fit_moe_kernels.py WHEEL_DIR [--write]     (needs pandas, pyarrow, scipy)
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

GPUS = {"h100_sxm": "h100-sxm-80gb", "h200_sxm": "h200-sxm-141gb", "b200_sxm": "b200-sxm-180gb",
        "b300_sxm": "b300-sxm-288gb", "gb200": "gb200-nvl72", "gb300": "gb300-nvl72"}
BLACKWELL = {"b200_sxm", "b300_sxm", "gb200", "gb300"}
TARGET_VERSION = {"vllm": "0.19.0", "sglang": "0.5.14", "trtllm": "1.3.0rc20"}   # nearest the profiles' deployments
# table dtype -> (apex-plan weight format, bytes per weight with scales, tensor-core dtype of the FLOPs)
# (scales: apex_plan/model/quant.py; W4A16 / int4 weight-only kernels dequantise to bf16; W4A8 MXFP4 x MXFP8
# runs at the fp8 rate: Blackwell's mxf8f6f4 MMA kind)
DTYPES = {"bfloat16": ("bf16", 2.0, "bf16"), "fp8": ("fp8", 1.0, "fp8"),
          "fp8_block": ("fp8-block", 1.0 + 4.0 / (128 * 128), "fp8"), "nvfp4": ("nvfp4", 0.5 + 1.0 / 16, "fp4"),
          "int4_wo": ("int4", 0.5 + 2.0 / 128, "bf16"), "w4a16_mxfp4": ("mxfp4", 0.5 + 1.0 / 32, "bf16"),
          "w4a8_mxfp4_mxfp8": ("mxfp4", 0.5 + 1.0 / 32, "fp8")}
# (engine, Blackwell?) -> apex format -> [(table engine, table dtype, kernel_source substring)], first found wins:
# the kernel the measured deployments run (docstring); a kernel library two engines share (FlashInfer's
# TRT-LLM-gen MoE) may be read from the other engine's table
KERNELS = {
    ("trtllm", False): {"bf16": [("trtllm", "bfloat16", "cutlass")], "fp8": [("trtllm", "fp8", "cutlass")],
                        "fp8-block": [("trtllm", "fp8_block", "cutlass")],
                        "mxfp4": [("trtllm", "w4a16_mxfp4", "moe_torch_flow")]},
    ("trtllm", True): {"bf16": [("trtllm", "bfloat16", "cutlass")], "fp8": [("trtllm", "fp8", "cutlass")],
                       "fp8-block": [("vllm", "fp8_block", "flashinfer_trtllm"), ("trtllm", "fp8_block", "deepgemm")],
                       "nvfp4": [("vllm", "nvfp4", "flashinfer_trtllm"), ("trtllm", "nvfp4", "cutlass")],
                       "mxfp4": [("trtllm", "w4a8_mxfp4_mxfp8", "moe_torch_flow")]},
    ("vllm", False): {"bf16": [("vllm", "bfloat16", "vllm_fused_moe"), ("vllm", "bfloat16", "triton")],
                      "fp8": [("vllm", "fp8", "vllm_fused_moe"), ("vllm", "fp8", "flashinfer_cutlass")],
                      "fp8-block": [("vllm", "fp8_block", "vllm_fused_moe"), ("vllm", "fp8_block", "triton")],
                      "mxfp4": [("vllm", "w4a16_mxfp4", "marlin"), ("vllm", "w4a16_mxfp4", "vllm_mxfp4_moe")],
                      "int4": [("vllm", "int4_wo", "marlin")]},
    ("vllm", True): {"bf16": [("vllm", "bfloat16", "flashinfer_trtllm"), ("vllm", "bfloat16", "vllm_fused_moe")],
                     "fp8": [("vllm", "fp8", "flashinfer_trtllm"), ("vllm", "fp8", "vllm_fused_moe")],
                     "fp8-block": [("vllm", "fp8_block", "flashinfer_trtllm"), ("vllm", "fp8_block", "vllm_fused_moe")],
                     "nvfp4": [("vllm", "nvfp4", "flashinfer_trtllm")],
                     "mxfp4": [("trtllm", "w4a8_mxfp4_mxfp8", "moe_torch_flow"), ("vllm", "w4a8_mxfp4_mxfp8", "flashinfer_trtllm")],
                     "int4": [("vllm", "int4_wo", "marlin")]},
    ("sglang", False): {"bf16": [("sglang", "bfloat16", "sglang_fused_moe_triton")],
                        "fp8-block": [("sglang", "fp8_block", "sglang_fused_moe_triton")],
                        "mxfp4": [("sglang", "w4a16_mxfp4", "sglang_fused_moe_triton")], "int4": [("sglang", "int4_wo", "marlin")]},
    ("sglang", True): {"bf16": [("sglang", "bfloat16", "sglang_flashinfer_trtllm_moe")],
                       "fp8-block": [("sglang", "fp8_block", "sglang_flashinfer_trtllm_moe")],
                       "nvfp4": [("sglang", "nvfp4", "sglang_flashinfer_trtllm_moe")],
                       "mxfp4": [("sglang", "w4a8_mxfp4_mxfp8", "sglang_flashinfer_trtllm_moe")]},
}
# gpu -> engine -> formats whose fit is written (docstring: what is written and why); the rest are printed only
WRITTEN = {"h200_sxm": {"vllm": {"bf16", "fp8-block"}, "sglang": {"bf16", "mxfp4"}, "trtllm": {"mxfp4"}},
           "h100_sxm": {"sglang": {"bf16", "mxfp4"}, "trtllm": {"mxfp4"}}}   # H100: the H200 rule where no H100 row objects
# gpu -> engine -> formats whose fit's compute rate alone is written (`moe_compute_kernels:`, estimate/moe.py
# expert_rates): B200's block-fp8 and NVFP4 kernels, which the DeepSeek prefill decomposition checked against the
# tables (scripts/check_prefill_ops.py) and the B200 rows took; their bandwidth and fixed-time terms stay off
# (docstring: Blackwell). The Blackwell GPUs without measured runs (B300, GB200, GB300) take the same rule from
# their own tables: the same TRT-LLM-gen / FlashInfer kernels, 13.5-15.7 % of the fp8 peak there too, where the
# fastest-kernel fit of every engine (kernel_formats.moe) gave them 2.5x B200's block-fp8 expert rate.
COMPUTE_WRITTEN = {gpu: {e: {"fp8-block", "nvfp4"} for e in ("vllm", "sglang", "trtllm")} for gpu in sorted(BLACKWELL)}
TILES = (0, 16, 32, 64, 128)     # grouped-GEMM row tiles tried (Triton BLOCK_SIZE_M, CUTLASS / DeepGEMM tile M)
ACT_B = 2.0                      # bf16 activations
MATS = 3.0                       # gate, up and down matrices of H x I per expert (SwiGLU)
MIN_ROWS = 20                    # fewer measured shapes than this: no fit
MAX_FRACTION = 0.98
MAX_ERROR_PCT = 60.0             # a worse fit is not written


def _version_key(v: str) -> tuple[int, ...]:
    return tuple(int(x) for x in re.findall(r"\d+", v))


def engine_tables(root: Path, gpu: str, engine: str) -> list[Path]:
    """The engine's moe_perf tables on `gpu`, the version nearest TARGET_VERSION first (at or below it
    before above it)."""
    target = _version_key(TARGET_VERSION[engine])
    paths = list((root / "aiconfigurator_core" / "systems" / "data" / gpu / "moe" / engine).glob("*/moe_perf.parquet"))

    def order(p):
        v = _version_key(p.parent.name)
        return (v > target, tuple(-x for x in v) if v <= target else v)
    return sorted(paths, key=order)


def kernel_rows(frames: list, dtype: str, kernel: str):
    """Balanced gated rows of the first table (in `frames` order) that measured `kernel` in `dtype`."""
    for path, df in frames:
        d = df[(df.moe_dtype == dtype) & df.kernel_source.astype(str).str.contains(kernel)
               & ~df.kernel_source.astype(str).str.contains("nongated") & (df.distribution == "balanced")
               & (df.moe_ep_size == 1)]
        if len(d) >= MIN_ROWS:
            d = d.groupby(["num_tokens", "hidden_size", "inter_size", "topk", "num_experts", "moe_tp_size",
                           "moe_ep_size"], as_index=False).latency.min()
            return d, f"{path.parent.name} {sorted(set(df[df.moe_dtype == dtype].kernel_source.astype(str)) & {k for k in df.kernel_source.astype(str) if kernel in k})[0]}"
    return None, ""


def terms(d, wb: float, tile: int):
    """FLOPs (tile-padded) and HBM bytes of MoE rows on one rank (see the docstring)."""
    m, h, k, e_all, tp, ep = (d[c].to_numpy(float) for c in ("num_tokens", "hidden_size", "topk", "num_experts",
                                                               "moe_tp_size", "moe_ep_size"))
    i = d.inter_size.to_numpy(float) / tp                 # expert width on one GPU
    a = m * k / ep                                        # assignments on this rank (balanced routing)
    e = e_all / ep                                        # experts held
    active = np.minimum(e, a)                             # experts touched, each read whole
    rows = a / active                                     # rows per touched expert
    padded = active * (np.ceil(rows / tile) * tile if tile else rows)
    flops = 2.0 * padded * h * i * MATS                   # multiply-adds of the grouped GEMMs (padded rows)
    byts = active * h * i * MATS * wb + a * (2.0 * h + MATS * i) * ACT_B   # weights + activations
    return flops, byts


def fit_kernel(d, wb: float, peak: float, bw: float):
    """(ce, be, latency_us, latency_per_expert_us, tile, rms log error, rows) of the best tile."""
    from scipy.optimize import least_squares
    t_s = d.latency.to_numpy(float) * 1e-3                # tables give milliseconds
    e = d.num_experts.to_numpy(float)                     # experts held (no expert parallelism in the rows)
    best = None
    for tile in TILES:
        flops, byts = terms(d, wb, tile)

        def resid(x, flops=flops, byts=byts):
            return np.log(np.maximum(flops / (peak * x[0]), byts / (bw * x[1])) + (x[2] + x[3] * e) * 1e-6) - np.log(t_s)

        for x0 in ((0.5, 0.7, 20.0, 0.05), (0.2, 0.5, 50.0, 0.0), (0.8, 0.9, 10.0, 0.2)):
            r = least_squares(resid, x0, bounds=([1e-3, 1e-3, 0.0, 0.0], [1.0, 1.0, 1000.0, 5.0]), x_scale="jac")
            err = float(np.sqrt(np.mean(r.fun ** 2)))
            if best is None or err < best[5] - 1e-9:
                best = (float(r.x[0]), float(r.x[1]), float(r.x[2]), float(r.x[3]), tile, err, len(t_s))
    return best


def fit_gpu(root: Path, gpu: str, spec) -> dict:
    """{engine: {format: fit dict}} of one GPU."""
    import pandas as pd
    out: dict = {}
    bw = spec.mem_bw_gbps * 1e9
    frames = {e: [(p, pd.read_parquet(p)) for p in engine_tables(root, gpu, e)] for e in ("vllm", "sglang", "trtllm")}
    for engine in ("vllm", "sglang", "trtllm"):
        if not frames[engine]:
            continue
        for fmt, choices in KERNELS[(engine, gpu in BLACKWELL)].items():
            for table, dtype, kernel in choices:
                _, wb, peak_dt = DTYPES[dtype]
                if not spec.supports(peak_dt):
                    continue
                d, source = kernel_rows(frames[table], dtype, kernel)
                if d is None:
                    continue
                ce, be, lat, lat_e, tile, err, n = fit_kernel(d, wb, spec.peak_flops(peak_dt), bw)
                pct = 100.0 * float(np.expm1(err))
                if pct > MAX_ERROR_PCT:
                    print(f"  {gpu} {engine} {fmt}: {table} {source} fit error {pct:.0f}% > {MAX_ERROR_PCT:.0f}%, not written")
                    break
                out.setdefault(engine, {})[fmt] = dict(peak=peak_dt, compute_efficiency=min(ce, MAX_FRACTION),
                                                       bandwidth_efficiency=min(be, MAX_FRACTION), latency_us=lat,
                                                       latency_per_expert_us=lat_e,
                                                       tile_rows=tile, error_pct=pct, n=n, source=f"{table} {source}")
                break
    return out


def section(gpu: str, version: str, fits: dict, name: str = "moe_kernels") -> str:
    """The profile's `moe_kernels:` (or `moe_compute_kernels:`) section, each value with its table and fit error."""
    lines = [f"{name}:",
             f"  # each engine's own fused-MoE kernel per weight format: aiconfigurator-core {version} "
             f"systems/data/{gpu}/moe/<engine>/<version>/moe_perf.parquet,",
             "  # balanced routing, fitted by scripts/fit_moe_kernels.py (model and kernel choice with engine sources"
             " there); absolute figures.",
             "  # latency_us: one MoE layer's fixed time; tile_rows: grouped-GEMM row tile each expert's tokens pad to;"
             " error_pct: rms log error."]
    for engine, fmts in fits.items():
        lines.append(f"  {engine}:")
        for fmt, f in fmts.items():
            body = (f"{{peak: {f['peak']}, compute_efficiency: {f['compute_efficiency']:.3f}, bandwidth_efficiency: "
                    f"{f['bandwidth_efficiency']:.3f}, latency_us: {f['latency_us']:.2f}, "
                    f"latency_per_expert_us: {f['latency_per_expert_us']:.3f}, tile_rows: {f['tile_rows']}, "
                    f"error_pct: {f['error_pct']:.0f}}}")
            lines.append(f"    {fmt}: {body}".ljust(150) + f"  # {f['source']}, {f['n']} shapes")
    return "\n".join(lines) + "\n"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("wheel_dir", type=Path, help="unpacked aiconfigurator-core wheel (holds aiconfigurator_core/)")
    ap.add_argument("--write", action="store_true", help="write the moe_kernels sections of the GPU profiles")
    args = ap.parse_args()
    if not (args.wheel_dir / "aiconfigurator_core" / "systems" / "data").is_dir():
        print(f"error: {args.wheel_dir}: no aiconfigurator_core/systems/data; pass the folder the wheel was unpacked in",
              file=sys.stderr)
        return 2
    from apex_plan.hardware.load import hardware_dir, load_gpu
    from fit_kernel_formats import write_section  # the one profile-section writer (same folder)
    meta = sorted(args.wheel_dir.glob("aiconfigurator_core-*.dist-info"))
    version = meta[-1].name.removeprefix("aiconfigurator_core-").removesuffix(".dist-info") if meta else "?"
    for gpu, name in GPUS.items():
        fits = fit_gpu(args.wheel_dir, gpu, load_gpu(name))
        if not fits:
            print(f"{gpu}: no MoE tables")
            continue
        print(section(gpu, version, fits))
        kept = {e: {f: v for f, v in fmts.items() if f in WRITTEN.get(gpu, {}).get(e, ())} for e, fmts in fits.items()}
        kept = {e: fmts for e, fmts in kept.items() if fmts}
        if args.write and kept:
            write_section(hardware_dir() / f"{name}.yaml", "moe_kernels", section(gpu, version, kept))
        comp = {e: {f: v for f, v in fmts.items() if f in COMPUTE_WRITTEN.get(gpu, {}).get(e, ())} for e, fmts in fits.items()}
        comp = {e: fmts for e, fmts in comp.items() if fmts}
        if args.write and comp:
            block = section(gpu, version, comp, "moe_compute_kernels").replace(
                "absolute figures.", "only compute_efficiency (x peak) is read: estimate/moe.py expert_rates.")
            write_section(hardware_dir() / f"{name}.yaml", "moe_compute_kernels", block)
    return 0


if __name__ == "__main__":
    sys.exit(main())
