"""Steady-state figures of the search layer as a typed tree, read by attribute: one replica at a rate
(`PlanEval.at_goodput`, `at_demand`) or a whole deployment over its measured window
(`DeploymentEval.metrics`); `steady.steady_metrics` builds them. `to_dict()` is the wire format of
those blocks in `search --format json`, key for key in its order.

    SteadyMetrics
      ttft_ms, tpot_ms, e2e_s: Distribution (simulate.metrics)
      throughput: WindowThroughput   energy: WindowEnergy   kv_cache: KvPeak
      prefix_cache: PrefixSaving     slo: WindowSlo         steady: WindowTest
      disagg: DisaggRun | None   (disaggregated deployments: TTFT phases, transfer, pools, conservation)

A disaggregated deployment's `disagg` document is a `DeploymentDisagg` (its two `PoolDoc`s, the run's
figures, the launch commands).

A deployment's JSON `metrics` adds four flat figures the tables and CSV read (`deployment_dict`).
"""

from __future__ import annotations

from dataclasses import dataclass

from apex_plan.simulate.metrics import DisaggRun, Distribution, Record


@dataclass(frozen=True)
class WindowThroughput(Record):
    """What the window's arrivals ask for over its length (equal to what is served when stable)."""
    output_tokens_per_s: float
    requests_per_s: float
    input_tokens_per_s: float


@dataclass(frozen=True)
class WindowEnergy(Record):
    j_per_request: float              # dynamic J per completed request + idle watts over one mean gap
    j_per_output_token: float | None
    mean_power_w: float               # J per request x the rate


@dataclass(frozen=True)
class KvPeak(Record):
    peak_utilization: float           # the busiest simulation's most blocks held at once over its blocks
    preemptions: int


@dataclass(frozen=True)
class PrefixSaving(Record):
    enabled: bool
    hit_rate: float                   # saved prefill tokens over prompt tokens of completed requests
    saved_prefill_tokens: int


@dataclass(frozen=True)
class WindowSlo(Record):
    """The targets, latencies at their percentile over the window, attainment, and the miss shares
    plus their sampling error (`steady._miss_upper`) the verdict `met` is judged by."""
    ttft_ms: float | None
    tpot_ms: float | None
    percentile: float
    ttft_at_percentile_ms: float
    tpot_at_percentile_ms: float
    attainment: float
    ttft_miss_upper: float
    tpot_miss_upper: float
    met: bool


@dataclass(frozen=True)
class WindowTest(Record):
    """The run's horizon (requests before, in and after the window) and its backlog test."""
    warmup_requests: int
    window_requests: int
    tail_requests: int
    window_s: float
    backlog_growth_share: float       # backlog growth over the window, as a share of the arrival rate
    stable: bool
    growth_tolerance_share: float

    @property
    def drawn(self) -> int:
        """Requests the run drew from the mix's stream."""
        return self.warmup_requests + self.window_requests + self.tail_requests


@dataclass(frozen=True)
class LaunchEntry(Record):
    """How to start one plan of a deployment: its command, run on each of its replicas."""
    plan: str                         # the plan key, or "router" for a disaggregated deployment's router
    replicas: int
    command: str


@dataclass(frozen=True)
class ClosestDeployment(Record):
    """With no deployment meeting the demand, the one that comes closest: its replicas (plan key,
    count), GPUs, goodput, how far short of the demand it falls, and its launch commands."""
    replicas: tuple[tuple[str, int], ...]
    gpus: int
    goodput_rps: float
    shortfall_rps: float
    verified_at_goodput: bool
    launch: tuple[LaunchEntry, ...]   # per plan (`DeploymentEval.launch`)


@dataclass(frozen=True)
class PoolDoc(Record):
    """One pool of a disaggregated deployment: its plan, how many instances on how many nodes, the
    rate each instance was sized for and its analytic screen."""
    plan: str
    instances: int
    nodes: int
    tp: int
    pp: int
    ep: int
    adp: int
    gpus_per_instance: int
    rate_rps: float
    screen: dict                      # the role's analytic figures (`search.disagg_roles.RoleEval.detail`)
    max_num_seqs: int


@dataclass(frozen=True)
class DeploymentDisagg:
    """A disaggregated deployment's `disagg` document: its pools, how their capacity was found, the
    verifying run's figures and, once attached, the launch commands (`report.launch.DisaggLaunch`)."""
    prefill: PoolDoc
    decode: PoolDoc
    capacity_basis: str
    run: DisaggRun
    launch: Record | None = None

    def to_dict(self) -> dict:
        d = {"prefill": self.prefill.to_dict(), "decode": self.decode.to_dict(),
             "capacity_basis": self.capacity_basis, **self.run.to_dict()}
        return {**d, "launch": self.launch.to_dict()} if self.launch is not None else d


@dataclass(frozen=True)
class SteadyMetrics:
    rate_per_s: float
    requests: int                     # arrivals in the window
    completed: int
    ttft_ms: Distribution
    tpot_ms: Distribution
    e2e_s: Distribution
    throughput: WindowThroughput
    energy: WindowEnergy
    kv_cache: KvPeak
    prefix_cache: PrefixSaving
    speculative_tokens_per_step: float | None
    slo: WindowSlo
    steady: WindowTest
    disagg: DisaggRun | None = None

    def to_dict(self) -> dict:
        d = {"rate_per_s": self.rate_per_s, "requests": self.requests, "completed": self.completed,
             "ttft_ms": self.ttft_ms.to_dict(), "tpot_ms": self.tpot_ms.to_dict(), "e2e_s": self.e2e_s.to_dict(),
             "throughput": self.throughput.to_dict(), "energy": self.energy.to_dict(),
             "kv_cache": self.kv_cache.to_dict(), "prefix_cache": self.prefix_cache.to_dict(),
             "speculative_tokens_per_step": self.speculative_tokens_per_step, "slo": self.slo.to_dict(),
             "steady": self.steady.to_dict()}
        return {**d, **self.disagg.to_dict()} if self.disagg is not None else d


def deployment_dict(m: SteadyMetrics | None, verified: bool, rate_rps: float) -> dict:
    """A deployment's `metrics` block: the tree plus the flat figures the tables and CSV read
    (only the rate and the verdict when no plan group of it could run)."""
    if m is None:
        return {"rate_per_s": rate_rps, "slo_met": False}
    return {**m.to_dict(), "output_tokens_per_s": m.throughput.output_tokens_per_s,
            "energy_j_per_output_token": m.energy.j_per_output_token, "energy_j_per_request": m.energy.j_per_request,
            "slo_met": bool(verified)}
