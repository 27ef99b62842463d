"""The `search` result as JSON (schema in search_schema.json), CSV rows, and rich tables."""

from __future__ import annotations

import math
import sys
import time
from contextlib import contextmanager

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from apex_plan.report.output import SCHEMA_VERSION
from apex_plan.search.pipeline import PlanEval, SearchResult

GIB = 1024.0 ** 3


def _summary(m: dict | None) -> dict | None:
    if not m:
        return None
    return {
        "ttft_ms": {k: m["ttft_ms"][k] for k in ("mean", "p50", "p90", "p99")},
        "tpot_ms": {k: m["tpot_ms"][k] for k in ("mean", "p50", "p90", "p99")},
        "e2e_s": {k: m["e2e_s"][k] for k in ("mean", "p50", "p90", "p99")},
        "output_tokens_per_s": m["throughput"]["output_tokens_per_s"],
        "requests_per_s": m["throughput"]["requests_per_s"],
        "energy_j_per_output_token": m["energy"]["j_per_output_token"],
        "energy_j_per_request": m["energy"]["j_per_request"],
        "kv_cache_peak_utilization": m["kv_cache"]["peak_utilization"],
        "preemptions": m["kv_cache"]["preemptions"],
        "slo_met": m.get("slo", {}).get("met", True),
    }


def _plan_doc(rank: int | None, e: PlanEval, model) -> dict:
    p = e.plan
    return {
        "rank": rank,
        "key": e.key,
        "plan": {"tp": p.tp, "pp": p.pp, "ep": p.ep, "weight_dtype": p.weight_dtype, "kv_dtype": p.kv_dtype},
        "gpus_per_replica": p.gpus_per_replica,
        "status": e.status,
        "reason": e.reason,
        "engine": e.engine.as_dict() if e.engine else None,
        "memory_per_gpu": e.memory.as_dict() if e.memory else None,
        "screen": ({"tpot_floor_ms": e.screen.tpot_floor_s * 1e3, "ttft_floor_ms": e.screen.ttft_floor_s * 1e3,
                    "capacity_ceiling_rps": e.bound_rps} if e.screen else None),
        "goodput_rps_per_replica": e.goodput_rps,
        "bound_rps_per_replica": e.bound_rps,
        "max_model_len_lowered": e.lowered_max_model_len(model),
        "replicas_for_demand": e.replicas_for_demand,
        "simulations": e.simulations,
        "at_demand": _summary(e.at_demand),
        "at_goodput": _summary(e.at_goodput),
    }


def lowered(res: SearchResult, keys) -> dict[str, int]:
    """Plan key -> max_model_len for the given plans whose max_model_len the search lowered."""
    by_key = {e.key: e for e in res.plans}
    out = {}
    for k in keys:
        v = by_key[k].lowered_max_model_len(res.inputs.model) if k in by_key else None
        if v is not None:
            out[k] = v
    return out


def _lowered_note(res: SearchResult, keys) -> str:
    low = lowered(res, keys)
    if not low:
        return ""
    return (" max_model_len lowered to fit the KV cache: " + ", ".join(f"{k} {v}" for k, v in low.items())
            + f" (model: {res.inputs.model.max_context}); longer requests are refused.")


