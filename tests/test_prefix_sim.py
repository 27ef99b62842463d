"""The simulator with prefix caching, cache-aware routing and speculative decoding."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest

from apex_plan.engine.speculative import parse_speculative
from apex_plan.hardware.load import load_gpu, make_cluster
from apex_plan.model.load import load_model
from apex_plan.plan.spec import EngineConfig, Plan
from apex_plan.simulate.run import simulate
from apex_plan.workload.prefix import SessionOptions, exact_hit_tokens, hit_rate, multiturn_trace
from apex_plan.workload.spec import Slo, Trace, Workload
from apex_plan.workload.synthetic import PRESETS, LengthDist, synthetic_trace
from apex_plan.workload.trace import read_trace

ROOT = Path(__file__).resolve().parents[1]
H100 = load_gpu("h100-sxm-80gb")


@pytest.fixture(scope="module")
def llama8b():
    return load_model("llama-3.1-8b")


@pytest.fixture(scope="module")
def mooncake():
    return read_trace(ROOT / "examples" / "mooncake.jsonl")


def _sim(model, trace, dp=1, gpus=1, **cfg):
    cfg.setdefault("max_model_len", 32768)
    return simulate(model, make_cluster(H100, gpus, 8), Plan(dp=dp, tp=gpus // dp), EngineConfig(**cfg),
                    Workload(trace), Slo(0.5, 0.05))


def test_mooncake_hit_rate_equals_the_infinite_cache(llama8b, mooncake):
    """The pool (27k blocks) holds every block of the trace: the cache is infinite, its hit rate exact."""
    on = _sim(llama8b, mooncake, prefix_caching=True)
    off = _sim(llama8b, mooncake, prefix_caching=False)
    exact = exact_hit_tokens(mooncake)
    pc = on.metrics.prefix_cache
    assert pc.evicted_blocks == 0 and on.metrics.completed == len(mooncake)
    assert pc.hit_rate == hit_rate(mooncake, exact) == pc.infinite_cache_hit_rate
    assert pc.saved_prefill_tokens == int(exact.sum())
    assert off.metrics.prefix_cache.hit_rate == 0 and off.metrics.prefix_cache.saved_prefill_tokens == 0
    # hits skip their prefill: the first token comes sooner, and fewer tokens are computed
    assert on.metrics.latency.ttft_ms.mean < 0.8 * off.metrics.latency.ttft_ms.mean
    tok = lambda r: int(r.engine_stats["tokens"].sum())     # noqa: E731  (tokens processed, prefill + decode)
    assert tok(off) - tok(on) == pc.saved_prefill_tokens


def test_caching_off_is_the_plain_simulation(llama8b, mooncake):
    plain = Trace(mooncake.arrival_s, mooncake.prompt_tokens, mooncake.output_tokens)
    a = _sim(llama8b, mooncake, prefix_caching=False)
    b = _sim(llama8b, plain, prefix_caching=True)       # no prefix ids: nothing to hit
    assert np.array_equal(a.times.first_token_s, b.times.first_token_s)
    assert np.array_equal(a.times.finish_s, b.times.finish_s)


def test_small_pool_evicts_and_still_serves_everyone(llama8b):
    chat = PRESETS["chat"]
    tr = multiturn_trace(600, chat.prompt, chat.output, 6.0,
                         SessionOptions(turns=6, prefix_tokens=3000, num_prefixes=12, think_time_s=30.0), seed=4)
    big = _sim(llama8b, tr, prefix_caching=True)
    small = _sim(llama8b, tr, prefix_caching=True, gpu_memory_utilization=0.3)
    assert small.metrics.completed == big.metrics.completed == len(tr)
    ps, pb = small.metrics.prefix_cache, big.metrics.prefix_cache
    assert ps.evicted_blocks > 0
    assert ps.hit_rate <= pb.hit_rate <= pb.infinite_cache_hit_rate + 1e-12
    # conservation: once every request is done, every block is free again (empty or an evictable unit)
    for r in (small, big):
        assert (r.engine_stats["free_blocks"] == r.metrics.memory.blocks_per_engine).all()


def test_session_and_prefix_routing_beat_round_robin(llama8b):
    chat = PRESETS["chat"]
    tr = multiturn_trace(1200, chat.prompt, chat.output, 12.0,
                         SessionOptions(turns=8, prefix_tokens=2000, num_prefixes=8, think_time_s=20.0), seed=1)
    rates = {rt: _sim(llama8b, tr, dp=4, gpus=4, prefix_caching=True, routing=rt).metrics.prefix_cache.hit_rate
             for rt in ("round_robin", "session", "prefix")}
    assert rates["session"] > rates["round_robin"] + 0.05
    assert rates["prefix"] > rates["round_robin"] + 0.05
    assert max(rates.values()) <= hit_rate(tr, exact_hit_tokens(tr)) + 1e-12


# ---- speculative decoding ------------------------------------------------------------------------

@pytest.fixture(scope="module")
def one_long_request():
    return synthetic_trace(1, LengthDist("constant", mean=200), LengthDist("constant", mean=801), None)


def _tpot(model, trace, spec):
    r = _sim(model, trace, speculative=spec)
    return r.metrics.latency.tpot_ms.mean, r.metrics.speculative


def test_speculation_costs_and_gains(one_long_request):
    """EAGLE-3 on Llama-3.1-8B, one request of 801 output tokens: acceptance 0 pays the drafts and the
    wider verification for nothing; acceptance 1 emits k + 1 tokens per step."""
    model = load_model("llama-3.1-8b")
    base, _ = _tpot(model, one_long_request, None)
    zero, s0 = _tpot(model, one_long_request, parse_speculative("eagle3:3", "0"))
    assert zero > base and s0.measured_tokens_per_step == 1.0
    full, s1 = _tpot(model, one_long_request, parse_speculative("eagle3:3", "1"))
    assert s1.measured_tokens_per_step == pytest.approx(4.0, abs=0.01)      # 800 tokens in 200 steps
    assert full < base / 2
    tpots = [_tpot(model, one_long_request, parse_speculative("eagle3:3", str(a)))[0] for a in (0.2, 0.5, 0.8)]
    assert zero > tpots[0] > tpots[1] > tpots[2] > full


def test_measured_tokens_per_step_follow_the_acceptance():
    model = load_model("llama-3.1-8b")
    tr = synthetic_trace(200, LengthDist("constant", mean=100), LengthDist("constant", mean=400), 2.0, seed=3)
    spec = parse_speculative("eagle3:3", "0.9,0.7,0.4")
    s = _sim(model, tr, speculative=spec).metrics.speculative
    assert s.measured_tokens_per_step == pytest.approx(spec.tokens_per_step, rel=0.03)


def test_speculative_kv_and_engine_rules():
    ds = load_model("deepseek-v3")
    with pytest.raises(Exception, match="multi-token"):
        _sim(load_model("llama-3.1-8b"), synthetic_trace(2, LengthDist("constant", mean=10),
                                                        LengthDist("constant", mean=10), 1.0),
             speculative=parse_speculative("mtp:1", None))
    assert dataclasses.replace(ds).mtp_layers == 1
