"""The deployment problem: candidates, deployments, the metrics of a replica vector and the
objective keys both solvers rank by."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

from apex_plan.errors import InputError, did_you_mean

OBJECTIVES = ("gpus", "energy", "cost", "latency", "throughput")
GOODPUT_SCALE = 1_000_000    # integer goodput unit: micro-requests/s
TIME_SCALE = 1_000_000       # integer latency unit: microseconds
DEMAND_RTOL = 1e-9           # float noise allowed when checking a deployment meets the demand
_ROUND_RTOL = 1e-10          # nudge before floor/ceil so 1.234 * 1e6 floors to 1234000
_RATIO_RTOL = 1e-7           # slack when fixing the optimal energy ratio in a later stage


@dataclass(frozen=True)
class Candidate:
    """One replica plan (with engine settings) and what one replica of it delivers."""

    key: str                     # plan label, unique among the candidates
    gpus_per_replica: int
    goodput_rps: float           # max arrival rate one replica sustains within SLO; 0 if never
    energy_j_per_request: float
    ttft_p90_s: float
    tpot_p90_s: float


@dataclass(frozen=True)
class Deployment:
    """Replica counts per candidate, where they sit, and what they deliver."""

    replicas: tuple[tuple[str, int], ...]       # (candidate key, count), sorted, no zero counts
    gpus: int
    goodput_rps: float
    objective_value: float
    placement: tuple[tuple[int, ...], ...]      # per node, candidate index of each replica on it;
                                                # a multi-node replica is listed on each of its nodes
    energy_j_per_request: float                 # capacity-weighted over the replicas
    cost_per_hour: float
    ttft_p90_s: float                           # worst among the used candidates
    tpot_p90_s: float


@dataclass(frozen=True)
class Closest:
    """The best the whole cluster can do when no deployment meets the demand."""

    deployment: Deployment | None               # max-goodput deployment; None if nothing fits
    demand_rps: float
    shortfall_rps: float


@dataclass(frozen=True)
class _Problem:
    cands: tuple[Candidate, ...]
    num_nodes: int
    gpus_per_node: int
    price_per_gpu_hour: float
    demand_rps: float | None
    objective: str
    homogeneous: bool
    groups: tuple[int, ...] | None = None      # layout group per candidate: top-K differ in groups used

    def group_set(self, r: Sequence[int]) -> frozenset:
        """The layout groups a replica vector uses (its candidates when no groups are given)."""
        g = self.groups or tuple(range(len(self.cands)))
        return frozenset(g[i] for i, k in enumerate(r) if k)

    @property
    def usable(self) -> tuple[int, ...]:
        """Candidates that can be placed and serve traffic."""
        g, n = self.gpus_per_node, self.num_nodes
        return tuple(i for i, c in enumerate(self.cands)
                     if _gp_int(c.goodput_rps) > 0 and c.gpus_per_replica <= g * n
                     and (c.gpus_per_replica <= g or c.gpus_per_replica % g == 0))

    def max_replicas(self, i: int) -> int:
        g, n, size = self.gpus_per_node, self.num_nodes, self.cands[i].gpus_per_replica
        return n * (g // size) if size <= g else n // (size // g)

    @property
    def demand_int(self) -> int:
        if self.demand_rps is None:
            return 1
        return max(1, math.ceil(self.demand_rps * GOODPUT_SCALE * (1 - _ROUND_RTOL)))


def _gp_int(goodput_rps: float) -> int:
    return math.floor(goodput_rps * GOODPUT_SCALE * (1 + _ROUND_RTOL))


def _us(seconds: float) -> int:
    return round(seconds * TIME_SCALE)


def meets_demand(goodput_rps: float, demand_rps: float | None) -> bool:
    """True if a deployment's goodput covers the demand (up to float noise)."""
    if demand_rps is None:
        return goodput_rps > 0
    return goodput_rps > 0 and goodput_rps >= demand_rps * (1 - DEMAND_RTOL)


# ---------------------------------------------------------------- metrics of a replica vector

