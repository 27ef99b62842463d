"""Fit the GPU calibration constants to NVIDIA's measured per-op tables and carry them to the profiles.

Source: the pip package `aiconfigurator-core` (Apache-2.0) ships measured per-op latencies under
aiconfigurator_core/systems/data/<gpu>/ (GEMM, context attention, NCCL and vLLM custom all-reduce).
It is not a dependency of apex-plan; this script reads an unpacked copy of its wheel:

    pip download --no-deps aiconfigurator-core -d /tmp/aicw && unzip -q /tmp/aicw/*.whl -d /tmp/aicw/unz
    pip install pandas pyarrow scipy            # only for this script
    python scripts/fit_gpu_constants.py /tmp/aicw/unz [--write]

Each op is fitted with the estimator's own cost formulas (apex_plan/estimate/kernels.py), by least
squares on log time over the measured shapes, inside physical bounds (fractions in (0, 1], latencies
>= 0). The profiles then receive RATIOS against H100 so that the end-to-end fitted H100 values stay
the anchor: value_X = h100-sxm-80gb value x (fit_X / fit_H100), fractions clipped to <= 0.98.
h100-sxm-80gb.yaml itself is never written; the tables' own H100 fit is printed for comparison.
"""

from __future__ import annotations

import argparse
import math
import re
import sys
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.optimize import least_squares

from apex_plan.hardware.load import hardware_dir, load_gpu

sys.path.insert(0, str(Path(__file__).resolve().parent))
import fit_kernel_formats as kf  # noqa: E402  (per-format GEMM, fused-MoE and MLA fits)

# table folder -> built-in profile
GPUS = {"h100_sxm": "h100-sxm-80gb", "h200_sxm": "h200-sxm-141gb", "b200_sxm": "b200-sxm-180gb",
        "b300_sxm": "b300-sxm-288gb", "gb200": "gb200-nvl72", "gb300": "gb300-nvl72",
        "a100_sxm": "a100-sxm-80gb", "l40s": "l40s"}
ANCHOR = "h100_sxm"
ACT_B = 2.0                             # bytes per bf16 activation element (the GEMMs' inputs/outputs)
WEIGHT_B = {"bfloat16": 2.0, "fp8": 1.0, "fp8_block": 1.0, "nvfp4": 0.5 + 1.0 / 16}  # nvfp4: 4 bits + fp8 scale / 16
PEAK_KEY = {"bfloat16": "bf16", "fp8": "fp8", "fp8_block": "fp8", "nvfp4": "fp4"}
CUSTOM_AR_MAX_BYTES = 8 * 1024 * 1024   # vLLM custom_all_reduce.py max_size (engine_profiles/vllm-v1.yaml)
ATTN_MIN_ISL = 4096                     # "large" prefill: compute-bound, every SM busy
ATTN_HEAD_DIM = 128
FRACTIONS = ("compute_efficiency", "bandwidth_efficiency", "attention_efficiency", "link_efficiency")
FITTED = FRACTIONS + ("kernel_latency_us", "allreduce_latency_us", "custom_allreduce_latency_us")
MAX_FRACTION = 0.98
COMM_KEYS = ("link_efficiency", "allreduce_latency_us", "custom_allreduce_latency_us")
COMM_MAX_ERROR_PCT = 60.0               # above it the profile keeps its collective constants (L40S: PCIe, no P2P)


def table(root: Path, gpu: str, sub: str, name: str) -> tuple[pd.DataFrame, str]:
    """One measured table: the newest version the H100 anchor also has (same software), else the newest."""
    data = root / "aiconfigurator_core" / "systems" / "data"
    have = sorted((p.parent.name for p in (data / gpu / sub).glob(f"*/{name}")),
                  key=lambda v: tuple(int(x) for x in re.findall(r"\d+", v)))
    if not have:
        raise FileNotFoundError(f"{data / gpu / sub}/*/{name}: no such table")
    anchor = {p.parent.name for p in (data / ANCHOR / sub).glob(f"*/{name}")}
    common = [v for v in have if v in anchor]
    version = (common or have)[-1]
    return pd.read_parquet(data / gpu / sub / version / name), f"{sub.split('/')[-1]} {version}"


