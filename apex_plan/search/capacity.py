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


class _Runs:
    """Runs of one replica by rate, each run once, and the verdicts more load never lowering latency implies:
    a rate at or below one that met the SLO meets it, one at or above one that missed misses it (unless the
    runs so far contradict that, when every rate is run)."""

    def __init__(self, run: Callable[[float], SteadyMetrics | Metrics], slo: Slo):
        self._run, self._slo = run, slo
        self.metrics: dict[float, SteadyMetrics | Metrics] = {}
        self.verdict: dict[float, bool] = {}

    def measure(self, rate: float) -> SteadyMetrics | Metrics:
        if rate not in self.metrics:
            self.metrics[rate] = m = self._run(rate)
            self.verdict[rate] = meets_slo(m, self._slo)
        return self.metrics[rate]

    def passes(self, rate: float) -> bool:
        if rate not in self.verdict:
            top_ok = max((r for r, v in self.verdict.items() if v), default=-math.inf)
            low_bad = min((r for r, v in self.verdict.items() if not v), default=math.inf)
            if top_ok < low_bad and (rate <= top_ok or rate >= low_bad):
                return rate <= top_ok
            self.measure(rate)
        return self.verdict[rate]


def _bisect(passes: Callable[[float], bool], start_rps: float, max_doublings: int, iterations: int, floor_rps: float,
            ceiling_rps: float | None) -> tuple[str, float, float | None]:
    """The rates find_goodput's search visits, given the verdict at each: (outcome, lo, hi) with outcome
    "bracket" (goodput lo, the first missing rate above it hi; None when that is the untested ceiling),
    "lower" (lo met the SLO at every doubling: a lower bound) or "none" (every rate missed, hi the lowest)."""
    hi = max(ceiling_rps / 2 if ceiling_rps else start_rps, floor_rps)
    if passes(hi) and ceiling_rps:
        lo, hi = hi, None                             # the ceiling is the failing end, never run
    elif passes(hi):
        lo = hi
        for _ in range(max_doublings):
            if not passes(lo * 2):
                hi = lo * 2
                break
            lo = lo * 2
        else:
            return "lower", lo, None
    else:
        lo = hi
        while lo > floor_rps:
            lo = lo / 4
            if passes(lo):
                break
            hi = lo
        else:
            return "none", 0.0, hi
    for _ in range(iterations):
        mid = math.sqrt(lo * (ceiling_rps if hi is None else hi))
        if passes(mid):
            lo = mid
        else:
            hi = mid
    return "bracket", lo, hi


GUESS_PROBES = 4     # runs spent walking from a guess before the bisection takes over
GUESS_STEPS = (1, 2, 4, 8, 16)   # bisection cells of each step of that walk
SECANT_PROBES = 4    # runs spent on guesses from the runs' own latencies (`crossing_rps`)


def _leaf(rate: float, args: tuple) -> tuple[float, float]:
    """The rate the bisection ends on were the goodput `rate`, and one cell there as a ratio."""
    _, lo, hi = _bisect(lambda r: r <= rate, *args)
    return lo, (hi if hi is not None else args[4] or 2 * lo) / lo if lo else 1.0


def _probe(runs: _Runs, guess_rps: float, args: tuple) -> None:
    """Run the rate the bisection would end on were the goodput `guess_rps`, then walk from it 1, 2, 4 ...
    bisection cells (galloping) up while rates meet the SLO, or down while they miss it, until one
    that meets it and one that misses it are known, or GUESS_PROBES runs are spent."""
    def leaf(rate: float) -> tuple[float, float]:
        return _leaf(rate, args)
    at, width = leaf(guess_rps)
    if not at:
        return
    up = runs.passes(at)
    for cells in GUESS_STEPS[:GUESS_PROBES - 1]:
        nxt, _ = leaf(at * width ** ((cells if up else -cells) + 0.5))
        if not nxt or nxt == at:
            return
        if runs.passes(nxt) != up:
            return                                     # a meeting and a missing rate: the bisection closes in
        at = nxt


class _Informed(Exception):
    """The runs so far can give a guess (`crossing_rps`)."""


def _pair(runs: _Runs) -> tuple[float, float, bool] | None:
    """The two runs a guess is drawn from, (a, b, bracketed): the highest rate that met the SLO and the lowest
    that missed it, or else the two highest that met it; None while neither pair exists."""
    met = sorted(r for r, v in runs.verdict.items() if v)
    missed = [r for r, v in runs.verdict.items() if not v]
    if met and missed and met[-1] < min(missed):
        return met[-1], min(missed), True
    return (met[-2], met[-1], False) if len(met) >= 2 else None


def _until_informed(runs: _Runs) -> Callable[[float], bool]:
    """`runs.passes` that stops the bisection (raises `_Informed`) once `_pair` has two runs."""
    def passes(rate: float) -> bool:
        verdict = runs.passes(rate)
        if _pair(runs) is not None:
            raise _Informed
        return verdict
    return passes


