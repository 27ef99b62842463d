"""Requests to serve and the latency targets they must meet."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True, eq=False)
class Trace:
    """Requests as parallel numpy arrays, sorted by arrival time.

    arrival_s: float64 seconds from the first request (open loop); ignored when the workload
    is closed loop. prompt_tokens / output_tokens: int64, >= 1 output token per request.

    Prefix structure (optional; Mooncake traces, session traces, the multi-turn generator): request
    i's token stream is cut into blocks of `hash_block_tokens` tokens and
    `hash_ids[hash_ptr[i]:hash_ptr[i + 1]]` names its blocks in order; two requests whose j-th ids
    are equal share their first j + 1 blocks (ids are prefix hashes, as in Mooncake's trace). The
    ids cover the prompt (Mooncake: ceil(prompt / block) ids, the last block possibly partial) and,
    for session traces, the output too (the next turn resends it). `session`: int64 conversation id
    per request (-1: none), for session-affinity routing.
    """

    arrival_s: np.ndarray
    prompt_tokens: np.ndarray
    output_tokens: np.ndarray
    name: str = ""
    hash_ptr: np.ndarray | None = None      # int64 (n + 1,), offsets into hash_ids
    hash_ids: np.ndarray | None = None      # int64 block ids, request after request
    hash_block_tokens: int = 0              # tokens per hashed block (Mooncake: 512)
    session: np.ndarray | None = None       # int64 (n,), -1 where a request belongs to no session
    hash_covers_output: bool = False        # the ids run on over the output (session traces)

    def __len__(self) -> int:
        return int(self.arrival_s.shape[0])

    @property
    def duration_s(self) -> float:
        return float(self.arrival_s[-1] - self.arrival_s[0]) if len(self) else 0.0

    @property
    def rate_per_s(self) -> float:
        """Mean arrival rate over the trace."""
        return (len(self) - 1) / self.duration_s if self.duration_s > 0 else float("inf")

    @property
    def has_prefix_hashes(self) -> bool:
        return self.hash_ids is not None and self.hash_block_tokens > 0

    def with_arrivals(self, arrival_s: np.ndarray) -> "Trace":
        """The same requests (prefix structure included) at other arrival times."""
        return dataclasses.replace(self, arrival_s=arrival_s)

    def take(self, idx: np.ndarray) -> "Trace":
        """Requests `idx` (an index array, in the order given), their block ids and sessions with them."""
        idx = np.asarray(idx, dtype=np.int64)
        ptr = ids = None
        if self.hash_ids is not None and self.hash_ptr is not None:
            ptr, ids = take_ragged(self.hash_ptr, self.hash_ids, idx)
        return Trace(self.arrival_s[idx], self.prompt_tokens[idx], self.output_tokens[idx], self.name, ptr, ids,
                     self.hash_block_tokens, None if self.session is None else self.session[idx],
                     self.hash_covers_output)


def take_ragged(ptr: np.ndarray, values: np.ndarray, idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Rows `idx` of a ragged array given as offsets `ptr` and flat `values` (no Python loop)."""
    lengths = ptr[idx + 1] - ptr[idx]
    new_ptr = np.zeros(idx.size + 1, np.int64)
    np.cumsum(lengths, out=new_ptr[1:])
    # flat position of each kept value: its row's old start plus its place in the row
    starts = np.repeat(ptr[idx] - new_ptr[:-1], lengths)
    return new_ptr, values[starts + np.arange(new_ptr[-1], dtype=np.int64)]


@dataclass(frozen=True, eq=False)
class Workload:
    """A trace served open loop (arrivals as given) or closed loop (`concurrency` in flight)."""

    trace: Trace
    mode: str = "open"          # "open" or "closed"
    concurrency: int = 0        # requests kept in flight when mode == "closed"


@dataclass(frozen=True)
class Slo:
    """Latency targets: the `percentile` of TTFT and of TPOT must stay within the limits."""

    ttft_s: float | None = None
    tpot_s: float | None = None
    percentile: float = 90.0
