"""`apex-plan search`: enumerate the replica plans the engine supports, prune by symmetry, screen
and bound analytically, find each survivor's steady-state goodput by simulation (skipping plans
whose bound cannot beat what was found), choose deployments with CP-SAT, and verify them at
steady state."""

from __future__ import annotations

import copy
import dataclasses
import math
from dataclasses import dataclass
from typing import Callable

from apex_plan.model.spec import ModelSpec
from apex_plan.plan.spec import Plan
from apex_plan.rank.deploy import DeployQuery, Pool, closest_deployment, solve_deployments
from apex_plan.search.bounds import PRUNE_OBJECTIVES, cannot_cover, dominated_by, gpus_needed, outranked
from apex_plan.search.capacity import find_goodput
from apex_plan.search.inorder import simulate_in_order
from apex_plan.search.layouts import profile_caps
from apex_plan.search.results import ClosestDeployment, LaunchEntry, SteadyMetrics
from apex_plan.search.spec import PlanEval, SearchInputs  # noqa: F401 (re-exported)
from apex_plan.search.variants import make_evals, prepare
from apex_plan.search.steady import RequestMix, horizon, request_mix, steady_metrics, steady_trace, window_bounds, window_of
from apex_plan.search.verify import (DeploymentEval, candidate, distinct_plans, latency_deployments, layout_of,  # noqa: F401
                                     single_replica, verify_deployment)
from apex_plan.simulate.engine import resolve_engine
from apex_plan.simulate.run import simulate
from apex_plan.workload.spec import Slo, Workload

OBJECTIVES = ("gpus", "energy", "cost", "latency", "throughput")
GOODPUT_ITERATIONS = 5      # bisection steps in [bound/2, bound]: 2^(1/32), a 2.2% bracket
SIM_THREADS = 2             # plans simulated at once in phase 2: the 2 cores the speed bar assumes
GUESSES = True              # goodput guesses (`find_goodput`: ep variants, own latencies): fewer runs, the same result
SIM_LOOKAHEAD = 6           # how far past the next result to take a plan may start (`search.inorder`)


@dataclass
class SearchResult:
    inputs: SearchInputs
    stats: dict
    plans: list[PlanEval]
    rejected: list[tuple[Plan, str]]
    deployments: list[DeploymentEval]
    closest: ClosestDeployment | None
    binding: str                        # which constraint binds when nothing meets the SLO
    mix: RequestMix | None = None
    disagg: object | None = None        # search.disagg.DisaggSearch when disaggregated serving was searched

    @property
    def meets_slo(self) -> bool:
        return bool(self.deployments)


def _one_replica_run(inp: SearchInputs, ev: PlanEval, sc, rate: float, mix: RequestMix):
    """One replica at `rate`, run to steady state and judged over its window: (metrics, SimResult, Window)."""
    # the run is sized by the plan's operating point at this rate, not by the SLO (the same run whatever the SLO)
    h = horizon(mix, rate, ev.sizing_slo(inp.slo, rate), ev.engine.max_num_seqs * ev.plan.pp)
    tr = steady_trace(mix, rate, h.total, h.burst)
    res = simulate(inp.model, ev.cluster, ev.plan, ev.run_cfg, Workload(tr), inp.slo, step_cost=sc)
    t0, t1 = window_bounds(tr, h)
    w = window_of(res, t0, t1, rate)
    return steady_metrics([w], [res], t0, t1, rate, inp.slo, h, ev.cluster.gpu.idle_w), res, w


def _one_replica_metrics(inp: SearchInputs, ev: PlanEval, sc, rate: float, mix: RequestMix) -> SteadyMetrics:
    """One replica at `rate`, run to steady state and judged over its window."""
    return _one_replica_run(inp, ev, sc, rate, mix)[0]


