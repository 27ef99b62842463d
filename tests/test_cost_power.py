"""Fleets of node groups, the cost objective, $/Mtok arithmetic, power caps and SM clocks."""

from __future__ import annotations

import dataclasses
import json
import random
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from apex_plan.errors import InputError
from apex_plan.hardware.fleet import load_fleet, load_prices, priced
from apex_plan.hardware.load import load_cluster, load_gpu, make_cluster
from apex_plan.hardware.power import OperatingPoint, at_clock, hbm_power_w, power_w
from apex_plan.model.load import load_model
from apex_plan.search.results import WindowEnergy, WindowThroughput
from apex_plan.plan.spec import EngineConfig, Plan
from apex_plan.rank.deploy import Candidate, DeployQuery, Pool, brute_force_deployments, solve_deployments
from apex_plan.report.economics import deployment_economics, usd_per_mtok
from apex_plan.search.pipeline import SearchInputs, run_search
from apex_plan.simulate.run import simulate
from apex_plan.workload.spec import Slo, Trace, Workload
from apex_plan.workload.synthetic import preset_trace
from test_cli import assert_one_line_error, run_main

ROOT = Path(__file__).resolve().parents[1]
H100 = load_gpu("h100-sxm-80gb")


# ---------------------------------------------------------------- rank: pools, prices, power budget

def _random_pools_case(rng: random.Random):
    pools = [Pool(rng.choice([1, 2]), rng.choice([2, 4]), round(rng.uniform(1.0, 4.0), 2), f"g{q}") for q in range(2)]
    cands = []
    for j in range(rng.choice([2, 3, 4])):
        q = rng.randrange(2)
        cands.append(Candidate(f"c{j}", rng.choice([1, 2, 4]), round(rng.uniform(0.5, 6.0), 3),
                               round(rng.uniform(5.0, 50.0), 3), round(rng.uniform(0.1, 2.0), 3),
                               round(rng.uniform(0.01, 0.1), 3), pool=q, power_w=round(rng.uniform(200, 3000), 1)))
    demand = round(rng.uniform(0.5, 12.0), 3)
    budget = rng.choice([None, round(rng.uniform(1000, 12000), 1)])
    return cands, pools, demand, budget


@pytest.mark.parametrize("seed", range(12))
def test_cp_sat_matches_brute_force_on_node_groups(seed):
    cands, pools, demand, budget = _random_pools_case(random.Random(seed))
    for objective in ("cost", "gpus", "energy", "throughput"):
        kw = dict(pools=pools, demand_rps=None if objective == "throughput" else demand, objective=objective,
                  max_power_w=budget, top_k=2)
        got = solve_deployments(cands, DeployQuery(method="cp-sat", **kw))
        want = brute_force_deployments(cands, DeployQuery(**kw))
        assert [d.objective_value for d in got] == pytest.approx([d.objective_value for d in want], rel=1e-6)
        for d in got:
            by = {c.key: c for c in cands}
            # each group holds at most its GPUs; the placement lists every node of every group
            for q, pool in enumerate(pools):
                assert sum(by[k].gpus_per_replica * n for k, n in d.replicas if by[k].pool == q) \
                    <= pool.num_nodes * pool.gpus_per_node
            assert len(d.placement) == sum(p.num_nodes for p in pools)
            if budget is not None:
                assert d.power_w <= budget * (1 + 1e-9)


def test_cost_is_exact_sum_of_gpus_times_group_price():
    pools = [Pool(1, 8, 2.49, "h100"), Pool(1, 8, 3.71, "h200")]
    cands = [Candidate("a", 2, 3.0, 10.0, 0.1, 0.02, pool=0), Candidate("b", 2, 4.0, 10.0, 0.1, 0.02, pool=1)]
    d = solve_deployments(cands, DeployQuery(pools=pools, demand_rps=20.0, objective="cost"))[0]
    counts = dict(d.replicas)
    # 4 x a fills the H100 node (12 req/s); 2 x b brings 8 more: 8 x 2.49 + 4 x 3.71 USD/h
    assert counts == {"a": 4, "b": 2}
    assert d.cost_per_hour == pytest.approx(8 * 2.49 + 4 * 3.71, abs=1e-12)
    assert d.objective_value == d.cost_per_hour


def test_equal_prices_cost_objective_picks_the_gpu_count_optimum():
    rng = random.Random(7)
    for _ in range(10):
        cands, pools, demand, _ = _random_pools_case(rng)
        pools = [dataclasses.replace(p, price_per_gpu_hour=2.5) for p in pools]
        by_cost = solve_deployments(cands, DeployQuery(pools=pools, demand_rps=demand, objective="cost"))
        by_gpus = solve_deployments(cands, DeployQuery(pools=pools, demand_rps=demand, objective="gpus"))
        assert bool(by_cost) == bool(by_gpus)
        if by_cost:
            assert by_cost[0].gpus == by_gpus[0].gpus
            assert by_cost[0].cost_per_hour == pytest.approx(2.5 * by_gpus[0].gpus)


