"""The `search` result as JSON (schema in search_schema.json), CSV rows, and rich tables."""

from __future__ import annotations

import math
import sys
import time
from contextlib import contextmanager

from rich.console import Console
from rich.markup import escape

from apex_plan.report.economics import Economics, deployment_economics, money
from apex_plan.report.layout import print_phrases, print_table, print_wrapped, table as _table
from apex_plan.report.settings_view import settings_doc, settings_lines
from apex_plan.report.output import SCHEMA_VERSION
from apex_plan.report.search_disagg_view import disagg_doc, disagg_lines
from apex_plan.search.pipeline import PlanEval, SearchResult
from apex_plan.search.results import SteadyMetrics

GIB = 1024.0 ** 3


def _summary(m: SteadyMetrics | None) -> dict | None:
    """The plan table's figures of one steady-state run."""
    if not m:
        return None
    return {
        "ttft_ms": m.ttft_ms.to_dict(),
        "tpot_ms": m.tpot_ms.to_dict(),
        "e2e_s": m.e2e_s.to_dict(),
        "output_tokens_per_s": m.throughput.output_tokens_per_s,
        "requests_per_s": m.throughput.requests_per_s,
        "energy_j_per_output_token": m.energy.j_per_output_token,
        "energy_j_per_request": m.energy.j_per_request,
        "kv_cache_peak_utilization": m.kv_cache.peak_utilization,
        "preemptions": m.kv_cache.preemptions,
        "slo_met": m.slo.met,
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
        "binds_at_capacity": e.binding,
        "bound_rps_per_replica": e.bound_rps,
        "max_model_len_lowered": e.lowered_max_model_len(model),
        "replicas_for_demand": e.replicas_for_demand,
        "simulations": e.simulations,
        "at_demand": _summary(e.at_demand),
        "at_goodput": _summary(e.at_goodput),
        "group": e.cluster.name if e.cluster is not None else "",
        "operating_point": {"power_cap_w": e.point.power_cap_w, "sm_clock_mhz": e.point.sm_clock_mhz,
                            "clock_mhz": e.clock_mhz},
    }


def plans_by_key(res: SearchResult) -> dict:
    """Plan key -> PlanEval of every plan a deployment may use: aggregated ones and disaggregated roles."""
    out = {e.key: e for e in res.plans}
    if res.disagg is not None:
        out.update({e.key: e for e in res.disagg.prefill + res.disagg.decode})
    return out


def economics(res: SearchResult, d) -> Economics:
    """$/h, $/Mtok, power and energy of one deployment of this search."""
    by_key = plans_by_key(res)
    return deployment_economics(d, res.mix, by_key, res.inputs.groups)


def group_use(res: SearchResult, d) -> list[dict]:
    """GPUs a deployment takes in each node group."""
    by_key = plans_by_key(res)
    used: dict[int, int] = {}
    for k, n in d.deployment.replicas:
        ev = by_key[k]
        used[ev.pool] = used.get(ev.pool, 0) + n * ev.plan.gpus_per_replica
    groups = res.inputs.groups
    return [{"group": groups[q].name, "gpu": groups[q].cluster.gpu.name, "gpus": g} for q, g in sorted(used.items())]


def lowered(res: SearchResult, keys) -> dict[str, int]:
    """Plan key -> max_model_len for the given plans whose max_model_len the search lowered."""
    by_key = plans_by_key(res)
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
        ec = economics(res, d)
        cost = ("" if ec.cost_per_hour is None else
                f" ${ec.cost_per_hour:.2f}/h, ${money(ec.usd_per_mtok_output_at_demand, '.3g')} per million output tokens;")
        total = sum(g.cluster.num_gpus for g in inp.groups)
        return (f"Deploy {reps} on {d.deployment.gpus} of {total} GPUs: at {rate}, steady-state p{p:g} TTFT "
                f"{m.ttft_ms.p90:.0f} ms, p{p:g} TPOT {(m.tpot_ms.p90 or 0):.1f} ms;{cost} "
                f"{_f(ec.energy_j_per_output_token, '.2f')} J per output token at {_f(ec.mean_power_w_at_demand, '.0f')} W; "
                f"capacity {d.deployment.goodput_rps:.3g} req/s within the SLO."
                + _lowered_note(res, [k for k, _ in d.deployment.replicas]))
    msg = f"No deployment meets the SLO at the demanded rate. Binding constraint: {res.binding}."
    if res.closest:
        c = res.closest
        reps = " + ".join(f"{n} x {k}" for k, n in c.replicas)
        msg += f" Closest: {reps} on {c.gpus} GPUs, {c.goodput_rps:.3g} req/s ({c.shortfall_rps:.3g} req/s short)."
        msg += _lowered_note(res, [k for k, _ in c.replicas])
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
            "metrics": d.metrics_dict(),
            "launch": [x.to_dict() for x in d.launch],
            "max_model_len_lowered": lowered(res, [k for k, _ in dep.replicas]),
            "economics": economics(res, d).to_dict(),
            "groups": group_use(res, d),
            "serving": d.serving,
            "disagg": d.disagg.to_dict() if d.disagg is not None else None,
        })
    return {
        "schema_version": SCHEMA_VERSION,
        "command": "search",
        "inputs": inputs,
        "statistics": res.stats,
        "recommendation": recommendation(res),
        "deployments": deps,
        "closest": res.closest.to_dict() if res.closest is not None else None,
        "binding_constraint": res.binding or None,
        "plans": plans,
        "engine_settings": settings_doc(res),
        "exit_status": 0 if res.deployments else 1,
        "rejected": [{"plan": p.replica_label(), "reason": r} for p, r in res.rejected] if show_all else [],
        "uncalibrated": uncalibrated(res),
        "disaggregated": disagg_doc(res),
    }


