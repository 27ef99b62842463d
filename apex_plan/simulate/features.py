"""Inputs and metrics of the simulator's optional features: prefix caching and speculative decoding.

`simulate.run` fills the REQUEST rows' prefix fields and the cache from `request_prefix`, the
draft model's costs from `draft_cost`, and adds `prefix_metrics` / `spec_metrics` to every
simulation's output.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np

from apex_plan.errors import InputError
from apex_plan.simulate import metrics as M
from apex_plan.simulate import prefix_cache as PC
from apex_plan.workload.prefix import cacheable_blocks, exact_hit_tokens
from apex_plan.workload.spec import Trace

SPEC_SEED = 20_251_203      # the fixed draw of draft acceptances (every plan sees the same)


@dataclass(frozen=True, eq=False)
class RequestPrefix:
    """REQUEST columns (session, hash_start, hash_count, hash_cacheable), the flat block ids, and
    the cache unit (tokens, engine blocks; 0 tokens: caching off or no prefix structure)."""

    columns: dict
    ids: np.ndarray
    unit_tokens: int
    unit_blocks: int


def request_prefix(trace: Trace, caching: bool, block_tokens: int) -> RequestPrefix:
    """What the event loop needs of the trace's prefix structure under this engine."""
    n = len(trace)
    session = trace.session if trace.session is not None else np.full(n, -1, np.int64)
    zeros = np.zeros(n, np.int64)
    cols = {"session": session, "hash_start": zeros, "hash_count": zeros, "hash_cacheable": zeros}
    if not (caching and trace.has_prefix_hashes):
        return RequestPrefix(cols, np.zeros(1, np.int64), 0, 1)
    unit = trace.hash_block_tokens
    if unit % block_tokens:
        raise InputError("--hash-block-tokens", None, f"the trace's {unit}-token prefix blocks are not whole "
                         f"{block_tokens}-token KV blocks of the engine", f"use a multiple of {block_tokens}")
    cols.update(hash_start=trace.hash_ptr[:-1], hash_count=np.diff(trace.hash_ptr),
                hash_cacheable=cacheable_blocks(trace))
    return RequestPrefix(cols, np.ascontiguousarray(trace.hash_ids, np.int64), unit, unit // block_tokens)


def new_engine_cache(prefix: RequestPrefix, engines: int, kv_blocks: int) -> PC.PrefixCache:
    """An empty prefix cache for the engines (one that holds nothing when caching is off)."""
    if prefix.unit_tokens == 0:
        return PC.empty_cache(engines)
    return PC.new_cache(engines, kv_blocks, prefix.unit_blocks, prefix.unit_tokens)


def prefix_metrics(trace: Trace, caching: bool, hit_tokens: np.ndarray, ok: np.ndarray, cache) -> M.PrefixCache:
    """Hit rate (cached prompt tokens / prompt tokens of completed requests, vLLM's hits / queries),
    prefill tokens saved, KV blocks evicted, and the exact hit rate an infinite cache would reach
    on the same requests."""
    total = int(trace.prompt_tokens[ok].sum())
    hits = int(hit_tokens[ok].sum())
    exact = exact_hit_tokens(trace)
    return M.PrefixCache(bool(caching), int(trace.hash_block_tokens), hits / total if total else 0.0, hits,
                         float(exact[ok].sum()) / total if total else 0.0,
                         int(cache.eng[:, PC.C_EVICTED].sum()) * int(cache.meta[PC.M_UNIT_BLOCKS]))


def spec_inputs(spec) -> tuple[int, np.ndarray]:
    """(draft tokens per step, conditional acceptance per position) for the event loop (0: none)."""
    if spec is None:
        return 0, np.zeros(1)
    return int(spec.draft_tokens), np.ascontiguousarray(spec.conditional, np.float64)


def draft_cost(model, gpu, plan, cluster, eng):
    """Step cost of one draft pass on the replica's GPUs (same tensor parallelism, one stage). The
    engine's host time per step is the target step's: the draft's host fields are zero."""
    from apex_plan.engine.speculative import draft_model
    sc = build_draft(draft_model(model, eng.speculative), gpu, dataclasses.replace(plan, pp=1), cluster, eng)
    for name in ("host_step_s", "host_per_seq_s", "host_per_prefill_token_s"):
        sc.cost.params[name] = 0.0
    return sc


def build_draft(model, gpu, plan, cluster, eng):
    from apex_plan.estimate.step_cost import build_step_cost
    return build_step_cost(model, gpu, plan, cluster, engine=eng)


def spec_metrics(spec, verify_steps: int, emitted: int) -> M.Speculation | None:
    """Measured tokens per verification beside the acceptance's expectation (None: no speculation)."""
    if spec is None:
        return None
    return M.Speculation(spec.as_dict(), int(verify_steps), emitted / verify_steps if verify_steps else None)


def with_caching_comparison(metrics: M.Metrics, other: M.Metrics) -> M.Metrics:
    """`metrics` with TTFT (and goodput, with an SLO) with and without prefix caching in its
    prefix-cache block, `other` being the same simulation with caching flipped."""
    pc = metrics.prefix_cache
    on, off = (metrics, other) if pc.enabled else (other, metrics)
    both_slo = metrics.slo is not None and other.slo is not None
    cmp = M.CachingComparison(on.latency.ttft_ms, off.latency.ttft_ms, on.prefix_cache.hit_rate,
                              on.slo.goodput_requests_per_s if both_slo else None,
                              off.slo.goodput_requests_per_s if both_slo else None)
    return dataclasses.replace(metrics, prefix_cache=dataclasses.replace(pc, comparison=cmp))


def decode_step_s(sc, draft, spec, batch: int, context: int) -> tuple[float, float, float]:
    """(seconds, scheduler seconds, most tokens emitted per sequence) of one decode step of `batch`
    sequences at `context` tokens, as the event loop costs it: with speculation, a verification of
    k drafts over k + 1 query tokens (all sampled) after k draft passes; at most k + 1 tokens."""
    from apex_plan.abi import BATCH
    from apex_plan.estimate import kernels as K
    if spec is None:
        t, br = sc.step_s(decodes=batch, context=context)
        return t, br["scheduler"], 1.0
    k = spec.draft_tokens
    verify = np.array([(max(context, 1) - 1, 1 + k, 1, 1 + k, batch)], dtype=BATCH)
    t, br = sc.time_s(verify)
    td = float(K.batch_step_time(draft.cost, K.make_batch(decodes=batch, context=context), 0)[0])
    return t + k * td, br["scheduler"], float(k + 1)
