"""Size limits on inputs, checked before any work so that an absurd input is refused at once.

Each limit is far above any real deployment or trace, and far below what would exhaust memory or
time: a bad input is one line and exit status 2, never an hour of work, a MemoryError or an
integer overflow deep inside numpy or numba.
"""

from __future__ import annotations

import math

from apex_plan.errors import InputError

# Requests in one trace or synthetic workload. A 10M-row trace simulates in about 1-2 GB
# (scripts/bench_trace_load.py --rows 10000000); 20M keeps peak memory within a laptop's.
MAX_REQUESTS = 20_000_000
# Trace file size, checked from the file system before reading: ~25M APEX JSON lines of ~85 bytes.
MAX_TRACE_BYTES = 2 * 2**30
# Tokens in one request: 10M is the longest context window of any released model (Llama 4 Scout).
MAX_TOKENS_PER_REQUEST = 10_000_000
# Span of a trace's arrival times: ten years, in seconds.
MAX_TRACE_SPAN_S = 10 * 365 * 86400.0
# Cluster size: the largest NVLink domain announced is 576 GPUs (NVIDIA Rubin Ultra NVL576); the
# largest single training clusters are ~10^5 GPUs, so 2^20 GPUs in total is generous.
MAX_GPUS_PER_NODE = 576
MAX_NODES = 2**20
MAX_GPUS = 2**20
# Engine settings: vLLM has no hard caps; these are 64x its defaults (256 sequences) and beyond any
# model's context (10M tokens) for the token budget.
MAX_NUM_SEQS = 16_384
MAX_BATCHED_TOKENS = MAX_TOKENS_PER_REQUEST
# Arrival rates: one request a day to a million per second.
MIN_RATE_PER_S = 1.0 / 86400.0
MAX_RATE_PER_S = 1e6
# numpy's Generator takes any non-negative seed; keep it to 64 bits so every engine can repeat it.
MAX_SEED = 2**64 - 1
# Latency targets: at most a day.
MAX_SLO_S = 86400.0


def check_count(where: str, field: str | None, value: object, low: int, high: int, example: str) -> int:
    """A whole number in [low, high], or an InputError naming `where`/`field`, the limit and a fix."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (
            isinstance(value, float) and not (math.isfinite(value) and value.is_integer())):
        raise InputError(where, field, f"must be a whole number, got {value!r}", example)
    v = int(value)
    if v < low:
        raise InputError(where, field, f"must be at least {low:,}, got {v:,}", example)
    if v > high:
        raise InputError(where, field, f"{v:,} is above the limit of {high:,}", example)
    return v


def check_real(where: str, field: str | None, value: object, low: float, high: float, example: str,
               low_open: bool = False) -> float:
    """A finite number in [low, high] ((low, high] when low_open), or an InputError with the limit."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(float(value)):
        raise InputError(where, field, f"must be a finite number, got {value!r}", example)
    v = float(value)
    if v < low or (low_open and v == low):
        raise InputError(where, field, f"must be {'above' if low_open else 'at least'} {low:g}, got {v:g}", example)
    if v > high:
        raise InputError(where, field, f"{v:g} is above the limit of {high:g}", example)
    return v