def search_rows(res: SearchResult, show_all: bool) -> list[dict]:
    """CSV rows: one per deployment (kind=deployment, with its launch commands), then one per plan
    (kind=plan)."""
    rows = []
    for i, d in enumerate(res.deployments):
        m = d.metrics
        ec = economics(res, d)
        rows.append({
            "kind": "deployment", "rank": i + 1, "serving": d.serving,
            "plan": " + ".join(f"{n} x {k}" for k, n in d.deployment.replicas), "status": "verified" if d.verified else "unverified",
            "reason": "", "gpus": d.deployment.gpus, "gpus_per_replica": "", "replicas_for_demand": "",
            "goodput_rps": d.deployment.goodput_rps, "goodput_rps_per_replica": "",
            "ttft_p50_ms": m.ttft_ms.p50, "ttft_p90_ms": m.ttft_ms.p90,
            "tpot_p50_ms": m.tpot_ms.p50, "tpot_p90_ms": m.tpot_ms.p90,
            "output_tokens_per_s": m.throughput.output_tokens_per_s, "energy_j_per_output_token": m.energy.j_per_output_token,
            "weights_gib_per_gpu": "", "kv_cache_tokens": "",
            "max_model_len_lowered": ";".join(f"{k}={v}" for k, v in lowered(res, [k for k, _ in d.deployment.replicas]).items()),
            "launch": " ; ".join(f"{x.replicas} x: {x.command}" for x in d.launch),
            **_csv_money(ec),
        })
    for i, e in enumerate(res.plans):
        if e.status != "ok" and not show_all:
            continue
        m = e.at_demand or e.at_goodput
        j_tok = m.energy.j_per_output_token if m else None
        rows.append({
            "kind": "plan", "rank": i + 1 if e.status == "ok" else "", "serving": "agg",
            "plan": e.key, "status": e.status, "reason": e.reason, "gpus": e.plan.gpus_per_replica * (e.replicas_for_demand or 1),
            "gpus_per_replica": e.plan.gpus_per_replica, "replicas_for_demand": e.replicas_for_demand,
            "goodput_rps": e.goodput_rps * (e.replicas_for_demand or 1), "goodput_rps_per_replica": e.goodput_rps,
            "ttft_p50_ms": m.ttft_ms.p50 if m else None, "ttft_p90_ms": m.ttft_ms.p90 if m else None,
            "tpot_p50_ms": m.tpot_ms.p50 if m else None, "tpot_p90_ms": m.tpot_ms.p90 if m else None,
            "output_tokens_per_s": m.throughput.output_tokens_per_s if m else None,
            "energy_j_per_output_token": j_tok,
            "weights_gib_per_gpu": e.memory.weights_bytes / GIB if e.memory else None,
            "kv_cache_tokens": e.memory.kv_tokens if e.memory else None,
            "max_model_len_lowered": e.lowered_max_model_len(res.inputs.model) or "",
            "launch": "",
            **_csv_money(None, j_tok),
        })
    return rows


