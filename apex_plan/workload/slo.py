"""Parse latency targets given on the command line."""

from __future__ import annotations

import math

from apex_plan.errors import InputError
from apex_plan.limits import MAX_SLO_S
from apex_plan.units import parse_duration_s
from apex_plan.workload.spec import Slo


def _target_s(text: str, option: str) -> float:
    """A latency target in seconds: positive, finite and at most MAX_SLO_S."""
    value_s = parse_duration_s(text, where=option)
    if not math.isfinite(value_s) or value_s > MAX_SLO_S:
        raise InputError(option, None, f"'{text}' is above the limit of {MAX_SLO_S:g} s", "e.g. 500ms")
    return value_s


def parse_slo(ttft: str | None, tpot: str | None, percentile: float | str = 90.0) -> Slo:
    """Slo from '--ttft-slo 500ms --tpot-slo 50ms --slo-percentile 90' (either target may be absent)."""
    ttft_s = None if ttft is None else _target_s(ttft, "--ttft-slo")
    tpot_s = None if tpot is None else _target_s(tpot, "--tpot-slo")
    try:
        value = float(str(percentile).strip().lstrip("pP")) if not isinstance(percentile, bool) else math.nan
    except ValueError:
        value = math.nan
    if not (0 < value <= 100):
        raise InputError("--slo-percentile", None, f"must be in (0, 100], got {percentile!r}",
                         "e.g. 90 for p90 or 99 for p99")
    return Slo(ttft_s=ttft_s, tpot_s=tpot_s, percentile=value)
