"""Size the two pools of a disaggregated deployment with OR-Tools CP-SAT.

Model
    up[i], ud[j]   one prefill plan i and one decode plan j are used (exactly one each), of the
                   same engine-settings group (a pair runs one engine configuration);
    np[i], nd[j]   instances of each (zero unless used, at least one if used);
    placement      an instance smaller than a node must divide it and one larger must be whole
                   nodes. When one pair's instance size divides the other's (`nested`), the pools may
                   share a node: one pool from GPU 0 and the other right after it (`placement`; the
                   larger instances first when the smaller pool's GPUs are not a multiple of them), so
                   every instance starts at a multiple of its size, none straddles a node and no GPU is
                   left between them: prefill + decode GPUs <= the cluster's.
                   Otherwise each pool takes nodes of its own: mp, md nodes with mp x gpus_per_node >=
                   prefill GPUs, md likewise, mp + md <= nodes. The engines allow a shared node: a
                   prefill and a decode server are separate processes on disjoint GPUs (SGLang
                   --base-gpu-id, vLLM and TRT-LLM CUDA_VISIBLE_DEVICES), their KV moving over NVLink
                   there (`simulate.transfer.rank_links` reads the placement).
Steady-state goodput of the pair: the prefill pool's rate sum np[i] rate_p[i] and the decode
pool's sum nd[j] rate_d[j] must each cover the demand (micro-requests/s: rates floored, the
demand ceiled, so an integer solution truly meets it in floats).
Objectives (lexicographic)
    gpus        min GPUs, then max the pair's capacity min(prefill rate, decode rate)
    throughput  max that capacity (the demand, if given, still enforced), then min GPUs
Top-K: each further solve forbids the (prefill plan, decode plan) pairs already found.
Solves are deterministic: one worker, a fixed seed, a deterministic time limit.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

from apex_plan.rank.problem import GOODPUT_SCALE, _gp_int

POOL_OBJECTIVES = ("gpus", "throughput")


@dataclass(frozen=True)
class RoleCandidate:
    """One role plan and what one instance of it sustains."""

    key: str
    gpus_per_instance: int
    rate_rps: float
    group: int = 0               # engine-settings group: a pair's two plans share it


@dataclass(frozen=True)
class PoolChoice:
    prefill: str
    prefill_instances: int
    decode: str
    decode_instances: int
    gpus: int
    prefill_nodes: int
    decode_nodes: int
    prefill_rps: float           # the pools' analytic rates
    decode_rps: float
    prefill_first_gpu: int = 0   # where each pool's instances start (`placement`)
    decode_first_gpu: int = 0

    @property
    def capacity_rps(self) -> float:
        return min(self.prefill_rps, self.decode_rps)


def _placeable(size: int, gpus_per_node: int) -> bool:
    return size % gpus_per_node == 0 if size > gpus_per_node else gpus_per_node % size == 0


def _nodes(gpus: int, gpus_per_node: int) -> int:
    return -(-gpus // gpus_per_node)


def nested(size_a: int, size_b: int) -> bool:
    """One instance size divides the other: two pools of them pack with no GPU between (module docstring)."""
    return max(size_a, size_b) % min(size_a, size_b) == 0


def placement(prefill_gpus: int, size_p: int, decode_gpus: int, size_d: int, gpus_per_node: int) -> tuple[int, int]:
    """(first GPU of the prefill pool, first GPU of the decode pool): nested sizes share nodes, the prefill pool
    first when the decode instances can start right after it at a multiple of their size (or of a node, for
    instances of whole nodes), else the decode pool first (its GPUs are then a multiple of the smaller
    prefill size); sizes that do not nest: the decode pool on the node after the prefill pool's."""
    if not nested(size_p, size_d):
        return 0, _nodes(prefill_gpus, gpus_per_node) * gpus_per_node
    return (0, prefill_gpus) if prefill_gpus % min(size_d, gpus_per_node) == 0 else (decode_gpus, 0)


def _spanned(first: int, gpus: int, gpus_per_node: int) -> int:
    """Nodes GPUs [first, first + gpus) touch."""
    return _nodes(first + gpus, gpus_per_node) - first // gpus_per_node if gpus else 0


def fits(prefill_gpus: int, size_p: int, decode_gpus: int, size_d: int, num_nodes: int, gpus_per_node: int) -> bool:
    """The two pools fit the cluster (module docstring's placement)."""
    if nested(size_p, size_d):
        return prefill_gpus + decode_gpus <= num_nodes * gpus_per_node
    return _nodes(prefill_gpus, gpus_per_node) + _nodes(decode_gpus, gpus_per_node) <= num_nodes


