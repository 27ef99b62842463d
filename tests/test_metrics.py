"""The typed metrics tree of a simulation: exact arithmetic of its distributions, frozen records read
by attribute, and `to_dict()` as the JSON wire format (the keys and order `simulate --format json`
has always written)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from apex_plan.hardware.load import load_gpu, make_cluster
from apex_plan.model.load import load_model
from apex_plan.plan.spec import EngineConfig, Plan
from apex_plan.simulate.metrics import Distribution, Metrics, TokenGaps
from apex_plan.simulate.run import simulate
from apex_plan.workload.slo import parse_slo
from apex_plan.workload.spec import Workload
from apex_plan.workload.synthetic import LengthDist, synthetic_trace

WIRE_KEYS = ["requests", "completed", "rejected", "ttft_ms", "tpot_ms", "e2e_s", "queue_ms", "throughput",
             "makespan_s", "queue_growth_ms", "kv_cache", "steps", "busy_fraction", "energy", "slo",
             "requests_refused_too_long", "prefix_cache", "speculative"]


def test_distribution_is_exact():
    d = Distribution.of(np.array([1.0, 2.0, 3.0, 4.0]), 1e3)
    assert (d.mean, d.p50) == (2500.0, 2500.0)
    assert d.p90 == pytest.approx(3700.0, rel=1e-12) and d.p99 == pytest.approx(3970.0, rel=1e-12)
    assert Distribution.of(np.zeros(0), 1e3).to_dict() == {"mean": None, "p50": None, "p90": None, "p99": None}
    assert list(TokenGaps(1.0, 2.0, 3.0, 4.0, 5.0).to_dict()) == ["mean", "p50", "p90", "p99", "mean_per_request"]


@pytest.fixture(scope="module")
def run():
    tr = synthetic_trace(60, LengthDist("constant", mean=300), LengthDist("constant", mean=40), 2.0, seed=1)
    return simulate(load_model("llama-3.1-8b"), make_cluster(load_gpu("h100-sxm-80gb"), 1), Plan(), EngineConfig(),
                    Workload(tr), parse_slo("2s", "100ms", 90.0))


def test_tree_is_frozen_typed_and_agrees_with_its_wire_format(run):
    m = run.metrics
    assert isinstance(m, Metrics) and run.feasible
    with pytest.raises(dataclasses.FrozenInstanceError):
        m.completed = 0
    d = m.to_dict()
    assert list(d) == WIRE_KEYS
    assert d["ttft_ms"] == m.latency.ttft_ms.to_dict() and d["kv_cache"]["preemptions"] == m.memory.preemptions
    assert d["slo"]["met"] is m.slo.met and d["speculative"] is None
    # conservation and the units the names say
    assert m.completed + m.rejected == m.requests == 60
    assert m.throughput.requests_per_s == pytest.approx(m.completed / m.makespan_s, rel=1e-12)
    assert m.energy.mean_power_w == pytest.approx(m.energy.total_j / m.makespan_s, rel=1e-12)
    assert m.energy.j_per_output_token == pytest.approx(m.energy.total_j / (40 * m.completed), rel=1e-12)
    assert 0.0 <= m.slo.attainment <= 1.0 and 0.0 < m.memory.peak_utilization <= 1.0
    assert m.latency.ttft_ms.p50 <= m.latency.ttft_ms.p90 <= m.latency.ttft_ms.p99
