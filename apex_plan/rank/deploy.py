"""Choose the deployment -- how many replicas of which plans -- with OR-Tools CP-SAT.

Model (per solve)
    Nodes come in pools (node groups of one GPU type, `Pool`); a candidate (a plan on one GPU type
    at one operating point) lives in one pool, and a replica inside it.
    x[c, n]  replicas of candidate c on node n of c's pool, for replicas that fit in a node;
    y[c]     replicas of candidate c that take gpus_per_replica / gpus_per_node whole nodes
             (a replica larger than a node that is not a whole number of nodes is never placed);
    b[n]     node n is taken by whole-node replicas; within a pool b is non-increasing, so those
             are its first nodes, and the GPUs used per node are non-increasing: a pool's nodes
             are identical, so this removes their permutations without losing any replica vector;
    r[c]     replicas of c (the vector top-K excludes); use[c] r[c] > 0 => use[c].
Power
    With a budget (`max_power_w`), the replicas' summed mean power at their goodput (milliwatts,
    ceiled) stays within it.
Demand
    Goodputs are floored and the demand ceiled to micro-requests/s, so a solution of the
    integer model truly meets the demand in floats; `meets_demand` allows only float noise.
Candidates with zero goodput never meet their SLO and are never placed.

Objectives (lexicographic; each later stage keeps the earlier optimum fixed)
    gpus        min GPUs, then min energy per request
    cost        min USD per hour, sum over replicas of GPUs x their pool's price per GPU-hour
                (micro-USD, exact), then min GPUs, then min energy per request
    energy      min capacity-weighted energy per request, sum(r gp e) / sum(r gp) -- the J per
                request when traffic is split in proportion to capacity -- then min GPUs.
                The ratio is minimised exactly (Dinkelbach iterations of linear solves).
    latency     min the worst p90 TTFT of the used candidates (us), then worst p90 TPOT, then GPUs
    throughput  max total goodput (demand, if given, still enforced), then min GPUs
`objective_value` is in natural units (GPUs, $/h, J/request, s, requests/s); deployments
come best first (so ascending, except throughput which descends).
Solves are deterministic: one worker, a fixed seed, a deterministic time limit.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Sequence

from apex_plan.errors import InputError
from apex_plan.rank.exhaustive import EXHAUSTIVE_MAX_VECTORS, _exhaustive, _pack, _vectors  # noqa: F401
from apex_plan.rank.problem import (DEMAND_RTOL, GOODPUT_SCALE, OBJECTIVES, TIME_SCALE,  # noqa: F401 (re-exported)
                                    _RATIO_RTOL, POWER_SCALE, Candidate, Closest, Deployment, Pool, _deployment,
                                    _gp_int, _metrics, _power_int, _price_int, _Problem, _problem, _us, meets_demand,
                                    objective_key)


# ---------------------------------------------------------------- CP-SAT model

@dataclass(frozen=True)
class _Fix:
    """Bounds from earlier lexicographic stages."""

    gpus_eq: int | None = None
    cost_eq: int | None = None
    ratio_le: float | None = None
    ttft_le_us: int | None = None
    tpot_le_us: int | None = None
    goodput_ge: int | None = None


def _ratio_coeffs(p: _Problem, lam: float) -> dict[int, int]:
    """Integer coefficients of sum r gp (e - lam), scaled so the largest is ~1e9."""
    raw = {i: p.cands[i].goodput_rps * (p.cands[i].energy_j_per_request - lam) for i in p.usable}
    top = max((abs(v) for v in raw.values()), default=0.0)
    scale = 1e9 / top if top > 0 else 1.0
    return {i: round(v * scale) for i, v in raw.items()}


class _Model:
    """The CP-SAT model of one solve: variables plus constraints from exclusions and fixes."""

    def __init__(self, p: _Problem, excluded: Sequence[tuple[int, ...]], fix: _Fix):
        from ortools.sat.python import cp_model   # imported on first use: small problems never need it
        self.p = p
        m = self.m = cp_model.CpModel()
        usable = p.usable
        node_pool = p.node_pools
        nodes_of = {q: [n for n, qq in enumerate(node_pool) if qq == q] for q in range(len(p.pools))}
        gpn = lambda i: p.pool_of(i).gpus_per_node  # noqa: E731
        self.small = [i for i in usable if p.cands[i].gpus_per_replica <= gpn(i)]
        self.large = [i for i in usable if p.cands[i].gpus_per_replica > gpn(i)]
        self.x = {(i, n): m.new_int_var(0, gpn(i) // p.cands[i].gpus_per_replica, f"x{i}_{n}")
                  for i in self.small for n in nodes_of[p.cands[i].pool]}
        self.y = {i: m.new_int_var(0, p.max_replicas(i), f"y{i}") for i in self.large}
        self.b = [m.new_bool_var(f"b{n}") for n in range(len(node_pool))]
        self.r = {i: m.new_int_var(0, p.max_replicas(i), f"r{i}") for i in usable}
        self.use = {i: m.new_bool_var(f"use{i}") for i in usable}
        for i in self.small:
            m.add(self.r[i] == sum(self.x[i, n] for n in nodes_of[p.cands[i].pool]))
        for i in self.large:
            m.add(self.r[i] == self.y[i])
        for i in usable:
            m.add(self.r[i] <= p.max_replicas(i) * self.use[i])
        if p.homogeneous:
            m.add(sum(self.use.values()) <= 1)
        for q, nodes in nodes_of.items():
            g = p.pools[q].gpus_per_node
            # whole-node replicas take the pool's first nodes; the rest pack small replicas
            m.add(sum(self.b[n] for n in nodes) ==
                  sum((p.cands[i].gpus_per_replica // g) * self.y[i] for i in self.large if p.cands[i].pool == q))
            used_gpus = []
            for n in nodes:
                small_gpus = sum(p.cands[i].gpus_per_replica * self.x[i, n] for i in self.small
                                 if p.cands[i].pool == q)
                m.add(small_gpus <= g * (1 - self.b[n]))
                used_gpus.append(small_gpus + g * self.b[n])
            for a in range(len(nodes) - 1):      # node symmetry inside a pool: sorted by GPUs used
                m.add(self.b[nodes[a]] >= self.b[nodes[a + 1]])
                m.add(used_gpus[a] >= used_gpus[a + 1])
        # USD per hour in micro-USD: GPUs x the pool's price per GPU-hour
        self.cost = sum(_price_int(p.pool_of(i).price_per_gpu_hour) * p.cands[i].gpus_per_replica * self.r[i]
                        for i in usable)
        if p.max_power_w is not None:
            m.add(sum(_power_int(p.cands[i].power_w) * self.r[i] for i in usable)
                  <= int(p.max_power_w * POWER_SCALE))
        self.gpus = sum(p.cands[i].gpus_per_replica * self.r[i] for i in usable)
        self.goodput = sum(_gp_int(p.cands[i].goodput_rps) * self.r[i] for i in usable)
        m.add(self.goodput >= p.demand_int)
        if p.groups is None:
            for vec in excluded:                    # top-K: forbid earlier replica vectors
                diff = []
                for i in usable:
                    d = m.new_bool_var("")
                    m.add(self.r[i] != vec[i]).only_enforce_if(d)
                    diff.append(d)
                m.add_bool_or(diff)
        elif excluded:                              # top-K: forbid earlier sets of layout groups
            for i in usable:
                m.add(self.r[i] >= self.use[i])     # use[i] exactly when replicas of i are placed
            gids = sorted({p.groups[i] for i in usable})
            gused = {}
            for g in gids:
                gused[g] = m.new_bool_var(f"g{g}")
                m.add_max_equality(gused[g], [self.use[i] for i in usable if p.groups[i] == g])
            for vec in excluded:
                prev = p.group_set(vec)
                m.add_bool_or([gused[g].Not() if g in prev else gused[g] for g in gids])
        self.ttft = self.tpot = None
        if p.objective == "latency":
            ttft = {i: _us(p.cands[i].ttft_p90_s) for i in usable}
            tpot = {i: _us(p.cands[i].tpot_p90_s) for i in usable}
            self.ttft = m.new_int_var(0, max(ttft.values(), default=0), "ttft")
            self.tpot = m.new_int_var(0, max(tpot.values(), default=0), "tpot")
            for i in usable:
                m.add(self.ttft >= ttft[i] * self.use[i])
                m.add(self.tpot >= tpot[i] * self.use[i])
        if fix.gpus_eq is not None:
            m.add(self.gpus == fix.gpus_eq)
        if fix.cost_eq is not None:
            m.add(self.cost == fix.cost_eq)
        if fix.ratio_le is not None:
            lam = fix.ratio_le * (1 + _RATIO_RTOL)
            a = _ratio_coeffs(p, lam)
            m.add(sum(a[i] * self.r[i] for i in usable) <= 0)
        if fix.ttft_le_us is not None:
            m.add(self.ttft <= fix.ttft_le_us)
        if fix.tpot_le_us is not None:
            m.add(self.tpot <= fix.tpot_le_us)
        if fix.goodput_ge is not None:
            m.add(self.goodput >= fix.goodput_ge)

    def solve(self, objective, maximize: bool, time_limit_s: float, seed: int):
        """Replica vector (over all candidates) and placement, or None if none was found."""
        from ortools.sat.python import cp_model
        if maximize:
            self.m.maximize(objective)
        else:
            self.m.minimize(objective)
        solver = cp_model.CpSolver()
        solver.parameters.num_workers = 1
        solver.parameters.random_seed = seed
        solver.parameters.max_deterministic_time = time_limit_s
        solver.parameters.max_time_in_seconds = 4 * time_limit_s   # wall-clock safety net
        status = solver.solve(self.m)
        if status not in (cp_model.OPTIMAL, cp_model.FEASIBLE):
            return None
        p = self.p
        r = [0] * len(p.cands)
        for i, var in self.r.items():
            r[i] = solver.value(var)
        node_pool = p.node_pools
        placement: list[list[int]] = [[] for _ in node_pool]
        first = {q: node_pool.index(q) for q in range(len(p.pools))}
        for i in self.large:
            q = p.cands[i].pool
            for _ in range(solver.value(self.y[i]) * (p.cands[i].gpus_per_replica // p.pools[q].gpus_per_node)):
                placement[first[q]].append(i)
                first[q] += 1
        for (i, n), var in self.x.items():
            placement[n].extend([i] * solver.value(var))
        return tuple(r), [sorted(nodes) for nodes in placement]


# ---------------------------------------------------------------- lexicographic stages

def _solve_best(p: _Problem, excluded, time_limit_s: float, seed: int):
    """The best replica vector (and placement) not in `excluded`, or None."""
    def run(fix: _Fix, objective: str, lam: float | None = None):
        mod = _Model(p, excluded, fix)
        expr, maximize = {
            "gpus": (lambda: mod.gpus, False),
            "cost": (lambda: mod.cost, False),
            "goodput": (lambda: mod.goodput, True),
            "ttft": (lambda: mod.ttft, False),
            "tpot": (lambda: mod.tpot, False),
            "ratio": (lambda: sum(c * mod.r[i] for i, c in _ratio_coeffs(p, lam).items()), False),
        }[objective]
        return mod.solve(expr(), maximize, time_limit_s, seed)

    def dinkelbach(fix: _Fix, start):
        best, lam = start, _metrics(p, start[0])["energy"]
        for _ in range(50):
            got = run(fix, "ratio", lam)
            if got is None:
                break
            new = _metrics(p, got[0])["energy"]
            if not new < lam * (1 - 1e-12):
                break
            best, lam = got, new
        return best

    obj = p.objective
    if obj == "cost":
        first = run(_Fix(), "cost")
        if first is None:
            return None
        cost = sum(_price_int(p.pool_of(i).price_per_gpu_hour) * p.cands[i].gpus_per_replica * k
                   for i, k in enumerate(first[0]))
        second = run(_Fix(cost_eq=cost), "gpus") or first
        return dinkelbach(_Fix(cost_eq=cost, gpus_eq=_metrics(p, second[0])["gpus"]), second)
    if obj in ("gpus", "energy"):
        first = run(_Fix(), "gpus")
        if first is None:
            return None
        if obj == "energy":
            best = dinkelbach(_Fix(), first)
            ratio = _metrics(p, best[0])["energy"]
            fewer = run(_Fix(ratio_le=ratio), "gpus")
            if fewer is not None and _metrics(p, fewer[0])["gpus"] < _metrics(p, best[0])["gpus"]:
                return fewer
            return best
        return dinkelbach(_Fix(gpus_eq=_metrics(p, first[0])["gpus"]), first)
    if obj == "latency":
        first = run(_Fix(), "ttft")
        if first is None:
            return None
        ttft = max(_us(p.cands[i].ttft_p90_s) for i, k in enumerate(first[0]) if k)
        second = run(_Fix(ttft_le_us=ttft), "tpot") or first
        tpot = max(_us(p.cands[i].tpot_p90_s) for i, k in enumerate(second[0]) if k)
        return run(_Fix(ttft_le_us=ttft, tpot_le_us=tpot), "gpus") or second
    first = run(_Fix(), "goodput")                      # throughput
    if first is None:
        return None
    total = sum(_gp_int(p.cands[i].goodput_rps) * k for i, k in enumerate(first[0]))
    return run(_Fix(goodput_ge=total), "gpus") or first


@dataclass(frozen=True)
class DeployQuery:
    """What a deployment solve is asked: the cluster, the demand, the objective and the solver's limits.

    `pools`: the node groups (each candidate names its pool); without them one group of
    `num_nodes` x `gpus_per_node` priced `price_per_gpu_hour`. `max_power_w`: a budget on the
    replicas' summed mean power. `groups` (a layout group per candidate): the deployments differ in
    the set of groups they use, not only in replica counts. `method`: "cp-sat", "exhaustive"
    (enumerate replica vectors), or "auto" (exhaustive when there are at most
    EXHAUSTIVE_MAX_VECTORS, which is exact and spares loading the solver)."""

    num_nodes: int = 0
    gpus_per_node: int = 0
    price_per_gpu_hour: float | None = 0.0
    demand_rps: float | None = None
    objective: str = "gpus"
    homogeneous: bool = False
    top_k: int = 1
    time_limit_s: float = 3.0
    seed: int = 0
    groups: Sequence[int] | None = None
    method: str = "auto"
    pools: Sequence[Pool] | None = None
    max_power_w: float | None = None

    def node_pools(self) -> tuple[Pool, ...]:
        """The node groups: `pools`, or one group of `num_nodes` x `gpus_per_node` at one price."""
        if self.pools is not None:
            return tuple(self.pools)
        return (Pool(self.num_nodes, self.gpus_per_node, self.price_per_gpu_hour),)


def _query_problem(candidates: Sequence[Candidate], q: DeployQuery) -> _Problem:
    """The solver's problem for `q` over `candidates`."""
    return _problem(candidates, q.node_pools(), q.demand_rps, q.objective, q.homogeneous, q.groups, q.max_power_w)


