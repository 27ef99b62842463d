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
    pool: int = 0                # the node group its replicas live in
    power_w: float = 0.0         # mean power of one replica serving its goodput (all its GPUs)


@dataclass(frozen=True)
class Pool:
    """One node group: identical nodes of one GPU type, and their price (None: unknown)."""

    num_nodes: int
    gpus_per_node: int
    price_per_gpu_hour: float | None = None
    name: str = ""


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
    cost_per_hour: float | None                 # USD per hour; None when a used group has no price
    ttft_p90_s: float                           # worst among the used candidates
    tpot_p90_s: float
    power_w: float = 0.0                        # sum of the replicas' mean power at their goodput


@dataclass(frozen=True)
class Closest:
    """The best the whole cluster can do when no deployment meets the demand."""

    deployment: Deployment | None               # max-goodput deployment; None if nothing fits
    demand_rps: float
    shortfall_rps: float


@dataclass(frozen=True)
class _Problem:
    cands: tuple[Candidate, ...]
    pools: tuple[Pool, ...]
    demand_rps: float | None
    objective: str
    homogeneous: bool
    groups: tuple[int, ...] | None = None      # layout group per candidate: top-K differ in groups used
    max_power_w: float | None = None           # the replicas' summed mean power may not exceed this

    def group_set(self, r: Sequence[int]) -> frozenset:
        """The layout groups a replica vector uses (its candidates when no groups are given)."""
        g = self.groups or tuple(range(len(self.cands)))
        return frozenset(g[i] for i, k in enumerate(r) if k)

    def pool_of(self, i: int) -> Pool:
        return self.pools[self.cands[i].pool]

    @property
    def node_pools(self) -> tuple[int, ...]:
        """The pool of every node, pools in order (placements list nodes in this order)."""
        return tuple(q for q, pool in enumerate(self.pools) for _ in range(pool.num_nodes))

    @property
    def usable(self) -> tuple[int, ...]:
        """Candidates that can be placed and serve traffic."""
        out = []
        for i, c in enumerate(self.cands):
            pool = self.pool_of(i)
            g, n = pool.gpus_per_node, pool.num_nodes
            if _gp_int(c.goodput_rps) > 0 and c.gpus_per_replica <= g * n \
                    and (c.gpus_per_replica <= g or c.gpus_per_replica % g == 0):
                out.append(i)
        return tuple(out)

    def max_replicas(self, i: int) -> int:
        pool = self.pool_of(i)
        g, n, size = pool.gpus_per_node, pool.num_nodes, self.cands[i].gpus_per_replica
        return n * (g // size) if size <= g else n // (size // g)

    @property
    def demand_int(self) -> int:
        if self.demand_rps is None:
            return 1
        return max(1, math.ceil(self.demand_rps * GOODPUT_SCALE * (1 - _ROUND_RTOL)))


PRICE_SCALE = 1_000_000      # integer price unit: micro-USD per GPU-hour
POWER_SCALE = 1_000          # integer power unit: milliwatts


def _price_int(price_per_gpu_hour: float | None) -> int:
    return round((price_per_gpu_hour or 0.0) * PRICE_SCALE)


def _power_int(power_w: float) -> int:
    return math.ceil(power_w * POWER_SCALE * (1 - _ROUND_RTOL))


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
    priced = all(p.pool_of(i).price_per_gpu_hour is not None for i in used)
    # USD per hour: GPUs of each replica x its group's price per GPU-hour (exact in micro-USD)
    cost = sum(_price_int(p.pool_of(i).price_per_gpu_hour) * p.cands[i].gpus_per_replica * r[i] for i in used)
    return {
        "gpus": gpus,
        "goodput": goodput,
        "energy": energy,
        "cost": cost / PRICE_SCALE if priced else math.nan,
        "power": sum(p.cands[i].power_w * r[i] for i in used),
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
        cost_per_hour=None if math.isnan(m["cost"]) else m["cost"],
        ttft_p90_s=m["ttft"],
        tpot_p90_s=m["tpot"],
        power_w=m["power"],
    )


def _problem(candidates, pools, demand_rps, objective, homogeneous, groups=None, max_power_w=None) -> _Problem:
    if objective not in OBJECTIVES:
        raise InputError("--objective", None, f"unknown objective '{objective}'",
                         did_you_mean(objective, OBJECTIVES))
    pools = tuple(pools)
    if not pools or any(q.num_nodes < 1 or q.gpus_per_node < 1 for q in pools):
        raise ValueError(f"every node group needs >= 1 node and GPU, got {pools}")
    if objective == "cost":
        unpriced = [q.name or f"group {j}" for j, q in enumerate(pools) if q.price_per_gpu_hour is None]
        if unpriced:
            raise InputError("--objective", None, f"cost needs a price per GPU-hour; none for {', '.join(unpriced)}",
                             "add price_per_gpu_hour to the cluster file or pass --prices FILE (see examples/prices.yaml)")
    keys = [c.key for c in candidates]
    if len(set(keys)) != len(keys):
        raise ValueError("candidate keys must be unique")
    for c in candidates:
        if c.gpus_per_replica < 1 or not (c.goodput_rps >= 0) or not math.isfinite(c.goodput_rps):
            raise ValueError(f"candidate {c.key}: bad gpus_per_replica or goodput_rps")
        if not 0 <= c.pool < len(pools):
            raise ValueError(f"candidate {c.key}: no node group {c.pool}")
        if c.goodput_rps > 0 and not all(math.isfinite(v) and v >= 0 for v in
                                         (c.energy_j_per_request, c.ttft_p90_s, c.tpot_p90_s, c.power_w)):
            raise ValueError(f"candidate {c.key}: energy, power and latencies must be finite and >= 0")
    if demand_rps is not None and not (math.isfinite(demand_rps) and demand_rps >= 0):
        raise InputError("--demand", None, f"demand must be a finite rate >= 0, got {demand_rps}")
    if max_power_w is not None and not (math.isfinite(max_power_w) and max_power_w > 0):
        raise InputError("--max-power-kw", None, f"must be a positive number, got {max_power_w / 1e3:g}", "e.g. 20")
    if groups is not None and len(groups) != len(candidates):
        raise ValueError("groups must give one layout group per candidate")
    return _Problem(tuple(candidates), pools, demand_rps, objective, homogeneous,
                    tuple(groups) if groups is not None else None, max_power_w)


def within_power(p: _Problem, r: Sequence[int]) -> bool:
    """The replicas' summed mean power is within the budget (exact in milliwatts)."""
    if p.max_power_w is None:
        return True
    return sum(_power_int(p.cands[i].power_w) * k for i, k in enumerate(r)) <= math.floor(p.max_power_w * POWER_SCALE)