def solve(resid, starts, lo, hi):
    """Least squares on log-time residuals from several starts; best parameters and rms log error."""
    best = None
    for x0 in starts:
        r = least_squares(resid, np.clip(x0, lo, hi), bounds=(lo, hi), x_scale="jac", method="trf")
        if best is None or r.cost < best.cost:
            best = r
    res = resid(best.x)
    return best.x, float(np.sqrt(np.mean(res ** 2))), len(res)


def fit_gemm(df: pd.DataFrame, peak_flops: float, bw_bytes_s: float, dtype: str):
    """compute_efficiency, bandwidth_efficiency, kernel_latency_us of one GEMM dtype."""
    d = df[df.gemm_dtype == dtype].groupby(["m", "n", "k"], as_index=False).latency.min()
    m, n, k = (d[c].to_numpy(float) for c in "mnk")
    t_s = d.latency.to_numpy(float) * 1e-3                   # tables give milliseconds
    flops = 2.0 * m * n * k                                  # multiply-adds: 2 * M * K * N
    byts = k * n * WEIGHT_B[dtype] + m * (k + n) * ACT_B     # weights once + in/out activations
    hbm = byts / t_s <= bw_bytes_s                           # faster than HBM: served from L2 (L40S, 96 MB), dropped
    flops, byts, t_s = flops[hbm], byts[hbm], t_s[hbm]

    def resid(x):
        ce, be, lat_us = x
        model = np.maximum(flops / (peak_flops * ce), byts / (bw_bytes_s * be)) + lat_us * 1e-6
        return np.log(model) - np.log(t_s)

    return solve(resid, [(0.7, 0.8, 4.0), (0.5, 0.5, 10.0), (0.9, 0.9, 2.0)], [1e-3, 1e-3, 0.0], [1.0, 1.0, 100.0])


def fit_gemm_decode(df: pd.DataFrame, bw_bytes_s: float, dtype: str):
    """bandwidth_efficiency from one dtype's memory-bound rows alone (kf.fit_decode_bandwidth): the whole-table
    fit's be trades bytes against the compute side's shape dependence; a decode step reads its weights there."""
    d = df[df.gemm_dtype == dtype].groupby(["m", "n", "k"], as_index=False).latency.min()
    m, n, k = (d[c].to_numpy(float) for c in "mnk")
    t_s = d.latency.to_numpy(float) * 1e-3                   # tables give milliseconds
    byts = k * n * WEIGHT_B[dtype] + m * (k + n) * ACT_B     # weights once + in/out activations
    be, err, rows = kf.fit_decode_bandwidth(m, n, k, t_s, byts, WEIGHT_B[dtype], bw_bytes_s)
    return (be,), err, rows


def fit_attention(df: pd.DataFrame, peak_flops: float, sms: int, klat_s: float):
    """attention_efficiency: fresh causal prefill, bf16 KV, head_dim 128, isl >= 4096, SMs full."""
    if "window_size" in df:
        df = df[df.window_size == 0]                         # full (not sliding-window) attention
    d = df[(df.kv_cache_dtype == "bfloat16") & (df.head_dim == ATTN_HEAD_DIM) & (df.isl >= ATTN_MIN_ISL)]
    d = d.groupby(["batch_size", "isl", "num_heads", "num_key_value_heads"], as_index=False).latency.min()
    b, s, h = (d[c].to_numpy(float) for c in ("batch_size", "isl", "num_heads"))
    tiles = np.ceil(s / 128.0)                               # 128-row query tiles per sequence and head
    pairs = b * tiles * 128.0 * (s + 1.0) * 0.5              # tile-padded causal query x key pairs
    flops = 4.0 * h * ATTN_HEAD_DIM * pairs                  # QK^T and PV: 2 FLOPs per multiply-add each
    occ = np.minimum(1.0, b * tiles * h / sms)               # thread blocks over SMs
    keep = occ >= 1.0
    flops, t_s = flops[keep], d.latency.to_numpy(float)[keep] * 1e-3

    def resid(x):
        return np.log(flops / (peak_flops * x[0]) + klat_s) - np.log(t_s)

    return solve(resid, [(0.5,), (0.2,), (0.9,)], [1e-3], [1.0])


