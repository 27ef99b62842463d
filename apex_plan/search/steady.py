"""Steady-state capacity: a workload long enough to reach steady state, judged over a window.

A finite trace can "meet" an SLO at a rate the engine could never sustain: it drains a burst it
never kept up with. So capacity is not measured on the given trace as it is:

* The trace (or preset sample) is a *request mix*: each simulation draws its requests from it
  in rounds without replacement (so any stretch as long as the mix represents it), and its
  inter-arrival gaps the same way from the trace's gaps normalised to a mean of 1
  (a renewal process with the trace's burstiness), scaled to the rate under test. The draw is one
  fixed seeded stream, so every rate and plan sees the same requests (common random numbers) and
  the result does not depend on how many requests the mix has, once it represents the mix.
* The horizon is set by Little's law, not by the trace: with `L = rate x time in system` requests
  in flight at steady state (time in system <= TTFT SLO + mean output x TPOT SLO when the SLO is
  met; at most the engine's concurrency cap plus a TTFT SLO's worth of queue), the simulation
  runs a warm-up of WARMUP_FACTOR x L arrivals, a measured window of max(WINDOW_MIN_REQUESTS,
  WINDOW_FACTOR x L) arrivals, and a tail of TAIL_FACTOR x L arrivals so the window's last
  requests are served under load, not in a drain. The first L arrivals of the warm-up come at
  once, so the engine starts near its operating point rather than filling up from empty, which
  near capacity takes far longer than any affordable warm-up.
* The SLO is judged over the window's requests only: the share missing the TTFT target and the
  share missing the TPOT target must each stay within 100 - percentile (%) after adding
  CONFIDENCE_Z standard errors (batch means over BATCHES stretches of the window), and the window
  must be stable: the number of requests in the system (arrived, not finished) may grow by at most
  GROWTH_TOLERANCE x the arrival rate (mean of the window's last quarter against its first).
  An overloaded engine's backlog grows at (arrival - service) rate, which a burst drain cannot
  hide, so a rate more than ~GROWTH_TOLERANCE above what the engine serves fails.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import numpy as np

from apex_plan.search import results as R
from apex_plan.simulate.metrics import Distribution
from apex_plan.simulate.run import SimResult
from apex_plan.workload.spec import Slo, Trace

WARMUP_FACTOR = 3.0            # warm-up arrivals per request in flight (three times in system)
WINDOW_FACTOR = 2.0            # measured arrivals per request in flight, at least ...
WINDOW_MIN_REQUESTS = 2000     # ... this many, for the batch-means error of the miss share
WINDOW_MIN_LIGHT = 500         # window when few requests are in flight, ...
WINDOW_PER_IN_FLIGHT = 100     # ... growing with the requests in flight up to WINDOW_MIN_REQUESTS
TAIL_FACTOR = 1.0              # arrivals after the window: one time in system keeps the load on
MIN_WARMUP_REQUESTS = 100
MAX_HORIZON_REQUESTS = 40_000  # a cap on one simulation; the window shrinks first when reached
GROWTH_TOLERANCE = 0.03        # backlog growth allowed, as a share of the arrival rate
BATCHES = 8                    # batch means over the window for the sampling error of SLO misses
CONFIDENCE_Z = 1.0             # misses + this many standard errors must stay within the allowance
FALLBACK_TTFT_S = 10.0         # time-in-system terms when an SLO is not given
FALLBACK_TPOT_S = 0.2
STREAM_SEED = 20_240_601       # the fixed draw every simulation shares
TAIL_QUANTILE = 99.0           # long requests set how long the running batch takes to settle
WARMUP_TAIL_FACTOR = 1.0       # warm-up lasts at least this many lifetimes of a tail request


@dataclass(frozen=True, eq=False)
class RequestMix:
    """What the workload asks for, independent of how long it is: lengths and normalised gaps,
    plus one fixed stream drawn from them that every steady-state simulation takes a prefix of."""

    source_requests: int
    stream_prompt: np.ndarray       # int64, MAX_HORIZON_REQUESTS draws
    stream_output: np.ndarray
    stream_gaps: np.ndarray         # float64, mean 1 (units of the mean inter-arrival time)
    mean_prompt: float              # of the whole mix
    mean_output: float
    tail_output: float              # TAIL_QUANTILE of the output lengths
    name: str = ""
    prefix_trace: Trace | None = None   # a trace with prefix structure: replayed in order (see `prefix_stream`)

    def sampling_error(self, n: int) -> dict:
        """How well the first `n` draws represent the mix: the relative error of their mean request
        work (prompt + output tokens) against the whole mix's, and its 1-sigma standard error."""
        work = (self.stream_prompt[:n] + self.stream_output[:n]).astype(np.float64)
        full = self.mean_prompt + self.mean_output
        return {"requests_drawn": int(n), "mix_requests": self.source_requests,
                "work_bias_pct": 100.0 * (float(work.mean()) - full) / full,
                "work_stderr_pct": 100.0 * float(work.std()) / math.sqrt(max(n, 1)) / full}


