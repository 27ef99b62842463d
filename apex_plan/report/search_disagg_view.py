"""The disaggregated part of a `search` result: its role plans, the sizings verification ruled out,
and each disaggregated deployment's pools and TTFT phases (JSON and table)."""

from __future__ import annotations

from rich.console import Console
from rich.markup import escape

from apex_plan.report.layout import table as _table

_PHASES = (("prefill_queue_ms", "prefill queue"), ("prefill_ms", "prefill"),
           ("decode_admission_wait_ms", "decode admission wait"), ("link_queue_ms", "link queue"),
           ("kv_transfer_ms", "KV transfer"), ("first_decode_step_ms", "first decode step"))


def _role_doc(e) -> dict:
    p = e.plan
    return {"key": e.key, "role": e.role, "status": e.status, "reason": e.reason,
            "plan": {"tp": p.tp, "pp": p.pp, "ep": p.ep, "adp": p.adp, "weight_dtype": p.weight_dtype,
                     "kv_dtype": p.kv_dtype},
            "gpus_per_instance": p.gpus_per_replica, "rate_rps_per_instance": e.rate_rps, "screen": e.detail or None}


def disagg_doc(res) -> dict | None:
    """The `disaggregated` block of the search JSON (None when only aggregated serving was searched)."""
    d = res.disagg
    if d is None:
        return None
    return {"statistics": d.stats, "binding_constraint": d.binding or None, "infeasible": d.infeasible,
            "role_plans": [_role_doc(e) for e in d.prefill + d.decode]}


def disagg_lines(res, console: Console) -> None:
    """Per disaggregated deployment its pools and TTFT phases; then the sizings verification ruled out."""
    d = res.disagg
    if d is None:
        return
    p = res.inputs.slo.percentile
    for i, dv in enumerate(res.deployments):
        if dv.serving != "disagg":
            continue
        x = dv.disagg
        pools = "; ".join(f"{role}: {r.instances} x {r.plan} on {r.nodes} node(s), {r.rate_rps:.3g} req/s"
                          for role, r in (("prefill", x.prefill), ("decode", x.decode)))
        console.print(escape(f"  {i + 1}: {pools}"), soft_wrap=True)
        t = _table(f"{i + 1}: TTFT by phase (ms, measured window)", [("phase", "left"), ("mean", "right"),
                                                                   ("p50", "right"), (f"p{p:g}", "right")])
        for k, name in _PHASES:
            ph = getattr(x.run.ttft_phases, k)
            t.add_row(name, _f(ph.mean), _f(ph.p50), _f(ph.p90))
        t.add_row("frontend", _f(x.run.ttft_phases.frontend_ms), "", "")
        console.print(t)
    st = d.stats
    console.print(escape(f"disaggregated: {st.get('role_plans', 0)} role plans, prefill {st.get('prefill_ok', 0)} "
                         f"viable ({st.get('prefill_kept', 0)} kept), decode {st.get('decode_ok', 0)} viable "
                         f"({st.get('decode_kept', 0)} kept), {st.get('pool_sizings', 0)} pool sizings, "
                         f"{st.get('simulations', 0)} simulations"))
    for bad in d.infeasible:
        console.print(escape(f"  not viable: {bad['pools']}: {bad['reason']}"), soft_wrap=True)
    if d.binding:
        console.print(escape(f"  {d.binding}"))


def _f(x, spec=".1f") -> str:
    return "-" if x is None else format(x, spec)
