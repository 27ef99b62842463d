"""Goodput guesses (`search.capacity.find_goodput(guess_rps=)`) spare runs without changing the result: the
same goodput, metrics and binding constraint as the plain bisection for any monotone SLO verdict, and
the search's plans and deployments are the same with guesses on and off. `search.inorder` takes the
results of plans simulated out of order in order."""

from __future__ import annotations

import json
import threading
import time
from types import SimpleNamespace

import numpy as np
import pytest

import apex_plan.search.capacity as C
from apex_plan.search.capacity import find_goodput
from apex_plan.search.inorder import simulate_in_order
from apex_plan.search.pipeline import run_search
from test_steady import _inputs


class _Run:
    """A replica whose SLO is met exactly up to `goodput` (more load never lowers latency); its metrics
    are the rate, and every call is counted."""

    def __init__(self, goodput: float):
        self.goodput, self.calls = goodput, []

    def __call__(self, rate: float):
        self.calls.append(rate)
        return SimpleNamespace(rate=rate, ok=rate <= self.goodput)


@pytest.fixture
def verdicts(monkeypatch):
    monkeypatch.setattr(C, "meets_slo", lambda m, slo: m.ok)
    monkeypatch.setattr(C, "binding_constraint", lambda m, slo: C.BINDS_CEILING if m is None else f"missed at {m.rate!r}")


@pytest.mark.parametrize("ceiling", [2.0, None])
@pytest.mark.parametrize("seed", range(6))
def test_a_guess_never_changes_the_result(verdicts, ceiling, seed):
    rng = np.random.default_rng(seed)
    for _ in range(60):
        goodput = float(rng.uniform(0.0005, 3.0) if rng.random() < 0.8 else rng.uniform(0.0, 0.002))
        plain = _Run(goodput)
        want = find_goodput(plain, None, 1.0, ceiling_rps=ceiling, iterations=5)
        for guess in (goodput, goodput * rng.uniform(0.7, 1.4), float(rng.uniform(0.001, 4.0)), 1e-9):
            guessed = _Run(goodput)
            got = find_goodput(guessed, None, 1.0, ceiling_rps=ceiling, iterations=5, guess_rps=guess)
            assert (got.goodput_rps, got.metrics, got.binding) == (want.goodput_rps, want.metrics, want.binding)
            assert got.simulations == len(set(guessed.calls)) == len(guessed.calls)     # no rate run twice
            assert got.goodput_rps in guessed.calls or got.goodput_rps == 0.0


def test_a_right_guess_takes_two_runs(verdicts):
    plain = _Run(0.69)
    want = find_goodput(plain, None, 0.5, ceiling_rps=1.0, iterations=5)
    assert want.simulations == 6
    mid_cell = want.goodput_rps * 2 ** (0.5 / 32)
    got = find_goodput(_Run(0.69), None, 0.5, ceiling_rps=1.0, iterations=5, guess_rps=mid_cell)
    assert got.simulations == 2 and got.goodput_rps == want.goodput_rps


def test_results_are_taken_in_order_and_siblings_wait():
    """Items finish out of order on two threads; `take` sees them in order, skipped ones never start,
    and an item starts only after every earlier item of its layout was taken or skipped."""
    items = [(i, i % 3) for i in range(12)]                 # (index, layout)
    taken, started, lock = [], [], threading.Lock()
    skip = lambda it: it[0] in (4, 7)                       # noqa: E731

    def start(it):
        with lock:
            assert all(j in {t[0] for t in taken} or skip(items[j]) for j in range(it[0]) if items[j][1] == it[1])
            started.append(it[0])
        return lambda: (time.sleep(0.002 * ((it[0] * 7) % 5)), it[0] * 10)[1]

    simulate_in_order(items, skip, start, lambda it, r: taken.append((it[0], r)),
                      lambda a, b: a[1] == b[1], threads=2, lookahead=4)
    assert taken == [(i, 10 * i) for i in range(12) if i not in (4, 7)]
    assert sorted(started) == [i for i in range(12) if i not in (4, 7)]


def _doc(res) -> str:
    plans = [(e.key, e.status, e.reason, e.goodput_rps, e.binding, e.replicas_for_demand,
              e.at_goodput and e.at_goodput.to_dict(), e.at_demand and e.at_demand.to_dict()) for e in res.plans]
    deps = [(d.deployment.replicas, d.deployment.gpus, d.metrics_dict()) for d in res.deployments]
    return json.dumps([plans, deps], sort_keys=True, default=str)