def crossing_rps(runs: _Runs) -> float | None:
    """A goodput guess from the runs themselves (the pair of `_pair`, a < b): a loaded server's latency grows
    like 1 / (1 - load) (a queue's), so the reciprocal of each latency at the SLO percentile is taken to fall
    linearly with the rate, and the guess is where the first of TTFT and TPOT reaches its target:
    between a and b when b missed (b itself when neither of b's latencies is past its target: the miss
    share's sampling error or a backlog failed it), beyond b when both met. None without such a pair, an
    SLO in the metrics, or a latency that grows from a to b."""
    pair = _pair(runs)
    if pair is None:
        return None
    a, b, bracketed = pair
    sa, sb = getattr(runs.metrics[a], "slo", None), getattr(runs.metrics[b], "slo", None)
    if sa is None or sb is None:
        return None
    shares = []
    for target_ms, at_a_ms, at_b_ms in ((sb.ttft_ms, sa.ttft_at_percentile_ms, sb.ttft_at_percentile_ms),
                                        (sb.tpot_ms, sa.tpot_at_percentile_ms, sb.tpot_at_percentile_ms)):
        if target_ms and at_b_ms > at_a_ms > 0:
            # share of the way from a to b at which 1 / latency falls to 1 / target
            share = (1 / at_a_ms - 1 / target_ms) / (1 / at_a_ms - 1 / at_b_ms)
            shares.append(min(max(share, 0.0), 1.0) if bracketed else max(share, 0.0))
    return a + (b - a) * min(shares) if shares else None


def _secant(runs: _Runs, args: tuple) -> None:
    """Guess from the runs' latencies (`crossing_rps`) and run the rate the bisection would end on were the
    goodput the guess (or the cell above or below it), while that rate lies strictly between the two runs
    the guess came from (only a run settles it), up to SECANT_PROBES runs; each run tightens the pair."""
    for _ in range(SECANT_PROBES):
        pair, guess = _pair(runs), crossing_rps(runs)
        if guess is None:
            return
        a, b, bracketed = pair
        at, width = _leaf(guess, args)
        if not at:
            return
        tries = (at, _leaf(at * width ** 1.5, args)[0], _leaf(at / width ** 0.5, args)[0])
        nxt = next((r for r in tries if r and a < r and (r < b or not bracketed) and r not in runs.verdict), None)
        if nxt is None:
            return                      # the guess's cell is settled: the bisection only reads verdicts now
        runs.passes(nxt)


def find_goodput(run: Callable[[float], SteadyMetrics | Metrics], slo: Slo, start_rps: float, *, max_doublings: int = 6,
                 iterations: int = 7, floor_rps: float = 1e-3, ceiling_rps: float | None = None,
                 guess_rps: float | None = None, interpolate: bool = False) -> Capacity:
    """Bisection (geometric) for the largest rate where `run(rate)` meets the SLO.

    Assumes more load never lowers latency (tested separately); precision is 2^(-iterations) of the
    bracketing ratio, about 1.1% for the default bracket of 2x. With `ceiling_rps`, an upper bound
    on the goodput (`bounds.goodput_bound_rps`), the search starts at half of it and takes the
    ceiling as the failing end instead of doubling.

    With `guess_rps` (a prediction of the goodput), the rates the bisection would end between were the
    goodput the guess are run first, walking from them until a meeting and a missing rate are known
    (`_probe`); the bisection then runs only the rates those verdicts do not imply under that same
    assumption. A guess within a cell takes 2 runs instead of 1 + `iterations`, and the result (the
    rates the bisection ends between, hence the goodput, its metrics and the binding constraint) is
    the one without a guess: the rates are computed the same way, so they are the same floats.

    With `interpolate`, once the runs (the guess's walk, or the bisection's first steps) hold a rate that
    met the SLO and one that missed it, or two that met it, the latencies of those two runs give a second
    guess (`crossing_rps`), refined with each run it takes (`_secant`); the rates run are again
    bisection rates, so the result is again the one without guesses.
    """
    runs = _Runs(run, slo)
    args = (start_rps, max_doublings, iterations, floor_rps, ceiling_rps)
    if guess_rps is not None and guess_rps > 0:
        _probe(runs, guess_rps, args)
    if interpolate:
        try:
            _bisect(_until_informed(runs), *args)
        except _Informed:
            _secant(runs, args)
    outcome, lo, hi = _bisect(runs.passes, *args)
    fail_m = runs.measure(hi) if hi is not None else None
    if outcome == "none":
        return Capacity(0.0, None, len(runs.metrics), binding_constraint(fail_m, slo))
    best_m = runs.measure(lo)
    binding = BINDS_CEILING if outcome == "lower" else binding_constraint(fail_m, slo)
    return Capacity(lo, best_m, len(runs.metrics), binding)