def solve_deployments(candidates: Sequence[Candidate], q: DeployQuery) -> list[Deployment]:
    """Up to `q.top_k` distinct deployments that meet `q.demand_rps`, best first; [] if none does."""
    p = _query_problem(candidates, q)
    if q.top_k < 1:
        raise InputError("--top-k", None, f"must be >= 1, got {q.top_k}")
    if q.method == "exhaustive" or (q.method == "auto" and _vectors(p) <= EXHAUSTIVE_MAX_VECTORS):
        return _exhaustive(p, q.top_k)
    found: list[tuple[tuple[int, ...], list[list[int]]]] = []
    for _ in range(q.top_k):
        got = _solve_best(p, [r for r, _ in found], q.time_limit_s, q.seed)
        if got is None:
            break
        assert meets_demand(_metrics(p, got[0])["goodput"], q.demand_rps)
        found.append(got)
    found.sort(key=lambda rp: objective_key(q.objective, _metrics(p, rp[0])))  # stable
    return [_deployment(p, r, placement) for r, placement in found]


def closest_deployment(candidates: Sequence[Candidate], q: DeployQuery) -> Closest:
    """The max-goodput deployment on the whole cluster and how far it falls short of `q.demand_rps`."""
    if q.demand_rps is None:
        raise ValueError("closest_deployment needs the demand (DeployQuery.demand_rps)")
    best = solve_deployments(candidates, dataclasses.replace(q, demand_rps=None, objective="throughput",
                                                             top_k=1, groups=None, method="auto"))
    dep = best[0] if best else None
    goodput = dep.goodput_rps if dep else 0.0
    return Closest(dep, q.demand_rps, max(0.0, q.demand_rps - goodput))


# ---------------------------------------------------------------- brute force (tests' reference)

def brute_force_deployments(candidates: Sequence[Candidate], q: DeployQuery) -> list[Deployment]:
    """Same contract as `solve_deployments`, by enumerating replica vectors (small cases only)."""
    return _exhaustive(_query_problem(candidates, q), q.top_k)