def recommendation(res: SearchResult) -> str:
    inp = res.inputs
    p = inp.slo.percentile
    if res.deployments:
        d = res.deployments[0]
        reps = " + ".join(f"{n} x {k}" for k, n in d.deployment.replicas)
        m = d.metrics
        rate = f"{inp.demand_rps:g} req/s" if inp.demand_rps else f"{d.deployment.goodput_rps:.3g} req/s (max goodput)"
        return (f"Deploy {reps} on {d.deployment.gpus} of {inp.cluster.num_gpus} GPUs: at {rate}, steady-state p{p:g} TTFT "
                f"{m['ttft_ms']['p90']:.0f} ms, p{p:g} TPOT {(m['tpot_ms']['p90'] or 0):.1f} ms; capacity "
                f"{d.deployment.goodput_rps:.3g} req/s within the SLO."
                + _lowered_note(res, [k for k, _ in d.deployment.replicas]))
    msg = f"No deployment meets the SLO at the demanded rate. Binding constraint: {res.binding}."
    if res.closest:
        reps = " + ".join(f"{n} x {k}" for k, n in res.closest["replicas"])
        msg += (f" Closest: {reps} on {res.closest['gpus']} GPUs, {res.closest['goodput_rps']:.3g} req/s "
                f"({res.closest['shortfall_rps']:.3g} req/s short).")
        msg += _lowered_note(res, [k for k, _ in res.closest["replicas"]])
    return msg


def search_json(res: SearchResult, inputs: dict, show_all: bool) -> dict:
    ranked = [e for e in res.plans if e.status == "ok"]
    others = [e for e in res.plans if e.status != "ok"]
    model = res.inputs.model
    plans = [_plan_doc(i + 1, e, model) for i, e in enumerate(ranked)]
    if show_all:
        plans += [_plan_doc(None, e, model) for e in others]
    deps = []
    for i, d in enumerate(res.deployments):
        dep = d.deployment
        deps.append({
            "rank": i + 1,
            "replicas": [{"plan": k, "count": n} for k, n in dep.replicas],
            "gpus": dep.gpus,
            "goodput_rps": dep.goodput_rps,
            "objective": res.inputs.objective,
            "objective_value": dep.objective_value,
            "cost_per_hour": dep.cost_per_hour,
            "placement": d.placement,
            "verified": d.verified,
            "metrics": d.metrics,
            "launch": d.launch,
            "max_model_len_lowered": lowered(res, [k for k, _ in dep.replicas]),
        })
    return {
        "schema_version": SCHEMA_VERSION,
        "command": "search",
        "inputs": inputs,
        "statistics": res.stats,
        "recommendation": recommendation(res),
        "deployments": deps,
        "closest": res.closest,
        "binding_constraint": res.binding or None,
        "plans": plans,
        "exit_status": 0 if res.deployments else 1,
        "rejected": [{"plan": p.replica_label(), "reason": r} for p, r in res.rejected] if show_all else [],
    }


def search_rows(res: SearchResult, show_all: bool) -> list[dict]:
    """CSV rows: one per deployment (kind=deployment, with its launch commands), then one per plan
    (kind=plan)."""
    rows = []
    for i, d in enumerate(res.deployments):
        m = d.metrics
        rows.append({
            "kind": "deployment", "rank": i + 1,
            "plan": " + ".join(f"{n} x {k}" for k, n in d.deployment.replicas), "status": "verified" if d.verified else "unverified",
            "reason": "", "gpus": d.deployment.gpus, "gpus_per_replica": "", "replicas_for_demand": "",
            "goodput_rps": d.deployment.goodput_rps, "goodput_rps_per_replica": "",
            "ttft_p50_ms": m["ttft_ms"]["p50"], "ttft_p90_ms": m["ttft_ms"]["p90"],
            "tpot_p50_ms": m["tpot_ms"]["p50"], "tpot_p90_ms": m["tpot_ms"]["p90"],
            "output_tokens_per_s": m["output_tokens_per_s"], "energy_j_per_output_token": m["energy_j_per_output_token"],
            "weights_gib_per_gpu": "", "kv_cache_tokens": "",
            "max_model_len_lowered": ";".join(f"{k}={v}" for k, v in lowered(res, [k for k, _ in d.deployment.replicas]).items()),
            "launch": " ; ".join(f"{x['replicas']} x: {x['command']}" for x in d.launch),
        })
    for i, e in enumerate(res.plans):
        if e.status != "ok" and not show_all:
            continue
        m = _summary(e.at_demand or e.at_goodput) or {}
        rows.append({
            "kind": "plan", "rank": i + 1 if e.status == "ok" else "",
            "plan": e.key, "status": e.status, "reason": e.reason, "gpus": e.plan.gpus_per_replica * (e.replicas_for_demand or 1),
            "gpus_per_replica": e.plan.gpus_per_replica, "replicas_for_demand": e.replicas_for_demand,
            "goodput_rps": e.goodput_rps * (e.replicas_for_demand or 1), "goodput_rps_per_replica": e.goodput_rps,
            "ttft_p50_ms": m.get("ttft_ms", {}).get("p50"), "ttft_p90_ms": m.get("ttft_ms", {}).get("p90"),
            "tpot_p50_ms": m.get("tpot_ms", {}).get("p50"), "tpot_p90_ms": m.get("tpot_ms", {}).get("p90"),
            "output_tokens_per_s": m.get("output_tokens_per_s"),
            "energy_j_per_output_token": m.get("energy_j_per_output_token"),
            "weights_gib_per_gpu": e.memory.weights_bytes / GIB if e.memory else None,
            "kv_cache_tokens": e.memory.kv_tokens if e.memory else None,
            "max_model_len_lowered": e.lowered_max_model_len(res.inputs.model) or "",
            "launch": "",
        })
    return rows


