"""`--report FILE.html`: one self-contained page (inline CSS and SVG, no script, nothing fetched)
for a search or a simulation."""

from __future__ import annotations

import datetime as _dt
from html import escape
from pathlib import Path

from apex_plan.report.economics import money
from apex_plan import __version__
from apex_plan.errors import InputError
from apex_plan.report import figures as F
from apex_plan.report.chart import bars_svg, svg
from apex_plan.report.report_data import TOP_DEPLOYMENTS as TOP, SearchReportData

CSS = """
body{font-family:Helvetica,Arial,sans-serif;margin:24px auto;max-width:1180px;color:#222;font-size:14px}
h1{font-size:22px;margin-bottom:4px}h2{font-size:17px;border-bottom:1px solid #ccc;padding-bottom:3px;margin-top:28px}
table{border-collapse:collapse;font-size:12px;margin:6px 0}td,th{border:1px solid #ddd;padding:3px 7px;text-align:right;vertical-align:top}
th{background:#f2f2f2}td.l,th.l{text-align:left}.kv td:first-child{text-align:left;color:#555}.kv td{text-align:left}
.rec{background:#eef6ee;border-left:4px solid #009E73;padding:8px 12px;font-size:15px}
.bad{background:#fdecea;border-left-color:#D55E00}pre{background:#f6f6f6;padding:8px;white-space:pre-wrap;font-size:12px}
.charts{display:flex;flex-wrap:wrap;gap:12px}.muted{color:#666;font-size:12px}
g.pt:hover circle,g.pt:hover path{stroke:#000;stroke-width:2.5}tr.dep td{background:#fffbe0}
"""


def _kv_rows(d, prefix: str = "") -> list[str]:
    """Nested dict as key/value rows (whatever the inputs echo holds, engine provenance included)."""
    rows = []
    items = d.items() if isinstance(d, dict) else [(prefix.rstrip("."), d)]
    for k, v in items:
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            rows += _kv_rows(v, key + ".")
        elif hasattr(v, "__dataclass_fields__"):
            import dataclasses
            rows += _kv_rows(dataclasses.asdict(v), key + ".")
        elif v is None or v == [] or v == {}:
            continue
        else:
            text = ", ".join(map(str, v)) if isinstance(v, (list, tuple)) else str(v)
            rows.append(f"<tr><td>{escape(key)}</td><td>{escape(text)}</td></tr>")
    return rows


def _table(head: list[str], rows: list[list], left: int = 1, classes: list[str] | None = None) -> str:
    h = "".join(f'<th class="l">{escape(c)}</th>' if i < left else f"<th>{escape(c)}</th>" for i, c in enumerate(head))
    body = []
    for r, row in enumerate(rows):
        cls = f' class="{classes[r]}"' if classes and classes[r] else ""
        cells = "".join(f'<td class="l">{escape(str(c))}</td>' if i < left or i == len(row) - 1 and isinstance(c, str)
                        and len(c) > 12 else f"<td>{escape(str(c))}</td>" for i, c in enumerate(row))
        body.append(f"<tr{cls}>{cells}</tr>")
    return f"<table><tr>{h}</tr>{''.join(body)}</table>"


def _page(title: str, body: list[str]) -> str:
    stamp = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{escape(title)}</title>'
            f"<style>{CSS}</style></head><body><h1>{escape(title)}</h1>"
            f'<p class="muted">apex-plan {__version__}, {stamp}. Predictions of an analytic roofline estimator and a '
            f"batching simulator; the GPU profile's calibration block says which constants were fitted to "
            f"measurements.</p>{''.join(body)}</body></html>\n")


def _question(inputs: dict, model_source: str, gpu_source: str) -> str:
    rows = _kv_rows(inputs)
    for name, text in (("model source", model_source), ("GPU profile source", gpu_source)):
        if text:
            rows.append(f"<tr><td>{name}</td><td>{escape(text)}</td></tr>")
    return f'<h2>The question</h2><table class="kv">{"".join(rows)}</table>'