def prefill_attention_by_engine(root: Path, gpu: str, klat_us: float) -> dict[str, tuple[float, float, str]]:
    """Each engine's own fresh-prefill attention kernel (its context attention table, fit_attention): engine
    family -> (absolute efficiency, fit error %, table version). The profiles' prefill_attention_efficiency
    (vLLM's table) and prefill_attention_efficiency_by_engine."""
    spec = load_gpu(GPUS[gpu])
    out = {}
    for eng in ("vllm", "sglang", "trtllm"):
        try:
            df, v = table(root, gpu, f"attention/{eng}", "context_attention_perf.parquet")
        except (FileNotFoundError, IndexError, ValueError):
            continue
        (ae,), err, _ = fit_attention(df, spec.peak_flops("bf16"), spec.num_sms, klat_us * 1e-6)
        out[eng] = (ae, pct(err), v.split()[-1])
    return out


def fit_comm(nccl: pd.DataFrame, custom: pd.DataFrame, link_bytes_s: float, gpus: set[int]):
    """link_efficiency, allreduce_latency_us (NCCL), custom_allreduce_latency_us (vLLM, CUDA graph)."""
    a = nccl[(nccl.op_name == "all_reduce") & (nccl.nccl_dtype == "half") & nccl.num_gpus.isin(gpus)]
    c = custom[(custom.backend == "vllm_graph") & custom.num_gpus.isin(gpus)]
    c = c[c.message_size * 2 < CUSTOM_AR_MAX_BYTES]          # the engine takes the custom kernel below its limit
    byts = np.concatenate([a.message_size, c.message_size]).astype(float) * 2.0   # elements of 2 bytes
    tp = np.concatenate([a.num_gpus, c.num_gpus]).astype(float)
    is_custom = np.r_[np.zeros(len(a)), np.ones(len(c))]
    t_s = np.concatenate([a.latency, c.latency]).astype(float) * 1e-3
    ring = 2.0 * (tp - 1.0) / tp * byts                       # bytes each GPU sends in a ring all-reduce

    def resid(x):
        le, lat_nccl_us, lat_custom_us = x
        lat_s = np.where(is_custom > 0, lat_custom_us, lat_nccl_us) * 1e-6
        return np.log(lat_s + ring / (link_bytes_s * le)) - np.log(t_s)

    return solve(resid, [(0.7, 10.0, 5.0), (0.9, 20.0, 8.0), (0.4, 5.0, 3.0)], [1e-3, 0.0, 0.0], [1.0, 200.0, 200.0])


def pct(rms_log: float) -> float:
    """rms error of log time as a percentage (exp(rms) - 1)."""
    return 100.0 * math.expm1(rms_log)