def simulate_plan(inp: SearchInputs, ev: PlanEval, sc, mix: RequestMix, guess_rps: float | None = None) -> bool:
    """Phase 2 for one variant: its steady-state goodput (bisection under its bound; `guess_rps` a
    prediction that spares runs, not a change of result: `find_goodput`) and, with a demand, one replica
    at its share of it. Sets its status; True when it has a goodput."""
    if not GUESSES:
        guess_rps = None
    cap = find_goodput(lambda r: _one_replica_metrics(inp, ev, sc, r, mix), inp.slo, ev.bound_rps / 2,
                       ceiling_rps=ev.bound_rps, iterations=GOODPUT_ITERATIONS, guess_rps=guess_rps,
                       interpolate=GUESSES)
    ev.simulations += cap.simulations
    ev.goodput_rps, ev.at_goodput, ev.binding = cap.goodput_rps, cap.metrics, cap.binding
    if cap.goodput_rps <= 0:
        ev.status, ev.reason = "no_goodput", "misses the SLO at steady state even at the lowest rate tried"
        return False
    ev.status, ev.reason = "ok", ""
    if inp.demand_rps:
        n = math.ceil(inp.demand_rps / cap.goodput_rps - 1e-9)
        ev.replicas_for_demand = n
        ev.at_demand, *run = _one_replica_run(inp, ev, sc, inp.demand_rps / n, mix)
        ev.demand_run = tuple(run)
        ev.simulations += 1
    return True


def goodput_guess(ev: PlanEval, taken: list[tuple[tuple, int, float]]) -> float | None:
    """A prediction of `ev`'s goodput from the plans simulated before it, (layout, ep, goodput / bound)
    each: its bound times the ratio of the one of its layout (an ep variant: the same parallel sizes and
    settings, whose bound and goodput move together) nearest in expert parallelism (the latest of
    equals); None before any."""
    same = [(abs(math.log2(ep / ev.plan.ep)), -i, r) for i, (lay, ep, r) in enumerate(taken) if lay == layout_of(ev)]
    # its goodput is the low end of a bisection cell: the guess is that cell's middle
    return ev.bound_rps * min(same)[2] * 2 ** (0.5 / 2 ** GOODPUT_ITERATIONS) if same else None


def _best_rps_by_size(evals: list[PlanEval]) -> dict[int, float]:
    """Per replica size, the highest goodput a candidate of that size may still reach: its simulated
    goodput (never above its bound), or its bound while it waits; skipped and failed plans none."""
    best: dict[int, float] = {}
    for e in evals:
        r = e.goodput_rps if e.status == "ok" else e.bound_rps if e.status == "pending" else 0.0
        g = e.plan.gpus_per_replica
        best[g] = max(best.get(g, 0.0), r)
    return best


