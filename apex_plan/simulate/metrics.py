"""The figures of one simulation as a typed tree: latency, throughput, energy, SLO, memory (the KV
cache), prefix caching and speculation, each a frozen dataclass read by attribute. `to_dict()`
gives the JSON wire format (`metrics` of `simulate --format json`), key for key in its order.

    Metrics
      latency: Latency (ttft_ms, tpot_ms: TokenGaps, e2e_s, queue_ms: Distribution)
      throughput: Throughput   memory: KvCacheUse   energy: Energy   slo: SloResult | None
      prefix_cache: PrefixCache | None   speculative: Speculation | None   disagg: DisaggRun | None

A disaggregated run (`simulate.disagg`) carries its per-phase TTFT breakdown, transfer volumes,
pools and conservation counts in `disagg` (a `DisaggRun`, emitted after the shared ones with
`"serving": "disagg"`) and no prefix caching or speculation block.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np


class Record:
    """A record (a dataclass): its wire form is its fields in declaration order, by name; a field
    that is itself a record gives its own wire form, a tuple a JSON list."""

    def to_dict(self) -> dict:
        return {f.name: _wire(getattr(self, f.name)) for f in dataclasses.fields(self)}


def _wire(v):
    """The JSON form of one field's value."""
    if isinstance(v, Record):
        return v.to_dict()
    return [_wire(x) for x in v] if isinstance(v, tuple) else v


@dataclass(frozen=True)
class Distribution(Record):
    """mean, p50, p90, p99 of a per-request figure, in the unit its name says (None: no request)."""
    mean: float | None
    p50: float | None
    p90: float | None
    p99: float | None

    @classmethod
    def of(cls, x: np.ndarray, scale: float) -> "Distribution":
        """The distribution of `x` times `scale` (s -> ms: 1e3)."""
        if x.size == 0:
            return cls(None, None, None, None)
        p50, p90, p99 = np.percentile(x, [50, 90, 99])
        return cls(float(x.mean()) * scale, float(p50) * scale, float(p90) * scale, float(p99) * scale)

    def at(self, p: float) -> float | None:
        """The figure at percentile `p` when it is one recorded (50, 90, 99), else at p90."""
        return {50.0: self.p50, 90.0: self.p90, 99.0: self.p99}.get(float(p), self.p90)


def at_slo_percentile(dist: Distribution, slo, ttft: bool, p: float) -> float | None:
    """A latency at percentile `p`: the SLO block's (`SloResult`, `search.results.WindowSlo`) when it was
    judged at `p`, else the distribution's (`Distribution.at`)."""
    if slo is not None and slo.percentile == p:
        return slo.ttft_at_percentile_ms if ttft else slo.tpot_at_percentile_ms
    return dist.at(p)


@dataclass(frozen=True)
class TokenGaps(Distribution):
    """Time per output token: percentiles over requests; `mean` token-weighted (all inter-token gaps
    over their count, vLLM's ITL mean), `mean_per_request` the plain mean over requests."""
    mean_per_request: float | None = None


@dataclass(frozen=True)
class Latency:
    ttft_ms: Distribution             # time to first token, client view (frontend included)
    tpot_ms: TokenGaps                # time per output token after the first
    e2e_s: Distribution               # arrival to last token
    queue_ms: Distribution            # arrival to first scheduling


@dataclass(frozen=True)
class Throughput(Record):
    output_tokens_per_s: float
    total_tokens_per_s: float         # prompt + output tokens of completed requests over the makespan
    requests_per_s: float


@dataclass(frozen=True)
class KvCacheUse(Record):
    """Memory: KV-cache blocks of one engine and their use over the run."""
    blocks_per_engine: int
    mean_utilization: float           # block-seconds held over blocks x makespan, mean over engines
    peak_utilization: float           # most blocks held at once over blocks
    preemptions: int


@dataclass(frozen=True)
class Energy(Record):
    total_j: float
    j_per_output_token: float | None
    j_per_request: float
    mean_power_w: float


@dataclass(frozen=True)
class SloResult(Record):
    """The targets, the latencies at their percentile, whether both are met, and the share of
    requests meeting both targets (attainment) with its rate (goodput)."""
    ttft_ms: float | None
    tpot_ms: float | None
    percentile: float
    ttft_at_percentile_ms: float
    tpot_at_percentile_ms: float
    met: bool
    attainment: float
    goodput_requests_per_s: float


@dataclass(frozen=True)
class CachingComparison:
    """The same run with prefix caching flipped: TTFT (and goodput, with an SLO) with and without."""
    ttft_ms_with_caching: Distribution
    ttft_ms_without_caching: Distribution
    hit_rate_with_caching: float
    goodput_with_caching_rps: float | None = None
    goodput_without_caching_rps: float | None = None

    def to_dict(self) -> dict:
        d = {"ttft_ms_with_caching": self.ttft_ms_with_caching.to_dict(),
             "ttft_ms_without_caching": self.ttft_ms_without_caching.to_dict(),
             "hit_rate_with_caching": self.hit_rate_with_caching}
        if self.goodput_with_caching_rps is not None:
            d["goodput_with_caching_rps"] = self.goodput_with_caching_rps
            d["goodput_without_caching_rps"] = self.goodput_without_caching_rps
        return d


