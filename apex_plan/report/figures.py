"""The report's figures as `Chart` / `Bars` data: Pareto charts of the simulated plans, latency CDFs,
per-phase time and per-GPU memory breakdowns."""

from __future__ import annotations

import numpy as np

from apex_plan.report.chart import PALETTE, Bars, Chart, Rule, Series
from apex_plan.report.report_data import SearchReportData, cdf
from apex_plan.simulate.run import SimResult

OPS = ("gemm", "attention", "communication", "elementwise", "embed_lm_head", "engine_host")


def _fmt(x, spec=".1f") -> str:
    return "-" if x is None else format(x, spec)


def pareto_front(xs: list[float], ys: list[float]) -> tuple[list[float], list[float]]:
    """Points no other point beats on both lower x (latency) and higher y (throughput), by x."""
    order = sorted(range(len(xs)), key=lambda i: (xs[i], -ys[i]))
    fx, fy, best = [], [], -np.inf
    for i in order:
        if ys[i] > best:
            fx.append(xs[i])
            fy.append(ys[i])
            best = ys[i]
    return fx, fy


def _tip(p, pct: str) -> str:
    mem = p.memory or {}
    lines = [p.key, f"{p.gpus_per_replica} GPU(s) per replica (tp{p.tp} pp{p.pp} ep{p.ep}), "
             f"weights {p.weight_dtype}, KV {p.kv_dtype}",
             f"goodput {p.goodput_rps:.3g} req/s per replica; {_fmt(p.tok_s_per_gpu, '.0f')} output tok/s per GPU",
             f"at goodput: TTFT {pct} {_fmt(p.ttft_ms, '.0f')} ms, TPOT {pct} {_fmt(p.tpot_ms)} ms",
             f"weights {_fmt(mem.get('weights_gib'))} GiB/GPU, KV cache {mem.get('kv_cache_tokens', '-')} tokens"]
    if p.replicas_for_demand:
        lines.append(f"{p.replicas_for_demand} replica(s) for the demand: TTFT {pct} {_fmt(p.demand_ttft_ms, '.0f')} ms, "
                     f"TPOT {pct} {_fmt(p.demand_tpot_ms)} ms")
    if p.deployment_rank:
        lines.append(f"used by deployment #{p.deployment_rank}")
    return "\n".join(lines)


def pareto_charts(d: SearchReportData) -> list[Chart]:
    """Output tokens/s per GPU vs TPOT and vs TTFT (at the SLO percentile): each plan's load curve
    (shares of its goodput up to it), the Pareto front over all points, SLO lines, deployments."""
    pct = f"p{d.percentile:g}"
    ok = [p for p in d.plans if p.status == "ok" and p.tok_s_per_gpu is not None]
    sizes = sorted({p.gpus_per_replica for p in ok})
    charts = []
    for i, (metric, slo, name) in enumerate((("tpot_ms", d.tpot_slo_ms, "TPOT"), ("ttft_ms", d.ttft_slo_ms, "TTFT"))):
        series, xs_all, ys_all = [], [], []
        for j, g in enumerate(sizes):
            color = PALETTE[j % 6]
            pts = [p for p in ok if p.gpus_per_replica == g]
            for p in pts:
                curve = p.curve or ((p.goodput_rps, p.tok_s_per_gpu, p.ttft_ms, p.tpot_ms),)
                xs = tuple(c[3 if metric == "tpot_ms" else 2] for c in curve)
                ys = tuple(c[1] for c in curve)
                xs_all += [x for x in xs if x is not None]
                ys_all += [y for x, y in zip(xs, ys) if x is not None]
                if len(curve) > 1:
                    series.append(Series("", xs, ys, kind="line", color=color))
                tips = tuple(f"at {c[0]:.3g} req/s per replica ({c[0] / p.goodput_rps:.0%} of goodput): "
                             f"{c[1]:.0f} tok/s/GPU, TTFT {pct} {_fmt(c[2], '.0f')} ms, TPOT {pct} {_fmt(c[3])} ms\n"
                             + _tip(p, pct) for c in curve)
                series.append(Series("", xs, ys, color=color, tips=tips))
            series.append(Series(f"{g} GPU(s) per replica", (), (), color=color))   # legend entry
        if xs_all:
            fx, fy = pareto_front(xs_all, ys_all)
            series.insert(0, Series("Pareto front", tuple(fx), tuple(fy), kind="step", color="#777", dashed=True))
        deps = [dv for dv in d.deployments if dv.tpot_ms is not None]
        if deps:
            series.append(Series("deployment at the demand", tuple(getattr(dv, metric) for dv in deps),
                                 tuple(dv.tok_s_per_gpu for dv in deps), color="#F0E442", marker="diamond",
                                 tips=tuple(f"deployment #{dv.rank}: {dv.label} on {dv.gpus} GPUs at {dv.rate_rps:.3g} "
                                            f"req/s: {dv.tok_s_per_gpu:.0f} tok/s/GPU, TTFT {pct} {_fmt(dv.ttft_ms, '.0f')}"
                                            f" ms, TPOT {pct} {_fmt(dv.tpot_ms)} ms" for dv in deps),
                                 names=tuple(f"#{dv.rank}" for dv in deps)))
        rules = (Rule("x", slo, f"{name} SLO {pct} {slo:g} ms"),) if slo else ()
        x_hi = max(xs_all + [(slo or 0) * 1.15, 1.0])
        charts.append(Chart(f"Throughput per GPU vs {name} ({len(ok)} plans meeting the SLO)",
                            f"{name} {pct} (ms)", "output tokens/s per GPU", tuple(series), rules, x_max=x_hi,
                            note=("lines: one replica plan from 30% of its goodput to it; hover a point for details" if ok
                                  else "no plan meets the SLO at any rate tried: the plan table gives each one's reason")))
    return charts