def fit_gpu(root: Path, gpu: str, comm_gpus: set[int] | None = None) -> dict:
    """Every fitted constant of one GPU folder, with rms errors, shape counts and the tables used."""
    spec = load_gpu(GPUS[gpu])
    bw = spec.mem_bw_gbps * 1e9
    out: dict = {"tables": []}
    gemm, v = table(root, gpu, "gemm/vllm", "gemm_perf.parquet")
    out["tables"].append(f"GEMM vllm {v.split()[-1]}")
    for dtype in WEIGHT_B:
        key = PEAK_KEY[dtype]
        if (gemm.gemm_dtype == dtype).any() and key in spec.peak_tflops:
            out[f"gemm_{dtype}"] = fit_gemm(gemm, spec.peak_flops(key), bw, dtype)
    (ce, be_all, klat), _, _ = out["gemm_bfloat16"]
    out["gemm_decode"] = fit_gemm_decode(gemm, bw, "bfloat16")
    out.update(compute_efficiency=ce, bandwidth_efficiency=out["gemm_decode"][0][0], kernel_latency_us=klat,
               bandwidth_efficiency_all=be_all)
    attn, v = table(root, gpu, "attention/vllm", "context_attention_perf.parquet")
    out["tables"].append(f"context attention vllm {v.split()[-1]}")
    out["attention"] = fit_attention(attn, spec.peak_flops("bf16"), spec.num_sms, klat * 1e-6)
    out["attention_efficiency"] = out["attention"][0][0]
    nccl, vn = table(root, gpu, "comm/nccl", "nccl_perf.parquet")
    custom, vc = table(root, gpu, "comm/vllm", "custom_allreduce_perf.parquet")
    out["tables"].append(f"NCCL {vn.split()[-1]} and vLLM {vc.split()[-1]} custom all-reduce")
    if comm_gpus is None:   # GPU counts measured in both collective tables
        comm_gpus = set(nccl[nccl.op_name == "all_reduce"].num_gpus) & set(custom.num_gpus)
    out["comm_gpus"] = sorted(comm_gpus)
    out["comm"] = fit_comm(nccl, custom, spec.intra_node_bw_gbps * 1e9, comm_gpus)
    le, lat_nccl, lat_custom = out["comm"][0]
    out.update(link_efficiency=le, allreduce_latency_us=lat_nccl, custom_allreduce_latency_us=lat_custom)
    return out


def transfer(fit_x: dict, fit_h: dict, anchor) -> dict[str, float]:
    """Profile values inside physical bounds: an efficiency is the H100 profile value x (fit on this GPU / fit
    on H100); a fixed latency is the H100 profile value + (fit on this GPU - fit on H100). A served step's fixed
    time per op is the kernel's own (the chip's: its table) plus what H100's end-to-end fit finds on top of its
    table (launch gaps, rank skew at each collective: 7.4 - 4.9 us per custom all-reduce), which does not
    scale with the chip; a ratio would scale it too."""
    vals = {}
    for key in FITTED:
        if key in FRACTIONS:
            ratio = fit_x[key] / fit_h[key] if fit_h[key] > 0 else 1.0
            vals[key] = min(getattr(anchor, key) * ratio, MAX_FRACTION)
        else:
            vals[key] = max(getattr(anchor, key) + fit_x[key] - fit_h[key], 0.0)
    # the NCCL small-message latency is never below the one-shot custom kernel's (as on H100)
    vals["allreduce_latency_us"] = max(vals["allreduce_latency_us"], vals["custom_allreduce_latency_us"])
    return vals


def dominates(a, b) -> bool:
    """Datasheet order: `a`'s bf16 peak, HBM bandwidth and GPU-to-GPU link bandwidth all match or beat `b`'s."""
    return (a.peak_tflops["bf16"] >= b.peak_tflops["bf16"] and a.mem_bw_gbps >= b.mem_bw_gbps
            and a.intra_node_bw_gbps >= b.intra_node_bw_gbps)


# datasheet figure each fitted constant multiplies (its achievable figure = figure x constant); latencies: 1
SCALE = {"compute_efficiency": lambda s: s.peak_tflops["bf16"], "attention_efficiency": lambda s: s.peak_tflops["bf16"],
         "bandwidth_efficiency": lambda s: s.mem_bw_gbps, "link_efficiency": lambda s: s.intra_node_bw_gbps}


def same_chip(a, b) -> bool:
    """Same die, clocks and fabric (SMs, bf16 peak and NVLink equal: H200/H100): fixed latencies are the chip's.
    GB200/B200 differ in clocks and host (and GB tables measured 2-4 GPU trays): their latencies stay fitted."""
    return (a.num_sms == b.num_sms and a.peak_tflops["bf16"] == b.peak_tflops["bf16"]
            and a.intra_node_bw_gbps == b.intra_node_bw_gbps)


