"""One reader per kind of value in a measured-run file (JSON field or CSV column), shared by every
format: each bad value is an `InputError` naming the file, the field and the fix.

Measured figures (TTFT, TPOT) must be finite and above zero: a zero or negative latency was not
measured, and NaN would silently drop the run from every error statistic. Counts (requests,
concurrency, plan degrees, token totals) must be whole numbers within `apex_plan.limits`, so that a
typo such as `completed: 1e12` is refused at once instead of allocating a trillion-request trace.
"""

from __future__ import annotations

import math

from apex_plan.errors import InputError
from apex_plan.limits import MAX_REQUESTS, MAX_SLO_S, MAX_TOKENS_PER_REQUEST, check_count

MAX_MEASURED_MS = MAX_SLO_S * 1e3        # a latency above a day is a unit slip, not a measurement


def _missing(value) -> bool:
    return value is None or (isinstance(value, str) and not value.strip())


def number(where: str, field: str, value, required: bool = True, allow_inf: bool = False) -> float | None:
    """A finite number >= 0 ('inf' only when `allow_inf`: vLLM writes request_rate 'inf' when unthrottled);
    None when absent and not required."""
    if _missing(value):
        if required:
            raise InputError(where, field, "missing", "the run file must carry this figure")
        return None
    if isinstance(value, bool):
        raise InputError(where, field, f"expected a number, got {value!r}", "write a number")
    try:
        x = float(value.strip() if isinstance(value, str) else value)
    except (TypeError, ValueError):
        raise InputError(where, field, f"expected a number, got {value!r}", "write a number") from None
    if math.isinf(x) and x > 0 and allow_inf:
        return x
    if not math.isfinite(x) or x < 0:
        raise InputError(where, field, f"expected a finite non-negative number, got {value!r}", "write a number")
    return x


def measured_ms(where: str, field: str, value, scale: float = 1.0) -> float:
    """A measured latency (x `scale` to milliseconds): finite, above 0 and at most a day."""
    x = number(where, field, value)
    ms = x * scale
    if ms <= 0:
        raise InputError(where, field, f"a measured latency of {value!r} (zero or less)",
                         "give the figure the benchmark measured; drop runs that measured nothing")
    if ms > MAX_MEASURED_MS:
        raise InputError(where, field, f"{ms:,.0f} ms is above a day", "check the unit (ms vs s)")
    return ms


def count(where: str, field: str, value, low: int, high: int, example: str, required: bool = True,
          default: int | None = None) -> int | None:
    """A whole number in [low, high] from a JSON number or a CSV cell ('8', '8.0'); `default` when absent."""
    if _missing(value):
        if required and default is None:
            raise InputError(where, field, "missing", example)
        return default
    x = number(where, field, value)
    return check_count(where, field, float(x), low, high, example)


def requests(where: str, field: str, value, required: bool = True) -> int | None:
    """A number of requests (completed, num_prompts, request_count), 1..MAX_REQUESTS."""
    return count(where, field, value, 1, MAX_REQUESTS, f"give the run's request count (1 to {MAX_REQUESTS:,})",
                 required)


def concurrency(where: str, field: str, value, required: bool = False) -> int | None:
    """Requests kept in flight by a closed-loop client, 1..MAX_REQUESTS."""
    return count(where, field, value, 1, MAX_REQUESTS, "give the benchmark's --max-concurrency (at least 1)",
                 required)


def tokens_per_request(where: str, field: str, mean: float) -> int:
    """A mean or per-request token count, rounded, within 1..MAX_TOKENS_PER_REQUEST."""
    if not math.isfinite(mean) or mean > MAX_TOKENS_PER_REQUEST:
        raise InputError(where, field, f"{mean:,.0f} tokens per request is above the limit of "
                         f"{MAX_TOKENS_PER_REQUEST:,}", "check the token totals and the request count")
    return max(1, int(round(mean)))