def _cdf_x_max(samples: list[np.ndarray], slo_ms: float | None) -> float:
    vals = [float(np.percentile(s, 99.5)) * 1e3 for s in samples if s.size]
    return max(vals + [(slo_ms or 0) * 1.15, 1e-3])


def cdf_charts(names: list[str], ttft: list[np.ndarray], tpot: list[np.ndarray], percentile: float,
               ttft_slo_ms: float | None, tpot_slo_ms: float | None) -> list[Chart]:
    """CDFs of per-request TTFT and TPOT, one line per deployment (or simulation)."""
    charts = []
    pct = f"p{percentile:g}"
    for name, samples, slo in (("TTFT", ttft, ttft_slo_ms), ("TPOT", tpot, tpot_slo_ms)):
        series = []
        for j, (label, s) in enumerate(zip(names, samples)):
            x, y = cdf(s)
            series.append(Series(label, x, y, kind="step", color=PALETTE[j % len(PALETTE)]))
        rules = [Rule("y", percentile / 100.0, f"{pct}", color="#555")]
        if slo:
            rules.append(Rule("x", slo, f"{name} SLO {slo:g} ms"))
        charts.append(Chart(f"{name} per request (CDF)", f"{name} (ms)", "fraction of requests", tuple(series),
                            tuple(rules), y_max=1.0, x_max=_cdf_x_max(samples, slo),
                            note="x axis cut at the 99.5th percentile" if samples else ""))
    return charts


def typical_batch(sim: SimResult) -> int:
    """Mean number of sequences decoding per engine over the run (Little's law: decode seconds of
    all requests over the makespan, per engine), at least 1, at most max_num_seqs."""
    t = sim.times
    decoding_s = float((t.finish_s - t.first_token_s)[t.ok].sum())
    engines = sim.plan.dp * sim.plan.pp
    return int(min(max(round(decoding_s / max(sim.makespan_s, 1e-9) / engines), 1), sim.engine.max_num_seqs))


def step_bars(labels: list[str], sims: list[SimResult]) -> Bars:
    """Per-op milliseconds of one decode step at the run's typical batch and one prefill chunk."""
    from apex_plan.report.simulate_view import step_breakdown
    cats, vals = [], {op: [] for op in OPS}
    for label, sim in zip(labels, sims):
        t = sim.times
        ctx = int(max(1, t.prompt_tokens.mean() + t.output_tokens.mean() / 2))
        b = typical_batch(sim)
        bd = step_breakdown(sim, b, ctx)
        cats += [f"{label}: decode x{b}", f"{label}: prefill {bd['prefill_chunk']['tokens']} tok"]
        for op in OPS:
            vals[op] += [bd["decode_step"][op + "_ms"], bd["prefill_chunk"][op + "_ms"]]
    return Bars("Step time by operation (decode step at the run's mean batch; one prefill chunk)", "ms",
                tuple(cats), tuple((op.replace("_", " "), tuple(v)) for op, v in vals.items()))


def phase_bars(labels: list[str], sims: list[SimResult]) -> Bars:
    """Mean seconds per request in each phase: queued, prefill (to first token), decode, front end."""
    parts = {"queued": [], "prefill": [], "decode": [], "front end": []}
    for sim in sims:
        t = sim.times
        ok = t.ok
        parts["queued"].append(float((t.scheduled_s - t.arrival_s)[ok].mean()))
        parts["prefill"].append(float((t.first_token_s - t.scheduled_s)[ok].mean()))
        parts["decode"].append(float((t.finish_s - t.first_token_s)[ok].mean()))
        parts["front end"].append(t.frontend_s)
    return Bars("Request time by phase (mean per request)", "s", tuple(labels),
                tuple((k, tuple(v)) for k, v in parts.items()))


def memory_bars(labels: list[str], mems: list[dict]) -> Bars:
    """GiB per GPU: weights, activation peak, engine reserve, KV pool, and what the utilisation cap leaves."""
    keys = (("weights", "weights_gib"), ("activations", "activation_gib"), ("engine reserve", "reserve_gib"),
            ("KV cache pool", "kv_pool_gib"))
    parts = [(name, tuple(max(m[k], 0.0) for m in mems)) for name, k in keys]
    parts.append(("unused (above --gpu-memory-utilization)", tuple(max(m["total_gib"] - m["budget_gib"], 0.0)
                                                                    for m in mems)))
    return Bars("Memory per GPU", "GiB", tuple(labels), tuple(parts), totals=tuple(m["total_gib"] for m in mems))
