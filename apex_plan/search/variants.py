"""Plan variants of a search and their analytic phase: one per (node group, replica plan, engine
settings, operating point), with memory, the SM clock the operating point allows, the analytic
screen and goodput bound (no simulation)."""

from __future__ import annotations

import dataclasses
import functools

import numpy as np

from apex_plan.estimate.shard import Shard, build_shard, split_layers
from apex_plan.estimate.step_cost import build_step_cost
from apex_plan.hardware.power import check_point
from apex_plan.hardware.spec import ClusterSpec
from apex_plan.plan.enumerate import enumerate_replica_plans, layer_shard_key
from apex_plan.plan.spec import Plan
from apex_plan.search.bounds import goodput_bound_rps, operating_tpot_s
from apex_plan.search.fit import engine_label
from apex_plan.search.layouts import profile_caps, supported_layout
from apex_plan.search.power_point import plan_clock_mhz, point_cluster, representative_step, step_cost_builder
from apex_plan.search.screen import screen_plan
from apex_plan.search.spec import PlanEval, SearchInputs
from apex_plan.simulate.engine import resolve_engine
from apex_plan.simulate.features import draft_cost
from apex_plan.simulate.fit import fit_engine
from apex_plan.workload.prefix import exact_hit_tokens


def enumerate_group(inp: SearchInputs, cluster: ClusterSpec) -> tuple[list[Plan], list[tuple[Plan, str]], object]:
    """The replica plans of one node group the engine supports, and the rejected ones with reasons."""
    model = inp.model
    plans, rejected, st = enumerate_replica_plans(
        model, cluster, inp.weight_dtypes, inp.kv_dtypes, allow_cross_node_tp=inp.allow_cross_node_tp,
        max_gpus_per_replica=inp.max_gpus_per_replica, prune_symmetry=inp.prune_symmetry)
    rej = [(r.plan, r.reason) for r in rejected]
    engine = inp.engine_profile or profile_caps(resolve_engine(inp.engines[0], model).profile)
    kept = []
    for p in plans:
        why = supported_layout(engine, p)
        if why is None and p.ep > 1 and p.tp % p.ep:
            why = f"ep={p.ep} does not divide tp={p.tp} (experts are spread within a pipeline stage)"
        if why:
            rej.append((p, why))
        else:
            kept.append(p)
    if inp.prune_symmetry:
        kept = sorted(set(kept))          # a plan equal up to relabelling of GPUs/stages is evaluated once
    return kept, rej, st


def group_points(inp: SearchInputs, q: int) -> list:
    """The operating points searched on group q: the searched ones, each capped at the group's own
    power cap (the group's cap alone when none is searched), duplicates dropped."""
    g = inp.groups[q]
    out = []
    for pt in inp.points:
        if g.power_cap_w is not None and (pt.power_cap_w is None or pt.power_cap_w > g.power_cap_w):
            pt = dataclasses.replace(pt, power_cap_w=g.power_cap_w)
        if not pt.is_default:
            check_point(g.cluster.gpu, pt, f"group {g.name}" if inp.mixed else None)
        if pt not in out:
            out.append(pt)
    return out


def make_evals(inp: SearchInputs) -> tuple[list[PlanEval], list[tuple[Plan, str]], dict, int]:
    """Every variant to evaluate, the rejected plans, enumeration counts, and unique plans."""
    base = inp.engines[0]
    evals, rej, seen = [], [], {}
    counts = {"enumerated": 0, "after_symmetry": 0}
    unique = 0
    for q, g in enumerate(inp.groups):
        kept, r, st = enumerate_group(inp, g.cluster)
        rej.extend(r)
        counts["enumerated"] += st.enumerated
        counts["after_symmetry"] += st.after_symmetry
        unique += len(kept)
        where = f" on {g.name}" if inp.mixed else ""
        for p in kept:
            for e in inp.engines:
                for pt in group_points(inp, q):
                    key = p.replica_label() + engine_label(e, base) + pt.label + where
                    seen[key] = seen.get(key, 0) + 1
                    # without symmetry pruning the same plan recurs once per equivalent layout: number them
                    evals.append(PlanEval(p, e, key if seen[key] == 1 else f"{key} #{seen[key]}", g.cluster, q, pt))
    return evals, rej, counts, unique