def keep_datasheet_order(vals: dict[str, dict], fixed: set[str]) -> dict[str, dict[str, str]]:
    """Where GPU a matches or beats b on every datasheet figure, give a at least b's achievable FLOP/s (GEMM and
    attention), HBM bytes/s and link bytes/s, and on the same chip at most b's fixed latencies: raise a (or, when
    a is fixed, lower b). Per-op tables of one chip scatter by a few % (H200 vs H100 GEMMs); a datasheet tie
    must not turn into a predicted inversion. Returns notes per profile and field."""
    specs = {n: load_gpu(n) for n in vals}
    notes: dict[str, dict[str, str]] = {n: {} for n in vals}
    for _ in range(4 * len(vals) ** 2):
        changed = False
        for a, b in ((a, b) for a in vals for b in vals if a != b):
            sa, sb = specs[a], specs[b]
            if sa.vendor != sb.vendor or not dominates(sa, sb):
                continue
            for key in FITTED:
                if key in SCALE:          # achievable throughput: higher is better
                    fa, fb = SCALE[key](sa), SCALE[key](sb)
                    ok = vals[a][key] * fa >= vals[b][key] * fb * (1 - 1e-9)
                    to_a, to_b = vals[b][key] * fb / fa, vals[a][key] * fa / fb
                else:                     # fixed latency: lower is better, ordered on the same chip only
                    ok = not same_chip(sa, sb) or vals[a][key] <= vals[b][key]
                    to_a = to_b = vals[a][key] if a in fixed else vals[b][key]
                if ok:
                    continue
                moved, other, value = (a, b, to_a) if a not in fixed else (b, a, to_b)
                vals[moved][key] = value
                notes[moved][key] = f"set to match {other} (datasheet order)"
                changed = True
        if not changed:
            return notes
    raise SystemExit("datasheet order could not be kept: profiles with equal datasheets but fixed values differ")


def calibration_block(gpu: str, version: str, fit_x: dict, fit_h: dict, vals: dict, keep, notes: dict) -> str:
    """The profile's new `calibration:` section, each value with its source and fit error."""
    g_err, g_n = pct(fit_x["gemm_bfloat16"][1]), fit_x["gemm_bfloat16"][2]
    a_err, a_n = pct(fit_x["attention"][1]), fit_x["attention"][2]
    c_err, c_n = pct(fit_x["comm"][1]), fit_x["comm"][2]
    ng = "/".join(str(n) for n in fit_x["comm_gpus"])
    lines = [
        "calibration:",
        f"  # aiconfigurator-core {version} systems/data/{gpu} per-op tables, fitted by scripts/fit_gpu_constants.py,",
        "  # ratio to H100: efficiency = h100-sxm-80gb value x (fit here / fit on h100_sxm), clipped to <= 0.98;",
        "  # latency = h100-sxm-80gb value + (fit here - fit on h100_sxm) (the in-service excess over the table kept).",
        f"  # Tables: {'; '.join(fit_x['tables'])}.",
        "  # Fit error = rms of log(model / measured time) as a percentage.",
    ]
    if any("datasheet order" in v for v in notes.values()):
        lines += ["  # Datasheet order: a GPU whose bf16 peak, HBM and link bandwidth match or beat another's keeps at",
                  "  # least its achievable FLOP/s and bytes/s, and on the same chip (SMs, clocks) at most its latencies."]

    def row(key, note):
        fmt = "{:.3f}" if key in FRACTIONS else "{:.2f}"
        if notes.get(key, "").startswith("NOT"):                   # collective constants kept: the note says why
            note = f"{notes[key]} ({note})"
        elif key in notes:
            note = f"{note}; {notes[key]}"
        lines.append(f"  {key}: {fmt.format(vals[key])}".ljust(38) + f"# {note}")

    f = lambda k: f"{fit_x[k]:.3f} vs H100 {fit_h[k]:.3f}"            # noqa: E731
    us = lambda k: f"{fit_x[k]:.2f} vs H100 {fit_h[k]:.2f} us"         # noqa: E731
    row("compute_efficiency", f"bf16 GEMM fit {f('compute_efficiency')} ({g_n} shapes, error {g_err:.0f}%)")
    d_err, d_n = pct(fit_x["gemm_decode"][1]), fit_x["gemm_decode"][2]
    row("bandwidth_efficiency", f"same table's memory-bound rows (M <= {kf.DECODE_M_MAX}, weights >= "
        f"{kf.DECODE_MIN_WEIGHT_BYTES / 1e6:.0f} MB) {f('bandwidth_efficiency')} ({d_n} shapes, error {d_err:.0f}%; "
        f"whole-table fit {f('bandwidth_efficiency_all')})")
    row("attention_efficiency", f"context attention hd{ATTN_HEAD_DIM} isl>={ATTN_MIN_ISL} fit "
        f"{f('attention_efficiency')} ({a_n} shapes, error {a_err:.0f}%)")
    comm = f"all-reduce fit ({ng} GPUs, {c_n} sizes, error {c_err:.0f}%)"
    row("link_efficiency", f"{comm}: {f('link_efficiency')}")
    row("kernel_latency_us", f"same GEMM fit {us('kernel_latency_us')}")
    row("allreduce_latency_us", f"NCCL, same fit {us('allreduce_latency_us')}; kept >= custom")
    row("custom_allreduce_latency_us", f"vLLM custom (CUDA graph), same fit {us('custom_allreduce_latency_us')}")
    per = ", ".join(f"{e}: {v:.2f}" for e, v in vals.get("by_engine", ()))
    lines.append(f"  custom_allreduce_latency_us_by_engine: {{{per}}}".ljust(38)
                 + "# kept as written by scripts/fit_engine_allreduce.py (each engine's own kernel)")
    if vals.get("prefill_attention"):
        pa, pa_by = vals["prefill_attention"]
        lines.append(f"  prefill_attention_efficiency: {pa:.3f}".ljust(38) + "# kept as written (absolute, not ratio to "
                     "H100: 'prefill attention per engine' above)")
        per = ", ".join(f"{e}: {v:.3f}" for e, v in pa_by)
        lines.append(f"  prefill_attention_efficiency_by_engine: {{{per}}}  # kept as written (each engine's own table)")
    for key in ("p2p_latency_us", "alltoall_latency_us", "moe_imbalance"):
        lines.append(f"  {key}: {getattr(keep, key)}".ljust(38) + "# not fitted: as h100-sxm-80gb")
    return "\n".join(lines) + "\n"


