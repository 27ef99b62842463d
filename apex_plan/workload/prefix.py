"""Prefix structure of a trace: block ids per request, the exact infinite-cache hit count, and
the synthetic generator of shared system prompts and multi-turn sessions.

A request's token stream is cut into blocks of `hash_block_tokens` tokens; its block ids (a
ragged array: `hash_ptr` offsets into `hash_ids`) are prefix hashes, so equal j-th ids mean equal
first j + 1 blocks. The rules the engines cache by (vLLM V1 vllm/v1/core/kv_cache_manager.py
get_computed_blocks; SGLang's radix cache matches the same full pages):

* only full blocks are cached, and a lookup never covers the whole prompt: at least its last token
  is computed, so a prompt of p tokens can hit at most (p - 1) // block blocks;
* a block is cached once the request holding it has it scheduled (vLLM V1 caches blocks when it
  allocates them in allocate_slots); ids past the prompt are the output's (session traces resend
  the reply with the next turn), cached as decoding fills them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from apex_plan.errors import InputError
from apex_plan.limits import MAX_REQUESTS, check_count, check_real
from apex_plan.workload.spec import Trace
from apex_plan.workload.synthetic import LengthDist, _arrivals_s

DEFAULT_HASH_BLOCK_TOKENS = 64   # synthetic traces: a multiple of every engine's KV block (vLLM 16, TRT-LLM 32)
MOONCAKE_BLOCK_TOKENS = 512      # Mooncake trace README / technical report section 4: 512-token blocks
_SESSION_ID_BASE = 1 << 40       # synthetic per-session block ids start here (shared-prefix ids below)


def _rows(ptr: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Row index and position within the row of every flat entry of a ragged array."""
    lengths = np.diff(ptr)
    rows = np.repeat(np.arange(lengths.size, dtype=np.int64), lengths)
    pos = np.arange(int(ptr[-1]), dtype=np.int64) - np.repeat(ptr[:-1], lengths)
    return rows, pos