def _rounds(n: int, size: int, rng: np.random.Generator) -> np.ndarray:
    """`size` indices into range(n): successive random permutations (draws without replacement in
    rounds), so any n consecutive draws hold each request about once and a window represents the mix."""
    reps = -(-size // n)
    return np.concatenate([rng.permutation(n) for _ in range(reps)])[:size]


def request_mix(trace: Trace, seed: int = STREAM_SEED) -> RequestMix:
    """The request mix of `trace` and its fixed stream of draws."""
    n = len(trace)
    rng = np.random.default_rng(seed)
    idx = _rounds(n, MAX_HORIZON_REQUESTS, rng)
    gaps = np.diff(trace.arrival_s) if n > 1 else np.zeros(0)
    if gaps.size and gaps.sum() > 0:
        g = gaps[_rounds(gaps.size, MAX_HORIZON_REQUESTS, rng)] / gaps.mean()
    else:                           # no arrival times to learn from: Poisson
        g = rng.exponential(1.0, size=MAX_HORIZON_REQUESTS)
    if trace.has_prefix_hashes:
        # prefix structure (shared prompts, sessions) lives in the order of the requests: keep it
        stream = prefix_stream(trace, MAX_HORIZON_REQUESTS)
        gaps = np.diff(stream.arrival_s, prepend=0.0)
        return RequestMix(n, stream.prompt_tokens, stream.output_tokens, gaps / max(gaps.mean(), 1e-300),
                          float(trace.prompt_tokens.mean()), float(trace.output_tokens.mean()),
                          float(np.percentile(trace.output_tokens, TAIL_QUANTILE)), trace.name, stream)
    return RequestMix(n, np.ascontiguousarray(trace.prompt_tokens[idx], np.int64),
                      np.ascontiguousarray(np.maximum(trace.output_tokens[idx], 1), np.int64),
                      g / g.mean(), float(trace.prompt_tokens.mean()), float(trace.output_tokens.mean()),
                      float(np.percentile(trace.output_tokens, TAIL_QUANTILE)), trace.name)


def prefix_stream(trace: Trace, size: int) -> Trace:
    """`size` requests of a trace with prefix structure, in its order: laps of the whole trace, each
    lap after the last one ends (one mean gap later), with its block ids and sessions renamed so that
    laps share nothing (a lap is new traffic, not a replay of cached prompts)."""
    n = len(trace)
    laps = -(-size // n)
    lap_of = np.repeat(np.arange(laps, dtype=np.int64), n)[:size]
    idx = np.tile(np.arange(n, dtype=np.int64), laps)[:size]
    out = trace.take(idx)
    span = trace.duration_s + (trace.duration_s / max(n - 1, 1) if n > 1 else 1.0)
    ids = out.hash_ids + np.repeat(lap_of, np.diff(out.hash_ptr)) * (int(trace.hash_ids.max()) + 1)
    session = None if out.session is None else np.where(out.session >= 0, out.session + lap_of * (
        int(trace.session.max()) + 1), -1)
    return dataclasses.replace(out, arrival_s=out.arrival_s + lap_of * span, hash_ids=ids, session=session)


@dataclass(frozen=True)
class Horizon:
    warmup: int
    window: int
    tail: int
    burst: int = 0          # of the warm-up, requests that arrive at once at the start

    @property
    def total(self) -> int:
        return self.warmup + self.window + self.tail


def in_flight(mix: RequestMix, rate_rps: float, slo: Slo, concurrency_cap: int | None) -> float:
    """Requests in the system at steady state (Little's law: rate x time in system), the time from the
    latency targets: `slo` is the SLO, or (SLO-free sizing, see `operating_slo`) the plan's own operating point."""
    ttft = slo.ttft_s or FALLBACK_TTFT_S
    t_sys_s = ttft + mix.mean_output * (slo.tpot_s or FALLBACK_TPOT_S)   # seconds one request stays
    L = rate_rps * t_sys_s
    if concurrency_cap:                       # running slots plus a TTFT SLO's worth of queue
        L = min(L, concurrency_cap + rate_rps * ttft)
    return L


def operating_slo(slo: Slo, ttft_s: float, tpot_s: float) -> Slo:
    """Latencies a replica runs at near a rate (its idle TTFT, its operating TPOT) in the form `horizon`
    sizes a run by. Sizing a capacity run by these instead of the SLO makes the run at a rate the same
    whatever the SLO, so a looser SLO can only pass more rates (capacity monotone in the SLO)."""
    import dataclasses
    return dataclasses.replace(slo, ttft_s=max(ttft_s, 1e-6), tpot_s=max(tpot_s, 1e-6))


def horizon(mix: RequestMix, rate_rps: float, slo: Slo, concurrency_cap: int | None = None) -> Horizon:
    L = in_flight(mix, rate_rps, slo, concurrency_cap)
    # the batch mix settles only once the longest requests (TAIL_QUANTILE) have cycled through
    tail_life_s = (slo.ttft_s or FALLBACK_TTFT_S) + mix.tail_output * (slo.tpot_s or FALLBACK_TPOT_S)
    warm = max(MIN_WARMUP_REQUESTS, math.ceil(WARMUP_FACTOR * L), math.ceil(WARMUP_TAIL_FACTOR * tail_life_s * rate_rps))
    tail = max(MIN_WARMUP_REQUESTS // 2, math.ceil(TAIL_FACTOR * L))
    # light load: requests seldom share a step, so they are nearly independent samples and a shorter
    # window carries the same information (its sampling error still enters the SLO test)
    win_min = min(WINDOW_MIN_REQUESTS, max(WINDOW_MIN_LIGHT, math.ceil(WINDOW_PER_IN_FLIGHT * L)))
    win = max(win_min, math.ceil(WINDOW_FACTOR * L))
    over = warm + win + tail - MAX_HORIZON_REQUESTS
    if over > 0:
        win = max(WINDOW_MIN_REQUESTS // 2, win - over)
        warm = min(warm, MAX_HORIZON_REQUESTS - win - tail)
    # start near the operating point: L requests at once, so the engine begins about as full as at
    # steady state (a stable one drains to it, an overloaded one never does) instead of filling
    # up slowly from empty near its capacity
    burst = min(math.ceil(L), warm // 2)
    return Horizon(warm, win, tail, burst)


def steady_trace(mix: RequestMix, rate_rps: float, n: int, burst: int = 0) -> Trace:
    """The first `n` requests of the mix's stream, arriving at a mean rate of `rate_rps`; the first
    `burst` of them all at time 0."""
    n = min(n, MAX_HORIZON_REQUESTS)
    t = np.cumsum(mix.stream_gaps[:n]) / rate_rps
    t = np.maximum(t - t[min(burst, n - 1)], 0.0) if burst else t - t[0]
    if mix.prefix_trace is not None:        # the trace in order, time-scaled (think times scale with it)
        return mix.prefix_trace.take(np.arange(n)).with_arrivals(t)
    return Trace(t, mix.stream_prompt[:n], mix.stream_output[:n], mix.name)


def window_bounds(trace: Trace, h: Horizon) -> tuple[float, float]:
    """Arrival-time bounds [start, end) of the measured window."""
    a = trace.arrival_s
    return float(a[min(h.warmup, len(a) - 1)]), float(a[min(h.warmup + h.window, len(a) - 1)])


@dataclass(frozen=True, eq=False)
class Window:
    """Per-request values of the window's requests, and the backlog test of one simulation."""

    ttft_s: np.ndarray
    tpot_s: np.ndarray              # per request with more than one output token
    tpot_all_s: np.ndarray          # per request (0 for one-token outputs), for attainment
    e2e_s: np.ndarray
    arrival_s: np.ndarray
    output_tokens: int
    requests: int
    incomplete: int
    backlog_growth_rps: float
    rate_rps: float
    prompt_tokens: int = 0

    @property
    def stable(self) -> bool:
        return self.backlog_growth_rps <= GROWTH_TOLERANCE * self.rate_rps


def window_of(res: SimResult, t0: float, t1: float, rate_rps: float) -> Window:
    """The requests of one simulation that arrived in [t0, t1), and its backlog growth there."""
    tm = res.times
    arr = tm.arrival_s
    inw = (arr >= t0) & (arr < t1)
    ok = tm.finish_s >= 0
    sel = inw & ok
    ttft = tm.first_token_s[sel] - arr[sel] + tm.frontend_s
    gaps = tm.output_tokens[sel] - 1
    span = tm.finish_s[sel] - tm.first_token_s[sel]
    tpot_all = np.divide(span, gaps, out=np.zeros(span.size), where=gaps > 0)
    # requests in the system at each window arrival: arrived so far minus finished so far
    fin = np.sort(np.where(ok, tm.finish_s, np.inf))
    idx = np.flatnonzero(inw)
    growth = 0.0
    if idx.size >= 8:
        backlog = (idx + 1) - np.searchsorted(fin, arr[idx], side="right")
        q = idx.size // 4
        dt = float(arr[idx[-q:]].mean() - arr[idx[:q]].mean())
        if dt > 0:                                   # requests/s the backlog grows by
            growth = float(backlog[-q:].mean() - backlog[:q].mean()) / dt
    e2e = tm.finish_s[sel] - arr[sel] + tm.frontend_s
    return Window(ttft, tpot_all[gaps > 0], tpot_all, e2e, arr[sel], int(tm.output_tokens[sel].sum()), int(inw.sum()),
                  int((inw & ~ok).sum()), growth, rate_rps, int(tm.prompt_tokens[sel].sum()))


def steady_metrics(windows: list[Window], sims: list[SimResult], t0: float, t1: float, rate_rps: float,
                   slo: Slo, h: Horizon, idle_w_per_gpu: float | list[float]) -> R.SteadyMetrics:
    """Steady-state figures over the window, for one replica or a whole deployment (one window per
    simulated plan group). Throughput is what the window's arrivals ask for over its length (equal to
    what is served when stable); energy per request is the dynamic energy per completed request plus
    the idle power of every GPU over one mean inter-arrival time. `idle_w_per_gpu`: one figure, or
    one per simulation (node groups of different GPUs). Mean power is J per request x the rate."""
    ttft = np.concatenate([w.ttft_s for w in windows])
    tpot = np.concatenate([w.tpot_s for w in windows])
    tpot_all = np.concatenate([w.tpot_all_s for w in windows])
    span_s = max(t1 - t0, 1e-9)
    out_tok = sum(w.output_tokens for w in windows)
    n = sum(w.requests for w in windows)
    incomplete = sum(w.incomplete for w in windows)
    idle = idle_w_per_gpu if isinstance(idle_w_per_gpu, list) else [idle_w_per_gpu] * len(sims)
    idle_w = sum(w * s.plan.num_gpus for w, s in zip(idle, sims))          # watts of every GPU idling
    idle_j = sum(w * s.plan.num_gpus * s.makespan_s for w, s in zip(idle, sims))
    done = sum(s.metrics.completed for s in sims)
    # dynamic joules per completed request, plus the idle watts over one mean inter-arrival time
    j_req = (sum(s.energy_j for s in sims) - idle_j) / max(done, 1) + idle_w / rate_rps
    stable = all(w.stable for w in windows)
    growth = max((w.backlog_growth_rps / w.rate_rps for w in windows), default=0.0)
    p = slo.percentile
    ttft_p = float(np.percentile(ttft, p)) if ttft.size else math.inf
    tpot_p = float(np.percentile(tpot, p)) if tpot.size else 0.0
    good = np.ones(ttft.size, bool)
    if slo.ttft_s:
        good &= ttft <= slo.ttft_s
    if slo.tpot_s:
        good &= tpot_all <= slo.tpot_s
    # the percentile SLO holds when at most (100 - p)% of requests miss each target; the miss share is
    # judged with its sampling error (batch means over the window, in arrival order) added
    order = np.argsort(np.concatenate([w.arrival_s for w in windows]), kind="stable")
    allowance = 1.0 - p / 100.0
    miss_ttft = _miss_upper(ttft[order] > slo.ttft_s) if slo.ttft_s else 0.0
    has_gap = np.concatenate([w.tpot_all_s for w in windows])[order]
    multi = np.concatenate([w.tpot_all_s > 0 for w in windows])[order]
    miss_tpot = _miss_upper(has_gap[multi] > slo.tpot_s) if slo.tpot_s else 0.0
    met = bool(ttft.size and incomplete == 0 and stable and miss_ttft <= allowance and miss_tpot <= allowance)
    kv = [s.metrics.memory for s in sims]
    return R.SteadyMetrics(
        rate_per_s=rate_rps, requests=n, completed=n - incomplete,
        ttft_ms=Distribution.of(ttft, 1e3), tpot_ms=Distribution.of(tpot, 1e3),
        e2e_s=Distribution.of(np.concatenate([w.e2e_s for w in windows]), 1.0),
        throughput=R.WindowThroughput(out_tok / span_s, n / span_s, sum(w.prompt_tokens for w in windows) / span_s),
        energy=R.WindowEnergy(j_req, j_req * n / out_tok if out_tok else None, j_req * rate_rps),
        kv_cache=R.KvPeak(max(k.peak_utilization for k in kv), sum(k.preemptions for k in kv)),
        prefix_cache=_prefix_summary(sims), speculative_tokens_per_step=_spec_summary(sims),
        slo=R.WindowSlo(slo.ttft_s * 1e3 if slo.ttft_s else None, slo.tpot_s * 1e3 if slo.tpot_s else None, p,
                        ttft_p * 1e3, tpot_p * 1e3, float(good.mean()) if good.size else 0.0, miss_ttft, miss_tpot, met),
        steady=R.WindowTest(h.warmup, h.window, h.tail, span_s, growth, stable, GROWTH_TOLERANCE))


def _prefix_summary(sims: list[SimResult]) -> R.PrefixSaving:
    """Hit rate (cached over prompt tokens) and prefill tokens saved over the whole simulations (a
    disaggregated run models no prefix caching: none saved)."""
    caches = [s.metrics.prefix_cache for s in sims if s.metrics.prefix_cache is not None]
    saved = sum(c.saved_prefill_tokens for c in caches)
    prompt = sum(int(s.times.prompt_tokens[s.times.ok].sum()) for s in sims)
    return R.PrefixSaving(any(c.enabled for c in caches), saved / prompt if prompt else 0.0, saved)


def _spec_summary(sims: list[SimResult]) -> float | None:
    """Measured tokens per speculative verification (None without speculation)."""
    sp = [s.metrics.speculative for s in sims if s.metrics.speculative]
    steps = sum(x.verify_steps for x in sp)
    return sum((x.measured_tokens_per_step or 0.0) * x.verify_steps for x in sp) / steps if steps else None


def _miss_upper(miss: np.ndarray) -> float:
    """Share of requests that miss a target, plus CONFIDENCE_Z standard errors of batch means."""
    if miss.size == 0:
        return 0.0
    k = min(BATCHES, miss.size)
    shares = np.array([b.mean() for b in np.array_split(miss.astype(np.float64), k)])
    se = float(shares.std(ddof=1)) / np.sqrt(k) if k > 1 else 0.0
    return float(miss.mean()) + CONFIDENCE_Z * se
