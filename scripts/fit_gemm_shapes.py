"""Fit each GPU x weight format's dense-GEMM shape term (`gemm_shapes:` of a GPU profile) to aiconfigurator-core's
measured GEMM tables, and check it leave-one-shape-family-out.

    python scripts/fit_gemm_shapes.py WHEEL_DIR [--gpus h100_sxm,...] [--holdout llama-3.1-8b] [--write]

Model of a table row (least squares on log time, physical bounds; the fastest kernel per shape over the engines'
main tables, rows faster than HBM dropped: kf.best_table / kf.fit_dense):

    t = max(2 M N (K + K0) / (peak_f x ce), (K N w_f + M (K + N) x 2) / (HBM x be)) + lat + q M K / (HBM x be)

* K0, the K-depth each output tile costs beyond its own: the pipelined main loop's fill and drain and the
  epilogue writing the tile, a fixed time per tile, so efficiency rises with K towards ce (bf16 K0 ~ 150, fp8
  ~ 2x and fp4 ~ 4x as many elements in the same time: the tensor cores' rate per format);
* q, bytes per input element of the activation-quantisation pass(es) the quantised tables time with the GEMM
  (dynamic per-tensor fp8: a max pass and a quantise pass, 2 + 2 + 1 = 5 B; fp8 1x128 blocks: one pass,
  2 + 1 B; nvfp4: 2 + 0.5 B; bf16: 0). The step model counts those kernels itself (estimate.step_cost
  kernel_count_fields), so the profile takes the GEMM alone: ce and K0.

The profile's compute efficiency keeps the end-to-end calibration's level: ce_profile = calibration
compute_efficiency x (ce of this fit / ce of the same format's fit with K0 = 0, same tables): the tables give
each format's size dependence, the calibration its level. (Their absolute levels, fp8 0.67-0.80 and nvfp4 0.52 of
the format's peak, with the quantise pass apart, slowed the served dense fp8 / fp4 prefills that the calibration's
level already over-predicts: README "GEMM efficiency by shape".) Bandwidth efficiency and the fixed time per call
stay the calibration's (the decode side: the tables' small-M rows are their noisiest, the quantise kernels in).

--holdout FAMILY drops the table's (n, k) grid points around every dense GEMM shape of those models
(check_gemm_shapes.model_shapes at TP 1-8), refits, and compares both fits on the family's shapes.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from apex_plan.hardware.load import hardware_dir, load_gpu

sys.path.insert(0, str(Path(__file__).resolve().parent))
import check_gemm_shapes as cg  # noqa: E402  (model shapes, table interpolation)
import fit_kernel_formats as kf  # noqa: E402  (table readers, _solve, write_section)

GPUS = {"h100_sxm": "h100-sxm-80gb", "h200_sxm": "h200-sxm-141gb", "b200_sxm": "b200-sxm-180gb",
        "b300_sxm": "b300-sxm-288gb", "gb200": "gb200-nvl72", "gb300": "gb300-nvl72"}
Q_MAX_BYTES = 6.0        # quantisation bytes per input element: two bf16 reads + one 1-byte write, plus scales
K0_MAX = 4096.0          # bounds the tile overhead at one 4K-deep tile
M_MAX = 16384            # the tokens a step holds (16K-token budgets at most)
# formats written to the profiles: bf16 keeps the calibration's own plain figures (the end-to-end H100 anchor was
# fitted in that form, and the bf16 tables gain nothing from the shape term: rms error 15-22 % either way)
WRITTEN = ("fp8", "fp8-block", "nvfp4")


def rows(df, dtype: str, spec, drop: set | None = None):
    """m, n, k, seconds, HBM bytes of one table dtype's rows a serving step can see."""
    _, wb, _ = kf.DTYPES[dtype]
    d = df[(df.gemm_dtype == dtype) & (df.n >= kf.MIN_DIM) & (df.k >= kf.MIN_DIM) & (df.m <= M_MAX)]
    if drop:
        d = d[[(n, k) not in drop for n, k in zip(d.n, d.k)]]
    m, n, k = (d[c].to_numpy(float) for c in "mnk")
    t_s = d.latency.to_numpy(float) * 1e-3                   # tables give milliseconds
    byts = k * n * wb + m * (k + n) * kf.ACT_B               # weights once + in/out activations
    keep = byts / t_s <= spec.mem_bw_gbps * 1e9              # faster than HBM: served from L2, dropped
    return m[keep], n[keep], k[keep], t_s[keep], byts[keep]


def model_s(x, m, n, k, byts, peak, bw):
    """Table seconds of the model above at x = (ce, be, lat_us, K0, q)."""
    ce, be, lat_us, k0, q = x
    # compute over the tiles' K + K0 depth, or the bytes, then the fixed time and the quantise pass
    return (np.maximum(2.0 * m * n * (k + k0) / (peak * ce), byts / (bw * be)) + lat_us * 1e-6
            + q * m * k / (bw * be))


