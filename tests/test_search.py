"""The plan search: deployments fit and meet the SLO in their own simulation, symmetry pruning
never changes the winner, the JSON validates against the shipped schema and is reproducible."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import pytest

from apex_plan.hardware.load import load_gpu, make_cluster
from apex_plan.model.load import load_model
from apex_plan.plan.spec import EngineConfig
from apex_plan.search.capacity import meets_slo
from apex_plan.search.pipeline import SearchInputs, run_search, verify_deployment
from apex_plan.simulate.run import simulate
from apex_plan.workload.spec import Slo, Workload
from apex_plan.workload.synthetic import preset_trace

SCHEMA = Path(__file__).resolve().parents[1] / "apex_plan" / "report" / "search_schema.json"


def _inputs(gpus=4, per_node=2, rate=4.0, slo=Slo(0.5, 0.05, 90.0), objective="gpus", prune=True, homogeneous=False):
    model = load_model("llama-3.1-8b")
    cluster = make_cluster(load_gpu("h100-sxm-80gb"), gpus, per_node)
    trace = preset_trace("chat", 1.0, num_requests=300, seed=3)
    return SearchInputs(model, cluster, trace, rate, slo, ("bf16",), ("bf16",),
                        (EngineConfig(gpu_memory_utilization=0.9, max_model_len=8192, name="vllm@0.6.0"),), objective, homogeneous,
                        3, False, prune, None)


@pytest.fixture(scope="module")
def result():
    return run_search(_inputs())


def test_deployments_fit_cluster_and_meet_slo_in_their_own_simulation(result):
    inp = result.inputs
    assert result.deployments, result.binding
    by_key = {e.key: e for e in result.plans}
    for d in result.deployments:
        dep = d.deployment
        assert dep.gpus <= inp.cluster.num_gpus
        assert dep.gpus == sum(by_key[k].plan.gpus_per_replica * n for k, n in dep.replicas)
        assert dep.goodput_rps >= inp.demand_rps * (1 - 1e-9)
        # node packing: no node holds more GPUs than it has
        assert len(d.placement) <= inp.cluster.num_nodes
        placed = {}
        for node in d.placement:
            used = sum(by_key[k].plan.gpus_per_replica for k in node)
            assert used <= inp.cluster.gpus_per_node
            for k in node:
                placed[k] = placed.get(k, 0) + 1
        for k, n in dep.replicas:     # a replica larger than a node is listed on each of its nodes
            per = max(1, by_key[k].plan.gpus_per_replica // inp.cluster.gpus_per_node)
            assert placed[k] == n * per
        # re-simulate the deployment from scratch and check the SLO holds there too
        again = verify_deployment(inp, dep, by_key, inp.demand_rps)
        assert again.verified and again.metrics_dict()["slo_met"] and again.metrics.slo.met
        assert d.verified


def test_homogeneous_single_plan_deployment_meets_slo_with_dp_replicas(result):
    inp = result.inputs
    d = result.deployments[0]
    if len(d.deployment.replicas) != 1:
        pytest.skip("top deployment mixes plans")
    key, n = d.deployment.replicas[0]
    ev = next(e for e in result.plans if e.key == key)
    plan = dataclasses.replace(ev.plan, dp=n)
    from apex_plan.search.capacity import scaled_trace
    res = simulate(inp.model, inp.cluster, plan, dataclasses.replace(ev.engine_cfg, max_model_len=ev.engine.max_model_len),
                   Workload(scaled_trace(inp.trace, inp.demand_rps)), inp.slo)
    assert meets_slo(res.metrics, inp.slo)


def test_symmetry_pruning_never_changes_the_winner():
    on = run_search(_inputs(prune=True))
    off = run_search(_inputs(prune=False))
    assert off.stats["candidates"] > on.stats["candidates"]          # pruning removed duplicates
    assert on.stats["enumerated"] == off.stats["enumerated"]
    base = lambda key: key.split(" #")[0]  # noqa: E731  (duplicates of one plan are numbered "#2", "#3", ...)
    top_on, top_off = on.deployments[0], off.deployments[0]
    assert [(base(k), n) for k, n in top_on.deployment.replicas] == [(base(k), n) for k, n in top_off.deployment.replicas]
    assert top_on.deployment.objective_value == pytest.approx(top_off.deployment.objective_value)
    ok_on = [(e.key, round(e.goodput_rps, 9)) for e in on.plans if e.status == "ok"]
    ok_off = sorted(set((base(e.key), round(e.goodput_rps, 9)) for e in off.plans if e.status == "ok"))
    assert sorted(ok_on) == ok_off


def test_more_demand_never_needs_fewer_gpus():
    gpus = []
    for rate in (1.0, 8.0, 30.0):
        r = run_search(_inputs(rate=rate, gpus=8, per_node=8))
        assert r.deployments, r.binding
        gpus.append(r.deployments[0].deployment.gpus)
    assert gpus == sorted(gpus)


def test_impossible_slo_reports_binding_constraint():
    r = run_search(_inputs(slo=Slo(0.5, 0.001, 90.0)))
    assert r.deployments == []
    assert "TPOT" in r.binding
    assert all(e.status in ("screened", "infeasible") for e in r.plans)
    assert any(e.reason for e in r.plans)


def test_demand_beyond_cluster_reports_closest():
    r = run_search(_inputs(rate=10_000.0))
    assert r.deployments == []
    assert r.closest is not None and r.closest.shortfall_rps > 0
    assert "demand" in r.binding


def _cli_json(tmp_path: Path, name: str) -> bytes:
    out = tmp_path / name
    cmd = [sys.executable, "-m", "apex_plan", "search", "--model", "llama-3.1-8b", "--gpu", "h100-sxm-80gb",
           "--gpus", "4", "--workload", "chat", "--rate", "3", "--num-requests", "200", "--max-model-len", "8192",
           "--ttft-slo", "500ms", "--tpot-slo", "50ms", "--all", "--format", "json", "--output", str(out)]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    return out.read_bytes()


def test_json_validates_against_schema_and_is_reproducible(tmp_path):
    jsonschema = pytest.importorskip("jsonschema")
    a = _cli_json(tmp_path, "a.json")
    b = _cli_json(tmp_path, "b.json")
    assert a == b
    doc = json.loads(a)
    jsonschema.validate(doc, json.loads(SCHEMA.read_text()))
    assert doc["deployments"] and doc["deployments"][0]["verified"]
    assert len(doc["plans"]) == doc["statistics"]["candidates"]          # --all lists every plan
    assert all(p["reason"] for p in doc["plans"] if p["status"] != "ok")  # with the reason it is out
