"""Analytic screen: steady-state step costs that bound a plan before any trace simulation.

* TPOT floor: one decode step of a single sequence at the workload's mean context. No load can
  make decode faster, so a floor above the TPOT SLO rules the plan out.
* TTFT floor: prefill of the SLO-percentile prompt alone on an idle engine, plus the frontend
  latency; at least that share of requests cannot start faster.
The capacity ceiling is `bounds.goodput_bound_rps` (it follows the simulator's pipeline and host
accounting, so it is never below a simulated goodput).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from apex_plan.estimate.step_cost import StepCost
from apex_plan.workload.spec import Slo, Trace


@dataclass(frozen=True)
class Screen:
    tpot_floor_s: float
    ttft_floor_s: float
    reason: str = ""        # non-empty: the plan cannot meet the SLO

    @property
    def passed(self) -> bool:
        return not self.reason


def screen_plan(sc: StepCost, trace: Trace, slo: Slo, *, budget: int, chunked: bool, frontend_s: float,
                hit_tokens: np.ndarray | None = None, spec=None, draft: StepCost | None = None) -> Screen:
    """`hit_tokens`: prompt tokens an infinite prefix cache finds (prefix caching on): the TTFT floor
    prefills the rest only. `spec` / `draft`: speculative decoding, every draft taken as accepted."""
    from apex_plan.simulate.features import decode_step_s
    prompt = trace.prompt_tokens
    output = trace.output_tokens
    mean_p, mean_o = float(prompt.mean()), float(output.mean())
    ctx = int(mean_p + mean_o / 2)
    t1, _, per_step = decode_step_s(sc, draft, spec, 1, max(ctx, 1))
    tpot_floor = t1 / per_step
    if hit_tokens is not None:
        prompt = np.maximum(prompt - hit_tokens, 1)
    p_prompt = int(np.percentile(prompt, slo.percentile))
    ttft_floor = sc.prefill_time_s(max(p_prompt, 1), budget if chunked else None) + frontend_s
    reason = ""
    if slo.tpot_s and tpot_floor > slo.tpot_s:
        reason = f"TPOT floor {tpot_floor * 1e3:.1f} ms (one sequence, no load) exceeds the {slo.tpot_s * 1e3:.0f} ms SLO"
    elif slo.ttft_s and ttft_floor > slo.ttft_s:
        reason = (f"TTFT floor {ttft_floor * 1e3:.0f} ms (p{slo.percentile:g} prompt of {p_prompt} tokens on an idle "
                  f"engine) exceeds the {slo.ttft_s * 1e3:.0f} ms SLO")
    return Screen(tpot_floor, ttft_floor, reason)