def fit(m, n, k, t_s, byts, peak, bw, shaped: bool, quant: bool):
    """(x, rms log error, rows): K0 free when `shaped` (else 0), q free for a quantised format (else 0)."""
    hi = [1.0, 1.0, 100.0, K0_MAX if shaped else 1e-9, Q_MAX_BYTES if quant else 1e-9]

    def resid(x):
        return np.log(model_s(x, m, n, k, byts, peak, bw)) - np.log(t_s)
    starts = [(0.7, 0.8, 4.0, 0.0, 0.0), (0.8, 0.8, 5.0, 300.0, 3.0), (0.6, 0.6, 8.0, 800.0, 5.0)]
    return kf._solve(resid, [np.minimum(s, hi) for s in starts], [1e-3, 1e-3, 0.0, 0.0, 0.0], hi)


def grid_neighbours(df, shapes) -> set:
    """The table's (n, k) grid points bracketing each (k, n) of `shapes` (what interpolating them reads)."""
    ns, ks = np.sort(df.n.unique()), np.sort(df.k.unique())
    out = set()
    for k, n in zip(shapes.k, shapes.n):
        near_n = {ns[max(0, np.searchsorted(ns, n) - 1)], ns[min(len(ns) - 1, np.searchsorted(ns, n))]}
        near_k = {ks[max(0, np.searchsorted(ks, k) - 1)], ks[min(len(ks) - 1, np.searchsorted(ks, k))]}
        out |= {(a, b) for a in near_n for b in near_k}
    return out


def family_error(df, dtype, shapes, x, spec, peak) -> float:
    """rms log error of the fit `x` against the table interpolated on the family's shapes (M 1..16384)."""
    d = df[df.gemm_dtype == dtype]
    ms = np.sort(d.m.unique())
    ms = ms[ms <= M_MAX]
    bw, wb = spec.mem_bw_gbps * 1e9, kf.DTYPES[dtype][1]
    errs = []
    for k, n in zip(shapes.k, shapes.n):
        meas = cg.measured_s(d, ms, np.full(len(ms), k), np.full(len(ms), n))
        byts = k * n * wb + ms * (k + n) * kf.ACT_B
        ok = np.isfinite(meas) & (byts / meas <= bw)
        errs.append(np.log(model_s(x, ms[ok], n, k, byts[ok], peak, bw) / meas[ok]))
    e = np.concatenate(errs)
    return float(np.sqrt(np.mean(e ** 2)))


def fit_gpu(root: Path, gpu_dir: str, holdout: str):
    """{format: (ce_profile, K0, error_pct, shaped x, plain-fit error_pct, holdout report)} of one GPU."""
    spec = load_gpu(GPUS[gpu_dir])
    cal = spec.calibration
    df, sources = kf.best_table(root, gpu_dir, "gemm", "gemm_perf.parquet", ["gemm_dtype", "m", "n", "k"])
    if df.empty:
        return {}, sources
    bw = spec.mem_bw_gbps * 1e9
    fam = cg.model_shapes(holdout.split(","), [1, 2, 4, 8]) if holdout else None
    drop = grid_neighbours(df, fam) if holdout else None
    out = {}
    bf16_be = kf.fit_decode_bandwidth(*rows(df, "bfloat16", spec), kf.DTYPES["bfloat16"][1], bw)[0]
    for dtype, (fmt, _, peak_dt) in kf.DTYPES.items():
        if df[df.gemm_dtype == dtype].empty or not spec.supports(peak_dt) or peak_dt != kf.DTYPES[dtype][2]:
            continue
        if dtype in ("int4_wo", "w4a16_mxfp4"):          # weight-only kernels: not a tensor-core format's GEMM
            continue
        peak, quant = spec.peak_flops(peak_dt), dtype != "bfloat16"
        r = rows(df, dtype, spec)
        x, err, n_rows = fit(*r, peak, bw, shaped=True, quant=quant)
        x0, err0, _ = fit(*r, peak, bw, shaped=False, quant=quant)
        ho = None
        if holdout:
            x_ho, _, _ = fit(*rows(df, dtype, spec, drop), peak, bw, shaped=True, quant=quant)
            x_plain, _, _ = fit(*rows(df, dtype, spec, drop), peak, bw, shaped=False, quant=quant)
            ho = {"plain": family_error(df, dtype, fam, x_plain, spec, peak),
                  "shaped_held_out": family_error(df, dtype, fam, x_ho, spec, peak),
                  "shaped_all": family_error(df, dtype, fam, x, spec, peak), "x_held_out": x_ho}
        ce_prof = min(kf.MAX_FRACTION, cal.compute_efficiency * x[0] / x0[0])
        be_dec, err_dec, n_dec = kf.fit_decode_bandwidth(*r, kf.DTYPES[dtype][1], bw)
        ratio = be_dec / bf16_be if np.isfinite(be_dec) and np.isfinite(bf16_be) else 1.0
        out[fmt] = dict(ce=ce_prof, k0=float(x[3]), err=kf.pct(err), x=x, x0=x0, err_plain=kf.pct(err0), rows=n_rows,
                        holdout=ho, ratio=ratio, be_dec=be_dec, err_dec=kf.pct(err_dec) if np.isfinite(err_dec) else
                        float("nan"), rows_dec=n_dec, bf16_be=bf16_be)
    return out, sources


