"""Goodput of one replica: the highest arrival rate of the workload mix that keeps the SLO
percentile of both TTFT and TPOT at steady state (see `steady`), found by geometric bisection."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable


from apex_plan.workload.spec import Slo, Trace


def scaled_trace(trace: Trace, rate_per_s: float) -> Trace:
    """The same requests with arrival times stretched or squeezed to a mean rate of `rate_per_s`."""
    base = trace.rate_per_s
    factor = base / rate_per_s if math.isfinite(base) and base > 0 else 1.0
    return trace.with_arrivals(trace.arrival_s * factor)      # prefix ids and sessions kept


# a rate is sustainable when queueing does not build up over the trace: the last third of requests
# may wait at most this much longer than the first third (or this share of the TTFT SLO)
QUEUE_GROWTH_MIN_S = 0.05
QUEUE_GROWTH_SLO_SHARE = 0.1


def sustainable(metrics: dict, slo: Slo) -> bool:
    """The engine keeps up with the arrivals: a finite trace could otherwise 'meet' a loose SLO
    by draining a burst it could never sustain."""
    limit = max(QUEUE_GROWTH_MIN_S, QUEUE_GROWTH_SLO_SHARE * (slo.ttft_s or 0.0))
    return metrics.get("queue_growth_ms", 0.0) <= limit * 1e3


def meets_slo(metrics: dict, slo: Slo) -> bool:
    """The SLO percentile of TTFT and of per-request TPOT are within the limits, every request
    completed, and the load is sustained: for steady-state metrics (`steady.steady_metrics`) the
    backlog does not grow over the measured window; for a plain simulation, queueing does not grow
    over the trace."""
    s = metrics.get("slo")
    if s is not None and not s["met"]:
        return False
    if "steady" in metrics:
        return metrics["steady"]["stable"] and metrics["completed"] == metrics["requests"]
    return metrics["completed"] == metrics["requests"] and sustainable(metrics, slo)


@dataclass(frozen=True)
class Capacity:
    goodput_rps: float
    metrics: dict | None       # at the goodput rate (None when the plan never meets the SLO)
    simulations: int


def find_goodput(run: Callable[[float], dict], slo: Slo, start_rps: float, *, max_doublings: int = 6,
                 iterations: int = 7, floor_rps: float = 1e-3, ceiling_rps: float | None = None) -> Capacity:
    """Bisection (geometric) for the largest rate where `run(rate)` meets the SLO.

    Assumes more load never lowers latency (tested separately); precision is 2^(-iterations) of the
    bracketing ratio, about 1.1% for the default bracket of 2x. With `ceiling_rps`, an upper bound
    on the goodput (`bounds.goodput_bound_rps`), the search starts at half of it and takes the
    ceiling as the failing end instead of doubling.
    """
    sims = 0
    best_rate, best_m = 0.0, None
    hi = max(ceiling_rps / 2 if ceiling_rps else start_rps, floor_rps)
    m = run(hi)
    sims += 1
    if meets_slo(m, slo) and ceiling_rps:
        best_rate, best_m, hi = hi, m, ceiling_rps
    elif meets_slo(m, slo):
        lo, lo_m = hi, m
        for _ in range(max_doublings):
            hi = lo * 2
            m = run(hi)
            sims += 1
            if not meets_slo(m, slo):
                break
            lo, lo_m = hi, m
        else:
            return Capacity(lo, lo_m, sims)        # never failed within the doublings: a lower bound
        best_rate, best_m = lo, lo_m
    else:
        lo = hi
        while lo > floor_rps:
            lo = lo / 4
            m = run(lo)
            sims += 1
            if meets_slo(m, slo):
                best_rate, best_m = lo, m
                break
            hi = lo
        if best_m is None:
            return Capacity(0.0, None, sims)
    lo = best_rate
    for _ in range(iterations):
        mid = math.sqrt(lo * hi)
        m = run(mid)
        sims += 1
        if meets_slo(m, slo):
            lo, best_m = mid, m
        else:
            hi = mid
    return Capacity(lo, best_m, sims)
