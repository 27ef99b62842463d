"""Exact deployment choice by enumerating replica vectors: used instead of CP-SAT when a problem is
small (it is exact and spares loading the solver), and by tests as the reference."""

from __future__ import annotations

import itertools
from typing import Sequence

from apex_plan.rank.problem import (Deployment, _deployment, _metrics, _Problem, meets_demand, objective_key,
                                    within_power)


def _pack_pool(p: _Problem, r: Sequence[int], q: int) -> list[list[int]] | None:
    """A placement of the replicas of pool q's candidates on that pool's nodes, or None."""
    pool = p.pools[q]
    g = pool.gpus_per_node
    placement: list[list[int]] = [[] for _ in range(pool.num_nodes)]
    node = 0
    for i, k in enumerate(r):
        size = p.cands[i].gpus_per_replica
        if k and size > g and p.cands[i].pool == q:
            for _ in range(k * (size // g)):
                if node >= pool.num_nodes:
                    return None
                placement[node].append(i)
                node += 1
    items = sorted((i for i, k in enumerate(r) for _ in range(k)
                    if p.cands[i].pool == q and p.cands[i].gpus_per_replica <= g),
                   key=lambda i: -p.cands[i].gpus_per_replica)
    free = [g] * (pool.num_nodes - node)

    def place(j: int) -> bool:
        if j == len(items):
            return True
        size, tried = p.cands[items[j]].gpus_per_replica, set()
        for b in range(len(free)):
            if free[b] >= size and free[b] not in tried:
                tried.add(free[b])
                free[b] -= size
                placement[node + b].append(items[j])
                if place(j + 1):
                    return True
                free[b] += size
                placement[node + b].pop()
        return False

    return [sorted(n) for n in placement] if place(0) else None


def _pack(p: _Problem, r: Sequence[int]) -> list[list[int]] | None:
    """A placement of replica vector r on the nodes of every pool (pools in order), or None."""
    out: list[list[int]] = []
    for q in range(len(p.pools)):
        part = _pack_pool(p, r, q)
        if part is None:
            return None
        out.extend(part)
    return out


EXHAUSTIVE_MAX_VECTORS = 4096       # replica vectors enumerated instead of calling CP-SAT


def _vectors(p: _Problem) -> int:
    n = 1
    for i in p.usable:
        n *= p.max_replicas(i) + 1
        if n > EXHAUSTIVE_MAX_VECTORS:
            break
    return n


def _exhaustive(p: _Problem, top_k: int) -> list[Deployment]:
    usable, homogeneous = p.usable, p.homogeneous
    capacity = {q: pool.num_nodes * pool.gpus_per_node for q, pool in enumerate(p.pools)}
    ranked = []
    for counts in itertools.product(*(range(p.max_replicas(i) + 1) for i in usable)):
        r = [0] * len(p.cands)
        for i, k in zip(usable, counts):
            r[i] = k
        used = sum(1 for k in r if k)
        if used == 0 or (homogeneous and used > 1):
            continue
        per_pool = {q: 0 for q in capacity}
        for i, k in enumerate(r):
            per_pool[p.cands[i].pool] += p.cands[i].gpus_per_replica * k
        if any(per_pool[q] > capacity[q] for q in capacity) or not within_power(p, r):
            continue
        m = _metrics(p, r)
        if not meets_demand(m["goodput"], p.demand_rps):
            continue
        ranked.append((objective_key(p.objective, m), tuple(r)))
    ranked.sort()
    out, seen = [], set()
    for _, r in ranked:
        sig = p.group_set(r) if p.groups is not None else r
        if sig in seen:
            continue
        placement = _pack(p, r)
        if placement is None:
            continue
        seen.add(sig)
        out.append(_deployment(p, r, placement))
        if len(out) == top_k:
            break
    return out