def test_cost_objective_without_price_is_refused():
    with pytest.raises(InputError, match="price"):
        solve_deployments([Candidate("a", 1, 1.0, 1.0, 0.1, 0.01)], DeployQuery(pools=[Pool(1, 8, None, "h100")],
                          demand_rps=0.5, objective="cost"))
    # other objectives run and report no price rather than 0
    d = solve_deployments([Candidate("a", 1, 1.0, 1.0, 0.1, 0.01)], DeployQuery(pools=[Pool(1, 8, None)], demand_rps=0.5))[0]
    assert d.cost_per_hour is None


def test_power_budget_binds():
    cands = [Candidate("fast", 2, 4.0, 10.0, 0.1, 0.02, power_w=1400.0),
             Candidate("lean", 2, 3.0, 6.0, 0.1, 0.02, power_w=800.0)]
    free = solve_deployments(cands, DeployQuery(num_nodes=1, gpus_per_node=8, demand_rps=8.0, objective="gpus"))[0]
    assert dict(free.replicas) == {"fast": 2}
    capped = solve_deployments(cands, DeployQuery(num_nodes=1, gpus_per_node=8, demand_rps=8.0, objective="gpus", max_power_w=2500))[0]
    assert capped.power_w <= 2500 and dict(capped.replicas) == {"lean": 3}
    assert solve_deployments(cands, DeployQuery(num_nodes=1, gpus_per_node=8, demand_rps=8.0, max_power_w=1000)) == []


# ---------------------------------------------------------------- $/Mtok arithmetic

def test_usd_per_mtok_exact():
    # $16/h for 1000 output tokens/s: 3.6 Mtok per hour -> 16 / 3.6 $/Mtok
    assert usd_per_mtok(16.0, 1000.0) == 16.0 / 3.6
    assert usd_per_mtok(0.0, 1000.0) == 0.0
    assert usd_per_mtok(None, 1000.0) is None


def test_deployment_economics_exact():
    class Mix:
        mean_prompt, mean_output = 500.0, 200.0

    dep = solve_deployments([Candidate("a", 2, 3.0, 10.0, 0.1, 0.02, power_w=900.0)], DeployQuery(pools=[Pool(1, 8, 2.0)],
                            demand_rps=5.0))[0]

    class Dv:
        deployment = dep
        metrics = SimpleNamespace(throughput=WindowThroughput(1000.0, 4.0, 2500.0),
                                  energy=WindowEnergy(240.0, 1.2, 1200.0))

    ec = deployment_economics(Dv, Mix)
    assert ec.cost_per_hour == 8.0                                   # 2 replicas x 2 GPUs x $2
    assert ec.usd_per_mtok_output_at_demand == 8.0 / 3.6
    assert ec.usd_per_mtok_input_at_demand == 8.0 / 9.0
    assert ec.usd_per_mtok_output_at_capacity == 8.0 / (6.0 * 200.0 * 3600 / 1e6)
    assert ec.mean_power_w_at_capacity == 1800.0


# ---------------------------------------------------------------- power model and clocks

def test_power_model_anchors_and_monotonicity():
    assert power_w(H100, 1830, 1.0) == H100.tdp_w
    assert power_w(H100, 1830, 0.0) == H100.idle_w
    watts = [power_w(H100, f, 0.7) for f in range(810, 1831, 15)]
    assert watts == sorted(watts)
    assert 0 < hbm_power_w(H100) < H100.tdp_w - H100.idle_w
    slow = at_clock(H100, 1410)
    assert slow.peak_tflops["bf16"] == pytest.approx(989.4 * 1410 / 1830)
    assert slow.mem_bw_gbps == H100.mem_bw_gbps and slow.tdp_w < H100.tdp_w
    assert at_clock(H100, 1830) is H100


def _sim(gpu, trace):
    model = load_model("llama-3.1-8b")
    cluster = make_cluster(gpu, 1, 1)
    return simulate(model, cluster, Plan(tp=1), EngineConfig(max_model_len=8192), Workload(trace),
                    Slo(1.0, 0.1, 90.0))


def test_energy_never_decreases_when_the_same_work_runs_slower_at_the_same_power():
    # the same work: one batch of 16 requests arriving together, so every step holds the same
    # sequences whatever the speed (an open-loop trace would batch differently on a slower GPU)
    n = 16
    trace = Trace(np.zeros(n), np.full(n, 300, np.int64), np.full(n, 64, np.int64), "batch")
    base = _sim(H100, trace)
    for factor in (0.8, 0.5):
        slower = dataclasses.replace(H100, peak_tflops={k: v * factor for k, v in H100.peak_tflops.items()})
        res = _sim(slower, trace)
        assert res.makespan_s >= base.makespan_s
        assert res.energy_j >= base.energy_j * (1 - 1e-12)


def _search(points=(OperatingPoint(),), objective="energy", fleet=None):
    model = load_model("llama-3.1-8b")
    cluster = make_cluster(H100, 2, 2)
    trace = preset_trace("chat", 1.0, num_requests=300, seed=3)
    return run_search(SearchInputs(model, cluster, trace, 4.0, Slo(0.5, 0.05, 90.0), ("bf16",), ("bf16",),
                                   (EngineConfig(gpu_memory_utilization=0.9, max_model_len=8192, name="vllm@0.6.0"),),
                                   objective, False, 2, False, True, None, fleet=fleet, points=points))