def prepare(inp: SearchInputs, evals: list[PlanEval], mix) -> tuple[dict, int]:
    """Phase 1 for every variant: memory, clock, analytic screen and bound. Returns the step costs of
    the variants to simulate and the layer-shard memo hits. A variant whose operating point leaves
    it at the clock of an earlier variant of the same plan is the same run: marked 'duplicate'."""
    model = inp.model
    need_len = int((inp.trace.prompt_tokens + inp.trace.output_tokens).max())
    longest_prompt = int(inp.trace.prompt_tokens.max())
    shard_cache: dict[tuple, Shard] = {}
    fitted: dict[tuple, tuple] = {}
    first_at_clock: dict[tuple, str] = {}
    hits = 0
    costs = {}
    # an infinite cache's hits: the least prefill prefix caching can leave (screen floors and bounds)
    prefix_hits = exact_hit_tokens(inp.trace)
    uncached_prompt = float(np.maximum(inp.trace.prompt_tokens - prefix_hits, 1).mean())
    for ev in evals:
        group_cluster = ev.cluster
        key = layer_shard_key(ev.plan)
        if key in shard_cache:
            hits += 1
            shard = dataclasses.replace(shard_cache[key], stages=split_layers(model, ev.plan.pp))
        else:
            shard = build_shard(model, ev.plan)
            shard_cache[key] = shard
        fkey = (ev.pool, id(ev.plan), id(ev.engine_cfg))   # one plan, engine and group: memory does not depend on the clock
        if fkey not in fitted:
            fitted[fkey] = fit_engine(model, ev.plan, shard, ev.engine_cfg, group_cluster.gpu, need_len,
                                      longest_prompt)
        eng, mem, why = fitted[fkey]
        ev.memory = mem
        if eng is None:
            ev.status, ev.reason = "infeasible", "memory: " + why
            continue
        ev.engine = eng                            # its profile carries the host constants of this GPU (on_gpu)
        sc = build_step_cost(model, group_cluster.gpu, ev.plan, group_cluster, shard=shard, engine=eng)
        if group_cluster.gpu.clocks is not None:
            ev.clock_mhz = group_cluster.gpu.clocks.sm_peak_mhz
        if not ev.point.is_default:
            step = representative_step(sc, mix.mean_prompt, mix.mean_output, mem.kv_tokens, eng.max_num_seqs,
                                       eng.max_batched_tokens, eng.chunked_prefill, inp.slo.tpot_s)
            build = step_cost_builder(model, ev.plan, group_cluster, shard, eng)
            ev.clock_mhz = plan_clock_mhz(ev.point, group_cluster, build, step)
            ev.cluster = point_cluster(group_cluster, ev.point, ev.clock_mhz)
            if ev.cluster is not group_cluster:
                sc = build(ev.cluster.gpu)
        same = first_at_clock.setdefault((fkey, ev.clock_mhz), ev.key)
        if same != ev.key:
            ev.status = "duplicate"
            ev.reason = f"runs at the same SM clock ({ev.clock_mhz:.0f} MHz) as {same}: the same deployment"
            continue
        caching = eng.prefix_caching and inp.trace.has_prefix_hashes
        draft = draft_cost(model, ev.cluster.gpu, ev.plan, ev.cluster, eng) if eng.speculative is not None else None
        ev.screen = screen_plan(sc, inp.trace, inp.slo, budget=eng.max_batched_tokens, chunked=eng.chunked_prefill,
                                frontend_s=eng.profile.host.frontend_ms * 1e-3, hit_tokens=prefix_hits if caching else None,
                                spec=eng.speculative, draft=draft)
        ev.bound_rps = goodput_bound_rps(sc, mean_prompt=uncached_prompt if caching else mix.mean_prompt,
                                         mean_output=mix.mean_output, kv_tokens=mem.kv_tokens,
                                         max_num_seqs=eng.max_num_seqs, budget=eng.max_batched_tokens,
                                         chunked=eng.chunked_prefill, slo=inp.slo, spec=eng.speculative, draft=draft)
        if not ev.screen.passed:
            ev.status, ev.reason = "screened", ev.screen.reason
            continue
        if ev.bound_rps <= 0:
            ev.status, ev.reason = "screened", "no decode batch keeps the TPOT SLO (analytic bound)"
            continue
        costs[ev.key] = sc
        ev.operating_tpot = functools.partial(operating_tpot_s, sc, mean_prompt=mix.mean_prompt,
                                              mean_output=mix.mean_output, kv_tokens=mem.kv_tokens,
                                              max_num_seqs=eng.max_num_seqs, budget=eng.max_batched_tokens,
                                              chunked=eng.chunked_prefill)
    return costs, hits
