"""The demand-cover bound (`search.bounds.cannot_cover`): a plan no deployment on the cluster can carry
the demand with is skipped, and skipping it never changes the deployments, the closest one or their figures."""

from __future__ import annotations

import itertools
import json

import numpy as np
import pytest

from apex_plan.search.bounds import cannot_cover, cover_capacity_rps
from apex_plan.search.pipeline import run_search
from test_steady import _inputs


def _brute_capacity(gpus: int, best: dict[int, float]) -> float:
    """The most req/s any vector of whole replicas within `gpus` GPUs carries (enumerated)."""
    sizes = sorted(best)
    ranges = [range(gpus // s + 1) for s in sizes]
    return max(sum(n * best[s] for n, s in zip(v, sizes)) for v in itertools.product(*ranges)
               if sum(n * s for n, s in zip(v, sizes)) <= gpus)


@pytest.mark.parametrize("seed", range(20))
def test_cover_capacity_equals_enumeration(seed):
    rng = np.random.default_rng(seed)
    sizes = sorted(set(int(x) for x in rng.choice([1, 2, 4, 8, 16, 3, 6], size=rng.integers(1, 4))))
    best = {s: float(rng.uniform(0.1, 10.0)) * s ** rng.uniform(0.5, 1.2) for s in sizes}
    gpus = int(rng.integers(1, 40))
    unit, cap = cover_capacity_rps(gpus, best)
    for g in range(0, gpus + 1):
        assert cap[g // unit] == pytest.approx(_brute_capacity(g, best), rel=1e-12, abs=1e-12)


def test_cannot_cover_is_exact_at_the_edge():
    best = {8: 4.0, 16: 7.0}
    # one 16-GPU replica at 7 req/s and two 8-GPU replicas at 4 in the other 16 GPUs: 15 req/s at most
    assert not cannot_cover(7.0, 16, 32, 15.0, best)
    assert cannot_cover(7.0, 16, 32, 15.0 + 1e-6, best)
    assert cannot_cover(1.0, 64, 32, 0.5, best)            # does not fit at all


def _doc(res) -> str:
    return json.dumps([(d.deployment.replicas, d.deployment.gpus, d.deployment.objective_value, d.metrics_dict())
                       for d in res.deployments], sort_keys=True, default=str)


@pytest.mark.parametrize("objective", ["gpus", "energy"])
def test_cover_pruning_keeps_the_deployments(objective):
    # llama-3.1-8b on 4 x H100 near the cluster's capacity: only 4 x tp1 carries 350 req/s
    on = run_search(_inputs(objective, 350.0, 4, True))
    off = run_search(_inputs(objective, 350.0, 4, False))
    skipped = [e for e in on.plans if e.status == "pruned" and e.reason.startswith("no deployment on 4 GPUs")]
    assert skipped and on.stats["simulations"] < off.stats["simulations"]
    assert on.deployments and _doc(on) == _doc(off)
    by_key = {e.key: e for e in off.plans}
    for e in skipped:                      # the bound held: the plan's own goodput is below what was assumed
        assert by_key[e.key].goodput_rps <= e.bound_rps
        assert all(e.key not in dict(d.deployment.replicas) for d in off.deployments)


def test_cover_pruning_simulates_the_skipped_plans_when_nothing_meets_the_demand():
    on = run_search(_inputs("gpus", 900.0, 4, True))         # beyond what 4 GPUs carry (4 x tp1: ~580 req/s)
    off = run_search(_inputs("gpus", 900.0, 4, False))
    assert not on.deployments and not off.deployments
    assert on.closest is not None and on.closest.to_dict() == off.closest.to_dict()
    assert on.stats["simulations"] == off.stats["simulations"]
    assert on.stats["pruned_by_bound"] == 0


@pytest.mark.parametrize("objective,rate,gpus,model", [("gpus", 20.0, 4, "llama-3.1-8b"),
                                                       ("throughput", None, 8, "llama-3.1-8b")])
def test_simulating_plans_in_waves_gives_the_one_at_a_time_result(monkeypatch, objective, rate, gpus, model):
    """Phase 2 simulates SIM_THREADS plans at once and keeps a result only where one plan at a time would
    have simulated it: the plans, their statuses and figures and the deployments are the same."""
    import apex_plan.search.pipeline as P
    max_len = None if model == "llama-3.1-70b" else 8192
    waves = run_search(_inputs(objective, rate, gpus, True, model=model, max_len=max_len))
    monkeypatch.setattr(P, "SIM_THREADS", 1)
    serial = run_search(_inputs(objective, rate, gpus, True, model=model, max_len=max_len))
    assert waves.deployments and _doc(waves) == _doc(serial)
    assert waves.stats == serial.stats and waves.stats["pruned_by_bound"] > 0
    for a, b in zip(waves.plans, serial.plans):
        assert (a.key, a.status, a.reason, a.goodput_rps, a.simulations) == (b.key, b.status, b.reason, b.goodput_rps,
                                                                               b.simulations)
        assert (a.at_goodput and a.at_goodput.to_dict()) == (b.at_goodput and b.at_goodput.to_dict())


def test_a_plan_whose_fit_raised_the_memory_fraction_simulates_with_it():
    """fit_engine raises --gpu-memory-utilization when the default leaves no room for the longest request;
    the plan's runs must use the raised fraction (with the default its lowered max_model_len does not fit)."""
    from apex_plan.hardware.load import load_gpu, make_cluster
    from apex_plan.model.load import load_model
    from apex_plan.plan.spec import EngineConfig
    from apex_plan.search.pipeline import SearchInputs
    from apex_plan.workload.spec import Slo, Trace
    rng = np.random.default_rng(0)
    n = 2000
    prompt = np.where(rng.random(n) < 0.01, 8000, 200).astype(np.int64)      # a few long prompts
    output = np.where(prompt > 1000, 2000, 120).astype(np.int64)
    trace = Trace(np.cumsum(rng.exponential(1 / 20.0, n)), prompt, output, "long-tail")
    inp = SearchInputs(load_model("llama-3.1-70b"), make_cluster(load_gpu("h100-sxm-80gb"), 8, 8), trace, None,
                       Slo(1.0, 0.1, 90.0), ("bf16",), ("bf16",), (EngineConfig(),), "throughput")
    res = run_search(inp)
    raised = [e for e in res.plans if e.engine is not None and e.engine.gpu_memory_utilization
              != e.engine.profile.memory.gpu_memory_utilization]
    assert raised, "expected a plan whose fit raised the memory fraction"
    for e in raised:
        assert e.run_cfg.gpu_memory_utilization == e.engine.gpu_memory_utilization
        assert e.status != "pending"