def _demand_int(demand_rps: float | None) -> int:
    return 1 if demand_rps is None else max(1, math.ceil(demand_rps * GOODPUT_SCALE * (1 - 1e-10)))


class _PoolModel:
    def __init__(self, pre, dec, num_nodes, gpn, demand_rps, excluded, fix_gpus=None, fix_cap=None):
        from ortools.sat.python import cp_model
        self.pre, self.dec = pre, dec
        m = self.m = cp_model.CpModel()
        gpus = num_nodes * gpn
        self.ip = [i for i, c in enumerate(pre) if _placeable(c.gpus_per_instance, gpn) and _gp_int(c.rate_rps) > 0]
        self.jd = [j for j, c in enumerate(dec) if _placeable(c.gpus_per_instance, gpn) and _gp_int(c.rate_rps) > 0]
        self.up = {i: m.new_bool_var(f"up{i}") for i in self.ip}
        self.ud = {j: m.new_bool_var(f"ud{j}") for j in self.jd}
        self.np = {i: m.new_int_var(0, gpus // pre[i].gpus_per_instance, f"np{i}") for i in self.ip}
        self.nd = {j: m.new_int_var(0, gpus // dec[j].gpus_per_instance, f"nd{j}") for j in self.jd}
        m.add_exactly_one(self.up.values())
        m.add_exactly_one(self.ud.values())
        for x, u, big in [(self.np[i], self.up[i], gpus // pre[i].gpus_per_instance) for i in self.ip] + \
                         [(self.nd[j], self.ud[j], gpus // dec[j].gpus_per_instance) for j in self.jd]:
            m.add(x <= big * u)
            m.add(x >= u)
        for i in self.ip:                        # one engine configuration per pair
            for j in self.jd:
                if pre[i].group != dec[j].group or (pre[i].key, dec[j].key) in excluded:
                    m.add_bool_or([self.up[i].Not(), self.ud[j].Not()])
        self.gp = sum(pre[i].gpus_per_instance * self.np[i] for i in self.ip)
        self.gd = sum(dec[j].gpus_per_instance * self.nd[j] for j in self.jd)
        m.add(self.gp + self.gd <= gpus)
        self.mp, self.md = m.new_int_var(0, num_nodes, "mp"), m.new_int_var(0, num_nodes, "md")
        for i in self.ip:                        # sizes that do not nest: whole nodes for each pool
            for j in self.jd:
                if not nested(pre[i].gpus_per_instance, dec[j].gpus_per_instance):
                    both = [self.up[i], self.ud[j]]
                    m.add(self.mp * gpn >= self.gp).only_enforce_if(both)
                    m.add(self.md * gpn >= self.gd).only_enforce_if(both)
                    m.add(self.mp + self.md <= num_nodes).only_enforce_if(both)
        self.rp = sum(_gp_int(pre[i].rate_rps) * self.np[i] for i in self.ip)
        self.rd = sum(_gp_int(dec[j].rate_rps) * self.nd[j] for j in self.jd)
        top = sum(_gp_int(c.rate_rps) * (gpus // c.gpus_per_instance) for c in list(pre) + list(dec)) + 1
        self.cap = m.new_int_var(0, top, "cap")
        m.add(self.cap <= self.rp)
        m.add(self.cap <= self.rd)
        m.add(self.rp >= _demand_int(demand_rps))
        m.add(self.rd >= _demand_int(demand_rps))
        if fix_gpus is not None:
            m.add(self.gp + self.gd == fix_gpus)
        if fix_cap is not None:
            m.add(self.cap >= fix_cap)

    def solve(self, expr, maximize: bool, time_limit_s: float, seed: int):
        from ortools.sat.python import cp_model
        (self.m.maximize if maximize else self.m.minimize)(expr)
        s = cp_model.CpSolver()
        s.parameters.num_workers = 1
        s.parameters.random_seed = seed
        s.parameters.max_deterministic_time = time_limit_s
        s.parameters.max_time_in_seconds = 4 * time_limit_s     # wall-clock safety net
        if s.solve(self.m) not in (cp_model.OPTIMAL, cp_model.FEASIBLE):
            return None
        i = next(i for i in self.ip if s.value(self.up[i]))
        j = next(j for j in self.jd if s.value(self.ud[j]))
        return i, s.value(self.np[i]), j, s.value(self.nd[j]), s.value(self.cap)


def _choice(pre, dec, got, gpn) -> PoolChoice:
    i, n_p, j, n_d, _ = got
    sp, sd = pre[i].gpus_per_instance, dec[j].gpus_per_instance
    gp, gd = n_p * sp, n_d * sd
    fp, fd = placement(gp, sp, gd, sd, gpn)
    return PoolChoice(pre[i].key, n_p, dec[j].key, n_d, gp + gd, _spanned(fp, gp, gpn), _spanned(fd, gd, gpn),
                      n_p * pre[i].rate_rps, n_d * dec[j].rate_rps, fp, fd)


def _best(pre, dec, num_nodes, gpn, demand_rps, objective, excluded, time_limit_s, seed):
    first = _PoolModel(pre, dec, num_nodes, gpn, demand_rps, excluded)
    if not first.ip or not first.jd:
        return None
    if objective == "throughput":
        got = first.solve(first.cap, True, time_limit_s, seed)
        if got is None:
            return None
        second = _PoolModel(pre, dec, num_nodes, gpn, demand_rps, excluded, fix_cap=got[4])
        return second.solve(second.gp + second.gd, False, time_limit_s, seed) or got
    got = first.solve(first.gp + first.gd, False, time_limit_s, seed)
    if got is None:
        return None
    gpus = got[1] * pre[got[0]].gpus_per_instance + got[3] * dec[got[2]].gpus_per_instance
    second = _PoolModel(pre, dec, num_nodes, gpn, demand_rps, excluded, fix_gpus=gpus)
    return second.solve(second.cap, True, time_limit_s, seed) or got


def size_pools(prefill: Sequence[RoleCandidate], decode: Sequence[RoleCandidate], *, num_nodes: int,
               gpus_per_node: int, demand_rps: float | None, objective: str = "gpus", top_k: int = 1,
               time_limit_s: float = 2.0, seed: int = 0) -> list[PoolChoice]:
    """Up to `top_k` pool sizings, each a different (prefill plan, decode plan) pair, best first;
    [] when no pair covers the demand on the cluster. `objective`: 'gpus' or 'throughput'
    (others rank their verified deployments later; the pools are sized for fewest GPUs)."""
    objective = objective if objective in POOL_OBJECTIVES else "gpus"
    if demand_rps is None:
        objective = "throughput"
    out: list[PoolChoice] = []
    excluded: set[tuple[str, str]] = set()
    for _ in range(top_k):
        got = _best(list(prefill), list(decode), num_nodes, gpus_per_node, demand_rps, objective, excluded,
                    time_limit_s, seed)
        if got is None:
            break
        c = _choice(prefill, decode, got, gpus_per_node)
        out.append(c)
        excluded.add((c.prefill, c.decode))
    return out


def brute_force_pools(prefill: Sequence[RoleCandidate], decode: Sequence[RoleCandidate], *, num_nodes: int,
                      gpus_per_node: int, demand_rps: float | None, objective: str = "gpus") -> PoolChoice | None:
    """The best sizing by enumerating every pair and instance count (tests' reference)."""
    best, best_key = None, None
    for i, p in enumerate(prefill):
        for j, d in enumerate(decode):
            if p.group != d.group or not (_placeable(p.gpus_per_instance, gpus_per_node)
                                          and _placeable(d.gpus_per_instance, gpus_per_node)):
                continue
            for n_p in range(1, num_nodes * gpus_per_node // p.gpus_per_instance + 1):
                for n_d in range(1, num_nodes * gpus_per_node // d.gpus_per_instance + 1):
                    gp, gd = n_p * p.gpus_per_instance, n_d * d.gpus_per_instance
                    if not fits(gp, p.gpus_per_instance, gd, d.gpus_per_instance, num_nodes, gpus_per_node):
                        continue
                    rp, rd = _gp_int(p.rate_rps) * n_p, _gp_int(d.rate_rps) * n_d
                    if min(rp, rd) < _demand_int(demand_rps):
                        continue
                    key = (-min(rp, rd), gp + gd) if objective == "throughput" or demand_rps is None \
                        else (gp + gd, -min(rp, rd))
                    if best_key is None or key < best_key:
                        best_key, best = key, _choice(prefill, decode, (i, n_p, j, n_d, min(rp, rd)), gpus_per_node)
    return best