def _csv_money(ec: Economics | None, j_per_tok=None) -> dict:
    """The money and power columns of a CSV row: 'no price' where no price was given."""
    if ec is None:
        return {"cost_per_hour": "", "usd_per_mtok_output": "", "usd_per_mtok_input": "", "mean_power_w": ""}
    no = "no price"
    return {"cost_per_hour": no if ec.cost_per_hour is None else ec.cost_per_hour,
            "usd_per_mtok_output": no if ec.usd_per_mtok_output_at_demand is None else ec.usd_per_mtok_output_at_demand,
            "usd_per_mtok_input": no if ec.usd_per_mtok_input_at_demand is None else ec.usd_per_mtok_input_at_demand,
            "mean_power_w": ec.mean_power_w_at_demand}


def _f(x, spec=".1f"):
    return "-" if x is None else format(x, spec)


def _workload_phrases(res: SearchResult) -> list[str]:
    from apex_plan.workload.synthetic import PRESETS
    tr = res.inputs.trace
    out = [f"requests: mean prompt {tr.prompt_tokens.mean():.0f} tokens, mean output {tr.output_tokens.mean():.0f} "
           "tokens"]
    preset = PRESETS.get(getattr(tr, "name", ""))
    if preset is not None:
        for what, d in (("prompt", preset.prompt), ("output", preset.output)):
            out.append(f"{preset.name} preset {what}: {d.kind} mean {d.mean:g}, std {d.std:g}, {d.min_tokens}-"
                       f"{d.max_tokens} tokens")
    return out


def search_table(res: SearchResult, console: Console, show_all: bool) -> None:
    inp = res.inputs
    s = res.stats
    # the answer first, then what it was asked, then how it was found
    print_wrapped(console, recommendation(res), "bold")
    demand = f"{_f(inp.demand_rps, 'g')} req/s" if inp.demand_rps else "max throughput"
    where = " + ".join(f"{g.cluster.num_gpus} x {g.cluster.gpu.name} ({g.cluster.num_nodes} node(s) of "
                       f"{g.cluster.gpus_per_node}, {money(g.cluster.price_per_gpu_hour)}"
                       + (" $/GPU-h" if g.cluster.price_per_gpu_hour is not None else "") + ")" for g in inp.groups)
    print_phrases(console, "", [f"{inp.model.name} on {where}",
                                f"demand {demand}",
                                f"SLO p{inp.slo.percentile:g} TTFT {_f(inp.slo.ttft_s and inp.slo.ttft_s * 1e3, '.0f')} ms, "
                                f"TPOT {_f(inp.slo.tpot_s and inp.slo.tpot_s * 1e3, '.0f')} ms",
                                f"objective {inp.objective}"] + _workload_phrases(res))
    prof = inp.engines[0].profile if inp.engines and inp.engines[0].profile is not None else None
    if prof is not None:
        print_phrases(console, "", [f"engine profile {prof.label}", prof.calibration or "not calibrated"])
        if getattr(prof, "version_note", None):
            console.print(escape(f"engine version: {prof.version_note}"))
    print_phrases(console, "plans: ", [f"{s['enumerated']} layouts enumerated", f"{s['after_symmetry']} after symmetry",
                                       f"{s['unique_plans']} distinct plans x engine settings = {s['candidates']}",
                                       f"rejected {s['rejected']} (divisibility/dtype)",
                                       f"{s['infeasible_memory']} out of memory", f"{s['screened_out']} screened out",
                                       f"{s.get('pruned_by_bound', 0)} pruned by their analytic bound",
                                       f"{s['simulated']} simulated ({s['simulations']} runs)",
                                       f"{s['with_goodput']} meet the SLO"], sep=", ")
    smp = s.get("sampling")
    if smp:
        print_phrases(console, "steady state: ", [f"each run draws {smp['requests_drawn']} requests from the "
                                                  f"{smp['mix_requests']}-request mix",
                                                  f"mean request size {smp['work_bias_pct']:+.1f}% off the mix",
                                                  f"sampling error ±{smp['work_stderr_pct']:.1f}%",
                                                  "figures are over the measured window after warm-up"])
    if res.deployments:
        _deployments(res, console)
    disagg_lines(res, console)
    _plans(res, console, show_all)
    settings_lines(res, console)
    if res.closest:
        c = res.closest
        reps = " + ".join(f"{n} x {k}" for k, n in c.replicas)
        console.print(escape(f"closest: {reps} on {c.gpus} GPUs sustains {c.goodput_rps:.3g} req/s "
                             f"({c.shortfall_rps:.3g} req/s short of the demand)"))
        for x in c.launch:
            console.print(escape(f"  {x.replicas} x {x.command}"), soft_wrap=True)
    _uncalibrated(res, console)


