"""Deployments: candidates for CP-SAT, steady-state verification of a whole deployment at the
demanded rate, and top-K lists whose entries differ in plan."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field

import numpy as np

from apex_plan.rank.deploy import Candidate, Deployment, DeployQuery, solve_deployments
from apex_plan.search.results import DeploymentDisagg, LaunchEntry, SteadyMetrics, deployment_dict
from apex_plan.search.steady import RequestMix, Window, horizon, steady_metrics, steady_trace, window_bounds, window_of
from apex_plan.simulate.run import SimResult, simulate
from apex_plan.workload.spec import Trace, Workload


@dataclass(frozen=True, eq=False)
class GroupRun:
    """One plan group of a deployment as verified: its replicas' simulation at its share of the rate
    and the measured window of it (per-request figures the report draws)."""
    key: str
    replicas: int
    requests: int
    metrics: SteadyMetrics
    sim: SimResult
    window: Window


@dataclass
class DeploymentEval:
    deployment: Deployment
    verified: bool
    metrics: SteadyMetrics | None       # the whole deployment at the demanded rate, steady state (None: nothing ran)
    runs: tuple[GroupRun, ...] = ()     # per plan group, the verifying simulation (aggregated deployments)
    placement: list[list[str]] = field(default_factory=list)   # per node, the plan key of each replica there
    launch: list[LaunchEntry] = field(default_factory=list)    # per plan: its launch command
    serving: str = "agg"                                       # agg | disagg (prefill and decode pools)
    disagg: DeploymentDisagg | None = None                     # disagg: its pools, TTFT phases, launch commands
    rate_rps: float = 0.0                                      # the rate it was simulated at

    def metrics_dict(self) -> dict:
        """The `metrics` block of the JSON (`results.deployment_dict`)."""
        return deployment_dict(self.metrics, self.verified, self.rate_rps)


def candidate(ev) -> Candidate:
    m = ev.at_demand or ev.at_goodput
    g = ev.at_goodput or m
    return Candidate(key=ev.key, gpus_per_replica=ev.plan.gpus_per_replica, goodput_rps=ev.goodput_rps,
                     energy_j_per_request=m.energy.j_per_request,
                     ttft_p90_s=m.ttft_ms.p90 / 1e3, tpot_p90_s=(m.tpot_ms.p90 or 0.0) / 1e3,
                     pool=ev.pool,
                     # mean watts at its goodput: J per request x requests per second
                     power_w=g.energy.j_per_request * ev.goodput_rps)


def split_trace(trace: Trace, weights: list[float]) -> list[np.ndarray]:
    """Deterministic weighted round-robin of request indices over groups (smooth, by capacity)."""
    w = np.asarray(weights, float) / sum(weights)
    credit = np.zeros(len(w))
    out: list[list[int]] = [[] for _ in w]
    for i in range(len(trace)):
        credit += w
        g = int(np.argmax(credit))
        credit[g] -= 1.0
        out[g].append(i)
    return [np.asarray(o, dtype=np.int64) for o in out]


def sizing_slo(slo, groups: list, rate: float):
    """The latencies a deployment's run is sized by: each plan group's operating point at its
    capacity-weighted share of `rate` (per replica), weighted by that share; the SLO when a plan has none."""
    total = sum(ev.goodput_rps * n for ev, n in groups)
    if total <= 0 or any(getattr(ev, "operating_tpot", None) is None for ev, _ in groups):
        return slo
    ttft = tpot = 0.0
    for ev, n in groups:
        share = ev.goodput_rps * n / total
        one = ev.sizing_slo(slo, rate * share / n)
        ttft, tpot = ttft + share * one.ttft_s, tpot + share * one.tpot_s
    return dataclasses.replace(slo, ttft_s=ttft, tpot_s=tpot)


def verify_deployment(inp, dep: Deployment, by_key: dict, rate: float, mix: RequestMix | None = None,
                      horizon_scale: float = 1.0) -> DeploymentEval:
    """Simulate the whole deployment at `rate` to steady state (see `steady`): each plan group gets
    a capacity-weighted share of the requests, spread round-robin over its replicas; the SLO and the
    backlog test are judged over the common measured window. `horizon_scale` lengthens the run
    (tests re-verify with 4x the requests). Each plan group's run is kept (`DeploymentEval.runs`)."""
    from apex_plan.search.steady import request_mix
    mix = mix or request_mix(inp.trace)
    groups = [(by_key[k], n) for k, n in dep.replicas]
    cap = sum(n * ev.engine.max_num_seqs * ev.plan.pp for ev, n in groups)
    h = horizon(mix, rate, sizing_slo(inp.slo, groups, rate), cap)
    if horizon_scale != 1.0:
        h = dataclasses.replace(h, warmup=math.ceil(h.warmup * horizon_scale), window=math.ceil(h.window * horizon_scale),
                                tail=math.ceil(h.tail * horizon_scale))
    tr = steady_trace(mix, rate, h.total, h.burst)
    t0, t1 = window_bounds(tr, h)
    parts = split_trace(tr, [ev.goodput_rps * n for ev, n in groups]) if len(groups) > 1 else [np.arange(len(tr))]
    runs, ok_all = [], True
    for (ev, n), idx in zip(groups, parts):
        if idx.size == 0:
            continue
        sub = tr.take(idx)
        plan = dataclasses.replace(ev.plan, dp=n)
        res = simulate(inp.model, ev.cluster, plan, ev.run_cfg, Workload(sub), inp.slo)
        if not res.feasible:
            ok_all = False
            continue
        share_rps = rate * idx.size / len(tr)
        w = window_of(res, t0, t1, share_rps)
        one = steady_metrics([w], [res], t0, t1, share_rps, inp.slo, h, [ev.cluster.gpu.idle_w])
        runs.append(GroupRun(ev.key, n, int(idx.size), one, res, w))
    if not runs:
        return DeploymentEval(dep, False, None, rate_rps=rate)
    m = steady_metrics([r.window for r in runs], [r.sim for r in runs], t0, t1, rate, inp.slo, h,
                       [by_key[r.key].cluster.gpu.idle_w for r in runs])
    return DeploymentEval(dep, ok_all and m.slo.met, m, tuple(runs), rate_rps=rate)


