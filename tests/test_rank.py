"""Deployment choice: CP-SAT against brute force, packing, demand, top-K, infeasibility."""

from __future__ import annotations

import random

import pytest

from apex_plan.errors import InputError
from apex_plan.rank.deploy import (
    DeployQuery,
    OBJECTIVES,
    Candidate,
    brute_force_deployments,
    closest_deployment,
    meets_demand,
    solve_deployments,
)

NODES, PER_NODE, PRICE = 2, 4, 2.5


def key(dep, objective):
    """The lexicographic key a deployment is ranked by (mirrors the documented objectives)."""
    return {
        "gpus": (dep.gpus, dep.energy_j_per_request),
        "cost": (dep.cost_per_hour, dep.gpus, dep.energy_j_per_request),
        "energy": (dep.energy_j_per_request, dep.gpus),
        "latency": (dep.ttft_p90_s, dep.tpot_p90_s, dep.gpus),
        "throughput": (-dep.goodput_rps, dep.gpus),
    }[objective]


def check_valid(dep, cands, demand):
    by_key = {c.key: (i, c) for i, c in enumerate(cands)}
    counts = dict(dep.replicas)
    assert all(k > 0 for k in counts.values())
    assert list(dep.replicas) == sorted(dep.replicas)
    assert dep.gpus == sum(by_key[k][1].gpus_per_replica * n for k, n in counts.items()) <= NODES * PER_NODE
    assert dep.goodput_rps == pytest.approx(sum(by_key[k][1].goodput_rps * n for k, n in counts.items()))
    assert meets_demand(dep.goodput_rps, demand)
    if demand is not None:
        assert dep.goodput_rps >= demand * (1 - 1e-9)
    assert len(dep.placement) == NODES
    seen = {}
    for node in dep.placement:
        small = [i for i in node if cands[i].gpus_per_replica <= PER_NODE]
        assert sum(cands[i].gpus_per_replica for i in small) <= PER_NODE
        if len(small) != len(node):        # a node taken by a multi-node replica holds only it
            assert len(node) == 1
        for i in node:
            seen[i] = seen.get(i, 0) + 1
    for k, n in counts.items():
        i, c = by_key[k]
        assert seen.get(i, 0) == n * max(1, c.gpus_per_replica // PER_NODE)
        assert c.gpus_per_replica <= PER_NODE or c.gpus_per_replica % PER_NODE == 0


def random_case(rng: random.Random):
    cands = []
    for j in range(rng.choice([2, 3])):
        cands.append(Candidate(
            key=f"c{j}",
            gpus_per_replica=rng.choice([1, 2, 2, 3, 4, 8, 6]),
            goodput_rps=rng.choice([0.0] + [round(rng.uniform(0.5, 6.0), 3)] * 6),
            energy_j_per_request=round(rng.uniform(5.0, 50.0), 3),
            ttft_p90_s=round(rng.uniform(0.1, 2.0), 3),
            tpot_p90_s=round(rng.uniform(0.01, 0.1), 3),
        ))
    demand = rng.choice([None, round(rng.uniform(0.5, 14.0), 3), round(rng.uniform(0.5, 6.0), 3)])
    return cands, demand


def approx_keys(keys):
    return [pytest.approx(k, rel=1e-6, abs=1e-9) for k in keys]


@pytest.mark.parametrize("seed", range(16))
def test_cp_sat_matches_brute_force(seed):
    rng = random.Random(seed)
    cands, demand = random_case(rng)
    for objective in OBJECTIVES:
        for homogeneous in (False, True):
            kw = dict(num_nodes=NODES, gpus_per_node=PER_NODE, price_per_gpu_hour=PRICE,
                      demand_rps=demand, objective=objective, homogeneous=homogeneous, top_k=3)
            got = solve_deployments(cands, DeployQuery(method="cp-sat", **kw))
            want = brute_force_deployments(cands, DeployQuery(**kw))
            assert len(got) == len(want), (objective, homogeneous)
            assert [key(d, objective) for d in got] == approx_keys([key(d, objective) for d in want])
            if got:
                assert got[0].objective_value == pytest.approx(want[0].objective_value, rel=1e-6)
            assert len({d.replicas for d in got}) == len(got)
            keys = [key(d, objective) for d in got]
            assert keys == sorted(keys)
            for d in got:
                check_valid(d, cands, demand)
                if homogeneous:
                    assert len(d.replicas) == 1


CANDS = [
    Candidate("tp1", 1, 1.234, 12.0, 0.50, 0.050),
    Candidate("tp2", 2, 3.1, 8.0, 0.30, 0.040),
    Candidate("tp4pp2", 8, 15.0, 6.0, 0.20, 0.030),
]


def test_top_k_distinct_and_ordered():
    deps = solve_deployments(CANDS, DeployQuery(num_nodes=NODES, gpus_per_node=PER_NODE, demand_rps=6.0,
                             objective="gpus", top_k=6))
    assert len(deps) == 6 and len({d.replicas for d in deps}) == 6
    values = [d.objective_value for d in deps]
    assert values == sorted(values) and values[0] == 4            # two tp2 replicas
    assert deps[0].replicas == (("tp2", 2),)
    through = solve_deployments(CANDS, DeployQuery(num_nodes=NODES, gpus_per_node=PER_NODE,
                                objective="throughput", top_k=3))
    assert [d.objective_value for d in through] == sorted((d.objective_value for d in through), reverse=True)
    assert through[0].replicas == (("tp4pp2", 1),) and through[0].placement == ((2,), (2,))


def test_knife_edge_demand_is_met_exactly():
    # 2 x 1.234 == 2.468 in floats: must be accepted, and 2.4681 must not be
    deps = solve_deployments(CANDS[:1], DeployQuery(num_nodes=NODES, gpus_per_node=PER_NODE, demand_rps=2.468))
    assert deps and deps[0].replicas == (("tp1", 2),)
    deps = solve_deployments(CANDS[:1], DeployQuery(num_nodes=NODES, gpus_per_node=PER_NODE, demand_rps=2.4681))
    assert deps[0].replicas == (("tp1", 3),)


def test_energy_and_cost_objectives():
    energy = solve_deployments(CANDS, DeployQuery(num_nodes=NODES, gpus_per_node=PER_NODE, demand_rps=6.0,
                               objective="energy"))
    assert energy[0].replicas == (("tp4pp2", 1),) and energy[0].objective_value == pytest.approx(6.0)
    cost = solve_deployments(CANDS, DeployQuery(num_nodes=NODES, gpus_per_node=PER_NODE, price_per_gpu_hour=PRICE,
                             demand_rps=6.0, objective="cost"))
    assert cost[0].objective_value == pytest.approx(4 * PRICE) == cost[0].cost_per_hour


def test_mixed_energy_is_capacity_weighted():
    deps = solve_deployments(CANDS[:2], DeployQuery(num_nodes=1, gpus_per_node=4, demand_rps=4.3, objective="gpus"))
    d = deps[0]
    assert d.replicas == (("tp1", 1), ("tp2", 1))
    assert d.energy_j_per_request == pytest.approx((1.234 * 12 + 3.1 * 8) / (1.234 + 3.1))


def test_latency_picks_fastest_then_fewest_gpus():
    deps = solve_deployments(CANDS, DeployQuery(num_nodes=NODES, gpus_per_node=PER_NODE, demand_rps=5.0,
                             objective="latency", homogeneous=True, top_k=2))
    assert deps[0].replicas == (("tp4pp2", 1),) and deps[0].objective_value == pytest.approx(0.2)
    assert deps[1].replicas == (("tp2", 2),)   # next worst TTFT 0.3 s with the fewest GPUs


def test_infeasible_demand_and_closest():
    kw = dict(num_nodes=NODES, gpus_per_node=PER_NODE, price_per_gpu_hour=PRICE)
    assert solve_deployments(CANDS, DeployQuery(demand_rps=100.0, **kw)) == []
    assert brute_force_deployments(CANDS, DeployQuery(demand_rps=100.0, **kw)) == []
    close = closest_deployment(CANDS, DeployQuery(demand_rps=100.0, **kw))
    assert close.deployment.replicas == (("tp4pp2", 1),)
    assert close.shortfall_rps == pytest.approx(85.0)
    homo = closest_deployment(CANDS[:2], DeployQuery(demand_rps=100.0, homogeneous=True, **kw))
    assert homo.deployment.replicas == (("tp2", 4),) and homo.shortfall_rps == pytest.approx(100 - 12.4)
    none = closest_deployment([Candidate("slow", 2, 0.0, 1.0, 9.0, 1.0)], DeployQuery(demand_rps=1.0, **kw))
    assert none.deployment is None and none.shortfall_rps == 1.0


def test_unplaceable_and_zero_goodput_candidates_never_used():
    cands = [Candidate("six", 6, 50.0, 1.0, 0.1, 0.01),     # 6 GPUs: 1.5 nodes of 4
             Candidate("dead", 1, 0.0, 1.0, 0.1, 0.01),
             Candidate("ok", 4, 2.0, 9.0, 0.5, 0.05)]
    deps = solve_deployments(cands, DeployQuery(num_nodes=NODES, gpus_per_node=PER_NODE, demand_rps=3.0, top_k=5))
    assert [d.replicas for d in deps] == [(("ok", 2),)]


def test_deterministic_and_validates_objective():
    kw = dict(num_nodes=NODES, gpus_per_node=PER_NODE, demand_rps=6.0, objective="energy", top_k=4)
    assert solve_deployments(CANDS, DeployQuery(**kw)) == solve_deployments(CANDS, DeployQuery(**kw))
    with pytest.raises(InputError, match="did you mean 'energy'"):
        solve_deployments(CANDS, DeployQuery(num_nodes=1, gpus_per_node=8, objective="enrgy"))


def test_larger_cluster_solves_quickly():
    import time
    rng = random.Random(7)
    cands = [Candidate(f"p{j}", rng.choice([1, 2, 4, 8, 16]), round(rng.uniform(1, 40), 3),
                       round(rng.uniform(5, 60), 3), round(rng.uniform(0.1, 2), 3), 0.05)
             for j in range(40)]
    for objective in OBJECTIVES:
        t0 = time.perf_counter()
        deps = solve_deployments(cands, DeployQuery(num_nodes=16, gpus_per_node=8, demand_rps=400.0,
                                 objective=objective, top_k=3, time_limit_s=2.0))
        assert deps and time.perf_counter() - t0 < 30
        for d in deps:
            assert d.gpus <= 128 and d.goodput_rps >= 400.0 * (1 - 1e-9)


@pytest.mark.parametrize("seed", range(6))
def test_layout_groups_make_top_k_differ_in_plan(seed):
    rng = random.Random(100 + seed)
    cands, demand = random_case(rng)
    groups = [i // 2 for i in range(len(cands))]          # pairs of candidates are one layout
    for objective in ("gpus", "throughput"):
        kw = dict(num_nodes=NODES, gpus_per_node=PER_NODE, demand_rps=demand, objective=objective, top_k=3,
                  groups=groups)
        got = solve_deployments(cands, DeployQuery(method="cp-sat", **kw))
        want = brute_force_deployments(cands, DeployQuery(**kw))
        assert [key(d, objective) for d in got] == approx_keys([key(d, objective) for d in want])
        index = {c.key: i for i, c in enumerate(cands)}
        sets = [frozenset(groups[index[k]] for k, _ in d.replicas) for d in got]
        assert len(set(sets)) == len(sets)                 # no two share the same set of layouts
        assert solve_deployments(cands, DeployQuery(**kw)) == want      # small: the exhaustive path answers
