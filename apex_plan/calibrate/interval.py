"""Prediction intervals from a profile's measured (held-out) error.

A calibration stores the quantiles of the relative error e = pred / measured - 1 over runs the fit
did not see (`calibration_error` in the profile: level, ttft_low, ttft_high, tpot_low, tpot_high).
The measured value of a new run is then pred / (1 + e), so the interval at that level is
[pred / (1 + e_high), pred / (1 + e_low)]. A profile with no such block is "uncalibrated": no
interval is claimed.
"""

from __future__ import annotations

import numpy as np

from apex_plan.engine.spec import EngineProfile

LEVEL = 0.8                      # central 80% interval: the 10th and 90th percentile of held-out error
KEYS = ("ttft", "tpot")


# Student-t 90th percentiles by degrees of freedom (two-sided 80%; any statistics table); above 30: normal
T90 = {1: 3.078, 2: 1.886, 3: 1.638, 4: 1.533, 5: 1.476, 6: 1.440, 7: 1.415, 8: 1.397, 9: 1.383, 10: 1.372,
       12: 1.356, 15: 1.341, 20: 1.325, 30: 1.310}
Z90 = 1.2816
FEW_RUNS = 30                    # below this many runs the band is widened to the t prediction interval; from it on
                                 # the empirical quantiles stand (heavy-tailed errors inflate the sd: the t band
                                 # then held 86-100 % of held-out values instead of 80 %)


def _t90(df: int) -> float:
    keys = [k for k in T90 if k <= df]
    return T90[max(keys)] if df <= 30 and keys else Z90


def weighted_quantile(values: np.ndarray, weights: np.ndarray, q: float) -> float:
    """The q-quantile of `values` with `weights`, linear between order statistics placed at
    (weight below each) / (total - the last one's): equal weights give numpy's default quantile."""
    order = np.argsort(values)
    v, w = values[order], weights[order]
    if v.size == 1:
        return float(v[0])
    pos = (np.cumsum(w) - w) / (w.sum() - w[-1])
    return float(np.interp(q, pos, v))


def tail_levels(level: float, n_eff: float) -> tuple[float, float]:
    """The quantile levels of a central `level` band from n_eff (effective) held-out errors, with the split-
    conformal finite-sample correction: each tail at (1 - (1 - level) / 2) (n + 1) / n, so that a new run
    falls inside with probability >= level (Lei, G'Sell, Rinaldo, Tibshirani, Wasserman 2018, "Distribution-
    free predictive inference for regression", sec. 2.2); the plain percentiles held 71-74 % of held-out
    values in 80 % bands (scripts/refresh_bands.py)."""
    hi = min(1.0, (1.0 - (1.0 - level) / 2.0) * (n_eff + 1.0) / max(n_eff, 1e-9))
    return 1.0 - hi, hi


def error_quantiles(rel_errors: np.ndarray, runs: int, level: float = LEVEL,
                    groups: np.ndarray | None = None) -> dict[str, float]:
    """The `calibration_error` block from (n, 2) relative errors of TTFT and TPOT (nan rows ignored).

    `groups` (n labels, e.g. each run's model): a group of n runs weighs sqrt(n) in the percentiles (each
    run 1 / sqrt(n)): its runs share one bias, so they carry about sqrt(n) runs' worth of independent
    error, and a model measured 177 times does not set the band alone; a new model's errors share a bias
    that only the spread between models shows (weights 1 / n held out new models' runs better but put
    86-92 % of a held-out GPU's inside an 80 % band: scripts/cross_validate.py, README). Below FEW_RUNS runs the band is the
    wider of the empirical 10th-90th percentiles and the normal prediction interval mean +- t(n-1) * sd *
    sqrt(1 + 1/n) (a few runs understate the spread of the next one); from FEW_RUNS on, the percentiles."""
    out: dict[str, float] = {"level": level, "runs": float(runs)}
    for j, key in enumerate(KEYS):
        ok = np.isfinite(rel_errors[:, j])
        e = rel_errors[ok, j]
        if e.size:
            if groups is None:
                w = np.ones(e.size)
            else:
                g = np.asarray(groups)[ok]
                _, inv, counts = np.unique(g, return_inverse=True, return_counts=True)
                w = 1.0 / np.sqrt(counts[inv])                 # a group of n runs weighs sqrt(n)
            lo_q, hi_q = tail_levels(level, w.sum() ** 2 / (w ** 2).sum())   # Kish's effective sample size
            lo, hi = weighted_quantile(e, w, lo_q), weighted_quantile(e, w, hi_q)
            if 2 <= e.size < FEW_RUNS and abs(level - 0.8) < 1e-9:
                half = _t90(e.size - 1) * float(e.std(ddof=1)) * (1 + 1 / e.size) ** 0.5
                lo, hi = min(lo, float(e.mean()) - half), max(hi, float(e.mean()) + half)
            out[f"{key}_low"], out[f"{key}_high"] = lo, hi
    return out


def interval(profile: EngineProfile, key: str, predicted: float | None) -> dict:
    """{level, low, high, basis} for a predicted TTFT/TPOT (ms), or {status: uncalibrated}."""
    ce = profile.calibration_error or {}
    lo, hi = ce.get(f"{key}_low"), ce.get(f"{key}_high")
    if predicted is None or lo is None or hi is None:
        return {"status": "uncalibrated", "basis": "no measured error stored in engine profile " + profile.label}
    # measured = pred / (1 + e): the largest over-prediction gives the low end (e > -1 always: pred > 0)
    low = predicted / (1.0 + max(hi, -0.99))
    high = predicted / (1.0 + max(lo, -0.99))
    new = " of models other than this one (it is not among the calibrated models)" if ce.get("new_model") else ""
    return {"level": ce.get("level", LEVEL), "low": low, "high": high,
            "basis": f"held-out error of {int(ce.get('runs', 0))} runs{new} ({profile.label})"}