def test_cap_at_tdp_reproduces_todays_numbers_exactly():
    today = _search()
    capped = _search((OperatingPoint(power_cap_w=H100.tdp_w),))
    assert [tuple((k + "@700W", n) for k, n in d.deployment.replicas) for d in today.deployments] == \
        [d.deployment.replicas for d in capped.deployments]
    for a, b in zip(today.deployments, capped.deployments):
        assert json.dumps(a.metrics_dict(), sort_keys=True) == json.dumps(b.metrics_dict(), sort_keys=True)
    gp = {e.key: e.goodput_rps for e in today.plans}
    assert {e.key[:-len("@700W")]: e.goodput_rps for e in capped.plans} == gp


def test_lower_cap_lowers_clock_and_power_not_below_idle():
    res = _search((OperatingPoint(power_cap_w=700), OperatingPoint(power_cap_w=250)))
    ok = {e.key: e for e in res.plans if e.status in ("ok", "duplicate", "screened", "no_goodput")}
    for key, e in ok.items():
        if key.endswith("@250W") and key[:-5] + "@700W" in ok:
            full = ok[key[:-5] + "@700W"]
            assert e.clock_mhz <= full.clock_mhz
    for d in res.deployments:
        assert d.metrics.energy.mean_power_w >= H100.idle_w * d.deployment.gpus


# ---------------------------------------------------------------- cluster files and CLI

def test_old_cluster_file_is_one_group_unchanged():
    path = ROOT / "examples" / "cluster.yaml"
    fleet = load_fleet(path)
    assert len(fleet.groups) == 1 and fleet.groups[0].cluster == load_cluster(path)


def test_fleet_file_and_price_file(tmp_path):
    f = tmp_path / "fleet.yaml"
    f.write_text("name: f\ngroups:\n  - name: a\n    gpu: h100-sxm-80gb\n    nodes: 1\n    gpus_per_node: 8\n"
                 "  - name: b\n    gpu: h200-sxm-141gb\n    nodes: 2\n    gpus_per_node: 8\n    price_per_gpu_hour: 4\n"
                 "    power_cap_w: 600\n")
    fleet = priced(load_fleet(f), load_prices(ROOT / "examples" / "prices.yaml"))
    a, b = fleet.groups
    assert a.cluster.price_per_gpu_hour == load_prices(ROOT / "examples" / "prices.yaml")["h100-sxm-80gb"]
    assert b.cluster.price_per_gpu_hour == 4 and b.power_cap_w == 600 and fleet.num_gpus == 24
    with pytest.raises(InputError, match="cluster"):
        load_cluster(f)              # simulate takes one group


@pytest.mark.parametrize("text, field", [
    ("groups:\n  - name: a\n    gpu: h100-sxm-80gb\n    nodes: 1\n    gpus_per_node: 8\n    colour: red\n", "colour"),
    ("groups:\n  - name: a\n    gpu: h100-sxm-80gb\n    nodes: 1\n    gpus_per_node: 8\n"
     "  - name: a\n    gpu: h100-sxm-80gb\n    nodes: 1\n    gpus_per_node: 8\n", "name"),
    ("groups: []\n", "groups"),
    ("gpu: h100-sxm-80gb\ngroups: []\n", "gpu"),
    ("groups:\n  - name: a\n    gpu: h100-sxm-80gb\n    nodes: 1\n    gpus_per_node: 8\n    power_cap_w: -5\n", "power_cap_w"),
])
def test_bad_fleet_files(tmp_path, text, field):
    f = tmp_path / "bad.yaml"
    f.write_text(text)
    with pytest.raises(InputError) as e:
        load_fleet(f)
    assert field in str(e.value)


_BASE = ["search", "--model", "llama-3.1-8b", "--gpu", "h100-sxm-80gb", "--gpus", "2", "--workload", "chat",
         "--rate", "2", "--num-requests", "200", "--max-model-len", "8192"]


@pytest.mark.parametrize("extra, needles", [
    (["--objective", "cost"], ("price", "--prices")),
    (["--power-cap", "900W"], ("--power-cap", "200", "700")),
    (["--power-cap", "fast"], ("--power-cap", "500W")),
    (["--sm-clock", "5000MHz"], ("--sm-clock", "1980")),
    (["--max-power-kw", "-1"], ("--max-power-kw",)),
    (["--prices", "nowhere.yaml"], ("nowhere.yaml",)),
])
def test_bad_cost_and_power_options(capsys, monkeypatch, extra, needles):
    assert_one_line_error(*run_main(_BASE + extra, capsys, monkeypatch), *needles)


def test_power_cap_on_gpu_without_clock_ranges(capsys, monkeypatch):
    args = [a if a != "h100-sxm-80gb" else "b200-sxm-180gb" for a in _BASE] + ["--power-cap", "600W"]
    assert_one_line_error(*run_main(args, capsys, monkeypatch), "b200-sxm-180gb", "clocks")