def search_html(d: SearchReportData) -> str:
    q = d.question
    pct = f"p{d.percentile:g}"
    cls = "rec" if d.deployments else "rec bad"
    # the answer first: the recommendation and its launch command, then the question that was asked
    body = [f'<h2>Recommendation</h2><p class="{cls}">{escape(d.recommendation)}</p>']
    if d.deployments:
        body.append("<p>Launch command (one per replica plan):</p><pre>" +
                    escape("\n".join(d.deployments[0].launch)) + "</pre>")
    body.append(_question(q, d.model_source, d.gpu_source))
    if d.calibration:
        body.append("<details><summary>GPU profile calibration constants (the profile YAML gives each one's "
                    f'source)</summary><table class="kv">{"".join(_kv_rows(d.calibration))}</table></details>')
        rows = []
        for dv in d.deployments:
            m = dv.metrics
            rows.append([dv.rank, dv.label, dv.gpus, f"{dv.goodput_rps:.3g}", f"{dv.rate_rps:.3g}",
                         F._fmt(m.ttft_ms.p50, ".0f") + " / " + F._fmt(m.ttft_ms.p90, ".0f"),
                         F._fmt(m.tpot_ms.p50) + " / " + F._fmt(m.tpot_ms.p90),
                         F._fmt(m.throughput.output_tokens_per_s, ".0f"), F._fmt(m.energy.j_per_output_token, ".2f"),
                         F._fmt(dv.economics.mean_power_w_at_demand, ".0f"),
                         money(dv.cost_per_hour), money(dv.economics.usd_per_mtok_output_at_demand, ".3g"),
                         money(dv.economics.usd_per_mtok_input_at_demand, ".3g"),
                         money(dv.economics.usd_per_mtok_output_at_capacity, ".3g")])
        body.append(_table(["#", "deployment", "GPUs", "capacity req/s", "simulated at req/s", "TTFT p50/p90 ms",
                            "TPOT p50/p90 ms", "output tok/s", "J/token", "mean W", "$/h", "$/Mtok out",
                            "$/Mtok in", "$/Mtok out at capacity"], rows, left=2))
    st = d.stats
    body.append(f'<p class="muted">{st.get("enumerated", "?")} layouts enumerated, {st.get("candidates", "?")} plan x '
                f'engine candidates, {st.get("infeasible_memory", "?")} out of memory, {st.get("screened_out", "?")} '
                f'screened out analytically, {st.get("simulated", "?")} simulated ({st.get("simulations", "?")} runs), '
                f'{st.get("with_goodput", "?")} meet the SLO.</p>')
    body.append("<h2>Throughput / latency trade-off</h2><div class='charts'>" +
                "".join(svg(c) for c in F.pareto_charts(d)) + "</div>")
    if d.deployments:
        names = [f"#{dv.rank} {dv.label}" for dv in d.deployments]
        body.append("<h2>Latency distributions of the top deployments</h2><div class='charts'>" +
                    "".join(svg(c) for c in F.cdf_charts(names, [dv.ttft_s for dv in d.deployments],
                                                         [dv.tpot_s for dv in d.deployments], d.percentile,
                                                         d.ttft_slo_ms, d.tpot_slo_ms)) + "</div>")
        seen, labels, sims = set(), [], []
        for dv in d.deployments:
            for g in dv.groups:
                if g.key not in seen and g.sim.times is not None:
                    seen.add(g.key)
                    labels.append(g.key)
                    sims.append(g.sim)
        body.append("<h2>Where the time goes</h2><div class='charts'>" + bars_svg(F.phase_bars(
            [f"#{dv.rank} {g.key}" for dv in d.deployments for g in dv.groups if g.sim.times is not None],
            [g.sim for dv in d.deployments for g in dv.groups if g.sim.times is not None])) +
            bars_svg(F.step_bars(labels, sims), width=620) + "</div>")
        body.append("<h2>Memory per GPU</h2>" + bars_svg(F.memory_bars(labels, [s.memory.as_dict() for s in sims]),
                                                       width=760))
    rows, classes = [], []
    rank = 0
    for p in d.plans:
        rank += p.status == "ok"
        mem = p.memory or {}
        rows.append([rank if p.status == "ok" else "", p.key, p.status, p.gpus_per_replica,
                     f"{p.goodput_rps:.3g}" if p.goodput_rps else "-", p.replicas_for_demand or "-",
                     F._fmt(p.ttft_ms, ".0f"), F._fmt(p.tpot_ms), F._fmt(p.tok_s_per_gpu, ".0f"),
                     F._fmt(p.energy_j_per_token, ".2f"), F._fmt(mem.get("weights_gib")),
                     mem.get("kv_cache_tokens", "-"), f"#{p.deployment_rank}" if p.deployment_rank else "",
                     p.reason or ""])
        classes.append("dep" if p.deployment_rank else "")
    body.append(f"<h2>Every plan ({len(d.plans)})</h2>" + _table(
        ["rank", "plan", "status", "GPUs/replica", "goodput req/s", "replicas", f"TTFT {pct} ms", f"TPOT {pct} ms",
         "tok/s/GPU", "J/token", "weights GiB/GPU", "KV tokens", "deployment", "reason"], rows, left=3,
        classes=classes))
    body.append('<p class="muted">Latencies and throughput of one replica at its goodput (the highest rate meeting '
                'the SLO); infeasible, screened and no-goodput plans carry the reason.</p>')
    if d.rejected:
        body.append(f"<h2>Rejected before costing ({len(d.rejected)})</h2>" +
                    _table(["plan", "reason"], [[p, r] for p, r in d.rejected], left=2))
    return _page(f"apex-plan search: {q.get('model', '')} on {q.get('gpus', '')} x {q.get('gpu', '')}", body)