def evaluate_plans(inp: SearchInputs, progress: Callable[[int, int], None] | None = None,
                   mix: RequestMix | None = None) -> tuple[list[PlanEval], list[tuple[Plan, str]], dict, list]:
    """Every variant screened, bounded and (unless a bound rules it out) simulated: the variants, the
    rejected plans, statistics, and the (variant, step cost) pairs skipped by `cannot_cover`."""
    mix = mix or request_mix(inp.trace)
    evals, rej, counts, unique = make_evals(inp)
    # phase 1: memory, clock, analytic screen and bound for every variant (no simulation)
    costs, layer_cost_hits = prepare(inp, evals, mix)
    # phase 2: simulate, most promising per GPU first, skipping plans a simulated one dominates
    # (for gpus/cost with a demand, smallest replicas first: they make the outranked rule bite early)
    # GPU counts rank cost only at one price: with several priced groups no GPU-count rule prunes for cost
    prices = {g.cluster.price_per_gpu_hour for g in inp.groups}
    gpu_ranked = inp.objective == "gpus" or (inp.objective == "cost" and len(prices) == 1)
    if gpu_ranked and inp.demand_rps:
        order = lambda e: (e.plan.gpus_per_replica, -e.bound_rps, e.key)  # noqa: E731
    else:
        order = lambda e: (-e.bound_rps / e.plan.gpus_per_replica, e.key)  # noqa: E731
    todo = sorted((e for e in evals if e.key in costs), key=order)
    # (a power budget may rule out the deployments a pruning rule compares against: no pruning then)
    prune = inp.prune_bounds and inp.objective in PRUNE_OBJECTIVES and (inp.objective == "throughput" or gpu_ranked) \
        and inp.max_power_w is None
    found: dict[int, list[tuple[str, int, float]]] = {}     # per node group: swaps stay on one GPU type
    homog: dict[tuple, int] = {}           # layout -> GPUs of its homogeneous deployment meeting the demand
    cluster_gpus = sum(g.cluster.num_gpus for g in inp.groups)
    cover_memo: dict = {}
    deferred: list[tuple[PlanEval, object]] = []      # skipped as unable to carry the demand (`cannot_cover`)

    def skip(ev: PlanEval) -> bool:
        """Apply the pruning rules on what is known so far; True when `ev` is skipped."""
        g = ev.plan.gpus_per_replica
        if inp.prune_bounds and inp.demand_rps and cannot_cover(ev.bound_rps, g, cluster_gpus, inp.demand_rps,
                                                                _best_rps_by_size(todo), cover_memo):
            ev.reason = (f"no deployment on {cluster_gpus} GPUs that holds a {g}-GPU replica of it (bound "
                         f"{ev.bound_rps:.3g} req/s) carries {inp.demand_rps:.3g} req/s")
            deferred.append((ev, costs[ev.key]))
        elif prune and inp.objective == "throughput" and dominated_by(ev.bound_rps, g, found.get(ev.pool, [])):
            by = dominated_by(ev.bound_rps, g, found.get(ev.pool, []))
            ev.reason = f"bound {ev.bound_rps:.3g} req/s per replica is below what {by} delivers in the same {g} GPUs"
        elif prune and inp.objective != "throughput" and inp.demand_rps and outranked(g, list(homog.values()), inp.top_k):
            ev.reason = f"one replica needs {g} GPUs; {inp.top_k} other plans meet the demand with fewer"
        else:
            return False
        ev.status = "pruned"
        return True

    taken: list[tuple[tuple, int, float]] = []  # (layout, ep, goodput / bound) of the results taken, in order

    def start(ev: PlanEval):
        """Phase 2 of `ev` on a copy (`ev` stays as it was until its result is taken), guessed from the
        results taken so far (`inorder`: its earlier variants of the same layout are all resolved)."""
        guess, c = goodput_guess(ev, taken), copy.copy(ev)
        return lambda: (c, simulate_plan(inp, c, costs[ev.key], mix, guess))

    def take(ev: PlanEval, result: tuple[PlanEval, bool]) -> None:
        c, ok = result
        ev.__dict__.update(c.__dict__)
        if not ok:
            return
        taken.append((layout_of(ev), ev.plan.ep, ev.goodput_rps / ev.bound_rps))
        found.setdefault(ev.pool, []).append((ev.key, ev.plan.gpus_per_replica, ev.goodput_rps))
        need = gpus_needed(inp.demand_rps, ev.goodput_rps, ev.plan.gpus_per_replica) if inp.demand_rps else 0
        layout = layout_of(ev)
        if inp.demand_rps and need <= ev.cluster.num_gpus and need < homog.get(layout, math.inf):
            homog[layout] = need

    # plans simulated SIM_THREADS at once (the kernel releases the GIL), results taken in order
    simulate_in_order(todo, skip, start, take, lambda a, b: layout_of(a) == layout_of(b), SIM_THREADS,
                      SIM_LOOKAHEAD, progress)
    deferred.sort(key=lambda d: todo.index(d[0]))       # skip order may vary with timing; the list does not
    if progress:
        progress(len(todo), len(todo))
    stats = {
        "enumerated": counts["enumerated"],
        "after_symmetry": counts["after_symmetry"],
        "unique_plans": unique,
        "candidates": len(evals),
        "rejected": len(rej),
        "rejected_reasons": dict(sorted({r: sum(1 for _, x in rej if x == r) for _, r in rej}.items())),
        **_status_counts(evals, mix),
    }
    stats["layer_cost_memo_hits"] = layer_cost_hits
    stats["sampling"] = stats.pop("sampling")          # the wire order: sampling last
    return evals, rej, stats, deferred


def _status_counts(evals: list[PlanEval], mix: RequestMix) -> dict:
    """The statistics that follow from the variants' statuses and simulations."""
    ok = [e for e in evals if e.status == "ok"]
    return {
        "infeasible_memory": sum(e.status == "infeasible" for e in evals),
        "screened_out": sum(e.status == "screened" for e in evals),
        "pruned_by_bound": sum(e.status == "pruned" for e in evals),
        "simulated": sum(e.simulations > 0 for e in evals),
        "simulations": sum(e.simulations for e in evals),
        "no_goodput": sum(e.status == "no_goodput" for e in evals),
        "same_clock_duplicates": sum(e.status == "duplicate" for e in evals),
        "with_goodput": len(ok),
        "sampling": mix.sampling_error(max((e.at_goodput.steady.drawn for e in ok if e.at_goodput), default=0) or 1000),
    }