def block(gpu_dir: str, version: str, fits: dict, sources: list[str]) -> str:
    """The profile's `gemm_shapes:` section."""
    lines = ["gemm_shapes:",
             f"  # dense-GEMM shape term per weight format, aiconfigurator-core {version} GEMM tables (systems/data/"
             f"{gpu_dir}/gemm/...), fitted by scripts/fit_gemm_shapes.py:",
             "  # GEMM time = max(2 M N (K + k_overhead) / (peak x compute_efficiency), bytes / (HBM x calibration",
             "  # bandwidth_efficiency x bandwidth_ratio)) + calibration kernel_latency_us; compute_efficiency = calibration compute_efficiency",
             "  # x (this fit's ce / the same format's fit with k_overhead 0): the tables give each format's size dependence,",
             "  # the end-to-end calibration its level. The tables' activation-quantise pass is fitted apart (q; the step counts it).",
             f"  # bandwidth_ratio: the format's small-M (M <= {kf.DECODE_M_MAX}, weights >= {kf.DECODE_MIN_WEIGHT_BYTES / 1e6:.0f} MB) fit t = lat + bytes / (HBM x be),",
             "  # soft-L1, over bf16's on the same tables: the tables give each format's decode bytes/s relative to bf16's.",
             "  # Tables: " + "; ".join(sources) + "."]
    for fmt, f in ((fmt, f) for fmt, f in fits.items() if fmt in WRITTEN):
        ce, be, lat, k0, q = f["x"]
        lines.append(f"  {fmt}: {{compute_efficiency: {f['ce']:.3f}, k_overhead: {k0:.0f}, error_pct: {f['err']:.0f}, "
                     f"bandwidth_ratio: {f['ratio']:.3f}}}".ljust(110)
                     + f"  # fit ce {ce:.3f} be {be:.3f} lat {lat:.2f} us q {q:.2f} B/elem; K0 = 0: ce "
                       f"{f['x0'][0]:.3f}, error {f['err_plain']:.0f}%; {f['rows']} rows; small-M be {f['be_dec']:.3f} "
                       f"/ bf16 {f['bf16_be']:.3f}, error {f['err_dec']:.0f}%, {f['rows_dec']} rows")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("wheel", type=Path)
    ap.add_argument("--gpus", default=",".join(GPUS))
    ap.add_argument("--holdout", default="", help="model families to leave out of the fit and test on")
    ap.add_argument("--write", action="store_true", help="write the gemm_shapes sections of the profiles")
    a = ap.parse_args(argv)
    meta = sorted(a.wheel.glob("aiconfigurator_core-*.dist-info"))
    version = meta[-1].name.removesuffix(".dist-info").split("-")[1] if meta else "?"
    for gpu_dir in a.gpus.split(","):
        fits, sources = fit_gpu(a.wheel, gpu_dir, a.holdout)
        for fmt, f in fits.items():
            ce, be, lat, k0, q = f["x"]
            print(f"{gpu_dir:9} {fmt:10} profile ce {f['ce']:.3f} K0 {k0:5.0f} | fit ce {ce:.3f} be {be:.3f} "
                  f"lat {lat:5.2f} q {q:.2f} err {f['err']:.0f}% (plain {f['err_plain']:.0f}%) | small-M be "
                  f"{f['be_dec']:.3f} / bf16 {f['bf16_be']:.3f} = {f['ratio']:.3f} ({f['rows_dec']} rows, err {f['err_dec']:.0f}%)")
            if f["holdout"]:
                h = f["holdout"]
                print(f"{'':20} {a.holdout} shapes, rms log error: plain {h['plain']:.3f}, shaped fitted without "
                      f"them {h['shaped_held_out']:.3f} (K0 {h['x_held_out'][3]:.0f}), shaped on all {h['shaped_all']:.3f}")
        if a.write and fits:
            kf.write_section(hardware_dir() / f"{GPUS[gpu_dir]}.yaml", "gemm_shapes", block(gpu_dir, version, fits, sources))
    return 0


if __name__ == "__main__":
    sys.exit(main())
