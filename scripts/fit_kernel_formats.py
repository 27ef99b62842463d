"""Per-format GEMM, fused-MoE and MLA fits for scripts/fit_gpu_constants.py (imported by it; see its
docstring for how to get the aiconfigurator-core wheel and pyarrow).

Every fit reads the main table (largest version) of each engine family the wheel measured on that GPU (vLLM, SGLang,
TRT-LLM: systems/data/<gpu>/<op>/<engine>/<version>/<table>.parquet) and keeps, per shape, the fastest
kernel any of them ran: the GPU's achievable figure for that shape. Which kernel an engine picks is the
engine's business (its profile), not the chip's. Timing floors that are host time rather than GPU time
(vLLM 0.24's fp8-block GEMM table holds a 60-180 us floor at every size; TRT-LLM's and SGLang's DeepGEMM
run the same shapes in 10 us) drop out this way.

Models (least squares on log time, physical bounds; err = rms log error as a percentage):
* dense GEMM: t = max(2MNK / (peak_f x ce), bytes / (HBM x be)) + lat, bytes = K N w_f + M (K + N) x 2;
* fused MoE (one layer: routing, gate/up and down grouped GEMMs, activation; balanced routing, no expert
  parallelism): a = tokens x topk assignments, active = min(experts, a) experts each read whole;
  t = max(2 a H I (g + 1) / (peak_f x ce), (active H I (g + 1) w_f + a (2H + (g + 1) I) x 2) / (HBM x be)) + lat,
  g = 2 gated matrices (SwiGLU);
* MLA: prefill in the expanded form, 2 (qk_nope + rope + v) FLOPs per query x key pair and head over
  tile-padded causal pairs (as the context-attention fit); decode in the absorbed form over the latent
  cache: FLOPs 2 (2 kv_lora + rope) per pair and head, bytes (kv_lora + rope) x kv bytes per cached token.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd

ENGINES = ("vllm", "sglang", "trtllm")
# table dtype -> (apex-plan weight format, bytes per weight with scales, tensor-core dtype of the FLOPs)
# (scales: apex_plan/model/quant.py; w4a16 / int4 weight-only kernels dequantise to bf16)
DTYPES = {"bfloat16": ("bf16", 2.0, "bf16"), "fp8": ("fp8", 1.0, "fp8"),
          "fp8_block": ("fp8-block", 1.0 + 4.0 / (128 * 128), "fp8"), "nvfp4": ("nvfp4", 0.5 + 1.0 / 16, "fp4"),
          "int4_wo": ("int4", 0.5 + 2.0 / 128, "bf16"), "w4a16_mxfp4": ("mxfp4", 0.5 + 1.0 / 32, "bf16")}
ACT_B = 2.0                      # bf16 activations
MOE_GATED = 2.0                  # gate and up projections per expert (SwiGLU)
# DeepSeek-V3 config.json (the tables' model): kv_lora_rank 512, qk_rope_head_dim 64, qk_nope_head_dim 128, v_head_dim 128
MLA_KV_LORA, MLA_ROPE, MLA_NOPE, MLA_V = 512, 64, 128, 128
MLA_MIN_ISL = 4096               # prefill efficiency from long prompts with every SM busy (as fit_attention)
Q_TILE = 128                     # query rows per attention thread block
MIN_DIM = 128                    # GEMMs with N or K below one 128-wide scale block (fp8-block) are not LLM layers


def _version_key(v: str) -> tuple[int, ...]:
    return tuple(int(x) for x in re.findall(r"\d+", v))


def best_table(root: Path, gpu: str, op: str, name: str, keys: list[str]) -> tuple[pd.DataFrame, list[str]]:
    """Per shape (`keys`), the fastest latency over every kernel of each engine's main table: its largest
    version (newest among equals; a few later versions only append one model's shapes)."""
    data = root / "aiconfigurator_core" / "systems" / "data" / gpu / op
    frames, sources = [], []
    for engine in ENGINES:
        have = [(p.stat().st_size, _version_key(p.parent.name), p) for p in (data / engine).glob(f"*/{name}")]
        if have:
            path = max(have)[2]
            frames.append(pd.read_parquet(path))
            sources.append(f"{gpu}/{op}/{engine}/{path.parent.name}/{name}")
    if not frames:
        return pd.DataFrame(columns=keys + ["latency"]), []
    df = pd.concat(frames, ignore_index=True)
    if "kernel_source" in df:                          # non-gated MLP kernels (Nemotron) are another op
        df = df[~df.kernel_source.astype(str).str.contains("nongated")]
    return df.groupby(keys, as_index=False).latency.min(), sources


DECODE_M_MAX = 32                # memory-bound GEMM rows: a decode step's tokens
DECODE_MIN_WEIGHT_BYTES = 64e6   # weights of >= 64 MB (4096 x 8192 bf16): the fixed time per call <~ 15 % of a row


def fit_decode_bandwidth(m, n, k, t_s, byts, wb: float, hbm_bytes_s: float):
    """(be, rms log error, rows) of the memory-bound side of GEMM table rows alone: t = lat + bytes / (HBM x be)
    over M <= DECODE_M_MAX and weights >= DECODE_MIN_WEIGHT_BYTES (a 16 MB floor moves the ratios by <= 0.05),
    soft-L1 on log time (a few rows far off the line, a kernel choice gone wrong, do not set the level); the
    quantise pass of a quantised table sits in lat. (nan, nan, rows) below 20 rows."""
    from scipy.optimize import least_squares
    keep = (m <= DECODE_M_MAX) & (k * n * wb >= DECODE_MIN_WEIGHT_BYTES) & (byts / t_s <= hbm_bytes_s)
    if keep.sum() < 20:
        return float("nan"), float("nan"), int(keep.sum())
    b, t = byts[keep], t_s[keep]

    def resid(x):
        return np.log(x[1] * 1e-6 + b / (hbm_bytes_s * x[0])) - np.log(t)   # fixed time + bytes at be x HBM
    best = min((least_squares(resid, x0, bounds=([1e-3, 0.0], [1.0, 100.0]), loss="soft_l1", f_scale=0.1)
                for x0 in ((0.8, 4.0), (0.6, 10.0))), key=lambda r: r.cost)
    res = resid(best.x)
    return float(best.x[0]), float(np.sqrt(np.mean(res ** 2))), len(res)


def _solve(resid, starts, lo, hi):
    from scipy.optimize import least_squares
    best = None
    for x0 in starts:
        r = least_squares(resid, np.clip(x0, lo, hi), bounds=(lo, hi), x_scale="jac", method="trf")
        if best is None or r.cost < best.cost:
            best = r
    res = resid(best.x)
    return best.x, float(np.sqrt(np.mean(res ** 2))), len(res)


def fit_dense(root: Path, gpu: str, spec) -> tuple[dict, list[str]]:
    """{table dtype: ((ce, be, lat_us), rms log error, shapes)} of dense GEMMs, and the tables read."""
    df, sources = best_table(root, gpu, "gemm", "gemm_perf.parquet", ["gemm_dtype", "m", "n", "k"])
    bw = spec.mem_bw_gbps * 1e9
    out = {}
    for dtype, (_, wb, peak_dt) in DTYPES.items():
        d = df[(df.gemm_dtype == dtype) & (df.n >= MIN_DIM) & (df.k >= MIN_DIM)]
        if d.empty or not spec.supports(peak_dt):
            continue
        m, n, k = (d[c].to_numpy(float) for c in "mnk")
        t_s = d.latency.to_numpy(float) * 1e-3                     # tables give milliseconds
        flops = 2.0 * m * n * k                                    # multiply-adds: 2 * M * K * N
        byts = k * n * wb + m * (k + n) * ACT_B                    # weights once + in/out activations
        hbm = byts / t_s <= bw                                     # faster than HBM: served from L2, dropped
        flops, byts, t_s = flops[hbm], byts[hbm], t_s[hbm]
        peak = spec.peak_flops(peak_dt)

        def resid(x, flops=flops, byts=byts, t_s=t_s, peak=peak):
            return np.log(np.maximum(flops / (peak * x[0]), byts / (bw * x[1])) + x[2] * 1e-6) - np.log(t_s)

        out[dtype] = _solve(resid, [(0.7, 0.8, 4.0), (0.5, 0.5, 10.0), (0.9, 0.9, 2.0)], [1e-3, 1e-3, 0.0],
                            [1.0, 1.0, 100.0])
    return out, sources


def moe_terms(d: pd.DataFrame, wb: float) -> tuple[np.ndarray, np.ndarray]:
    """FLOPs and HBM bytes of fused-MoE rows (balanced routing, experts not split by expert parallelism)."""
    m, h, topk, e = (d[c].to_numpy(float) for c in ("num_tokens", "hidden_size", "topk", "num_experts"))
    i = d.inter_size.to_numpy(float) / d.moe_tp_size.to_numpy(float)   # expert width on one GPU
    a = m * topk                                                         # token x expert assignments
    active = np.minimum(e, a)                                            # experts touched, each read whole
    mats = MOE_GATED + 1.0                                               # gate, up, down matrices of H x I
    flops = 2.0 * a * h * i * mats                                       # multiply-adds of the grouped GEMMs
    byts = active * h * i * mats * wb + a * (2.0 * h + mats * i) * ACT_B  # weights + token in/out + intermediates
    return flops, byts


def fit_moe(root: Path, gpu: str, spec) -> tuple[dict, list[str]]:
    """{table dtype: ((ce, be, lat_us), rms log error, shapes)} of one fused-MoE layer, and the tables read."""
    keys = ["moe_dtype", "num_tokens", "hidden_size", "inter_size", "topk", "num_experts", "moe_tp_size",
            "moe_ep_size", "distribution"]
    df, sources = best_table(root, gpu, "moe", "moe_perf.parquet", keys)
    df = df[(df.distribution == "balanced") & (df.moe_ep_size == 1)]
    bw = spec.mem_bw_gbps * 1e9
    out, resids = {}, {}
    for dtype, (_, wb, peak_dt) in DTYPES.items():
        d = df[df.moe_dtype == dtype]
        if len(d) < 20 or not spec.supports(peak_dt):
            continue
        flops, byts = moe_terms(d, wb)
        t_s = d.latency.to_numpy(float) * 1e-3
        peak = spec.peak_flops(peak_dt)

        def resid(x, flops=flops, byts=byts, t_s=t_s, peak=peak):
            return np.log(np.maximum(flops / (peak * x[0]), byts / (bw * x[1])) + x[2] * 1e-6) - np.log(t_s)

        resids[dtype] = resid
        out[dtype] = _solve(resid, [(0.3, 0.7, 30.0), (0.6, 0.5, 10.0), (0.1, 0.9, 60.0)], [1e-3, 1e-3, 0.0],
                            [1.0, 1.0, 500.0])
    # per-tensor fp8 experts do no more work than 128x128-block ones (one scale per tensor): where the block
    # kernels run the per-tensor rows' shapes faster (Hopper: the tables' per-tensor MoE kernel is FlashInfer
    # CUTLASS, several times slower than the Triton block kernel), per-tensor fp8 takes the block fit
    if "fp8" in out and "fp8_block" in out:
        own, block = resids["fp8"](out["fp8"][0]), resids["fp8"](out["fp8_block"][0])
        if np.mean(block) < np.mean(own):         # mean log model time over the same measured rows
            out["fp8"] = (out["fp8_block"][0], float(np.sqrt(np.mean(block ** 2))), len(block))
            out["_notes"] = {"fp8": "the fp8-block kernels' fit (faster on these shapes than the per-tensor kernel measured)"}
    return out, sources


def fit_mla(root: Path, gpu: str, spec) -> dict | None:
    """MLA prefill efficiency, decode compute / bandwidth efficiency and latency, with errors and tables."""
    keys = ["kv_cache_dtype", "num_heads", "batch_size", "isl"]
    ctx, src_c = best_table(root, gpu, "mla", "context_mla_perf.parquet", keys)
    gen, src_g = best_table(root, gpu, "mla", "generation_mla_perf.parquet", keys[:3] + ["step"])
    if ctx.empty or gen.empty:
        return None
    peak, bw = spec.peak_flops("bf16"), spec.mem_bw_gbps * 1e9
    # decode: every row; context = step + 1 cached tokens (the table's step counts generated tokens before)
    g = gen[gen.kv_cache_dtype.isin(["bfloat16", "fp8"])]
    kvb = np.where(g.kv_cache_dtype == "fp8", 1.0, 2.0)
    b, h, c = g.batch_size.to_numpy(float), g.num_heads.to_numpy(float), g.step.to_numpy(float) + 1.0
    flops_d = b * c * h * 2.0 * (2 * MLA_KV_LORA + MLA_ROPE)              # scores over kv_lora + rope, values over kv_lora
    bytes_d = b * c * (MLA_KV_LORA + MLA_ROPE) * kvb                       # latent cache read once per sequence
    t_d = g.latency.to_numpy(float) * 1e-3

    def resid_d(x):
        return np.log(np.maximum(flops_d / (peak * x[0]), bytes_d / (bw * x[1])) + x[2] * 1e-6) - np.log(t_d)

    (dce, dbe, lat), derr, dn = _solve(resid_d, [(0.5, 0.7, 10.0), (0.3, 0.9, 20.0)], [1e-3, 1e-3, 0.0], [1.0, 1.0, 200.0])
    # prefill: long bf16 prompts with the SMs full, the fixed latency taken from the decode fit
    p = ctx[(ctx.kv_cache_dtype == "bfloat16") & (ctx.isl >= MLA_MIN_ISL)]
    b, h, s = p.batch_size.to_numpy(float), p.num_heads.to_numpy(float), p.isl.to_numpy(float)
    tiles = np.ceil(s / Q_TILE)
    pairs = b * tiles * Q_TILE * (s + 1.0) * 0.5                          # tile-padded causal query x key pairs
    flops_p = pairs * h * 2.0 * (MLA_NOPE + MLA_ROPE + MLA_V)             # QK^T over nope + rope, PV over v_head_dim
    keep = b * tiles * h >= spec.num_sms
    flops_p, t_p = flops_p[keep], p.latency.to_numpy(float)[keep] * 1e-3

    def resid_p(x):
        return np.log(flops_p / (peak * x[0]) + lat * 1e-6) - np.log(t_p)

    (pe,), perr, pn = _solve(resid_p, [(0.5,), (0.2,), (0.9,)], [1e-3], [1.0])
    return {"prefill": (pe, perr, pn), "decode": ((dce, dbe, lat), derr, dn), "tables": src_c + src_g}


# ---------------------------------------------------------------- profile values and the YAML section

MAX_FRACTION = 0.98
MLA_MAX_ERROR_PCT = 60.0        # above it the GPU has no MLA kernels worth the name in the tables (A100, L40S)


def pct(rms_log: float) -> float:
    """rms error of log time as a percentage (exp(rms) - 1)."""
    return 100.0 * float(np.expm1(rms_log))


def profile_formats(dense: dict, moe: dict, mla: dict | None, cal: dict, attn_fit: float) -> dict:
    """Estimator-ready values: each format's table fit relative to the same tables' bf16 GEMM fit, applied to
    the profile's calibrated bf16 figures `cal` (so the end-to-end H100 anchor carries to every format):
    efficiency = calibrated bf16 efficiency x (format fit / bf16 fit); GEMM latency = calibrated + (format
    fit - bf16 fit); a fused-MoE layer's and an MLA call's latency as fitted (a whole layer's fixed cost)."""
    (ce0, be0, lat0), _, _ = dense["bfloat16"]
    out: dict = {"gemm": {}, "moe": {}, "mla": None, "bf16_fit": dense["bfloat16"]}
    clip = lambda v: float(min(MAX_FRACTION, v))            # noqa: E731
    for dtype, ((ce, be, lat), err, n) in dense.items():
        if dtype == "bfloat16":
            continue
        fmt, _, peak = DTYPES[dtype]
        out["gemm"][fmt] = {"peak": peak, "compute_efficiency": clip(cal["compute_efficiency"] * ce / ce0),
                            "bandwidth_efficiency": clip(cal["bandwidth_efficiency"] * be / be0),
                            "latency_us": float(max(0.0, cal["kernel_latency_us"] + lat - lat0)),
                            "error_pct": pct(err), "n": n, "fit": (ce, be, lat)}
    for dtype, ((ce, be, lat), err, n) in ((k, v) for k, v in moe.items() if not k.startswith("_")):
        fmt, _, peak = DTYPES[dtype]
        # a fused-MoE layer launches at least its two grouped GEMMs: never less fixed time than two GEMMs
        floor = 2.0 * (out["gemm"][fmt]["latency_us"] if fmt in out["gemm"] else cal["kernel_latency_us"])
        out["moe"][fmt] = {"peak": peak, "compute_efficiency": clip(cal["compute_efficiency"] * ce / ce0),
                           "bandwidth_efficiency": clip(cal["bandwidth_efficiency"] * be / be0),
                           "latency_us": float(max(lat, floor)), "error_pct": pct(err), "n": n, "fit": (ce, be, lat)}
        out["moe"][fmt]["notes"] = {moe["_notes"][dtype]} if dtype in moe.get("_notes", {}) else set()
        if lat < floor:
            out["moe"][fmt]["notes"].add("latency raised to two GEMM latencies (the layer's two grouped GEMMs)")
    if mla and pct(mla["decode"][1]) <= MLA_MAX_ERROR_PCT:
        pe, perr, pn = mla["prefill"]
        (dce, dbe, lat), derr, dn = mla["decode"]
        out["mla"] = {"prefill_efficiency": clip(cal["attention_efficiency"] * pe / attn_fit),
                      "decode_compute_efficiency": clip(cal["attention_efficiency"] * dce / attn_fit),
                      "decode_bandwidth_efficiency": clip(cal["bandwidth_efficiency"] * dbe / be0),
                      "latency_us": float(lat), "prefill_error_pct": pct(perr), "decode_error_pct": pct(derr),
                      "n": (pn, dn), "fit": (pe, dce, dbe, lat)}
    return out


def keep_format_order(vals: dict[str, dict], specs: dict) -> list[str]:
    """Datasheet order per format: where GPU a's peak in the format's dtype, HBM and link bandwidth match or
    beat b's (same vendor), a keeps at least b's achievable FLOP/s and bytes/s in that format (raised to them).
    Returns notes."""
    notes = []
    for _ in range(4 * len(vals) ** 2):
        changed = False
        for a in vals:
            for b in vals:
                sa, sb = specs[a], specs[b]
                if a == b or sa.vendor != sb.vendor:
                    continue
                for op in ("gemm", "moe"):
                    for fmt, fb in vals[b][op].items():
                        fa = vals[a][op].get(fmt)
                        dt = fb["peak"]
                        if fa is None or fa["peak"] != dt or not (
                                sa.peak_tflops.get(dt, 0) >= sb.peak_tflops.get(dt, 0) and sa.mem_bw_gbps >= sb.mem_bw_gbps
                                and sa.intra_node_bw_gbps >= sb.intra_node_bw_gbps):
                            continue
                        for key, fig in (("compute_efficiency", lambda s: s.peak_tflops[dt]),
                                         ("bandwidth_efficiency", lambda s: s.mem_bw_gbps)):
                            want = fb[key] * fig(sb) / fig(sa)
                            if fa[key] < want * (1 - 1e-9):
                                fa[key] = min(MAX_FRACTION, want)
                                fa.setdefault("notes", set()).add(f"{key} set to match {b} (datasheet order)")
                                changed = True
        if not changed:
            break
    for a in vals:
        for op in ("gemm", "moe"):
            for fmt, f in vals[a][op].items():
                notes += [f"{a} {op} {fmt}: {n}" for n in sorted(f.get("notes", ()))]
    return notes


def formats_block(gpu: str, version: str, vals: dict, sources: list[str]) -> str:
    """The profile's `kernel_formats:` section, each value with its source and fit error."""
    lines = ["kernel_formats:",
             f"  # aiconfigurator-core {version} per-op tables (systems/data/{gpu}/...), fitted by scripts/fit_gpu_constants.py:",
             "  # per shape the fastest kernel of the main vLLM, SGLang and TRT-LLM tables; models in",
             "  # scripts/fit_kernel_formats.py. Efficiency = calibrated bf16 figure x (format fit / bf16 GEMM fit on the",
             "  # same tables); GEMM latency = calibrated + (format fit - bf16 fit); MoE / MLA latency: the fit, per call.",
             "  # error_pct = rms of log(model / measured time) as a percentage.",
             "  # Tables: " + "; ".join(sources) + "."]

    def row(fmt, f, what):
        note = (f"{what} fit ce {f['fit'][0]:.3f} be {f['fit'][1]:.3f} lat {f['fit'][2]:.1f} us, {f['n']} shapes"
                + "".join(f"; {n}" for n in sorted(f.get("notes", ()))))
        body = (f"{{peak: {f['peak']}, compute_efficiency: {f['compute_efficiency']:.3f}, bandwidth_efficiency: "
                f"{f['bandwidth_efficiency']:.3f}, latency_us: {f['latency_us']:.2f}, error_pct: {f['error_pct']:.0f}}}")
        lines.append(f"    {fmt}: {body}".ljust(128) + f"  # {note}")

    b = vals["bf16_fit"]
    lines.append(f"  # bf16 GEMMs run at the calibration section's figures (these tables' fit: ce {b[0][0]:.3f} be {b[0][1]:.3f} "
                 f"lat {b[0][2]:.1f} us, error {pct(b[1]):.0f}%, {b[2]} shapes).")
    for op, what in (("gemm", "GEMM"), ("moe", "fused-MoE layer")):
        if vals[op]:
            lines.append(f"  {op}:")
            for fmt, f in vals[op].items():
                row(fmt, f, what)
    m = vals["mla"]
    if m:
        lines.append("  mla:                                # DeepSeek-V3 shapes; prefill expanded, decode absorbed "
                     f"(fit: prefill {m['fit'][0]:.3f}, decode ce {m['fit'][1]:.3f} be {m['fit'][2]:.3f}; "
                     f"{m['n'][0]} + {m['n'][1]} shapes)")
        for key in ("prefill_efficiency", "decode_compute_efficiency", "decode_bandwidth_efficiency", "latency_us",
                    "prefill_error_pct", "decode_error_pct"):
            fmt = "{:.3f}" if key.endswith("efficiency") else "{:.2f}" if key == "latency_us" else "{:.0f}"
            lines.append(f"    {key}: {fmt.format(m[key])}")
    return "\n".join(lines) + "\n"


def write_section(path: Path, name: str, block: str) -> None:
    """Replace the profile's top-level `name:` section with block, or insert it before `calibration:`."""
    text = path.read_text()
    text = re.sub(rf"^{name}:\n(?:(?:[ #].*)?\n)*", "", text, flags=re.M)
    at = re.search(r"^calibration:", text, flags=re.M)
    if at is None:
        raise SystemExit(f"{path}: no 'calibration:' section to put '{name}:' before; add one and rerun")
    path.write_text(text[:at.start()] + block + text[at.start():])


def write_formats(path: Path, block: str) -> None:
    """Replace the profile's `kernel_formats:` section, or insert it before `calibration:`."""
    write_section(path, "kernel_formats", block)