# calibration fields this script does not fit: the profile's own lines (and their comment lines) are kept verbatim
KEPT_FIELDS = ("prefill_attention_efficiency", "prefill_attention_efficiency_by_engine",
               "custom_allreduce_latency_us_by_engine", "p2p_latency_us", "alltoall_latency_us", "moe_imbalance")


def _entries(lines: list[str]) -> dict[str, list[str]]:
    """The `  field: value` entries of a calibration section, each with the indented comment lines under it."""
    out: dict[str, list[str]] = {}
    key = None
    for line in lines:
        m = re.match(r"^  (\w+):", line)
        if m:
            key = m.group(1)
            out[key] = [line]
        elif key is not None and line.lstrip().startswith("#") and line.startswith("   "):
            out[key].append(line)
    return out


def write_profile(name: str, block: str) -> Path:
    """Replace the profile's trailing `calibration:` section (the last one in every built-in file) with `block`,
    keeping verbatim the fields it does not fit (KEPT_FIELDS) and any field it does not write (other scripts':
    fit_engine_allreduce.py's per-engine all-reduce terms)."""
    path = hardware_dir() / f"{name}.yaml"
    text = path.read_text()
    at = re.search(r"^calibration:", text, flags=re.M)
    tail = text[at.start():].splitlines()[1:] if at else []
    if at is None or any(line and not line.startswith(" ") for line in tail):
        raise SystemExit(f"{path}: field 'calibration' must be the last section; move it to the end and rerun")
    old, new = _entries(tail), _entries(block.splitlines()[1:])
    lines = block.splitlines()
    out = [ln for ln in lines if not any(ln.startswith(f"  {k}:") for k in KEPT_FIELDS if k in old)]
    for key, entry in old.items():
        if key in KEPT_FIELDS or key not in new:
            out += entry
    path.write_text(text[:at.start()] + "\n".join(out) + "\n")
    return path


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("wheel_dir", type=Path, help="unpacked aiconfigurator-core wheel (holds aiconfigurator_core/)")
    ap.add_argument("--write", action="store_true", help="write the calibration sections of the profiles")
    args = ap.parse_args()
    meta = sorted(args.wheel_dir.glob("aiconfigurator_core-*.dist-info"))
    if not (args.wheel_dir / "aiconfigurator_core").is_dir() or not meta:
        print(f"error: {args.wheel_dir}: no aiconfigurator_core/ and its .dist-info; pass the folder the wheel was "
              "unzipped into", file=sys.stderr)
        return 2
    version = meta[-1].name.removesuffix(".dist-info").split("-")[1]
    anchor = load_gpu(GPUS[ANCHOR]).calibration
    fits = {g: fit_gpu(args.wheel_dir, g) for g in GPUS}
    print(f"aiconfigurator-core {version}: absolute fits from the tables alone (fractions of this project's "
          "datasheet peaks; err = rms log error %)")
    print(f"{'gpu':9} {'ce':>6} {'be':>6} {'klat':>5} {'err':>4} | {'ae':>6} {'err':>4} | {'le':>6} {'nccl':>5} "
          f"{'cust':>5} {'err':>4} | low-precision GEMMs: ce be err (vs fp8 / fp4 peak)")
    for g, f in fits.items():
        (ce, be, kl), e, _ = f["gemm_bfloat16"]
        low = " ".join(f"{d}: {f[f'gemm_{d}'][0][0]:.3f} {f[f'gemm_{d}'][0][1]:.3f} {pct(f[f'gemm_{d}'][1]):.0f}%"
                       for d in ("fp8", "fp8_block", "nvfp4") if f"gemm_{d}" in f)
        print(f"{g:9} {ce:6.3f} {be:6.3f} {kl:5.2f} {pct(e):4.0f} | {f['attention_efficiency']:6.3f} "
              f"{pct(f['attention'][1]):4.0f} | {f['link_efficiency']:6.3f} {f['allreduce_latency_us']:5.1f} "
              f"{f['custom_allreduce_latency_us']:5.1f} {pct(f['comm'][1]):4.0f} | {low}")
    print("tables: " + "; ".join(f"{g}: {', '.join(f['tables'])}" for g, f in fits.items()))
    print("\nprefill attention per engine (each engine's context attention table; profiles: "
          "prefill_attention_efficiency[_by_engine], absolute, same chip kept in datasheet order by hand):")
    for g, f in fits.items():
        by = prefill_attention_by_engine(args.wheel_dir, g, f["gemm_bfloat16"][0][2])
        print(f"  {GPUS[g]:16} " + "  ".join(f"{e} {a:.3f} ({err:.0f}%, {v})" for e, (a, err, v) in by.items()))
    print("\nh100-sxm-80gb profile (end-to-end fit, the anchor, not written): " +
          ", ".join(f"{k}={getattr(anchor, k)}" for k in FITTED))
    vals, fit_h, comm_kept = {}, {}, []
    for g, name in GPUS.items():
        if g == ANCHOR:
            continue
        fit_h[g] = fits[ANCHOR]
        if fits[g]["comm_gpus"] != fits[ANCHOR]["comm_gpus"]:
            # the anchor refitted on the GPU counts this table measured (NVL72 trays: 2 and 4)
            sub = fit_gpu(args.wheel_dir, ANCHOR, set(fits[g]["comm_gpus"]))
            fit_h[g] = {**fits[ANCHOR], **{k: sub[k] for k in ("comm", "link_efficiency", "allreduce_latency_us",
                                                                "custom_allreduce_latency_us")}}
        vals[name] = transfer(fits[g], fit_h[g], anchor)
        if pct(fits[g]["comm"][1]) > COMM_MAX_ERROR_PCT:   # the ring model does not describe this interconnect
            cur = load_gpu(name).calibration
            vals[name].update({k: getattr(cur, k) for k in COMM_KEYS})
            comm_kept.append(name)
    vals[GPUS[ANCHOR]] = {k: getattr(anchor, k) for k in FITTED}
    notes = keep_datasheet_order(vals, fixed={GPUS[ANCHOR]})
    for name in comm_kept:
        notes[name].update({k: "NOT fitted, value kept: the ring model misses this interconnect" for k in COMM_KEYS})
    print("\nprofile values (ratio to H100, then datasheet order):")
    print(f"{'profile':16} " + " ".join(f"{k.replace('_efficiency', '_eff'):>14}" for k in FITTED))
    for g, name in GPUS.items():
        print(f"{name:16} " + " ".join(f"{vals[name][k]:14.3f}" for k in FITTED)
              + ("  (anchor, unchanged)" if g == ANCHOR else "")
              + "".join(f"\n{'':16} {k}: {v}" for k, v in notes[name].items()))
        if args.write and g != ANCHOR:
            vals[name]["by_engine"] = load_gpu(name).calibration.custom_allreduce_latency_us_by_engine
            cal = load_gpu(name).calibration
            vals[name]["prefill_attention"] = ((cal.prefill_attention_efficiency,
                                                cal.prefill_attention_efficiency_by_engine)
                                               if cal.prefill_attention_efficiency else None)
            write_profile(name, calibration_block(g, version, fits[g], fit_h[g], vals[name], anchor, notes[name]))
    if args.write:
        print("\nwrote the calibration sections of " + ", ".join(n for g, n in GPUS.items() if g != ANCHOR))
    formats(args.wheel_dir, version, fits, vals, args.write)
    return 0


