"""Inputs and metrics of the simulator's optional features: prefix caching and speculative decoding.

The event loop (`simulate.kernels`) takes the arrays built here; `simulate.run` adds the metrics
to every simulation's output.
"""

from __future__ import annotations

import numpy as np

from apex_plan.errors import InputError
from apex_plan.simulate import prefix_cache as PC
from apex_plan.workload.prefix import cacheable_blocks, exact_hit_tokens
from apex_plan.workload.spec import Trace

SPEC_SEED = 20_251_203      # the fixed draw of draft acceptances (every plan sees the same)


def cache_inputs(trace: Trace, caching: bool, block_tokens: int, engines: int, kv_blocks: int):
    """(cache, ids, per-request id offset, id count, cacheable count) for the event loop; an empty
    cache and no ids when caching is off or the trace has no prefix structure."""
    n = len(trace)
    if not (caching and trace.has_prefix_hashes):
        zeros = np.zeros(n, np.int64)
        return PC.empty_cache(engines), np.zeros(1, np.int64), zeros, zeros, zeros
    unit = trace.hash_block_tokens
    if unit % block_tokens:
        raise InputError("--hash-block-tokens", None, f"the trace's {unit}-token prefix blocks are not whole "
                         f"{block_tokens}-token KV blocks of the engine", f"use a multiple of {block_tokens}")
    cache = PC.new_cache(engines, kv_blocks, unit // block_tokens, unit)
    start = np.ascontiguousarray(trace.hash_ptr[:-1], np.int64)
    count = np.ascontiguousarray(np.diff(trace.hash_ptr), np.int64)
    return cache, np.ascontiguousarray(trace.hash_ids, np.int64), start, count, cacheable_blocks(trace)


def prefix_metrics(trace: Trace, caching: bool, hit_tokens: np.ndarray, ok: np.ndarray, cache) -> dict:
    """Hit rate (cached prompt tokens / prompt tokens of completed requests), prefill tokens saved,
    evictions, and the exact hit rate an infinite cache would reach on the same requests."""
    prompt = trace.prompt_tokens
    total = int(prompt[ok].sum())
    hits = int(hit_tokens[ok].sum())
    exact = exact_hit_tokens(trace) if trace.has_prefix_hashes else np.zeros(len(trace), np.int64)
    return {"enabled": bool(caching), "prefix_block_tokens": int(trace.hash_block_tokens),
            "hit_rate": hits / total if total else 0.0, "saved_prefill_tokens": hits,
            "infinite_cache_hit_rate": float(exact[ok].sum()) / total if total else 0.0,
            "evicted_blocks": int(cache.eng[:, PC.C_EVICTED].sum()) * int(cache.meta[PC.M_UNIT_BLOCKS])}


def spec_inputs(spec) -> tuple[int, np.ndarray]:
    """(draft tokens per step, conditional acceptance per position) for the event loop (0: no speculation)."""
    if spec is None:
        return 0, np.zeros(1)
    return int(spec.draft_tokens), np.ascontiguousarray(spec.conditional, np.float64)


def spec_metrics(spec, verify_steps: int, emitted: int) -> dict | None:
    """Measured tokens per verification step beside the acceptance's expectation."""
    if spec is None:
        return None
    return {**spec.as_dict(), "verify_steps": int(verify_steps),
            "measured_tokens_per_step": emitted / verify_steps if verify_steps else None}