def cacheable_blocks(trace: Trace) -> np.ndarray:
    """Per request, how many of its leading block ids name full blocks it computes (and so caches):
    the full blocks of its prompt, plus those of its output when the ids run past the prompt."""
    nhash = np.diff(trace.hash_ptr)
    tokens = trace.prompt_tokens + (trace.output_tokens if trace.hash_covers_output else 0)
    return np.minimum(nhash, tokens // trace.hash_block_tokens).astype(np.int64)


def lookup_blocks(trace: Trace) -> np.ndarray:
    """Per request, the most leading blocks a lookup may hit: full blocks within prompt - 1 tokens."""
    nhash = np.diff(trace.hash_ptr)
    return np.minimum(nhash, (trace.prompt_tokens - 1) // trace.hash_block_tokens).astype(np.int64)


def exact_hit_tokens(trace: Trace) -> np.ndarray:
    """Prompt tokens each request finds cached in an infinite cache that holds every block any
    earlier request (in trace order) computed; int64 per request.

    Exact for an engine with unlimited KV memory when each request's blocks are computed before a
    later request sharing them is admitted (always true of prompt blocks in arrival order; true of
    a reply's blocks when the next turn comes after the reply ends)."""
    if not trace.has_prefix_hashes:
        return np.zeros(len(trace), np.int64)
    rows, pos = _rows(trace.hash_ptr)
    ids = trace.hash_ids
    reg = pos < cacheable_blocks(trace)[rows]
    uniq, inv = np.unique(ids[reg], return_inverse=True)
    first = np.full(uniq.size, np.iinfo(np.int64).max, np.int64)
    np.minimum.at(first, inv, rows[reg])                        # the first request that caches each id
    limit = lookup_blocks(trace)
    look = pos < limit[rows]
    lrows, lpos, lids = rows[look], pos[look], ids[look]
    at = np.minimum(np.searchsorted(uniq, lids), max(uniq.size - 1, 0))
    hit = (uniq.size > 0) & (uniq[at] == lids) & (first[at] < lrows) if uniq.size else np.zeros(lids.size, bool)
    # the hit is the longest run of hits from the first block: the first miss ends it
    first_miss = limit.copy()
    miss = ~hit
    np.minimum.at(first_miss, lrows[miss], lpos[miss])
    return first_miss * trace.hash_block_tokens


def hit_rate(trace: Trace, hit_tokens: np.ndarray) -> float:
    """Cached prompt tokens over all prompt tokens (vLLM's prefix-cache hit rate: hits / queries)."""
    total = int(trace.prompt_tokens.sum())
    return float(hit_tokens.sum()) / total if total else 0.0


@dataclass(frozen=True)
class SessionOptions:
    """Prefix structure asked of a synthetic workload (simulate/search --turns, --prefix-tokens ...)."""

    turns: int = 1
    prefix_tokens: int = 0
    num_prefixes: int = 1
    think_time_s: float = 0.0
    hash_block_tokens: int | None = None     # None: DEFAULT_HASH_BLOCK_TOKENS
    prompt_pool: int = 0                     # synthetic prompts drawn in turn from this many distinct ones (0: all)

    @property
    def active(self) -> bool:
        return self.turns > 1 or self.prefix_tokens > 0

    @property
    def block_tokens(self) -> int:
        return self.hash_block_tokens or DEFAULT_HASH_BLOCK_TOKENS


def _check_args(num_requests: int, turns: int, prefix_tokens: int, num_prefixes: int, think_time_s: float,
                hash_block_tokens: int) -> None:
    check_count("--num-requests", None, int(num_requests), 1, MAX_REQUESTS, "e.g. --num-requests 1000")
    check_count("--turns", None, int(turns), 1, 10_000, "e.g. --turns 8")
    check_count("--prefix-tokens", None, int(prefix_tokens), 0, 1 << 22, "e.g. --prefix-tokens 2000")
    check_count("--num-prefixes", None, int(num_prefixes), 1, 1 << 20, "e.g. --num-prefixes 4")
    check_count("--hash-block-tokens", None, int(hash_block_tokens), 1, 1 << 16, "e.g. --hash-block-tokens 64")
    check_real("--think-time", None, think_time_s, 0.0, 86_400.0, "e.g. --think-time 10s", low_open=False)


def multiturn_trace(num_requests: int, message: LengthDist, output: LengthDist, rate_per_s: float,
                    sessions: SessionOptions = SessionOptions(), *, seed: int = 0, name: str = "multiturn") -> Trace:
    """Sessions of `turns` turns behind one of `num_prefixes` shared system prompts of
    `prefix_tokens` tokens (the fields of `sessions`; prefix blocks of its block_tokens). Turn t's
    prompt is the system prompt, every earlier message and reply,
    and its own new message (`message` tokens); replies are `output` tokens. Sessions start as a
    Poisson process at rate_per_s / turns (so requests arrive at about rate_per_s once sessions
    overlap; a finite trace ramps up and down over about turns x think time); each later turn comes
    an exponential think time (mean `think_time_s`) after the previous turn's arrival. The first
    `num_requests` requests by arrival are kept."""
    turns, prefix_tokens, num_prefixes, think_time_s = (sessions.turns, sessions.prefix_tokens, sessions.num_prefixes,
                                                        sessions.think_time_s)
    hash_block_tokens = sessions.block_tokens
    _check_args(num_requests, turns, prefix_tokens, num_prefixes, think_time_s, hash_block_tokens)
    if not (math.isfinite(rate_per_s) and rate_per_s > 0):
        raise InputError("--rate", None, f"must be a positive number of requests per second, got {rate_per_s}", "e.g. 2")
    rng = np.random.default_rng(seed)
    n_sess = -(-int(num_requests) // turns)
    n = n_sess * turns
    msg = message.sample(n, rng).reshape(n_sess, turns)
    out = np.maximum(output.sample(n, rng), 1).reshape(n_sess, turns)
    start = _arrivals_s(n_sess, rate_per_s / turns, "poisson", 1.0, rng)
    gaps = rng.exponential(think_time_s, size=(n_sess, turns)) if think_time_s > 0 else np.zeros((n_sess, turns))
    gaps[:, 0] = 0.0
    arrival = start[:, None] + np.cumsum(gaps, axis=1)
    history = np.cumsum(msg + out, axis=1) - (msg + out)              # earlier messages and replies
    prompt = prefix_tokens + history + msg
    prefix_of = rng.integers(0, num_prefixes, size=n_sess)
    b = hash_block_tokens
    # block ids of each turn's stream (prompt and reply): blocks wholly inside the system prompt are
    # shared by the sessions behind it; the rest belong to the session (its turns share them)
    nblk = (-(-(prompt + out) // b)).ravel()
    ptr = np.zeros(n + 1, np.int64)
    np.cumsum(nblk, out=ptr[1:])
    rows, j = _rows(ptr)
    sess = rows // turns
    shared_blocks = prefix_tokens // b
    sess_base = _SESSION_ID_BASE + np.concatenate(([0], np.cumsum(nblk.reshape(n_sess, turns)[:, -1])[:-1]))
    ids = np.where(j < shared_blocks, prefix_of[sess] * (shared_blocks + 1) + j, sess_base[sess] + j)
    order = np.argsort(arrival.ravel(), kind="stable")[: int(num_requests)]
    full = Trace(arrival.ravel(), prompt.ravel().astype(np.int64), out.ravel().astype(np.int64), name, ptr,
                 ids.astype(np.int64), b, np.repeat(np.arange(n_sess, dtype=np.int64), turns), True)
    trace = full.take(order)
    return trace.with_arrivals(trace.arrival_s - trace.arrival_s[0])


def prompt_pool_trace(trace: Trace, pool: int, block_tokens: int = DEFAULT_HASH_BLOCK_TOKENS) -> Trace:
    """The trace's requests sending, in turn, one of `pool` distinct prompts, as benchmark clients that reuse a
    fixed dataset do (genai-perf --num-dataset-entries, default 100: "unique payloads to sample from ... reused
    until benchmarking is complete"): request i sends entry i mod pool, the prompt (and length) of the entry's
    first request, so a prefix cache finds each repeat whole. Outputs and arrivals are kept."""
    check_count("--prompt-pool", None, int(pool), 1, MAX_REQUESTS, "e.g. --prompt-pool 100")
    check_count("--hash-block-tokens", None, int(block_tokens), 1, 1 << 16, "e.g. --hash-block-tokens 64")
    n = len(trace)
    entry = np.arange(n, dtype=np.int64) % pool
    prompt = trace.prompt_tokens[entry].astype(np.int64)
    nblk = -(-prompt // block_tokens)                             # blocks of each request's prompt
    ptr = np.zeros(n + 1, np.int64)
    np.cumsum(nblk, out=ptr[1:])
    rows, j = _rows(ptr)
    first = nblk[: min(pool, n)]                                  # each entry's blocks, once
    base = np.concatenate(([0], np.cumsum(first)[:-1])).astype(np.int64)
    ids = base[entry[rows]] + j                                   # an entry's j-th block id: equal across its repeats
    return Trace(trace.arrival_s, prompt, trace.output_tokens, f"{trace.name}-pool{pool}", ptr, ids, block_tokens)
