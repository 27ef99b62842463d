"""Goodput of one replica: the highest arrival rate of the workload mix that keeps the SLO
percentile of both TTFT and TPOT at steady state (see `steady`), found by geometric bisection."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable


from apex_plan.search.results import SteadyMetrics
from apex_plan.simulate.metrics import Metrics
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


def sustainable(metrics: Metrics, slo: Slo) -> bool:
    """The engine keeps up with the arrivals: a finite trace could otherwise 'meet' a loose SLO
    by draining a burst it could never sustain."""
    limit = max(QUEUE_GROWTH_MIN_S, QUEUE_GROWTH_SLO_SHARE * (slo.ttft_s or 0.0))
    return metrics.queue_growth_ms <= limit * 1e3


def meets_slo(metrics: SteadyMetrics | Metrics, slo: Slo) -> bool:
    """The SLO percentile of TTFT and of per-request TPOT are within the limits, every request
    completed, and the load is sustained: for steady-state metrics (`steady.steady_metrics`) the
    backlog does not grow over the measured window; for a plain simulation (`simulate.metrics.Metrics`),
    queueing does not grow over the trace."""
    if metrics.slo is not None and not metrics.slo.met:
        return False
    if isinstance(metrics, SteadyMetrics):
        return metrics.steady.stable and metrics.completed == metrics.requests
    return metrics.completed == metrics.requests and sustainable(metrics, slo)


# the KV pool counts as full (admission waits for blocks) at this peak utilisation: vLLM keeps a 1% watermark
# free and reserves whole blocks per request, so a pool that binds peaks a few percent below 100%
KV_FULL_UTILIZATION = 0.95
BINDS_CEILING = "rate ceiling"     # no simulated rate above the goodput missed: the analytic bound stops it


def binding_constraint(failing: SteadyMetrics | Metrics | None, slo: Slo) -> str:
    """What stops a replica just above its goodput, read from the run there that missed the SLO: throughput
    when the backlog grows or requests do not complete (KV memory when requests were preempted or the pool
    ran full, else compute: GPU and host time per request), otherwise the SLO whose percentile missed (the
    larger miss share over its allowance, or the larger percentile over its target); `BINDS_CEILING` when no
    rate above the goodput was run (the search stopped at the analytic bound)."""
    if failing is None:
        return BINDS_CEILING
    steady = isinstance(failing, SteadyMetrics)
    backlog = not failing.steady.stable if steady else not sustainable(failing, slo)
    if backlog or failing.completed < failing.requests:
        kv = failing.kv_cache if steady else failing.memory
        full = kv.preemptions > 0 or kv.peak_utilization >= KV_FULL_UTILIZATION
        return "KV memory" if full else "compute"
    s = failing.slo
    if s is None:
        return "compute"
    allowance = 1.0 - s.percentile / 100.0
    over = []
    for what, target in (("TTFT", s.ttft_ms), ("TPOT", s.tpot_ms)):
        if not target:
            continue
        if steady:                                            # steady state: miss share against the allowance
            miss = s.ttft_miss_upper if what == "TTFT" else s.tpot_miss_upper
            over.append(((miss - allowance) / max(allowance, 1e-9), what))
        else:                                                 # plain run: the percentile against its target
            at = s.ttft_at_percentile_ms if what == "TTFT" else s.tpot_at_percentile_ms
            over.append((at / target - 1.0, what))
    return f"{max(over)[1]} SLO" if over else "compute"


@dataclass(frozen=True)
class Capacity:
    goodput_rps: float
    metrics: SteadyMetrics | Metrics | None   # at the goodput rate (None when the plan never meets the SLO)
    simulations: int
    binding: str = ""          # what stops it just above the goodput (`binding_constraint`)


def find_goodput(run: Callable[[float], SteadyMetrics | Metrics], slo: Slo, start_rps: float, *, max_doublings: int = 6,
                 iterations: int = 7, floor_rps: float = 1e-3, ceiling_rps: float | None = None) -> Capacity:
    """Bisection (geometric) for the largest rate where `run(rate)` meets the SLO.

    Assumes more load never lowers latency (tested separately); precision is 2^(-iterations) of the
    bracketing ratio, about 1.1% for the default bracket of 2x. With `ceiling_rps`, an upper bound
    on the goodput (`bounds.goodput_bound_rps`), the search starts at half of it and takes the
    ceiling as the failing end instead of doubling.
    """
    sims = 0
    best_rate, best_m = 0.0, None
    fail_m = None                                  # the run at `hi` when it was run and missed
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
                fail_m = m
                break
            lo, lo_m = hi, m
        else:
            return Capacity(lo, lo_m, sims, BINDS_CEILING)   # never failed within the doublings: a lower bound
        best_rate, best_m = lo, lo_m
    else:
        lo, fail_m = hi, m
        while lo > floor_rps:
            lo = lo / 4
            m = run(lo)
            sims += 1
            if meets_slo(m, slo):
                best_rate, best_m = lo, m
                break
            hi, fail_m = lo, m
        if best_m is None:
            return Capacity(0.0, None, sims, binding_constraint(fail_m, slo))
    lo = best_rate
    for _ in range(iterations):
        mid = math.sqrt(lo * hi)
        m = run(mid)
        sims += 1
        if meets_slo(m, slo):
            lo, best_m = mid, m
        else:
            hi, fail_m = mid, m
    return Capacity(lo, best_m, sims, binding_constraint(fail_m, slo))