def simulate_html(res, inputs: dict, model_source: str = "", gpu_source: str = "") -> str:
    """One simulation: the question, the plan's metrics, CDFs, phase/step/memory breakdowns."""
    body = [_question(inputs, model_source, gpu_source)]
    label = res.plan.label()
    if not res.feasible:
        body.append(f'<h2>Result</h2><p class="rec bad">{escape(label)} is infeasible: {escape(res.reason)}</p>')
        body.append("<h2>Memory per GPU</h2>" + bars_svg(F.memory_bars([label], [res.memory.as_dict()]), width=760))
        return _page(f"apex-plan simulate: {inputs.get('model', '')} {label}", body)
    m = res.metrics
    slo = m.slo
    verdict = ("" if not slo else f" SLO p{slo.percentile:g} {'met' if slo.met else 'missed'}, attainment "
               f"{slo.attainment:.1%}.")
    body.append(f'<h2>Result</h2><p class="rec{"" if not slo or slo.met else " bad"}">{escape(label)}: '
                f"{m.completed}/{m.requests} requests, {m.throughput.output_tokens_per_s:.0f} output tok/s."
                f"{escape(verdict)}</p>")
    rows = [[name, *(F._fmt(x, spec) for x in (d.mean, d.p50, d.p90, d.p99))]
            for d, name, spec in ((m.latency.ttft_ms, "TTFT (ms)", ".1f"), (m.latency.tpot_ms, "TPOT (ms)", ".2f"),
                                  (m.latency.e2e_s, "end-to-end (s)", ".2f"), (m.latency.queue_ms, "queueing (ms)", ".1f"))]
    body.append(_table(["metric", "mean", "p50", "p90", "p99"], rows))
    pct = slo.percentile if slo else 90.0
    body.append("<h2>Latency distributions</h2><div class='charts'>" + "".join(svg(c) for c in simulate_charts(res)) +
                "</div>")
    body.append("<h2>Where the time goes</h2><div class='charts'>" + bars_svg(F.phase_bars([label], [res])) +
                bars_svg(F.step_bars([label], [res]), width=620) + "</div>")
    body.append("<h2>Memory per GPU</h2>" + bars_svg(F.memory_bars([label], [res.memory.as_dict()]), width=760))
    body.append(f'<p class="muted">percentile lines at p{pct:g}.</p>')
    return _page(f"apex-plan simulate: {inputs.get('model', '')} {label}", body)


def simulate_charts(res) -> list:
    """TTFT and TPOT CDFs of one simulation (what `simulate --plot` draws)."""
    slo = res.metrics.slo
    return F.cdf_charts([res.plan.label()], [res.times.ttft_s], [res.times.tpot_s], slo.percentile if slo else 90.0,
                        slo.ttft_ms if slo else None, slo.tpot_ms if slo else None)


def write_report(path: str, html: str) -> None:
    if not path.lower().endswith((".html", ".htm")):
        raise InputError("--report", None, f"'{path}' is not an .html file", "name the report FILE.html")
    try:
        Path(path).write_text(html, encoding="utf-8")
    except OSError as e:
        raise InputError(path, None, f"cannot write: {e.strerror}", "choose a writable --report path") from None


def check_outputs(report: str | None, plot: str | None) -> None:
    """Refuse a wrong --report / --plot file name before any work is done."""
    if report is not None and not report.lower().endswith((".html", ".htm")):
        raise InputError("--report", None, f"'{report}' is not an .html file", "name the report FILE.html")
    if plot is not None and not plot.lower().endswith((".svg", ".png")):
        raise InputError("--plot", None, f"'{plot}' is neither .svg nor .png", "name the chart FILE.svg or FILE.png")
    if plot is not None and plot.lower().endswith(".png"):
        try:                                              # refuse before the search, not after it
            import matplotlib  # noqa: F401
        except ImportError:
            raise InputError("--plot", None, "PNG output needs matplotlib, which is not installed",
                             "pip install 'apex-plan[plot]', or write an .svg file instead") from None
    from apex_plan.report.output import check_writable
    for opt, path in (("--report", report), ("--plot", plot)):
        if path is not None:
            check_writable(path, opt)


def search_outputs(res, inputs: dict, report: str | None, plot: str | None, curves: dict | None = None) -> None:
    """`search --report/--plot`: the HTML page and the Pareto charts alone; `curves`: the plans' load
    curves (`search.curves.load_curves`)."""
    from apex_plan.report.chart import write_plot
    from apex_plan.report.report_data import from_search
    d = from_search(res, inputs, top=TOP, curves=curves)
    if plot:
        write_plot(F.pareto_charts(d), plot)
    if report:
        write_report(report, search_html(d))


def simulate_outputs(res, inputs: dict, report: str | None, plot: str | None, model_source: str = "",
                     gpu_source: str = "") -> None:
    """`simulate --report/--plot`: the HTML page and the TTFT/TPOT CDFs alone."""
    from apex_plan.report.chart import write_plot
    if plot:
        if not res.feasible:
            raise InputError("--plot", None, f"the plan is infeasible ({res.reason}), there is nothing to draw",
                             "choose a plan that fits, or drop --plot")
        write_plot(simulate_charts(res), plot)
    if report:
        write_report(report, simulate_html(res, inputs, model_source, gpu_source))
