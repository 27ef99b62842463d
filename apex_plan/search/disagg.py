"""`search --serving disagg|both`: disaggregated deployments (a prefill pool and a decode pool) found,
sized, verified and ranked beside the aggregated ones.

1. Role plans: every replica plan the engine runs, as a prefill and as a decode instance, each with
   the search's engine settings, screened analytically (`disagg_roles`), then the Pareto few kept.
2. Pools: CP-SAT picks a (prefill plan, decode plan) pair and both instance counts that cover the
   demand within the cluster's nodes (`rank.disagg.size_pools`), top-K distinct pairs. Pools share a
   node when one instance size divides the other (the engines run a prefill and a decode server on
   disjoint GPUs of a node), else take nodes of their own (`rank.disagg.placement`).
3. Verification: each sizing is simulated whole at steady state with the disaggregated simulator
   (`simulate.disagg`, the `steady` horizon and window). When it misses the SLO, the pool the phase
   breakdown blames (TPOT, or the TTFT's prefill queue against its decode admission wait) gets one
   more instance (without a demand: its rate lowered to DERATE of itself) and the pair is sized again,
   up to VERIFY_ROUNDS sizings; one that never passes, or no longer fits, is reported infeasible with its reason.
4. Ranking: verified disaggregated and aggregated deployments in one list, by the objective's key
   over their steady-state figures (`rank_key`).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field

from apex_plan.errors import InputError, did_you_mean
from apex_plan.plan.disagg import DisaggPlan
from apex_plan.rank.disagg import PoolChoice, RoleCandidate, size_pools
from apex_plan.rank.problem import Deployment
from apex_plan.search.disagg_roles import RoleEval, decode_tpot_s, pareto, role_evals
from apex_plan.search.spec import SearchInputs
from apex_plan.search.steady import horizon, operating_slo, steady_metrics, steady_trace, window_bounds, window_of
from apex_plan.search.variants import enumerate_group
from apex_plan.search.results import DeploymentDisagg, LaunchEntry, PoolDoc, SteadyMetrics
from apex_plan.search.verify import DeploymentEval
from apex_plan.simulate.disagg import simulate_disagg, ttft_phases
from apex_plan.simulate.transfer import rank_links
from apex_plan.workload.spec import Workload

SERVING = ("agg", "disagg", "both")
DERATE = 0.85          # share of its rate a role keeps after its pool missed the SLO (a search step, not physics)
VERIFY_ROUNDS = 3      # sizings tried per (prefill plan, decode plan) pair
EXTRA_PAIRS = 2        # pairs sized beyond top-K, for those verification rules out


def check_serving(value: str) -> str:
    """The --serving value, or one line naming the option and the choices."""
    if value not in SERVING:
        raise InputError("--serving", None, f"unknown serving mode '{value}'",
                         did_you_mean(value, SERVING) or "use agg, disagg or both")
    return value


@dataclass
class DisaggSearch:
    prefill: list[RoleEval] = field(default_factory=list)
    decode: list[RoleEval] = field(default_factory=list)
    deployments: list[DeploymentEval] = field(default_factory=list)
    infeasible: list[dict] = field(default_factory=list)     # sizings verification ruled out, with why
    stats: dict = field(default_factory=dict)
    binding: str = ""


def _candidates(kept: list[RoleEval], groups: dict) -> list[RoleCandidate]:
    return [RoleCandidate(e.key, e.plan.gpus_per_replica, e.rate_rps, groups[id(e.engine_cfg)]) for e in kept]


def _binding(pre: list[RoleEval], dec: list[RoleEval], inp: SearchInputs) -> str:
    for role, evs in (("prefill", pre), ("decode", dec)):
        if not any(e.status in ("ok", "pruned") for e in evs):
            why = sorted({e.reason for e in evs})
            return f"disaggregated: no plan can serve as a {role} instance" + (": " + "; ".join(why[:2]) if why else "")
    return (f"disaggregated: no prefill and decode pools on {inp.cluster.num_gpus} GPUs cover "
            f"{inp.demand_rps:g} req/s" if inp.demand_rps else "disaggregated: no pools fit the cluster")


def _steady_run(inp: SearchInputs, mix, choice: PoolChoice, pe: RoleEval, de: RoleEval, rate: float):
    """The deployment simulated whole at `rate` to steady state: (metrics over the window, '') or (None, why)."""
    gpn = inp.cluster.gpus_per_node
    dplan = DisaggPlan(dataclasses.replace(pe.plan, dp=choice.prefill_instances),
                       dataclasses.replace(de.plan, dp=choice.decode_instances), decode_max_num_seqs=de.batch)
    slots = choice.decode_instances * de.plan.adp * de.plan.pp * de.batch
    # the run is sized by the deployment's analytic operating point, not the SLO (as aggregated runs are)
    sizing = operating_slo(inp.slo, pe.step_s + de.step_s, decode_tpot_s(de))
    h = horizon(mix, rate, sizing, slots)
    tr = steady_trace(mix, rate, h.total, h.burst)
    links = rank_links(inp.cluster, dplan, decode_first_gpu=choice.decode_first_gpu,
                       prefill_first_gpu=choice.prefill_first_gpu)
    res = simulate_disagg(inp.model, inp.cluster, dplan, pe.engine_cfg, Workload(tr), inp.slo, links)
    if not res.feasible:
        return None, res.reason, None
    t0, t1 = window_bounds(tr, h)
    m = steady_metrics([window_of(res, t0, t1, rate)], [res], t0, t1, rate, inp.slo, h, inp.cluster.gpu.idle_w)
    arr = res.times.arrival_s
    extra = dataclasses.replace(res.metrics.disagg, ttft_phases=ttft_phases(res, (arr >= t0) & (arr < t1)))
    return dataclasses.replace(m, disagg=extra), "", res


def _blamed(m: SteadyMetrics, slo) -> str:
    """Which pool a failed run blames: decode for TPOT misses or a decode admission wait longer than
    the prefill queue at the percentile, else prefill."""
    allowance = 1.0 - slo.percentile / 100.0
    if m.slo.tpot_miss_upper > allowance:
        return "decode"
    ph = m.disagg.ttft_phases
    return "decode" if (ph.decode_admission_wait_ms.p90 or 0) > (ph.prefill_queue_ms.p90 or 0) else "prefill"


def _why(m: SteadyMetrics, slo) -> str:
    s = m.slo
    parts = []
    if not m.steady.stable:
        parts.append(f"backlog grows ({m.steady.backlog_growth_share:.1%} of the arrival rate)")
    if m.completed < m.requests:
        parts.append(f"{m.requests - m.completed} of {m.requests} requests unfinished")
    allowance = 1.0 - slo.percentile / 100.0
    for what, miss in (("ttft", s.ttft_miss_upper), ("tpot", s.tpot_miss_upper)):
        if miss > allowance:
            parts.append(f"{miss:.1%} miss the {what.upper()} target (share + 1 standard error; "
                         f"{allowance:.0%} allowed)")
    parts.append(f"p{slo.percentile:g} TTFT {s.ttft_at_percentile_ms:.0f} ms, TPOT {s.tpot_at_percentile_ms:.1f} ms")
    ph = m.disagg.ttft_phases
    parts.append(f"TTFT p90 prefill queue {ph.prefill_queue_ms.p90 or 0:.0f} ms, decode admission wait "
                 f"{ph.decode_admission_wait_ms.p90 or 0:.0f} ms")
    return "; ".join(parts)


def _deployment(inp, choice: PoolChoice, m: SteadyMetrics, pe: RoleEval, de: RoleEval) -> DeploymentEval:
    gpn = inp.cluster.gpus_per_node
    price = inp.cluster.price_per_gpu_hour
    cost = choice.gpus * price if price is not None else None
    j_req = m.energy.j_per_request
    value = {"gpus": choice.gpus, "cost": cost or 0.0, "energy": j_req, "latency": m.ttft_ms.p90 / 1e3,
             "throughput": choice.capacity_rps}[inp.objective]
    nodes_of: dict[int, list[str]] = {}
    for key, n, size, first in ((pe.key, choice.prefill_instances, pe.plan.gpus_per_replica, choice.prefill_first_gpu),
                                (de.key, choice.decode_instances, de.plan.gpus_per_replica, choice.decode_first_gpu)):
        for k in range(n):          # a multi-node instance is listed on each of its nodes
            g0 = first + k * size
            for node in range(g0 // gpn, (g0 + size - 1) // gpn + 1):
                nodes_of.setdefault(node, []).append(key)
    placement = [nodes_of[node] for node in sorted(nodes_of)]
    dep = Deployment(((pe.key, choice.prefill_instances), (de.key, choice.decode_instances)), choice.gpus,
                     choice.capacity_rps, value, (), j_req, cost, m.ttft_ms.p90 / 1e3,
                     (m.tpot_ms.p90 or 0.0) / 1e3, j_req * choice.capacity_rps)
    dv = DeploymentEval(dep, True, m, (), placement, serving="disagg", rate_rps=m.rate_per_s)
    dv.disagg = DeploymentDisagg(_pool_doc(pe, choice.prefill_instances, choice.prefill_nodes, choice.prefill_rps),
                                 _pool_doc(de, choice.decode_instances, choice.decode_nodes, choice.decode_rps),
                                 "analytic pool rates (search/disagg_roles.py), verified at the demanded rate",
                                 m.disagg)
    return dv


def _pool_doc(e: RoleEval, n: int, nodes: int, rate: float) -> PoolDoc:
    p = e.plan
    return PoolDoc(e.key, n, nodes, p.tp, p.pp, p.ep, p.adp, p.gpus_per_replica, rate, e.detail,
                   e.batch or e.engine.max_num_seqs)


def _attach_launch(inp: SearchInputs, dv: DeploymentEval, pe: RoleEval, de: RoleEval, choice: PoolChoice) -> None:
    from apex_plan.report.launch import disagg_launch
    repo, prequantized = inp.model.checkpoint_repo(pe.plan.weight_dtype)
    dplan = DisaggPlan(dataclasses.replace(pe.plan, dp=choice.prefill_instances),
                       dataclasses.replace(de.plan, dp=choice.decode_instances), decode_max_num_seqs=de.batch)
    cmds = disagg_launch(pe.engine.profile.family, repo or inp.model.name, dplan, pe.engine,
                         dataclasses.replace(de.engine, max_num_seqs=de.batch), prequantized, inp.model.remote_code,
                         inp.model.num_experts)
    dv.launch = [LaunchEntry(pe.key, choice.prefill_instances, cmds.prefill),
                 LaunchEntry(de.key, choice.decode_instances, cmds.decode), LaunchEntry("router", 1, cmds.router)]
    dv.disagg = dataclasses.replace(dv.disagg, launch=cmds)


def _verify_pair(inp, mix, choice: PoolChoice, pe: RoleEval, de: RoleEval, stats: dict):
    """Verify one sizing, re-sizing the blamed pool at a lower rate until it passes: (deployment, None)
    or (None, the infeasible entry)."""
    rate_p, rate_d = pe.rate_rps, de.rate_rps
    gpn, nodes = inp.cluster.gpus_per_node, inp.cluster.num_nodes
    tried = []
    for _ in range(VERIFY_ROUNDS):
        rate = inp.demand_rps or choice.capacity_rps
        m, why, _res = _steady_run(inp, mix, choice, pe, de, rate)
        stats["simulations"] += 1
        if m is None:
            return None, {"pools": _label(choice), "reason": why, "tried": tried}
        if m.slo.met:
            dv = _deployment(inp, choice, m, pe, de)
            _attach_launch(inp, dv, pe, de, choice)
            return dv, None
        blamed = _blamed(m, inp.slo)
        tried.append({"pools": _label(choice), "gpus": choice.gpus, "missed": _why(m, inp.slo), "blamed": blamed})
        # the blamed pool's rate per instance lowered: with a demand, to just below what one more
        # instance than it has would need (so the next sizing has one more); without, to DERATE of itself
        n = choice.decode_instances if blamed == "decode" else choice.prefill_instances
        lowered = inp.demand_rps / (n + 0.5) if inp.demand_rps else None
        if blamed == "decode":
            rate_d = rate_d * DERATE if lowered is None else min(rate_d, lowered)
        else:
            rate_p = rate_p * DERATE if lowered is None else min(rate_p, lowered)
        again = size_pools([RoleCandidate(pe.key, pe.plan.gpus_per_replica, rate_p)],
                           [RoleCandidate(de.key, de.plan.gpus_per_replica, rate_d)], num_nodes=nodes,
                           gpus_per_node=gpn, demand_rps=inp.demand_rps, objective=inp.objective)
        if not again:
            fix = f"one more {blamed} instance" if inp.demand_rps else f"the {blamed} pool's rate lowered"
            return None, {"pools": _label(choice), "reason": f"misses the SLO at steady state ({tried[-1]['missed']}); "
                          f"with {fix} the pair no longer fits the cluster", "tried": tried}
        choice = again[0]                 # its capacity is now at the lowered rates
    return None, {"pools": _label(choice), "reason": f"misses the SLO at steady state after {VERIFY_ROUNDS} sizings "
                  f"({tried[-1]['missed']})", "tried": tried}


def _label(c: PoolChoice) -> str:
    return f"{c.prefill_instances} x {c.prefill} + {c.decode_instances} x {c.decode} ({c.gpus} GPUs)"


def role_plans(inp: SearchInputs) -> list:
    """The replica plans of the aggregated enumeration plus every attention-DP / expert-parallel layout
    of the same instance sizes the engine profile runs (`plan.moe_layout.instance_layouts`)."""
    from apex_plan.plan.moe_layout import instance_layouts
    from apex_plan.search.layouts import profile_caps, supported_layout
    from apex_plan.simulate.engine import resolve_engine
    plans, _, _ = enumerate_group(inp, inp.cluster)
    prof = resolve_engine(inp.engines[0], inp.model).profile
    out = set(plans)
    for g, pp, wd, kd in sorted({(p.tp * p.adp, p.pp, p.weight_dtype, p.kv_dtype) for p in plans}):
        out.update(instance_layouts(prof, inp.model, inp.cluster, g, pp, wd, kd, inp.allow_cross_node_tp))
    caps = profile_caps(prof)
    return sorted(p for p in out if supported_layout(caps, p) is None)


def search_disagg(inp: SearchInputs, mix) -> DisaggSearch:
    """Disaggregated deployments of `inp` (module docstring)."""
    out = DisaggSearch(stats={"simulations": 0})
    if inp.mixed:
        out.binding = "disaggregated: searched on one node group only (give a cluster of one GPU type)"
        return out
    plans = role_plans(inp)
    pre, dec = role_evals(inp, plans, mix)
    kp, kd = pareto(pre), pareto(dec)
    out.prefill, out.decode = pre, dec
    groups = {id(c): q for q, c in enumerate(inp.engines)}     # a pair runs one engine configuration
    choices = size_pools(_candidates(kp, groups), _candidates(kd, groups), num_nodes=inp.cluster.num_nodes,
                         gpus_per_node=inp.cluster.gpus_per_node, demand_rps=inp.demand_rps,
                         objective=inp.objective, top_k=inp.top_k + EXTRA_PAIRS)
    by_key = {e.key: e for e in kp + kd}
    for c in choices:
        dv, bad = _verify_pair(inp, mix, c, by_key[c.prefill], by_key[c.decode], out.stats)
        if dv is not None:
            out.deployments.append(dv)
        else:
            out.infeasible.append(bad)
        if len(out.deployments) == inp.top_k:
            break
    if not out.deployments:
        out.binding = _binding(pre, dec, inp) if not choices else \
            "disaggregated: every sizing of the pools missed the SLO at steady state (see disaggregated.infeasible)"
    out.stats.update({"role_plans": len(plans) * len(inp.engines),
                      "prefill_ok": sum(e.status in ("ok", "pruned") for e in pre), "prefill_kept": len(kp),
                      "decode_ok": sum(e.status in ("ok", "pruned") for e in dec), "decode_kept": len(kd),
                      "pool_sizings": len(choices), "verified": len(out.deployments),
                      "infeasible": len(out.infeasible)})
    return out


def rank_key(objective: str, d: DeploymentEval) -> tuple:
    """One ordering of aggregated and disaggregated deployments: the objective over their verified figures."""
    dep, m = d.deployment, d.metrics
    e = m.energy.j_per_request or math.inf
    return {"gpus": (dep.gpus, e), "cost": (dep.cost_per_hour or 0.0, dep.gpus, e), "energy": (e, dep.gpus),
            "latency": (m.ttft_ms.p90, m.tpot_ms.p90 or 0.0, dep.gpus),
            "throughput": (-dep.goodput_rps, dep.gpus)}[objective]


def merge(agg: list[DeploymentEval], dis: list[DeploymentEval], objective: str, top_k: int) -> list[DeploymentEval]:
    """Both kinds in one list, best first by `rank_key` (stable: equal keys keep aggregated first): the
    top K, and after them the best of a kind that has deployments but none among the top K."""
    ranked = sorted(agg + dis, key=lambda d: rank_key(objective, d))
    top = ranked[:top_k]
    for kind in ("agg", "disagg"):
        best = next((d for d in ranked if d.serving == kind), None)
        if best is not None and best not in top:
            top.append(best)
    return top


def search_with_disagg(inp: SearchInputs, progress, run_agg, empty_result):
    """`run_agg`'s result for agg; for disagg and both, the disaggregated deployments merged into it
    (disagg alone: no aggregated plan is evaluated, `empty_result(mix)` is the result to merge into;
    both callables come from `search.pipeline`, which imports this module, not the other way)."""
    from apex_plan.search.steady import request_mix
    mix = request_mix(inp.trace)
    if inp.serving == "agg":
        return run_agg(inp, progress, mix)
    if inp.serving == "both":
        res = run_agg(inp, progress, mix)
    else:
        res = empty_result(mix)
    dis = search_disagg(inp, mix)
    res.disagg = dis
    res.stats["disaggregated"] = dis.stats
    res.deployments = merge(res.deployments, dis.deployments, inp.objective, inp.top_k)
    res.stats["deployments"] = len(res.deployments)
    if res.deployments:
        res.binding, res.closest = "", None
    else:
        res.binding = "; ".join(b for b in (res.binding, dis.binding) if b)
    return res


AGG_STAT_KEYS = ("enumerated", "after_symmetry", "unique_plans", "candidates", "rejected", "infeasible_memory",
                 "screened_out", "pruned_by_bound", "simulated", "simulations", "no_goodput", "same_clock_duplicates",
                 "with_goodput", "layer_cost_memo_hits", "deployments")