@dataclass(frozen=True)
class PrefixCache:
    enabled: bool
    prefix_block_tokens: int
    hit_rate: float                   # cached prompt tokens over prompt tokens of completed requests
    saved_prefill_tokens: int
    infinite_cache_hit_rate: float    # what a cache that never evicts would reach on the same requests
    evicted_blocks: int
    comparison: CachingComparison | None = None

    def to_dict(self) -> dict:
        d = {"enabled": self.enabled, "prefix_block_tokens": self.prefix_block_tokens, "hit_rate": self.hit_rate,
             "saved_prefill_tokens": self.saved_prefill_tokens,
             "infinite_cache_hit_rate": self.infinite_cache_hit_rate, "evicted_blocks": self.evicted_blocks}
        return {**d, **self.comparison.to_dict()} if self.comparison else d


@dataclass(frozen=True)
class Speculation:
    """The speculative setting (`SpecConfig.as_dict()`) and what the run measured of it."""
    setting: dict
    verify_steps: int
    measured_tokens_per_step: float | None

    def to_dict(self) -> dict:
        return {**self.setting, "verify_steps": self.verify_steps,
                "measured_tokens_per_step": self.measured_tokens_per_step}


@dataclass(frozen=True)
class TtftPhases(Record):
    """Each phase of a disaggregated request's TTFT (ms) over its requests, arrival to first token."""
    prefill_queue_ms: Distribution          # arrival to first prefill scheduling
    prefill_ms: Distribution                # first scheduling to the prompt's last chunk
    decode_admission_wait_ms: Distribution  # prefill done to a decode slot and KV blocks
    link_queue_ms: Distribution             # admitted to the link free for its transfer
    kv_transfer_ms: Distribution            # the KV cache over the link
    first_decode_step_ms: Distribution      # transfer end to the first token
    frontend_ms: float                      # the engine's frontend (tokenise, detokenise), per request


@dataclass(frozen=True)
class KvTransfer(Record):
    """KV cache moved from the prefill pool to the decode pool over the run."""
    bytes_per_request_mean: float
    bytes_total: float                      # over requests that were transferred
    rank_pairs_over_nvlink: float           # share of prefill-decode rank pairs on one NVLink domain
    link_gbps: tuple[float, ...]            # the distinct link rates of the rank pairs, GB/s


@dataclass(frozen=True)
class PrefillPoolUse(Record):
    busy_fraction: float                    # busy seconds over makespan x engines
    kv_peak_utilization: float              # the busiest engine's most blocks held over its blocks
    steps: int


@dataclass(frozen=True)
class DecodePoolUse(Record):
    busy_fraction: float
    steps: int


@dataclass(frozen=True)
class PoolUse(Record):
    prefill: PrefillPoolUse
    decode: DecodePoolUse


@dataclass(frozen=True)
class Conservation(Record):
    """Requests each phase handled: every request is prefilled, transferred and decoded once."""
    prefilled: int
    transferred: int
    decoded: int


@dataclass(frozen=True)
class DisaggRun(Record):
    """What a disaggregated run adds to its shared figures (`simulate.disagg.disagg_metrics`)."""
    ttft_phases: TtftPhases
    kv_transfer: KvTransfer
    pools: PoolUse
    conservation: Conservation


@dataclass(frozen=True)
class Metrics:
    """Aggregates a serving benchmark reports for one simulation, plus SLO attainment and energy."""
    requests: int
    completed: int
    rejected: int
    latency: Latency
    throughput: Throughput
    makespan_s: float
    queue_growth_ms: float            # mean queueing of the last third of arrivals minus the first third's
    memory: KvCacheUse
    steps: int
    busy_fraction: float
    energy: Energy
    slo: SloResult | None = None
    requests_refused_too_long: int = 0
    prefix_cache: PrefixCache | None = None
    speculative: Speculation | None = None
    disagg: DisaggRun | None = None   # disaggregated runs: phases, transfer, pools, conservation

    def to_dict(self) -> dict:
        lat = self.latency
        d = {"requests": self.requests, "completed": self.completed, "rejected": self.rejected,
             "ttft_ms": lat.ttft_ms.to_dict(), "tpot_ms": lat.tpot_ms.to_dict(), "e2e_s": lat.e2e_s.to_dict(),
             "queue_ms": lat.queue_ms.to_dict(), "throughput": self.throughput.to_dict(),
             "makespan_s": self.makespan_s, "queue_growth_ms": self.queue_growth_ms,
             "kv_cache": self.memory.to_dict(), "steps": self.steps, "busy_fraction": self.busy_fraction,
             "energy": self.energy.to_dict()}
        if self.slo is not None:
            d["slo"] = self.slo.to_dict()
        d["requests_refused_too_long"] = self.requests_refused_too_long
        if self.disagg is not None:
            return {**d, "serving": "disagg", **self.disagg.to_dict()}
        d["prefix_cache"] = self.prefix_cache.to_dict() if self.prefix_cache else None
        d["speculative"] = self.speculative.to_dict() if self.speculative else None
        return d
