"""What each compared engine setting buys in a search: prefix caching on/off, speculative decoding."""

from __future__ import annotations

from rich.console import Console
from rich.markup import escape


def _label(cfg) -> str:
    cache = {None: "caching auto", True: "caching on", False: "caching off"}[cfg.prefix_caching]
    spec = cfg.speculative.label if cfg.speculative is not None else "no speculation"
    return f"{cache}, {spec}"


def settings_doc(res) -> list[dict]:
    """Per compared setting (only when search compared prefix caching or speculation): the plan with
    the highest capacity per GPU, its capacity, hit rate, tokens per verification, TTFT and TPOT."""
    engines = res.inputs.engines
    if len({(e.prefix_caching, e.speculative) for e in engines}) < 2:
        return []
    out = []
    for cfg in engines:
        mine = [e for e in res.plans if e.engine_cfg is cfg]
        ok = [e for e in mine if e.status == "ok" and e.at_goodput]
        best = max(ok, key=lambda e: e.goodput_rps / e.plan.gpus_per_replica, default=None)
        doc = {"setting": _label(cfg), "plans_meeting_slo": len(ok), "best_plan": best.key if best else None}
        if best:
            m = best.at_goodput
            doc.update(capacity_rps=best.goodput_rps, capacity_rps_per_gpu=best.goodput_rps / best.plan.gpus_per_replica,
                       hit_rate=m.prefix_cache.hit_rate, tokens_per_step=m.speculative_tokens_per_step,
                       ttft_p_ms=m.slo.ttft_at_percentile_ms, tpot_p_ms=m.slo.tpot_at_percentile_ms)
        out.append(doc)
    return out


def settings_lines(res, console: Console) -> None:
    """One line per compared setting, after the plans table."""
    docs = settings_doc(res)
    if not docs:
        return
    console.print("What each setting buys (best plan per GPU at its capacity):")
    for d in docs:
        if d["best_plan"] is None:
            console.print(escape(f"  {d['setting']}: no plan meets the SLO"))
            continue
        tps = f", {d['tokens_per_step']:.2f} tokens per verification" if d["tokens_per_step"] else ""
        console.print(escape(f"  {d['setting']}: {d['best_plan']} {d['capacity_rps']:.3g} req/s "
                             f"({d['capacity_rps_per_gpu']:.3g} per GPU), hit rate {d['hit_rate']:.1%}{tps}, "
                             f"TTFT {d['ttft_p_ms']:.0f} ms, TPOT {d['tpot_p_ms']:.1f} ms"))