def _plan_rank_key(e: PlanEval, objective: str) -> tuple:
    order = {"ok": 0, "no_goodput": 1, "pruned": 2, "screened": 3, "infeasible": 4}
    if e.status != "ok":
        return (order.get(e.status, 5), e.key)
    m = e.at_demand or e.at_goodput
    gpus = (e.replicas_for_demand or 1) * e.plan.gpus_per_replica
    if objective == "latency":
        k = (m.ttft_ms.p90, m.tpot_ms.p90 or 0.0)
    elif objective == "energy":
        k = (m.energy.j_per_request,)
    elif objective == "throughput":
        k = (-e.goodput_rps / e.plan.gpus_per_replica,)
    else:
        k = (gpus, m.energy.j_per_request)
    return (0, *k, e.key)


def _binding_constraint(evals: list[PlanEval], slo: Slo, rejected: list[tuple[Plan, str]] = ()) -> str:
    """Say which constraint rules out every plan."""
    if not evals:
        reasons = sorted({r for _, r in rejected})
        return "no plan survives enumeration" + (": " + "; ".join(reasons[:3]) if reasons else "")
    if all(e.status == "infeasible" for e in evals):
        return "memory: no plan's weights and KV cache fit the GPUs"
    scr = [e for e in evals if e.screen is not None]
    if scr:
        best_tpot = min(e.screen.tpot_floor_s for e in scr)
        best_ttft = min(e.screen.ttft_floor_s for e in scr)
        if slo.tpot_s and best_tpot > slo.tpot_s:
            return f"TPOT SLO: the fastest plan decodes at {best_tpot * 1e3:.1f} ms per token with no load"
        if slo.ttft_s and best_ttft > slo.ttft_s:
            return f"TTFT SLO: the fastest plan needs {best_ttft * 1e3:.0f} ms to prefill the percentile prompt"
    return "SLO: every plan misses it at steady state even at the lowest rate tried"


def _attach_launch(d: DeploymentEval, by_key: dict, model: ModelSpec, family: str) -> None:
    from apex_plan.report.launch import launch_command, power_prefix

    def command(k: str) -> str:
        repo, prequantized = model.checkpoint_repo(by_key[k].plan.weight_dtype)   # the checkpoint in the plan's format
        return power_prefix(by_key[k].point) + launch_command(family, repo or model.name, by_key[k].plan,
                                                              by_key[k].engine, prequantized, model.remote_code,
                                                              model.num_experts)
    d.launch = [LaunchEntry(k, n, command(k)) for k, n in d.deployment.replicas]


def _pools(inp: SearchInputs) -> list[Pool]:
    return [Pool(g.cluster.num_nodes, g.cluster.gpus_per_node, g.cluster.price_per_gpu_hour, g.name)
            for g in inp.groups]


def _layout_groups(ok: list[PlanEval]) -> list[int]:
    """One group per layout (tp, pp, dtypes, engine settings): ep variants of a layout are one plan."""
    ids: dict[tuple, int] = {}
    return [ids.setdefault(layout_of(e), len(ids)) for e in ok]


VERIFY_STEPS = (0.98, 0.96, 0.94)    # max-throughput deployments: rates tried below the sum of goodputs


def _verified_capacity(inp: SearchInputs, dep, by_key: dict, mix: RequestMix) -> DeploymentEval:
    """A max-throughput deployment whose summed goodput failed its own steady-state run: the highest of
    VERIFY_STEPS x that rate it sustains, with its capacity lowered to it (unverified if none)."""
    dv = None
    for f in VERIFY_STEPS:
        rate = dep.goodput_rps * f
        dv = verify_deployment(inp, dep, by_key, rate, mix)
        if dv.verified:
            dv.deployment = dataclasses.replace(dep, goodput_rps=rate, objective_value=rate)
            break
    return dv


