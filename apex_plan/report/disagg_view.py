"""A disaggregated `simulate` result: JSON (per-phase TTFT breakdown, transfer, pools, conservation,
launch commands), CSV row, and a table."""

from __future__ import annotations

import dataclasses

from rich.console import Console

from apex_plan.report.layout import print_table, table
from apex_plan.report.output import SCHEMA_VERSION, flatten
from apex_plan.report.simulate_view import latency_table
from apex_plan.simulate.disagg import DisaggResult
from apex_plan.simulate.metrics import Distribution


def _role_doc(role) -> dict | None:
    if role is None:
        return None
    p = role.plan
    return {"instances": p.dp, "tp": p.tp, "pp": p.pp, "ep": p.ep, "adp": p.adp, "gpus_per_instance": p.gpus_per_replica,
            "label": p.replica_label(), "engine": role.engine.as_dict(), "memory_per_gpu": role.memory.as_dict()}


def launch_doc(res: DisaggResult, model_repo: str) -> dict:
    from apex_plan.report.launch import disagg_launch
    return disagg_launch(res.decode.engine.profile.family, model_repo, res.plan, res.prefill.engine, res.decode.engine,
                         num_experts=res.model_experts)


def disagg_json(res: DisaggResult, inputs: dict) -> dict:
    from apex_plan.calibrate.interval import uncalibrated_components
    doc = {"schema_version": SCHEMA_VERSION, "command": "simulate", "serving": "disagg", "inputs": inputs,
           "plan": {"label": res.plan.label(), "gpus": res.plan.num_gpus, "prefill": _role_doc(res.prefill),
                    "decode": _role_doc(res.decode)},
           "feasible": res.feasible, "reason": res.reason, "exit_status": 0 if res.feasible else 1,
           "launch": (launch_doc(res, inputs.get("model_source") or inputs["model"]).to_dict()
                      if res.prefill and res.decode else None)}
    if res.feasible:
        doc["metrics"] = res.metrics.to_dict()
        unc = ["disaggregated serving: KV transfer, decode admission and routing are not calibrated on measured runs"]
        for name, r in (("prefill", res.prefill), ("decode", res.decode)):
            unc += [f"{name}: {u}" for u in uncalibrated_components(r.plan, r.step_cost.gpu,
                                                                      inputs.get("gpus_per_node", 8), r.engine.profile)]
        doc["uncalibrated"] = unc
    return doc


def disagg_rows(res: DisaggResult, inputs: dict) -> list[dict]:
    return [flatten(disagg_json(res, inputs))]


def _f(x, spec=".1f"):
    return "-" if x is None else format(x, spec)


def disagg_table(res: DisaggResult, console: Console, model_repo: str = "MODEL") -> None:
    console.print(f"[bold]{res.plan.label()}[/bold] on {res.plan.num_gpus} GPUs")
    for name, r in (("prefill", res.prefill), ("decode", res.decode)):
        if r is None:
            continue
        mem = r.memory.as_dict()
        console.print(f"{name}: {r.plan.dp} x {r.plan.replica_label()}, {r.engine.profile.label}, max_num_seqs {r.engine.max_num_seqs}, budget "
                      f"{r.engine.max_batched_tokens}; weights {mem['weights_gib']:.1f} GiB, KV pool "
                      f"{mem['kv_pool_gib']:.1f} GiB = {mem['kv_cache_tokens']:,} tokens per instance")
    if not res.feasible:
        console.print(f"[red]infeasible:[/red] {res.reason}")
        return
    m = res.metrics
    print_table(console, latency_table(m))
    ph = table("TTFT by phase (ms)", [(col, "right" if col != "phase" else "left") for col in ("phase", "mean", "p50", "p90")])
    d = m.disagg
    for f in dataclasses.fields(d.ttft_phases):
        v = getattr(d.ttft_phases, f.name)
        if isinstance(v, Distribution):
            ph.add_row(f.name.removesuffix("_ms").replace("_", " "), *(_f(x, ".2f") for x in (v.mean, v.p50, v.p90)))
        else:
            ph.add_row(f.name.removesuffix("_ms"), _f(v, ".2f"), "", "")
    print_table(console, ph)
    kv, c, pools = d.kv_transfer, d.conservation, d.pools
    console.print(f"KV transfer: {kv.bytes_per_request_mean / 2**20:.1f} MiB per request, links "
                  f"{', '.join(f'{g:g}' for g in kv.link_gbps)} GB/s, {kv.rank_pairs_over_nvlink:.0%} of rank pairs "
                  f"over NVLink")
    console.print(f"pools: prefill busy {pools.prefill.busy_fraction:.0%} (KV peak "
                  f"{pools.prefill.kv_peak_utilization:.0%}), decode busy {pools.decode.busy_fraction:.0%} "
                  f"(KV peak {m.memory.peak_utilization:.0%}); {m.completed}/{m.requests} completed; "
                  f"prefilled {c.prefilled}, transferred {c.transferred}, decoded {c.decoded}")
    th = m.throughput
    console.print(f"throughput: {th.output_tokens_per_s:.0f} output tok/s, {th.requests_per_s:.2f} req/s over "
                  f"{m.makespan_s:.0f} s")
    if m.slo is not None:
        s = m.slo
        console.print(f"SLO p{s.percentile:g}: TTFT {s.ttft_at_percentile_ms:.1f} ms, TPOT "
                      f"{s.tpot_at_percentile_ms:.2f} ms: {'met' if s.met else 'missed'}; goodput "
                      f"{s.goodput_requests_per_s:.2f} req/s")
    la = launch_doc(res, model_repo)
    console.print(f"launch ({la.prefill_instances} prefill instances): {la.prefill}", soft_wrap=True)
    console.print(f"launch ({la.decode_instances} decode instances): {la.decode}", soft_wrap=True)
    console.print(f"router: {la.router}", soft_wrap=True)
