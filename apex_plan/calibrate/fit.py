"""Joint fit of engine host constants and GPU physics to measured runs, inside physical bounds.

Loss over all cases together (never one case at a time): mean |ln(pred / measured)| of TTFT and
of TPOT, each capped at MAX_LOG_ERROR (TPOT weighted x2: it is measured with less noise), plus a weak
quadratic pull of each
constant towards its prior in units of its bound width. Coordinate search with shrinking steps:
robust to the simulator's discrete behaviour (batch boundaries), no gradient needed.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np

from apex_plan.calibrate.runs import Case
from apex_plan.engine.spec import EngineProfile

TPOT_WEIGHT = 2.0
PRIOR_WEIGHT = 0.05
SHRINKS = 2            # finer steps tried per constant and round when neither direction helps
MAX_LOG_ERROR = 1.0     # a run's |ln(pred / measured)| counts at most this much (a 2.7x miss): robust to
                        # runs no setting of these constants can explain


# Bounds of each fittable constant (physically plausible ranges) and why.
BOUNDS: dict[str, tuple[float, float, str]] = {
    "host.frontend_ms": (0.0, 250.0, "API server + tokenizer + detokenizer + client, per request"),
    "host.step_ms": (0.1, 8.0, "engine loop per step: V1/SGLang ~1 ms, V0 3 ms"),
    "host.per_seq_ms": (0.0, 0.4, "per scheduled sequence per step"),
    "host.per_prefill_token_us": (0.0, 20.0, "input preparation per prompt token"),
    "host.overlap": (0.0, 1.0, "fraction of host time hidden behind the GPU step"),
    "host.eager_kernel_us": (1.0, 40.0, "PyTorch eager launch per kernel"),
    "gpu.compute_efficiency": (0.4, 0.9, "cuBLAS large-GEMM fraction of dense peak"),
    "gpu.bandwidth_efficiency": (0.6, 0.95, "streaming-kernel fraction of HBM peak"),
    "gpu.attention_efficiency": (0.2, 0.8, "FlashAttention forward fraction of peak"),
    "gpu.kernel_latency_us": (0.5, 8.0, "launch gap + tail of a graphed kernel"),
    "gpu.custom_allreduce_latency_us": (3.0, 15.0, "one-shot custom all-reduce, small message"),
    "gpu.allreduce_latency_us": (8.0, 60.0, "NCCL all-reduce, small message"),
}


@dataclass(frozen=True)
class Param:
    """One fitted constant: where it lives, its bounds and its prior (with the prior's source)."""

    target: str          # "host" (engine profile), "gpu" (GPU calibration)
    field: str
    low: float
    high: float
    prior: float
    source: str = ""


def make_params(names: Sequence[str], profile: EngineProfile, gpu_calibration) -> list[Param]:
    """Params for 'host.step_ms', 'gpu.compute_efficiency', ... with the current values as priors."""
    out = []
    for name in names:
        if name not in BOUNDS:
            raise KeyError(name)
        target, field = name.split(".", 1)
        prior = getattr(profile.host if target == "host" else gpu_calibration, field)
        lo, hi, why = BOUNDS[name]
        out.append(Param(target, field, lo, hi, float(prior), why))
    return out


def apply(params: Sequence[Param], x: Sequence[float], profile: EngineProfile, case: Case):
    """The profile and cluster of `case` with the values `x` for `params`."""
    host = {p.field: v for p, v in zip(params, x) if p.target == "host"}
    gpu = {p.field: v for p, v in zip(params, x) if p.target == "gpu"}
    # fitted host constants apply on every GPU of the cases (per-GPU entries of the profile give way to them;
    # the constants not fitted keep the case's GPU's values)
    prof = (dataclasses.replace(profile, host=dataclasses.replace(profile.on_gpu(case.cluster.gpu.name).host, **host),
                                host_by_gpu={}) if host else profile)
    cl = case.cluster
    if gpu:
        g = dataclasses.replace(cl.gpu, calibration=dataclasses.replace(cl.gpu.calibration, **gpu))
        cl = dataclasses.replace(cl, gpu=g)
    return prof, cl


def predict(cases: Sequence[Case], params: Sequence[Param] = (), x: Sequence[float] = ()) -> np.ndarray:
    """(n, 2) predicted mean TTFT and TPOT in ms (nan where infeasible)."""
    out = np.full((len(cases), 2), np.nan)
    for i, c in enumerate(cases):
        prof, cl = apply(params, x, c.engine.profile, c)
        r = c.run(prof, cl)
        if r.feasible and r.metrics.completed:
            lat = r.metrics.latency
            out[i] = (lat.ttft_ms.mean, lat.tpot_ms.mean if lat.tpot_ms.mean is not None else np.nan)
    return out


def errors(cases: Sequence[Case], pred: np.ndarray) -> np.ndarray:
    """(n, 2) relative errors (pred - measured) / measured of TTFT and TPOT."""
    meas = np.array([[c.ttft_ms, c.tpot_ms] for c in cases])
    return pred / meas - 1.0


def loss(cases: Sequence[Case], pred: np.ndarray, params: Sequence[Param], x: Sequence[float]) -> float:
    meas = np.array([[c.ttft_ms, c.tpot_ms] for c in cases])
    ok = np.isfinite(pred).all(axis=1)
    if not ok.any():
        return math.inf
    lr = np.minimum(np.abs(np.log(pred[ok] / meas[ok])), MAX_LOG_ERROR)
    miss = 1.0 - ok.mean()                              # an infeasible prediction costs as a 100% error
    fit = (lr[:, 0].mean() + TPOT_WEIGHT * lr[:, 1].mean()) * ok.mean() + miss * (1 + TPOT_WEIGHT)
    prior = sum(((v - p.prior) / (p.high - p.low)) ** 2 for p, v in zip(params, x))
    return float(fit + PRIOR_WEIGHT * prior)


def fit(cases: Sequence[Case], params: Sequence[Param], rounds: int = 3,
        progress: Callable[[str], None] | None = None) -> tuple[list[float], float]:
    """Coordinate search from the priors; returns the fitted values and the final loss."""
    x = [p.prior for p in params]
    best = loss(cases, predict(cases, params, x), params, x)
    step = [0.25 * (p.high - p.low) for p in params]
    for rnd in range(rounds):
        for i, p in enumerate(params):
            improved, moved, shrinks = True, False, 0
            while improved:
                improved = False
                for d in (+1, -1):
                    trial = list(x)
                    trial[i] = min(p.high, max(p.low, x[i] + d * step[i]))
                    if trial[i] == x[i]:
                        continue
                    val = loss(cases, predict(cases, params, trial), params, trial)
                    if val < best - 1e-6:
                        x, best, improved, moved = trial, val, True, True
                        break
                if not improved and not moved and shrinks < SHRINKS:
                    step[i] *= 0.4                  # neither direction helped: try a finer step
                    improved, shrinks = True, shrinks + 1
            step[i] *= 0.4
            if progress:
                progress(f"round {rnd + 1} {p.target}.{p.field} = {x[i]:.4g}  loss {best:.4f}")
    return x, best


def weighted_median(values: np.ndarray, weights: np.ndarray) -> float:
    """The smallest value at which the cumulative weight reaches half the total."""
    order = np.argsort(values)
    cum = np.cumsum(weights[order])
    return float(values[order][np.searchsorted(cum, 0.5 * cum[-1])])


def fit_frontend_ms(pred_ttft_ms: np.ndarray, meas_ttft_ms: np.ndarray, frontend_ms: float,
                    weights: np.ndarray | None = None) -> float:
    """The per-request front-end time (ms) that minimises the TTFT MAPE of runs predicted with
    `frontend_ms`, inside its BOUNDS. The front end is added to every request's TTFT after the
    engine loop (simulate.run.RequestTimes), so a run's TTFT is base + f with base = pred - frontend_ms,
    and mean |base + f - m| / m is minimised by the median of m - base weighted by 1 / m (exact).
    `weights` (one per run) scale each run's share, e.g. 1 / runs of its GPU to weigh GPUs equally."""
    ok = np.isfinite(pred_ttft_ms) & np.isfinite(meas_ttft_ms)
    if not ok.any():
        return frontend_ms
    lo, hi, _ = BOUNDS["host.frontend_ms"]
    need = meas_ttft_ms[ok] - (pred_ttft_ms[ok] - frontend_ms)     # the front end each run asks for
    w = 1.0 / meas_ttft_ms[ok] * (1.0 if weights is None else np.asarray(weights, dtype=float)[ok])
    return min(hi, max(lo, weighted_median(need, w)))


def fit_default_frontend_ms(base_ttft_ms: np.ndarray, meas_ttft_ms: np.ndarray, gpu: np.ndarray, min_runs: int,
                            frontend_ms: float) -> float:
    """host.frontend_ms for GPUs without a host_by_gpu entry: the front end (ms) that minimises the mean over
    GPUs of each GPU's TTFT MAPE, exactly (fit_frontend_ms with weights 1 / the runs of the GPU), over the GPUs
    with at least `min_runs` runs; `base_ttft_ms` is each run's TTFT without a front end. `frontend_ms` when
    no GPU has enough runs."""
    gpu = np.asarray(gpu)
    runs = {g: int((gpu == g).sum()) for g in set(gpu.tolist())}
    big = np.array([runs[g] >= min_runs for g in gpu.tolist()], dtype=bool)
    if not big.any():
        return frontend_ms
    w = np.array([1.0 / runs[g] for g in gpu[big].tolist()])
    return fit_frontend_ms(np.asarray(base_ttft_ms)[big], np.asarray(meas_ttft_ms)[big], 0.0, w)  # base: front end 0