def run_search(inp: SearchInputs, progress: Callable[[int, int], None] | None = None) -> SearchResult:
    """Aggregated deployments (`inp.serving` agg), disaggregated ones (disagg), or both in one list."""
    from apex_plan.search.disagg import AGG_STAT_KEYS, search_with_disagg

    def empty_result(mix: RequestMix) -> SearchResult:
        return SearchResult(inp, dict.fromkeys(AGG_STAT_KEYS, 0) | {"rejected_reasons": {}}, [], [], [], None, "", mix)
    return search_with_disagg(inp, progress, run_agg, empty_result)


def run_agg(inp: SearchInputs, progress: Callable[[int, int], None] | None = None,
            mix: RequestMix | None = None) -> SearchResult:
    mix = mix or request_mix(inp.trace)
    evals, rejected, stats, deferred = evaluate_plans(inp, progress, mix)
    ok = [e for e in evals if e.status == "ok"]
    by_key = {e.key: e for e in ok}
    deployments: list[DeploymentEval] = []
    closest = None
    binding = ""
    rate = inp.demand_rps
    if ok and inp.objective == "latency" and rate:
        deployments = latency_deployments(inp, ok, rate, inp.top_k, mix)
    elif ok:
        cands = [candidate(e) for e in ok]
        q = DeployQuery(pools=_pools(inp), max_power_w=inp.max_power_w, demand_rps=rate,
                        objective=inp.objective if rate or inp.objective == "throughput" else "throughput",
                        homogeneous=inp.homogeneous, top_k=inp.top_k + 3, groups=_layout_groups(ok))
        found = solve_deployments(cands, q)
        for dep in distinct_plans(found, by_key):
            dv = (rate and single_replica(dep, by_key[dep.replicas[0][0]], rate)) or \
                verify_deployment(inp, dep, by_key, rate or dep.goodput_rps, mix)
            stats["verification_failures"] = stats.get("verification_failures", 0) + (not dv.verified)
            if not dv.verified and not rate:
                dv = _verified_capacity(inp, dep, by_key, mix)
            dv.placement = [[cands[i].key for i in node] for node in dep.placement]
            if dv.verified:
                deployments.append(dv)
            if len(deployments) == inp.top_k:
                break
        if not rate:                # capacities may have been verified lower: best first again
            deployments.sort(key=lambda d: (-d.deployment.goodput_rps, d.deployment.gpus))
    family = (inp.engine_profile or profile_caps(resolve_engine(inp.engines[0], inp.model).profile)).family
    for d in deployments:
        _attach_launch(d, by_key, inp.model, family)
    if not deployments and rate and deferred:
        # nothing carries the demand: the plans skipped as unable to carry it count again, for the closest
        for ev, sc in deferred:
            simulate_plan(inp, ev, sc, mix)
        stats.update(_status_counts(evals, mix))
        ok = [e for e in evals if e.status == "ok"]
        by_key = {e.key: e for e in ok}
    if not deployments:
        if ok and rate:
            cands = [candidate(e) for e in ok]
            q = DeployQuery(pools=_pools(inp), max_power_w=inp.max_power_w, demand_rps=rate,
                            homogeneous=inp.homogeneous)
            c = closest_deployment(cands, q)
            if c.deployment is not None:
                dv = verify_deployment(inp, c.deployment, by_key, c.deployment.goodput_rps, mix)
                _attach_launch(dv, by_key, inp.model, family)
                closest = ClosestDeployment(tuple(c.deployment.replicas), c.deployment.gpus, c.deployment.goodput_rps,
                                            c.shortfall_rps, dv.verified, tuple(dv.launch))
            within = f" within {inp.max_power_w / 1e3:g} kW" if inp.max_power_w else ""
            binding = (f"demand: the best deployment on {sum(g.cluster.num_gpus for g in inp.groups)} GPUs{within} sustains "
                       f"{c.deployment.goodput_rps if c.deployment else 0:.3g} req/s within the SLO, "
                       f"{rate:.3g} req/s demanded")
        else:
            binding = _binding_constraint(evals, inp.slo, rejected)
    stats["deployments"] = len(deployments)
    for e in evals:                 # the deployments hold the runs they reuse; the rest is let go
        e.demand_run = None
    ordered = sorted(evals, key=lambda e: _plan_rank_key(e, inp.objective))
    return SearchResult(inp, stats, ordered, rejected, deployments, closest, binding, mix)