def formats(root: Path, version: str, fits: dict, vals: dict, write: bool) -> None:
    """Per-format GEMM, fused-MoE and MLA fits of every GPU: print them, and write `kernel_formats:`."""
    specs = {name: load_gpu(name) for name in GPUS.values()}
    out, sources = {}, {}
    print("\nper-format fits (fastest kernel per shape over vLLM, SGLang, TRT-LLM tables): ce be lat_us err% shapes")
    for g, name in GPUS.items():
        dense, s1 = kf.fit_dense(root, g, specs[name])
        moe, s2 = kf.fit_moe(root, g, specs[name])
        mla = kf.fit_mla(root, g, specs[name])
        sources[name] = [f"{op} {', '.join(sorted({x.split('/')[2] + ' ' + x.split('/')[3] for x in src}))}"
                         for op, src in (("GEMM", s1), ("MoE", s2), ("MLA", mla["tables"] if mla else [])) if src]
        out[name] = kf.profile_formats(dense, moe, mla, vals[name], fits[g]["attention_efficiency"])
        for op, d in (("gemm", dense), ("moe", moe)):
            print(f"{g:9} {op:4} " + "  ".join(f"{kf.DTYPES[t][0]}: {x[0]:.3f} {x[1]:.3f} {x[2]:.1f} {kf.pct(e):.0f}% {n}"
                                             for t, (x, e, n) in ((t, v) for t, v in d.items() if t[0] != "_")))
        if mla:
            pe, pe_err, _ = mla["prefill"]
            (dce, dbe, lat), d_err, _ = mla["decode"]
            kept = "" if out[name]["mla"] else f"  (not written: decode error above {kf.MLA_MAX_ERROR_PCT:.0f}%)"
            print(f"{g:9} mla  prefill {pe:.3f} {kf.pct(pe_err):.0f}%  decode ce {dce:.3f} be {dbe:.3f} lat {lat:.1f} us "
                  f"{kf.pct(d_err):.0f}%{kept}")
    for note in kf.keep_format_order(out, specs):
        print("  " + note)
    print("\nprofile kernel_formats values (ce be latency_us):")
    for name, v in out.items():
        print(f"{name:16} " + "  ".join(f"{op} {fmt}: {f['compute_efficiency']:.3f} {f['bandwidth_efficiency']:.3f} "
                                       f"{f['latency_us']:.1f}" for op in ("gemm", "moe") for fmt, f in v[op].items()))
        if write:
            kf.write_formats(hardware_dir() / f"{name}.yaml", kf.formats_block(
                next(g for g, n in GPUS.items() if n == name), version, v, sources[name]))
    if write:
        print("\nwrote the kernel_formats sections of " + ", ".join(out))


if __name__ == "__main__":
    sys.exit(main())