def _deployments(res: SearchResult, console: Console) -> None:
    p = res.inputs.slo.percentile
    t = _table("Deployments (at the demanded rate)", [
        ("#", "right"), ("serving", "left"), ("replicas x plan", "left"), ("GPUs", "right"), ("capacity req/s", "right"),
        (f"p{p:g} TTFT ms", "right"), (f"p{p:g} TPOT ms", "right"), ("demand out tok/s", "right"),
        ("J/tok", "right"), ("mean W", "right"), ("$/h", "right"), ("$/Mtok out", "right"), ("$/Mtok in", "right")])
    for i, d in enumerate(res.deployments):
        m = d.metrics
        ec = economics(res, d)
        t.add_row(str(i + 1), d.serving, " + ".join(f"{n} x {k}" for k, n in d.deployment.replicas), str(d.deployment.gpus),
                  f"{d.deployment.goodput_rps:.3g}", _f(m.ttft_ms.p90, ".0f"), _f(m.tpot_ms.p90),
                  f"{m.throughput.output_tokens_per_s:.0f}", _f(m.energy.j_per_output_token, ".2f"),
                  _f(ec.mean_power_w_at_demand, ".0f"), money(ec.cost_per_hour),
                  money(ec.usd_per_mtok_output_at_demand, ".3g"), money(ec.usd_per_mtok_input_at_demand, ".3g"))
    print_table(console, t, ("$/Mtok in", "$/Mtok out", "mean W", "$/h", "J/tok", "demand out tok/s"))
    for i, d in enumerate(res.deployments):
        for x in d.launch:
            console.print(escape(f"  {i + 1}: {x.replicas} x {x.command}"), soft_wrap=True)
        low = lowered(res, [k for k, _ in d.deployment.replicas])
        if low:
            console.print(escape(f"  {i + 1}: max_model_len lowered to fit the KV cache: "
                                 + ", ".join(f"{k} {v}" for k, v in low.items())))


def _plans(res: SearchResult, console: Console, show_all: bool) -> None:
    p = res.inputs.slo.percentile
    t = _table("Replica plans: one replica at its share of the demand (else at its capacity)", [
        ("#", "right"), ("plan", "left"), ("GPUs", "right"), ("reps", "right"), ("capacity req/s", "right"),
        (f"p{p:g} TTFT ms", "right"), (f"p{p:g} TPOT ms", "right"), ("J/tok", "right"),
        ("weights GiB/GPU", "right"), ("max len", "right"), ("binds at capacity", "left")])
    notes = []
    for i, e in enumerate(res.plans):
        if e.status != "ok":
            if show_all:
                notes.append(f"  {e.key}: {e.status}: {e.reason}")
            continue
        m = e.at_demand or e.at_goodput
        low = e.lowered_max_model_len(res.inputs.model)
        t.add_row(str(i + 1), e.key, str(e.plan.gpus_per_replica), str(e.replicas_for_demand or "-"),
                  _f(e.goodput_rps, ".3g"), _f(m.ttft_ms.p90 if m else None, ".0f"), _f(m.tpot_ms.p90 if m else None),
                  _f(m.energy.j_per_output_token if m else None, ".2f"),
                  _f(e.memory.weights_bytes / GIB if e.memory else None),
                  f"{low} (lowered)" if low else "model's", e.binding or "-")
    if t.row_count:
        print_table(console, t, ("J/tok", "weights GiB/GPU", "reps", "max len"))
    if notes:
        console.print("not viable:")
        for n in notes:
            console.print(escape(n))
    if show_all and res.rejected:
        console.print(escape("rejected before costing: " + "; ".join(sorted({r for _, r in res.rejected}))))


def uncalibrated(res: SearchResult) -> list[str]:
    """The components the answer (the top deployment, else the best plan) relied on that no measured run
    calibrated, as `simulate` lists them."""
    from apex_plan.calibrate.interval import uncalibrated_components
    prof = res.inputs.engines[0].profile if res.inputs.engines else None
    if prof is None:
        return []
    by_key = plans_by_key(res)
    plans = [by_key[k].plan for d in res.deployments[:1] for k, _ in d.deployment.replicas if k in by_key] or [e.plan for e in res.plans if e.status == "ok"][:1]
    return sorted({u for p in plans for u in uncalibrated_components(p, res.inputs.cluster.gpu,
                                                                     res.inputs.cluster.gpus_per_node, prof)})


def _uncalibrated(res: SearchResult, console: Console) -> None:
    items = uncalibrated(res)
    if items:
        print_phrases(console, "uncalibrated: ", items)


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
