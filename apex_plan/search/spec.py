"""What a search is asked (SearchInputs) and what it learns about each plan variant (PlanEval)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Callable

from apex_plan.estimate.memory import MemoryReport
from apex_plan.hardware.fleet import FleetSpec, NodeGroup, single_group
from apex_plan.hardware.power import DEFAULT_POINT, OperatingPoint
from apex_plan.hardware.spec import ClusterSpec
from apex_plan.model.spec import ModelSpec
from apex_plan.plan.spec import EngineConfig, Plan
from apex_plan.search.results import SteadyMetrics
from apex_plan.search.screen import Screen
from apex_plan.simulate.engine import ResolvedEngine
from apex_plan.simulate.fit import lowered_max_model_len
from apex_plan.workload.spec import Slo, Trace


@dataclass(frozen=True, eq=False)
class SearchInputs:
    model: ModelSpec
    cluster: ClusterSpec
    trace: Trace                        # the request mix; steady-state runs draw from it (see `steady`)
    demand_rps: float | None            # None: maximise throughput on the whole cluster
    slo: Slo
    weight_dtypes: tuple[str, ...] = ("bf16",)
    kv_dtypes: tuple[str, ...] = ("bf16",)
    engines: tuple[EngineConfig, ...] = (EngineConfig(),)
    objective: str = "gpus"
    homogeneous: bool = False
    top_k: int = 3
    allow_cross_node_tp: bool = False
    prune_symmetry: bool = True
    max_gpus_per_replica: int | None = None
    prune_bounds: bool = True           # skip plans whose analytic bound cannot beat one found
    engine_profile: object | None = None  # family/name/supports_*; None: the layouts of engines[0]'s profile
    fleet: FleetSpec | None = None      # node groups of different GPUs; None: one group, `cluster`
    points: tuple[OperatingPoint, ...] = (DEFAULT_POINT,)   # power caps / SM clocks searched per plan
    max_power_w: float | None = None    # budget on the deployment's summed mean power
    serving: str = "agg"                # agg | disagg (prefill and decode pools) | both, ranked in one list

    @property
    def groups(self) -> tuple[NodeGroup, ...]:
        return (self.fleet or single_group(self.cluster)).groups

    @property
    def mixed(self) -> bool:
        return len(self.groups) > 1


@dataclass
class PlanEval:
    """One replica plan with engine settings, from enumeration to goodput."""

    plan: Plan
    engine_cfg: EngineConfig
    key: str
    cluster: ClusterSpec | None = None  # its node group, the GPU at this plan's operating point
    pool: int = 0                       # index of its node group
    point: OperatingPoint = DEFAULT_POINT
    clock_mhz: float | None = None      # SM clock it runs at (None: the profile gives no clocks)
    status: str = "pending"             # infeasible | screened | pruned | no_goodput | ok | duplicate
    reason: str = ""
    engine: ResolvedEngine | None = None
    memory: MemoryReport | None = None
    screen: Screen | None = None
    bound_rps: float = 0.0              # analytic upper bound on goodput per replica
    goodput_rps: float = 0.0            # steady state
    binding: str = ""                   # what stops it just above its goodput (search.capacity.binding_constraint)
    at_goodput: SteadyMetrics | None = None   # one replica at its goodput
    at_demand: SteadyMetrics | None = None    # one replica at its share of the demand
    demand_run: tuple | None = None     # (SimResult, steady.Window) of the at_demand run, while a deployment may reuse it
    replicas_for_demand: int = 0
    simulations: int = 0
    operating_tpot: Callable[[float], float] | None = None   # rate per replica -> its TPOT (run sizing)

    def sizing_slo(self, slo, rate_rps: float):
        """The latencies a steady-state run of one replica at `rate_rps` is sized by (not the SLO)."""
        from apex_plan.search.steady import operating_slo
        if self.operating_tpot is None or self.screen is None:
            return slo
        return operating_slo(slo, self.screen.ttft_floor_s, self.operating_tpot(rate_rps))

    @property
    def run_cfg(self) -> EngineConfig:
        """The engine settings with the max_model_len this plan was fitted to, and its memory fraction when
        the fit raised it (`simulate.fit.fit_engine` step 2): what its simulations must run with."""
        cfg = dataclasses.replace(self.engine_cfg, max_model_len=self.engine.max_model_len)
        prof = self.engine.profile
        default = prof.memory.gpu_memory_utilization if prof is not None else None
        if cfg.gpu_memory_utilization is None and self.engine.gpu_memory_utilization != default:
            cfg = dataclasses.replace(cfg, gpu_memory_utilization=self.engine.gpu_memory_utilization)
        return cfg

    def lowered_max_model_len(self, model: ModelSpec) -> int | None:
        """max_model_len when the search lowered it below the model's to fit the KV cache, else None."""
        return lowered_max_model_len(self.engine, self.engine_cfg, model)
