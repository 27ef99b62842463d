"""Compare the estimator's dense-GEMM time with aiconfigurator-core's measured GEMM tables on the shapes real
models produce, per GPU x weight format x size band of M (tokens in the step).

    python scripts/check_gemm_shapes.py WHEEL_DIR [--gpus h100_sxm,h200_sxm,b200_sxm] [--models llama-3.1-8b,...]
                                        [--tp 1,2,4,8] [--engine best|vllm|sglang|trtllm] [--with-quant]

WHEEL_DIR: an unpacked aiconfigurator-core wheel (see scripts/fit_gpu_constants.py; needs pandas, pyarrow,
scipy). Shapes: every dense weight GEMM (k, n) one GPU runs for each built-in model (models/*.yaml) at each TP
size (estimate.shard.build_shard; routed experts are the fused-MoE kernels' business, left out), at the
tables' M values from 1 to 16384. Measured: the table's latency at that (m, n, k), interpolated linearly in
log latency over log n and log k between the table's grid points (its n and k grid: 32 ... 16384, 51200,
65536); per shape the fastest kernel of the engines' main tables (`--engine best`, as the fits take) or one
engine's. Shapes whose measured time is below the weights' and activations' bytes at the datasheet HBM
bandwidth (served from L2 between repeats, not what a serving step sees) are left out and counted.
Estimated: estimate.gemm_time.gemm_time_s at estimate.step_cost.gemm_rates, the rows the step-cost kernel runs;
with --with-quant plus, for a quantised format, the quantise kernel the step model counts beside it (QUANT_BYTES
per input element at the calibration's HBM efficiency, one kernel latency), as the tables time them together.

Prints, per GPU x format x M band: shapes, median / p10 / p90 of estimated / measured time, and the mean
|log error| as a percentage (exp(mean |log ratio|) - 1).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from apex_plan.abi import GEMM_ROUTED_EXPERTS
from apex_plan.estimate.gemm_time import gemm_time_s
from apex_plan.estimate.gemms import Gemm
from apex_plan.estimate.shard import build_shard
from apex_plan.estimate.step_cost import gemm_rates
from apex_plan.hardware.load import load_gpu
from apex_plan.model.load import list_models, load_model
from apex_plan.model.quant import format_bytes
from apex_plan.plan.spec import Plan

sys.path.insert(0, str(Path(__file__).resolve().parent))
import fit_kernel_formats as kf  # noqa: E402  (table readers: best_table, DTYPES)

GPUS = {"h100_sxm": "h100-sxm-80gb", "h200_sxm": "h200-sxm-141gb", "b200_sxm": "b200-sxm-180gb"}
BANDS = ((1, 16), (17, 128), (129, 1024), (1025, 4096), (4097, 16384))   # M: decode ... long prefill chunks
M_MAX = 16384
ACT_B = 2.0                                  # bf16 activations in and out
# --with-quant: bytes per input element of the activation-quantise pass(es) the tables time with a quantised GEMM
# and the step model charges as its own kernel (estimate.step_cost.kernel_count_fields): dynamic per-tensor fp8
# a max pass and a quantise pass (bf16 read twice, fp8 written), 1x128-block fp8 one pass, nvfp4 one pass (0.5 B out)
QUANT_BYTES = {"fp8": 2.0 + 2.0 + 1.0, "fp8-block": 2.0 + 1.0, "nvfp4": 2.0 + 0.5}


def model_shapes(names: list[str], tps: list[int]) -> pd.DataFrame:
    """(family, k, n) of every dense weight GEMM of each model on one GPU at each TP size, deduplicated."""
    rows = []
    for name in names:
        model = load_model(name)
        for tp in tps:
            if model.num_heads % tp:
                continue
            try:
                shard = build_shard(model, Plan(tp=tp, ep=tp if model.is_moe else 1))
            except Exception:                    # noqa: BLE001  (a layout the model cannot take)
                continue
            rows += [(name, g.k, g.n) for g in shard.gemms if g.kind != GEMM_ROUTED_EXPERTS]
    df = pd.DataFrame(rows, columns=["family", "k", "n"]).drop_duplicates()
    return df[(df.k >= kf.MIN_DIM) & (df.n >= kf.MIN_DIM)]


def table(root: Path, gpu: str, engine: str) -> pd.DataFrame:
    """Per (gemm_dtype, m, n, k): the fastest latency (ms) of the engines' main tables, or of one engine's."""
    if engine == "best":
        return kf.best_table(root, gpu, "gemm", "gemm_perf.parquet", ["gemm_dtype", "m", "n", "k"])[0]
    saved = kf.ENGINES
    try:
        kf.ENGINES = (engine,)
        return kf.best_table(root, gpu, "gemm", "gemm_perf.parquet", ["gemm_dtype", "m", "n", "k"])[0]
    finally:
        kf.ENGINES = saved


def measured_s(d: pd.DataFrame, m: np.ndarray, k: np.ndarray, n: np.ndarray) -> np.ndarray:
    """Table seconds at (m, k, n): the table's own m rows, log latency interpolated over log n, log k
    (NaN where the shape lies outside the grid or a neighbouring grid point is missing)."""
    from scipy.interpolate import RegularGridInterpolator
    ms, ns, ks = (np.sort(d[c].unique()) for c in "mnk")
    cube = np.full((len(ms), len(ns), len(ks)), np.nan)
    cube[np.searchsorted(ms, d.m), np.searchsorted(ns, d.n), np.searchsorted(ks, d.k)] = np.log(d.latency * 1e-3)
    interp = RegularGridInterpolator((np.log(ms), np.log(ns), np.log(ks)), cube, bounds_error=False)
    return np.exp(interp(np.column_stack([np.log(m), np.log(n), np.log(k)])))


def compare(root: Path, gpu_dir: str, shapes: pd.DataFrame, engine: str, with_quant: bool = False) -> pd.DataFrame:
    """One row per (format, family, m, k, n): estimated and measured seconds."""
    gpu = load_gpu(GPUS[gpu_dir])
    df = table(root, gpu_dir, engine)
    rates_of = gemm_rates(gpu, "bf16")
    out = []
    for dtype, (fmt, _, peak_dt) in kf.DTYPES.items():
        d = df[df.gemm_dtype == dtype]
        if d.empty or not gpu.supports(peak_dt):
            continue
        ms = np.sort(d.m.unique())
        ms = ms[ms <= M_MAX]
        wb = format_bytes(fmt)
        for (family, k, n) in shapes.itertuples(index=False):
            rates = rates_of(Gemm("check", int(k), int(n), 0, w_bytes=wb, fmt=fmt))
            meas = measured_s(d, ms, np.full(len(ms), k), np.full(len(ms), n))
            est = gemm_time_s(rates, ms, k, n, wb, ACT_B)
            if with_quant and fmt in QUANT_BYTES:     # the input's quantise kernel: bytes at HBM, one launch
                est = est + QUANT_BYTES[fmt] * ms * k / rates["bytes_per_s"] + rates["latency_s"]
            hbm_s = (k * n * wb + ms * (k + n) * ACT_B) / (gpu.mem_bw_gbps * 1e9)
            out.append(pd.DataFrame(dict(format=fmt, family=family, m=ms, k=k, n=n, est_s=est, meas_s=meas,
                                         l2=meas < hbm_s)))
    return pd.concat(out, ignore_index=True)


def report(gpu_dir: str, rows: pd.DataFrame) -> None:
    """Print the error distribution per format x M band."""
    print(f"\n{gpu_dir}: est / measured GEMM time (model shapes; {int(rows.l2.sum())} L2-served and "
          f"{int(rows.meas_s.isna().sum())} off-grid shape rows left out)")
    print(f"  {'format':10s} {'M band':>11s} {'rows':>7s} {'median':>7s} {'p10':>6s} {'p90':>6s} {'|err|%':>7s}")
    ok = rows[~rows.l2 & rows.meas_s.notna()]
    for fmt, f in ok.groupby("format", sort=False):
        for lo, hi in BANDS + ((1, M_MAX),):
            b = f[(f.m >= lo) & (f.m <= hi)]
            if b.empty:
                continue
            r = np.log(b.est_s / b.meas_s)
            band = f"{lo}-{hi}" if (lo, hi) != (1, M_MAX) else "all"
            print(f"  {fmt:10s} {band:>11s} {len(b):7d} {np.exp(np.median(r)):7.2f} {np.exp(np.percentile(r, 10)):6.2f} "
                  f"{np.exp(np.percentile(r, 90)):6.2f} {100 * np.expm1(np.mean(np.abs(r))):7.1f}")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("wheel", type=Path, help="unpacked aiconfigurator-core wheel (the folder holding aiconfigurator_core/)")
    ap.add_argument("--gpus", default=",".join(GPUS), help="table folders, comma-separated")
    ap.add_argument("--models", default="", help="built-in model names, comma-separated (default: all)")
    ap.add_argument("--tp", default="1,2,4,8", help="TP sizes, comma-separated")
    ap.add_argument("--engine", default="best", choices=("best",) + kf.ENGINES)
    ap.add_argument("--with-quant", action="store_true", help="add the quantise kernel the step counts beside the GEMM")
    a = ap.parse_args(argv)
    names = [s for s in a.models.split(",") if s] or list_models()
    shapes = model_shapes(names, [int(t) for t in a.tp.split(",")])
    print(f"{len(shapes)} dense GEMM shapes (k, n) of {len(set(shapes.family))} models at TP {a.tp}; tables: {a.engine}")
    for gpu_dir in a.gpus.split(","):
        report(gpu_dir, compare(a.wheel, gpu_dir, shapes, a.engine, a.with_quant))


if __name__ == "__main__":
    main()
