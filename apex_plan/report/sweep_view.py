"""The `sweep` summary: one row per scenario (GPUs needed, $/Mtok, latency), as a table, JSON, CSV
and a self-contained HTML page comparing the scenarios."""

from __future__ import annotations

from html import escape

from rich.console import Console
from rich.markup import escape as rescape

from apex_plan.report.layout import print_table, table
from apex_plan.report.chart import Bars, bars_svg
from apex_plan.report.output import SCHEMA_VERSION
from apex_plan.sweep.scenarios import Scenario

from apex_plan.report.economics import money, usd_per_mtok  # noqa: F401 (one truth for $/Mtok; re-exported)


def summary_rows(scenarios: list[Scenario], lines: dict[str, dict], prices: dict[str, float]) -> list[dict]:
    """One row per scenario, in the order of the sweep file."""
    rows = []
    for i, sc in enumerate(scenarios):
        doc = lines.get(sc.id)
        row = {"n": i + 1, "scenario": sc.name, "id": sc.id, "status": "pending", "gpus_needed": None,
               "deployment": "", "goodput_rps": None, "demand_rps": None, "ttft_p90_ms": None, "tpot_p90_ms": None,
               "output_tokens_per_s": None, "cost_per_hour": None, "usd_per_mtok": None, "usd_per_mtok_input": None,
               "reason": ""}
        if doc is None:
            rows.append(row)
            continue
        if "error" in doc:
            row.update(status="failed", reason=doc["error"])
            rows.append(row)
            continue
        inp = doc["inputs"]
        row["demand_rps"] = inp.get("demand_rps")
        deps = doc.get("deployments") or []
        if not deps:
            row.update(status="no deployment", reason=doc.get("binding_constraint") or doc.get("recommendation", ""))
            rows.append(row)
            continue
        d = deps[0]
        m = d["metrics"]
        # the search's own price (cluster file or --prices) wins; else the sweep file's price for its GPU
        cost = d.get("cost_per_hour")
        if cost is None and inp.get("gpu", "") in prices:
            cost = prices[inp["gpu"]] * d["gpus"]
        in_tok = (m.get("throughput") or {}).get("input_tokens_per_s")
        row.update(status="ok", gpus_needed=d["gpus"],
                   deployment=" + ".join(f"{r['count']} x {r['plan']}" for r in d["replicas"]),
                   goodput_rps=d["goodput_rps"], ttft_p90_ms=m["ttft_ms"]["p90"], tpot_p90_ms=m["tpot_ms"]["p90"],
                   output_tokens_per_s=m.get("output_tokens_per_s"), cost_per_hour=cost,
                   usd_per_mtok=usd_per_mtok(cost, m.get("output_tokens_per_s")),
                   usd_per_mtok_input=usd_per_mtok(cost, in_tok))
        rows.append(row)
    return rows


def sweep_json(rows: list[dict], output: str, wall_s: float) -> dict:
    return {"schema_version": SCHEMA_VERSION, "command": "sweep", "results_file": output,
            "scenarios": len(rows), "ok": sum(r["status"] == "ok" for r in rows),
            "failed": sum(r["status"] == "failed" for r in rows), "wall_s": wall_s, "rows": rows}


def _f(x, spec: str) -> str:
    return "-" if x is None else format(x, spec)


def sweep_table(rows: list[dict], console: Console, output: str, wall_s: float) -> None:
    t = table(f"Sweep: {len(rows)} scenarios -> {output}",
              [(c, "left" if c in ("scenario", "status", "deployment") else "right")
               for c in ("#", "scenario", "status", "GPUs", "deployment", "TTFT p90", "TPOT p90", "tok/s", "$/h",
                         "$/Mtok", "$/Mtok in")])
    for r in rows:
        t.add_row(str(r["n"]), rescape(r["scenario"]), r["status"], _f(r["gpus_needed"], "d"), rescape(r["deployment"]),
                  _f(r["ttft_p90_ms"], ".0f"), _f(r["tpot_p90_ms"], ".1f"), _f(r["output_tokens_per_s"], ".0f"),
                  money(r["cost_per_hour"]), money(r["usd_per_mtok"], ".3g"), money(r["usd_per_mtok_input"], ".3g"))
    print_table(console, t, ("$/Mtok in", "$/Mtok", "$/h", "tok/s"))
    for r in rows:
        if r["reason"]:
            console.print(rescape(f"  {r['n']} {r['scenario']}: {r['status']}: {r['reason']}"))
    ok = sum(r["status"] == "ok" for r in rows)
    failed = sum(r["status"] == "failed" for r in rows)
    console.print(f"{ok} with a deployment, {failed} failed, {len(rows) - ok - failed} without one; "
                  f"this run took {wall_s:.1f} s")


def sweep_html(rows: list[dict], title: str) -> str:
    """Scenarios side by side: GPUs needed and $/Mtok as bars, then the full table."""
    from apex_plan.report.html import _page, _table
    ok = [r for r in rows if r["status"] == "ok"]
    none = [r for r in rows if r["status"] not in ("ok", "failed")]
    body = [f"<p>{len(rows)} scenarios: {len(ok)} with a deployment meeting the SLO, {len(none)} without one "
            f"(not shown in the bars: see the reasons below), {sum(r['status'] == 'failed' for r in rows)} failed.</p>"]
    if ok:
        names = tuple(f"{r['n']}. {r['scenario']}" for r in ok)
        body.append("<h2>GPUs needed</h2>" + bars_svg(Bars("GPUs of the recommended deployment", "GPUs", names,
                                                           (("GPUs", tuple(float(r["gpus_needed"]) for r in ok)),), show_values=True),
                                                      width=900))
        priced = [r for r in ok if r["usd_per_mtok"] is not None]
        if priced:
            body.append("<h2>Cost per million output tokens</h2>" + bars_svg(Bars(
                "$ per million output tokens at the demanded rate", "USD / Mtok",
                tuple(f"{r['n']}. {r['scenario']}" for r in priced),
                (("$/Mtok", tuple(r["usd_per_mtok"] for r in priced)),), show_values=True), width=900))
        else:
            body.append('<p class="muted">No GPU price known: add a prices: section to the sweep file (or '
                        'price_per_gpu_hour to a cluster YAML) for $/Mtok.</p>')
    table = [[r["n"], r["scenario"], r["status"], _f(r["gpus_needed"], "d"), r["deployment"],
              _f(r["demand_rps"], "g"), _f(r["goodput_rps"], ".3g"), _f(r["ttft_p90_ms"], ".0f"),
              _f(r["tpot_p90_ms"], ".1f"), _f(r["output_tokens_per_s"], ".0f"), money(r["cost_per_hour"]),
              money(r["usd_per_mtok"], ".3g"), money(r["usd_per_mtok_input"], ".3g"), r["reason"]] for r in rows]
    body.append("<h2>Every scenario</h2>" + _table(
        ["#", "scenario", "status", "GPUs", "deployment", "demand req/s", "capacity req/s", "TTFT p90 ms",
         "TPOT p90 ms", "output tok/s", "$/h", "$/Mtok out", "$/Mtok in", "reason"], table, left=3))
    body.append(f'<p class="muted">scenario ids: {escape(", ".join(r["id"] for r in rows))}</p>')
    return _page(title, body)
