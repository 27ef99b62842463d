"""Load curves for the report: one replica of a plan at shares of its goodput (and at it), how
throughput per GPU trades against latency as load grows. Extra simulations the search itself does
not need, run only when a report or chart asks for them (`cli search --report/--plot`)."""

from __future__ import annotations

import numpy as np

from apex_plan.search.capacity import scaled_trace
from apex_plan.simulate.metrics import at_slo_percentile
from apex_plan.simulate.run import simulate
from apex_plan.workload.spec import Workload

# extra operating points per plan, as shares of its goodput; lighter loads cost more simulated steps
LOAD_FRACTIONS = (0.3, 0.6)
CURVE_PLANS = 8              # plans (best ranked first, plus deployment plans) that get a load curve
CURVE_REQUESTS = 300         # requests simulated per extra operating point (the first of the trace)

Point = tuple[float, float, float | None, float | None]    # (rate req/s, output tok/s per GPU, TTFT ms, TPOT ms)


def load_curve(res, ev) -> tuple[Point, ...]:
    """One replica of plan `ev` at LOAD_FRACTIONS of its goodput on the first CURVE_REQUESTS of the trace
    (a plain run; the step cost is built once and reused), then its steady-state point at the goodput."""
    inp = res.inputs
    p = inp.slo.percentile
    pts, sc = [], None
    head = inp.trace.take(np.arange(min(len(inp.trace), CURVE_REQUESTS)))
    for f in LOAD_FRACTIONS:
        sim = simulate(inp.model, ev.cluster, ev.plan, ev.run_cfg, Workload(scaled_trace(head, ev.goodput_rps * f)),
                       inp.slo, step_cost=sc)
        sc = sim.step_cost
        if sim.feasible:
            m = sim.metrics
            pts.append((ev.goodput_rps * f, m.throughput.output_tokens_per_s / ev.plan.gpus_per_replica,
                        at_slo_percentile(m.latency.ttft_ms, m.slo, True, p),
                        at_slo_percentile(m.latency.tpot_ms, m.slo, False, p)))
    g = ev.at_goodput
    pts.append((ev.goodput_rps, g.throughput.output_tokens_per_s / ev.plan.gpus_per_replica,
                at_slo_percentile(g.ttft_ms, g.slo, True, p), at_slo_percentile(g.tpot_ms, g.slo, False, p)))
    return tuple(pts)


def load_curves(res) -> dict[str, tuple[Point, ...]]:
    """Plan key -> load curve, for the CURVE_PLANS best-ranked plans with a goodput and every plan a
    deployment uses."""
    used = {k for d in res.deployments for k, _ in d.deployment.replicas}
    out, n = {}, 0
    for e in res.plans:
        if e.at_goodput and e.status == "ok" and (n < CURVE_PLANS or e.key in used):
            out[e.key] = load_curve(res, e)
            n += 1
    return out