def _metrics(p: _Problem, r: Sequence[int]) -> dict[str, float]:
    used = [i for i, k in enumerate(r) if k > 0]
    gpus = sum(p.cands[i].gpus_per_replica * r[i] for i in used)
    goodput = sum(p.cands[i].goodput_rps * r[i] for i in used)
    joules = sum(p.cands[i].goodput_rps * p.cands[i].energy_j_per_request * r[i] for i in used)
    # the ratio to 12 significant digits, so float noise does not break ties (e.g. homogeneous)
    energy = float(f"{joules / goodput:.12g}") if goodput > 0 else math.inf
    return {
        "gpus": gpus,
        "goodput": goodput,
        "energy": energy,
        "cost": gpus * p.price_per_gpu_hour,
        "ttft": max((p.cands[i].ttft_p90_s for i in used), default=0.0),
        "tpot": max((p.cands[i].tpot_p90_s for i in used), default=0.0),
    }


def objective_key(objective: str, m: dict[str, float]) -> tuple[float, ...]:
    """Lexicographic key a deployment is ranked by (smaller is better)."""
    return {
        "gpus": (m["gpus"], m["energy"]),
        "cost": (m["cost"], m["gpus"], m["energy"]),
        "energy": (m["energy"], m["gpus"]),
        "latency": (m["ttft"], m["tpot"], m["gpus"]),
        "throughput": (-m["goodput"], m["gpus"]),
    }[objective]


def _objective_value(objective: str, m: dict[str, float]) -> float:
    name = {"gpus": "gpus", "cost": "cost", "energy": "energy", "latency": "ttft", "throughput": "goodput"}
    return float(m[name[objective]])


def _deployment(p: _Problem, r: Sequence[int], placement: Sequence[Sequence[int]]) -> Deployment:
    m = _metrics(p, r)
    return Deployment(
        replicas=tuple(sorted((p.cands[i].key, k) for i, k in enumerate(r) if k > 0)),
        gpus=int(m["gpus"]),
        goodput_rps=m["goodput"],
        objective_value=_objective_value(p.objective, m),
        placement=tuple(tuple(node) for node in placement),
        energy_j_per_request=m["energy"],
        cost_per_hour=m["cost"],
        ttft_p90_s=m["ttft"],
        tpot_p90_s=m["tpot"],
    )


def _problem(candidates, num_nodes, gpus_per_node, price_per_gpu_hour, demand_rps,
             objective, homogeneous, groups=None) -> _Problem:
    if objective not in OBJECTIVES:
        raise InputError("--objective", None, f"unknown objective '{objective}'",
                         did_you_mean(objective, OBJECTIVES))
    if num_nodes < 1 or gpus_per_node < 1:
        raise ValueError(f"cluster needs >= 1 node and GPU, got {num_nodes} x {gpus_per_node}")
    keys = [c.key for c in candidates]
    if len(set(keys)) != len(keys):
        raise ValueError("candidate keys must be unique")
    for c in candidates:
        if c.gpus_per_replica < 1 or not (c.goodput_rps >= 0) or not math.isfinite(c.goodput_rps):
            raise ValueError(f"candidate {c.key}: bad gpus_per_replica or goodput_rps")
        if c.goodput_rps > 0 and not all(math.isfinite(v) and v >= 0 for v in
                                         (c.energy_j_per_request, c.ttft_p90_s, c.tpot_p90_s)):
            raise ValueError(f"candidate {c.key}: energy and latencies must be finite and >= 0")
    if demand_rps is not None and not (math.isfinite(demand_rps) and demand_rps >= 0):
        raise InputError("--demand", None, f"demand must be a finite rate >= 0, got {demand_rps}")
    if groups is not None and len(groups) != len(candidates):
        raise ValueError("groups must give one layout group per candidate")
    return _Problem(tuple(candidates), num_nodes, gpus_per_node, float(price_per_gpu_hour),
                    demand_rps, objective, homogeneous, tuple(groups) if groups is not None else None)
