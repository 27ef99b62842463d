"""`apex-plan search`: enumerate replica plans, prune by symmetry, screen analytically, find each
survivor's goodput by simulation, choose deployments with CP-SAT, and verify them by simulation."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from apex_plan.estimate.memory import MemoryReport, memory_report
from apex_plan.estimate.shard import Shard, build_shard, split_layers
from apex_plan.estimate.step_cost import build_step_cost
from apex_plan.hardware.spec import ClusterSpec
from apex_plan.model.spec import ModelSpec
from apex_plan.plan.enumerate import enumerate_replica_plans, layer_shard_key
from apex_plan.plan.spec import EngineConfig, Plan
from apex_plan.rank.deploy import Candidate, Deployment, closest_deployment, solve_deployments
from apex_plan.search.capacity import find_goodput, meets_slo, scaled_trace
from apex_plan.search.screen import Screen, screen_plan
from apex_plan.simulate.engine import ResolvedEngine, resolve_engine
from apex_plan.simulate.run import distribution, simulate
from apex_plan.workload.spec import Slo, Trace, Workload

OBJECTIVES = ("gpus", "energy", "cost", "latency", "throughput")


@dataclass(frozen=True, eq=False)
class SearchInputs:
    model: ModelSpec
    cluster: ClusterSpec
    trace: Trace                        # the request mix; its arrival times are rescaled per rate
    demand_rps: float | None            # None: maximise throughput on the whole cluster
    slo: Slo
    weight_dtypes: tuple[str, ...] = ("bf16",)
    kv_dtypes: tuple[str, ...] = ("bf16",)
    engines: tuple[EngineConfig, ...] = (EngineConfig(),)
    objective: str = "gpus"
    homogeneous: bool = False
    top_k: int = 3
    allow_cross_node_tp: bool = False
    prune_symmetry: bool = True
    max_gpus_per_replica: int | None = None


@dataclass
class PlanEval:
    """One replica plan with engine settings, from enumeration to goodput."""

    plan: Plan
    engine_cfg: EngineConfig
    key: str
    status: str = "pending"             # infeasible | screened | no_goodput | ok
    reason: str = ""
    engine: ResolvedEngine | None = None
    memory: MemoryReport | None = None
    screen: Screen | None = None
    goodput_rps: float = 0.0
    at_goodput: dict | None = None      # one replica at its goodput
    at_demand: dict | None = None       # one replica at its share of the demand
    replicas_for_demand: int = 0
    simulations: int = 0

    @property
    def run_cfg(self) -> EngineConfig:
        """The engine settings with the max_model_len this plan was fitted to."""
        return dataclasses.replace(self.engine_cfg, max_model_len=self.engine.max_model_len)


@dataclass
class DeploymentEval:
    deployment: Deployment
    verified: bool
    metrics: dict                       # the whole deployment simulated at the demanded rate
    per_plan: list[dict] = field(default_factory=list)
    placement: list[list[str]] = field(default_factory=list)   # per node, the plan key of each replica there


@dataclass
class SearchResult:
    inputs: SearchInputs
    stats: dict
    plans: list[PlanEval]
    rejected: list[tuple[Plan, str]]
    deployments: list[DeploymentEval]
    closest: dict | None
    binding: str                        # which constraint binds when nothing meets the SLO


def _engine_label(cfg: EngineConfig, base: EngineConfig) -> str:
    parts = []
    if cfg.max_num_seqs != base.max_num_seqs:
        parts.append(f"seqs{cfg.max_num_seqs}")
    if cfg.max_batched_tokens:
        parts.append(f"budget{cfg.max_batched_tokens}")
    if cfg.chunked_prefill is not None:
        parts.append("chunked" if cfg.chunked_prefill else "nochunk")
    return ("+" + ",".join(parts)) if parts else ""


def fit_engine(model: ModelSpec, plan: Plan, shard: Shard, cfg: EngineConfig, gpu, need_len: int
               ) -> tuple[ResolvedEngine | None, MemoryReport, str]:
    """Resolve engine settings for a plan; without --max-model-len, lower it (as a vLLM operator
    would) to what the KV cache holds, but never below the longest request of the workload."""
    def resolve(c: EngineConfig):
        eng = resolve_engine(c, model)
        mem = memory_report(model, gpu, plan, shard, gpu_memory_utilization=eng.gpu_memory_utilization,
                            max_batched_tokens=eng.max_batched_tokens, max_num_seqs=eng.max_num_seqs,
                            block_size=eng.block_size, max_model_len=eng.max_model_len,
                            policy=eng.profile.memory)
        return eng, mem

    eng, mem = resolve(cfg)
    if mem.feasible or cfg.max_model_len is not None or mem.kv_tokens <= 0:
        return (eng if mem.feasible else None), mem, mem.reason
    length = mem.kv_tokens
    for _ in range(3):
        length = (min(length, model.max_context) // 16) * 16
        if length < need_len:
            break
        c2 = dataclasses.replace(cfg, max_model_len=length)
        eng2, mem2 = resolve(c2)
        if mem2.feasible:
            return eng2, mem2, ""
        length = mem2.kv_tokens
    reason = (f"KV cache holds {mem.kv_tokens} tokens per replica, fewer than the longest request "
              f"({need_len} tokens)" if mem.kv_tokens < need_len else mem.reason)
    return None, mem, reason


def _one_replica_metrics(inp: SearchInputs, ev: PlanEval, sc, rate: float) -> dict:
    tr = scaled_trace(inp.trace, rate)
    return simulate(inp.model, inp.cluster, ev.plan, ev.run_cfg, Workload(tr), inp.slo, step_cost=sc).metrics


def evaluate_plans(inp: SearchInputs, progress: Callable[[int, int], None] | None = None
                   ) -> tuple[list[PlanEval], list[tuple[Plan, str]], dict]:
    model, cluster = inp.model, inp.cluster
    plans, rejected, st = enumerate_replica_plans(
        model, cluster, inp.weight_dtypes, inp.kv_dtypes, allow_cross_node_tp=inp.allow_cross_node_tp,
        max_gpus_per_replica=inp.max_gpus_per_replica, prune_symmetry=inp.prune_symmetry)
    rej = [(r.plan, r.reason) for r in rejected]
    # experts are spread over the GPUs of one pipeline stage: ep must divide tp
    kept = []
    for p in plans:
        if p.ep > 1 and p.tp % p.ep:
            rej.append((p, f"ep={p.ep} does not divide tp={p.tp} (experts are spread within a pipeline stage)"))
        else:
            kept.append(p)
    if inp.prune_symmetry:
        kept = sorted(set(kept))          # a plan equal up to relabelling of GPUs/stages is evaluated once
    need_len = int((inp.trace.prompt_tokens + inp.trace.output_tokens).max())
    base = inp.engines[0]
    evals = []
    seen: dict[str, int] = {}
    for p in kept:
        for e in inp.engines:
            key = p.replica_label() + _engine_label(e, base)
            seen[key] = seen.get(key, 0) + 1
            # without symmetry pruning the same plan recurs once per equivalent layout: number them
            evals.append(PlanEval(p, e, key if seen[key] == 1 else f"{key} #{seen[key]}"))
    shard_cache: dict[tuple, Shard] = {}
    layer_cost_hits = 0
    frontend_s = resolve_engine(inp.engines[0], model).profile.host.frontend_ms * 1e-3
    for i, ev in enumerate(evals):
        if progress:
            progress(i, len(evals))
        key = layer_shard_key(ev.plan)
        if key in shard_cache:
            layer_cost_hits += 1
            shard = dataclasses.replace(shard_cache[key], stages=split_layers(model, ev.plan.pp))
        else:
            shard = build_shard(model, ev.plan)
            shard_cache[key] = shard
        eng, mem, why = fit_engine(model, ev.plan, shard, ev.engine_cfg, cluster.gpu, need_len)
        ev.memory = mem
        if eng is None:
            ev.status, ev.reason = "infeasible", "memory: " + why
            continue
        ev.engine = eng
        sc = build_step_cost(model, cluster.gpu, ev.plan, cluster, shard=shard, engine=eng)
        ev.screen = screen_plan(sc, inp.trace, inp.slo, kv_tokens=mem.kv_tokens, max_num_seqs=eng.max_num_seqs,
                                budget=eng.max_batched_tokens, chunked=eng.chunked_prefill, frontend_s=frontend_s)
        if not ev.screen.passed:
            ev.status, ev.reason = "screened", ev.screen.reason
            continue
        start = ev.screen.capacity_ceiling_rps * 0.5   # analytic ceiling halved: usually brackets in 1-2 runs
        cap = find_goodput(lambda r: _one_replica_metrics(inp, ev, sc, r), inp.slo, start)
        ev.simulations += cap.simulations
        ev.goodput_rps, ev.at_goodput = cap.goodput_rps, cap.metrics
        if cap.goodput_rps <= 0:
            ev.status, ev.reason = "no_goodput", "misses the SLO even at the lowest rate tried"
            continue
        ev.status = "ok"
        if inp.demand_rps:
            n = math.ceil(inp.demand_rps / cap.goodput_rps - 1e-9)
            ev.replicas_for_demand = n
            ev.at_demand = _one_replica_metrics(inp, ev, sc, inp.demand_rps / n)
            ev.simulations += 1
    if progress:
        progress(len(evals), len(evals))
    stats = {
        "enumerated": st.enumerated,
        "after_symmetry": st.after_symmetry,
        "unique_plans": len(kept),
        "candidates": len(evals),
        "rejected": len(rej),
        "rejected_reasons": dict(sorted({r: sum(1 for _, x in rej if x == r) for _, r in rej}.items())),
        "infeasible_memory": sum(e.status == "infeasible" for e in evals),
        "screened_out": sum(e.status == "screened" for e in evals),
        "simulated": sum(e.simulations > 0 for e in evals),
        "simulations": sum(e.simulations for e in evals),
        "no_goodput": sum(e.status == "no_goodput" for e in evals),
        "with_goodput": sum(e.status == "ok" for e in evals),
        "layer_cost_memo_hits": layer_cost_hits,
    }
    return evals, rej, stats


def _candidate(ev: PlanEval) -> Candidate:
    m = ev.at_demand or ev.at_goodput
    return Candidate(key=ev.key, gpus_per_replica=ev.plan.gpus_per_replica, goodput_rps=ev.goodput_rps,
                     energy_j_per_request=m["energy"]["j_per_request"],
                     ttft_p90_s=m["ttft_ms"]["p90"] / 1e3, tpot_p90_s=(m["tpot_ms"]["p90"] or 0.0) / 1e3)


def _split_trace(trace: Trace, weights: list[float]) -> list[np.ndarray]:
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


def verify_deployment(inp: SearchInputs, dep: Deployment, by_key: dict[str, PlanEval], rate: float) -> DeploymentEval:
    """Simulate the whole deployment at `rate`: each plan group gets a capacity-weighted share of the
    requests, spread round-robin over its replicas."""
    tr = scaled_trace(inp.trace, rate)
    groups = [(by_key[k], n) for k, n in dep.replicas]
    parts = _split_trace(tr, [ev.goodput_rps * n for ev, n in groups]) if len(groups) > 1 else [np.arange(len(tr))]
    per_plan = []
    ttft, tpot_req, ok_all, energy, out_tok, span = [], [], True, 0.0, 0, 0.0
    for (ev, n), idx in zip(groups, parts):
        if idx.size == 0:
            continue
        sub = Trace(tr.arrival_s[idx], tr.prompt_tokens[idx], tr.output_tokens[idx], tr.name)
        plan = dataclasses.replace(ev.plan, dp=n)
        res = simulate(inp.model, inp.cluster, plan, ev.run_cfg, Workload(sub), inp.slo)
        ok_all &= res.feasible and meets_slo(res.metrics, inp.slo)
        per_plan.append({"key": ev.key, "replicas": n, "requests": int(idx.size), "metrics": res.metrics})
        ttft.append(res.times.ttft_s)
        tpot_req.append(res.times.tpot_s)
        energy += res.energy_j
        out_tok += int(res.times.output_tokens.sum())
        span = max(span, res.makespan_s)
    t = np.concatenate(ttft)
    p = np.concatenate(tpot_req) if tpot_req else np.zeros(0)
    metrics = {
        "rate_per_s": rate,
        "ttft_ms": distribution(t, 1e3),
        "tpot_ms": distribution(p, 1e3),
        "output_tokens_per_s": out_tok / span if span else 0.0,
        "energy_j_per_output_token": energy / out_tok if out_tok else None,
        "energy_j_per_request": energy / len(tr),
        "slo_met": bool(ok_all),
    }
    return DeploymentEval(dep, bool(ok_all), metrics, per_plan)


def _latency_deployments(inp: SearchInputs, ok: list[PlanEval], rate: float, top_k: int) -> list[DeploymentEval]:
    """Latency objective: homogeneous deployments (plan, n replicas) ranked by their own simulation at
    the demanded rate; CP-SAT checks each fits the cluster (node packing)."""
    options = []
    for ev in ok:
        n_min = max(1, math.ceil(rate / ev.goodput_rps - 1e-9))
        n_max = inp.cluster.num_gpus // ev.plan.gpus_per_replica
        for n in range(n_min, n_max + 1):
            fit = solve_deployments([_candidate(ev)], num_nodes=inp.cluster.num_nodes,
                                    gpus_per_node=inp.cluster.gpus_per_node, demand_rps=n * ev.goodput_rps * (1 - 1e-6),
                                    objective="gpus", top_k=1)
            if not fit or dict(fit[0].replicas)[ev.key] != n:
                continue
            dv = verify_deployment(inp, fit[0], {ev.key: ev}, rate)
            dv.placement = [[ev.key for _ in node] for node in fit[0].placement]
            if dv.verified:
                options.append(dv)
    options.sort(key=lambda d: (d.metrics["ttft_ms"]["p90"], d.metrics["tpot_ms"]["p90"] or 0.0, d.deployment.gpus,
                                d.deployment.replicas))
    return options[:top_k]


def run_search(inp: SearchInputs, progress: Callable[[int, int], None] | None = None) -> SearchResult:
    evals, rejected, stats = evaluate_plans(inp, progress)
    ok = [e for e in evals if e.status == "ok"]
    by_key = {e.key: e for e in ok}
    cl = inp.cluster
    deployments: list[DeploymentEval] = []
    closest = None
    binding = ""
    rate = inp.demand_rps
    if ok and inp.objective == "latency" and rate:
        deployments = _latency_deployments(inp, ok, rate, inp.top_k)
    elif ok:
        cands = [_candidate(e) for e in ok]
        found = solve_deployments(cands, num_nodes=cl.num_nodes, gpus_per_node=cl.gpus_per_node,
                                  price_per_gpu_hour=cl.price_per_gpu_hour, demand_rps=rate,
                                  objective=inp.objective if rate or inp.objective == "throughput" else "throughput",
                                  homogeneous=inp.homogeneous, top_k=inp.top_k + 3)
        for dep in found:
            dv = verify_deployment(inp, dep, by_key, rate or dep.goodput_rps)
            dv.placement = [[cands[i].key for i in node] for node in dep.placement]
            if dv.verified:
                deployments.append(dv)
            stats["verification_failures"] = stats.get("verification_failures", 0) + (not dv.verified)
            if len(deployments) == inp.top_k:
                break
    if not deployments:
        if ok and rate:
            cands = [_candidate(e) for e in ok]
            c = closest_deployment(cands, num_nodes=cl.num_nodes, gpus_per_node=cl.gpus_per_node, demand_rps=rate,
                                   price_per_gpu_hour=cl.price_per_gpu_hour, homogeneous=inp.homogeneous)
            if c.deployment is not None:
                closest = {"replicas": [list(r) for r in c.deployment.replicas], "gpus": c.deployment.gpus,
                           "goodput_rps": c.deployment.goodput_rps, "shortfall_rps": c.shortfall_rps}
            binding = (f"demand: the best deployment on {cl.num_gpus} GPUs sustains "
                       f"{c.deployment.goodput_rps if c.deployment else 0:.3g} req/s within the SLO, "
                       f"{rate:.3g} req/s demanded")
        else:
            binding = _binding_constraint(evals, inp.slo, rejected)
    stats["deployments"] = len(deployments)
    ordered = sorted(evals, key=lambda e: _plan_rank_key(e, inp.objective))
    return SearchResult(inp, stats, ordered, rejected, deployments, closest, binding)


def _plan_rank_key(e: PlanEval, objective: str) -> tuple:
    order = {"ok": 0, "no_goodput": 1, "screened": 2, "infeasible": 3}
    if e.status != "ok":
        return (order.get(e.status, 4), e.key)
    m = e.at_demand or e.at_goodput
    gpus = (e.replicas_for_demand or 1) * e.plan.gpus_per_replica
    if objective == "latency":
        k = (m["ttft_ms"]["p90"], m["tpot_ms"]["p90"] or 0.0)
    elif objective == "energy":
        k = (m["energy"]["j_per_request"],)
    elif objective == "throughput":
        k = (-e.goodput_rps / e.plan.gpus_per_replica,)
    else:
        k = (gpus, m["energy"]["j_per_request"])
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
    return "SLO: every plan misses it even at the lowest rate tried"