def _f(x, spec=".1f"):
    return "-" if x is None else format(x, spec)


def search_table(res: SearchResult, console: Console, show_all: bool) -> None:
    inp = res.inputs
    s = res.stats
    console.print(f"[bold]{inp.model.name}[/bold] on {inp.cluster.num_gpus} x {inp.cluster.gpu.name} "
                  f"({inp.cluster.num_nodes} node(s) of {inp.cluster.gpus_per_node}); "
                  f"demand {_f(inp.demand_rps, 'g') if inp.demand_rps else 'max throughput'} req/s; SLO p{inp.slo.percentile:g} "
                  f"TTFT {_f(inp.slo.ttft_s and inp.slo.ttft_s * 1e3, '.0f')} ms, TPOT {_f(inp.slo.tpot_s and inp.slo.tpot_s * 1e3, '.0f')} ms; "
                  f"objective {inp.objective}")
    prof = inp.engines[0].profile if inp.engines and inp.engines[0].profile is not None else None
    if prof is not None:
        console.print(f"engine profile {prof.label} ({prof.calibration[:90] or 'not calibrated'})")
        if prof.version_note:
            console.print(escape(f"engine version: {prof.version_note}"))
    console.print(f"plans: {s['enumerated']} layouts enumerated, {s['after_symmetry']} after symmetry, "
                  f"{s['unique_plans']} distinct plans x engine settings = {s['candidates']}; rejected {s['rejected']} "
                  f"(divisibility/dtype), {s['infeasible_memory']} out of memory, {s['screened_out']} screened out, "
                  f"{s.get('pruned_by_bound', 0)} pruned by their analytic bound, "
                  f"{s['simulated']} simulated ({s['simulations']} runs), {s['with_goodput']} meet the SLO")
    smp = s.get("sampling")
    if smp:
        console.print(f"steady state: each run draws {smp['requests_drawn']} requests from the {smp['mix_requests']}-request "
                      f"mix (mean request size {smp['work_bias_pct']:+.1f}% off the mix, sampling error "
                      f"±{smp['work_stderr_pct']:.1f}%); figures are over the measured window after warm-up")
    if res.deployments:
        t = Table(title="Deployments")
        for c in ("rank", "replicas", "GPUs", "goodput", "TTFT p50/p90", "TPOT p50/p90", "tok/s", "J/tok", "$/h"):
            t.add_column(c, justify="left" if c == "replicas" else "right")
        for i, d in enumerate(res.deployments):
            m = d.metrics
            t.add_row(str(i + 1), " + ".join(f"{n} x {k}" for k, n in d.deployment.replicas), str(d.deployment.gpus),
                      f"{d.deployment.goodput_rps:.3g}", f"{_f(m['ttft_ms']['p50'], '.0f')}/{_f(m['ttft_ms']['p90'], '.0f')}",
                      f"{_f(m['tpot_ms']['p50'])}/{_f(m['tpot_ms']['p90'])}", f"{m['output_tokens_per_s']:.0f}",
                      _f(m["energy_j_per_output_token"], ".2f"),
                      _f(d.deployment.cost_per_hour, ".2f") if d.deployment.cost_per_hour else "-")
        console.print(t)
        for i, d in enumerate(res.deployments):
            for x in d.launch:
                console.print(escape(f"  {i + 1}: {x['replicas']} x {x['command']}"), soft_wrap=True)
            low = lowered(res, [k for k, _ in d.deployment.replicas])
            if low:
                console.print(escape(f"  {i + 1}: max_model_len lowered to fit the KV cache: "
                                     + ", ".join(f"{k} {v}" for k, v in low.items())))
    t = Table(title="Replica plans: one replica at steady state, at its share of the demand (else at its goodput)")
    for c in ("rank", "plan", "GPUs", "reps", "goodput", "TTFT p50/p90", "TPOT p50/p90", "J/tok", "weights/GPU", "max len"):
        t.add_column(c, justify="left" if c == "plan" else "right")
    notes = []
    for row in search_rows(res, show_all):
        if row["kind"] != "plan":
            continue
        if row["status"] != "ok":
            notes.append(f"  {row['plan']}: {row['status']}: {row['reason']}")
            continue
        t.add_row(str(row["rank"]), row["plan"], str(row["gpus_per_replica"]), str(row["replicas_for_demand"] or "-"),
                  _f(row["goodput_rps_per_replica"], ".3g"), f"{_f(row['ttft_p50_ms'], '.0f')}/{_f(row['ttft_p90_ms'], '.0f')}",
                  f"{_f(row['tpot_p50_ms'])}/{_f(row['tpot_p90_ms'])}",
                  _f(row["energy_j_per_output_token"], ".2f"), f"{_f(row['weights_gib_per_gpu'])} GiB",
                  f"{row['max_model_len_lowered']} (lowered)" if row["max_model_len_lowered"] else "model's")
    if t.row_count:
        console.print(t)
    if notes:
        console.print("not viable:")
        for n in notes:
            console.print(escape(n))
    if show_all and res.rejected:
        console.print(escape("rejected before costing: " + "; ".join(sorted({r for _, r in res.rejected}))))
    if res.closest:
        c = res.closest
        reps = " + ".join(f"{n} x {k}" for k, n in c["replicas"])
        console.print(escape(f"closest: {reps} on {c['gpus']} GPUs sustains {c['goodput_rps']:.3g} req/s "
                             f"({c['shortfall_rps']:.3g} req/s short of the demand)"))
        for x in c.get("launch", []):
            console.print(escape(f"  {x['replicas']} x {x['command']}"), soft_wrap=True)
    console.print("[bold]" + escape(recommendation(res)) + "[/bold]")


@contextmanager
def progress_reporter(min_interval_s: float = 2.0):
    """A `progress(i, n)` callback for run_search: a live bar on a terminal, else plain lines on
    stderr (at most one per `min_interval_s`, plus the first and the last)."""
    err = Console(stderr=True)
    if err.is_terminal:
        from rich.progress import Progress
        with Progress(console=err, transient=True) as bar:
            task = bar.add_task("simulating plans", total=None)
            yield lambda i, n: bar.update(task, completed=i, total=n)
        return
    t0 = time.monotonic()
    last = [-math.inf]

    def report(i: int, n: int) -> None:
        now = time.monotonic()
        if i in (0, n) or now - last[0] >= min_interval_s:
            last[0] = now
            print(f"apex-plan search: {i}/{n} plans simulated ({now - t0:.1f} s)", file=sys.stderr, flush=True)
    yield report