def metric_intervals(profile: EngineProfile, metrics: dict) -> dict:
    """Intervals of the mean, p50 and p90 TTFT and TPOT of a simulate result (same error applied)."""
    out = {}
    for key in KEYS:
        d = metrics.get(f"{key}_ms") or {}
        out[f"{key}_ms"] = {stat: interval(profile, key, d.get(stat)) for stat in ("mean", "p50", "p90")}
    return out


def covered(profile: EngineProfile, predicted: np.ndarray, measured: np.ndarray) -> np.ndarray:
    """(n, 2) booleans: does each measured TTFT/TPOT fall inside the profile's interval (nan: no interval)."""
    out = np.full(predicted.shape, np.nan)
    for j, key in enumerate(KEYS):
        for i in range(predicted.shape[0]):
            iv = interval(profile, key, None if not np.isfinite(predicted[i, j]) else float(predicted[i, j]))
            if "low" in iv and np.isfinite(measured[i, j]):
                out[i, j] = float(iv["low"] <= measured[i, j] <= iv["high"])
    return out


def goodput_interval(profile: EngineProfile, times, slo, makespan_s: float) -> dict:
    """Goodput (requests/s meeting both SLOs) with every request's TTFT and TPOT moved to the pessimistic
    and to the optimistic end of the interval (the makespan is kept: a first-order bound)."""
    ce = profile.calibration_error or {}
    if not all(k in ce for k in ("ttft_low", "ttft_high", "tpot_low", "tpot_high")):
        return {"status": "uncalibrated", "basis": "no measured error stored in engine profile " + profile.label}
    ok = times.ok
    ttft, tpot = times.ttft_s, times.tpot_per_request_s

    def good(ttft_scale: float, tpot_scale: float) -> float:
        g = np.ones(int(ok.sum()), bool)
        if slo.ttft_s:
            g &= ttft * ttft_scale <= slo.ttft_s
        if slo.tpot_s:
            g &= tpot * tpot_scale <= slo.tpot_s
        return float(g.sum()) / makespan_s

    # measured = pred / (1 + e): e_low gives the slowest plausible server, e_high the fastest
    slow = (1 / (1 + max(ce["ttft_low"], -0.99)), 1 / (1 + max(ce["tpot_low"], -0.99)))
    fast = (1 / (1 + max(ce["ttft_high"], -0.99)), 1 / (1 + max(ce["tpot_high"], -0.99)))
    return {"level": ce.get("level", LEVEL), "low": good(*slow), "high": good(*fast),
            "basis": f"held-out error of {int(ce.get('runs', 0))} runs ({profile.label})"}


def uncalibrated_components(plan, gpu, gpus_per_node: int, profile: EngineProfile) -> list[str]:
    """What a prediction relied on that no measured run has calibrated (README 'Calibration'); a GPU
    profile names the runs its physics were fitted to in `calibrated_with` (empty: datasheet defaults)."""
    out = []
    if plan.pp > 1:
        out.append("pipeline parallelism: no pipeline-parallel run was measured")
    if plan.ep > 1:
        where = "across nodes" if plan.tp * plan.pp * max(plan.adp, 1) > gpus_per_node else "within a node"
        out.append(f"expert parallelism {where}: all-to-all latency and expert imbalance are defaults")
    if not gpu.calibrated_with:
        out.append(f"GPU {gpu.name}: datasheet peaks with default achievable fractions")
    if plan.weight_dtype in ("fp8", "fp4", "int4", "int8"):
        out.append(f"{plan.weight_dtype} GEMM efficiency: not fitted")
    if not profile.calibration_error:
        out.append(f"engine profile {profile.label}: no held-out error stored (no interval)")
    return out


def margin_slo(slo, profile: EngineProfile):
    """The SLO a prediction must meet so that the pessimistic end of the interval meets `slo`:
    measured = pred / (1 + e) <= limit  <=>  pred <= limit * (1 + e_low) (never loosened)."""
    import dataclasses

    from apex_plan.errors import InputError
    ce = profile.calibration_error or {}
    if not all(k in ce for k in ("ttft_low", "tpot_low")):
        raise InputError("--slo-margin", None, f"engine profile {profile.label} carries no measured error",
                         "calibrate it first (apex-plan calibrate RUNS --output FILE.yaml, then --engine FILE.yaml) "
                         "or drop --slo-margin")
    f_ttft = min(1.0, 1.0 + max(ce["ttft_low"], -0.99))
    f_tpot = min(1.0, 1.0 + max(ce["tpot_low"], -0.99))
    tight = dataclasses.replace(slo, ttft_s=slo.ttft_s * f_ttft if slo.ttft_s else slo.ttft_s,
                                tpot_s=slo.tpot_s * f_tpot if slo.tpot_s else slo.tpot_s)
    return tight, {"level": ce.get("level", LEVEL), "ttft_factor": f_ttft, "tpot_factor": f_tpot,
                   "basis": f"held-out error of {int(ce.get('runs', 0))} runs ({profile.label})"}