@pytest.mark.parametrize("objective,rate,gpus,model", [("energy", 20.0, 4, "qwen3-30b-a3b"),
                                                       ("throughput", None, 8, "llama-3.1-70b")])
def test_search_with_and_without_guesses_is_the_same(monkeypatch, objective, rate, gpus, model):
    """The plans (statuses, goodputs, binding constraints, metrics) and the deployments are the same, with
    fewer runs: with ep variants to guess from (a MoE model) and without (a dense one, whose guesses come
    from each plan's own first runs, `capacity.crossing_rps`)."""
    import apex_plan.search.pipeline as P
    max_len = None if model == "llama-3.1-70b" else 8192
    guessed = run_search(_inputs(objective, rate, gpus, True, model=model, max_len=max_len))
    monkeypatch.setattr(P, "GUESSES", False)
    plain = run_search(_inputs(objective, rate, gpus, True, model=model, max_len=max_len))
    assert guessed.deployments and _doc(guessed) == _doc(plain)
    assert guessed.stats["simulations"] < plain.stats["simulations"]


class _QueueRun(_Run):
    """A replica whose TPOT at the percentile grows like a queue's, floor / (1 - rate / saturation), and whose
    SLO is met up to `goodput` (set apart from where the TPOT reaches its target when `offset` is not 1)."""

    def __init__(self, saturation: float, floor_ms: float, target_ms: float, offset: float = 1.0):
        self.saturation, self.floor_ms, self.target_ms = saturation, floor_ms, target_ms
        super().__init__(saturation * (1 - floor_ms / target_ms) * offset)

    def __call__(self, rate: float):
        self.calls.append(rate)
        tpot = self.floor_ms / max(1 - rate / self.saturation, 1e-3)
        slo = SimpleNamespace(ttft_ms=None, tpot_ms=self.target_ms, ttft_at_percentile_ms=100.0,
                              tpot_at_percentile_ms=tpot)
        return SimpleNamespace(rate=rate, ok=rate <= self.goodput, slo=slo)


@pytest.mark.parametrize("ceiling", [2.0, None])
@pytest.mark.parametrize("seed", range(4))
def test_interpolated_guesses_never_change_the_result(verdicts, ceiling, seed):
    """With `interpolate`, the same goodput, metrics and binding as the plain bisection, whether the latencies
    predict the verdicts (offset 1) or mislead (the SLO met well below or above where the TPOT reaches its
    target), with and without a guess first; no rate is run twice."""
    rng = np.random.default_rng(seed)
    for _ in range(40):
        sat, floor = float(rng.uniform(0.2, 4.0)), float(rng.uniform(5, 40))
        offset = 1.0 if rng.random() < 0.5 else float(rng.uniform(0.3, 1.6))
        want = find_goodput(_QueueRun(sat, floor, 50.0, offset), None, 1.0, ceiling_rps=ceiling, iterations=5)
        for guess in (None, want.goodput_rps * float(rng.uniform(0.7, 1.4)) or None):
            run = _QueueRun(sat, floor, 50.0, offset)
            got = find_goodput(run, None, 1.0, ceiling_rps=ceiling, iterations=5, guess_rps=guess, interpolate=True)
            assert (got.goodput_rps, got.metrics, got.binding) == (want.goodput_rps, want.metrics, want.binding)
            assert got.simulations == len(set(run.calls)) == len(run.calls)


def test_a_queue_like_latency_takes_fewer_runs(verdicts):
    """When the TPOT grows like a queue's and the SLO is met exactly up to where it reaches its target, the
    guess from the first two runs lands in the goodput's cell: 4 runs (2 of the bisection, 2 to settle the
    cell) where the plain bisection takes 6."""
    plain = find_goodput(_QueueRun(2.0, 20.0, 50.0), None, 0.5, ceiling_rps=1.6, iterations=5)
    got = find_goodput(_QueueRun(2.0, 20.0, 50.0), None, 0.5, ceiling_rps=1.6, iterations=5, interpolate=True)
    assert plain.simulations == 6 and got.simulations == 4 and got.goodput_rps == plain.goodput_rps