def single_replica(dep: Deployment, ev, rate: float) -> DeploymentEval | None:
    """A one-replica deployment at the rate its plan was already simulated at (`at_demand`): the
    same steady-state run as `verify_deployment` would make (same draw, horizon and engine), reused."""
    m = ev.at_demand
    if dep.replicas != ((ev.key, 1),) or not m or m.rate_per_s != rate or ev.demand_run is None:
        return None
    sim, w = ev.demand_run
    return DeploymentEval(dep, bool(m.slo.met), m, (GroupRun(ev.key, 1, m.requests, m, sim, w),), rate_rps=rate)


def layout_signature(dep: Deployment, by_key: dict) -> tuple:
    """What makes two deployments different plans: the set of (tp, pp, dtypes, engine settings) used,
    ignoring replica counts and the expert-parallel degree (ep variants of one layout are one plan)."""
    return tuple(sorted({layout_of(by_key[k]) for k, _ in dep.replicas}, key=repr))


def layout_of(ev) -> tuple:
    """One plan's layout: parallel sizes but ep, dtypes and the engine settings the search varies."""
    p, e = ev.plan, ev.engine_cfg
    # the node group and operating point make a different plan too (other GPUs, other clocks)
    return (p.tp, getattr(p, "adp", 1), p.pp, p.weight_dtype, p.kv_dtype, e.max_num_seqs, e.max_batched_tokens,
            e.chunked_prefill, getattr(ev, "pool", 0), getattr(getattr(ev, "point", None), "label", ""))


def distinct_plans(found: list[Deployment], by_key: dict) -> list[Deployment]:
    """Keep the first (best) deployment of each layout signature."""
    seen, out = set(), []
    for d in found:
        sig = layout_signature(d, by_key)
        if sig not in seen:
            seen.add(sig)
            out.append(d)
    return out


def latency_deployments(inp, ok: list, rate: float, top_k: int, mix: RequestMix) -> list[DeploymentEval]:
    """Latency objective: homogeneous deployments (plan, n replicas) ranked by their own steady-state
    simulation at the demanded rate; CP-SAT checks each fits the cluster (node packing). One entry
    per plan layout: the replica count that gives it the lowest latency, tried from the fewest that
    meet the demand upwards, doubling, until latency improves by less than LATENCY_GAIN."""
    options = []
    for ev in ok:
        n_min = max(1, math.ceil(rate / ev.goodput_rps - 1e-9))
        n_max = ev.cluster.num_gpus // ev.plan.gpus_per_replica
        best = None
        for n in _doubling(n_min, n_max):
            q = DeployQuery(num_nodes=ev.cluster.num_nodes, gpus_per_node=ev.cluster.gpus_per_node,
                            demand_rps=n * ev.goodput_rps * (1 - 1e-6), objective="gpus", top_k=1)
            fit = solve_deployments([dataclasses.replace(candidate(ev), pool=0)], q)
            if not fit or dict(fit[0].replicas)[ev.key] != n:
                continue
            dv = verify_deployment(inp, fit[0], {ev.key: ev}, rate, mix)
            dv.placement = [[ev.key for _ in node] for node in fit[0].placement]
            if not dv.verified:
                continue
            if best is not None and _lat_key(dv)[0] > _lat_key(best)[0] * (1 - LATENCY_GAIN) \
                    and (_lat_key(dv)[1] > _lat_key(best)[1] * (1 - LATENCY_GAIN)):
                if _lat_key(dv) < _lat_key(best):
                    best = dv
                break                       # more replicas no longer buy latency
            if best is None or _lat_key(dv) < _lat_key(best):
                best = dv
        if best is not None:
            options.append(best)
    options.sort(key=_lat_key)
    by_key = {e.key: e for e in ok}
    kept, seen = [], set()
    for d in options:
        sig = layout_signature(d.deployment, by_key)
        if sig not in seen:
            seen.add(sig)
            kept.append(d)
    return kept[:top_k]


LATENCY_GAIN = 0.02      # relative p90 TTFT or TPOT gain that justifies trying more replicas


def _doubling(lo: int, hi: int):
    n = lo
    while n <= hi:
        yield n
        n *= 2


def _lat_key(d: DeploymentEval) -> tuple:
    return (d.metrics.ttft_ms.p90, d.metrics.tpot_ms.p90 or 0.0, d.deployment.gpus, d.deployment.replicas)
