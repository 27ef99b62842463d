"""Closed loops over a reused pool of prompts (--prompt-pool; genai-perf --num-dataset-entries): block ids,
the infinite-cache hit count, and what the simulated engine does with the repeats."""

from __future__ import annotations

import numpy as np
import pytest

from apex_plan.errors import InputError
from apex_plan.hardware.load import load_gpu, make_cluster
from apex_plan.inputs.workload import WorkloadOptions, session_options, workload_from_options
from apex_plan.model.load import load_model
from apex_plan.plan.spec import EngineConfig, Plan
from apex_plan.simulate.run import simulate
from apex_plan.workload.prefix import exact_hit_tokens, prompt_pool_trace
from apex_plan.workload.synthetic import LengthDist, closed_loop, synthetic_trace


def _trace(n: int = 40, prompt: str = "uniform:100-300"):
    low, high = (int(x) for x in prompt.split(":")[1].split("-"))
    return synthetic_trace(n, LengthDist("uniform", low=low, high=high), LengthDist("constant", mean=8.0), None,
                           "poisson", 1.0, 0)


def test_repeats_share_every_block_and_entries_share_none():
    tr = prompt_pool_trace(_trace(), 10, 64)
    ids = [tr.hash_ids[tr.hash_ptr[i]:tr.hash_ptr[i + 1]] for i in range(len(tr))]
    for i in range(10, len(tr)):
        assert tr.prompt_tokens[i] == tr.prompt_tokens[i % 10]       # the entry's prompt, length included
        assert np.array_equal(ids[i], ids[i % 10])
    firsts = np.concatenate(ids[:10])
    assert np.unique(firsts).size == firsts.size                     # distinct entries: no block in common
    assert np.array_equal(tr.output_tokens, _trace().output_tokens)


def test_infinite_cache_hits_every_repeat_but_no_first_send():
    tr = prompt_pool_trace(_trace(), 10, 64)
    hits = exact_hit_tokens(tr)
    assert (hits[:10] == 0).all()
    # a repeat finds its whole prompt but the block holding its last token
    assert np.array_equal(hits[10:], ((tr.prompt_tokens[10:] - 1) // 64) * 64)


def test_option_builds_a_pooled_closed_loop_and_refuses_sessions():
    o = WorkloadOptions(prompt_tokens="2000", output_tokens="50", concurrency=8, num_requests=40,
                        sessions=session_options(1, 0, 1, "0s", None, 4))
    wl = workload_from_options(o)
    assert wl.mode == "closed" and wl.trace.has_prefix_hashes and wl.trace.hash_block_tokens == 64
    with pytest.raises(InputError, match="--prompt-pool"):
        workload_from_options(WorkloadOptions(prompt_tokens="200", output_tokens="50", rate=1.0,
                                              sessions=session_options(2, 0, 1, "0s", None, 4)))


def test_a_cached_pool_shortens_the_loop():
    m, gpu = load_model("llama-3.1-8b"), load_gpu("h200-sxm-141gb")
    base = synthetic_trace(64, LengthDist("constant", mean=2000.0), LengthDist("constant", mean=20.0), None,
                           "poisson", 1.0, 0)
    runs = {}
    for pool in (0, 8):
        tr = prompt_pool_trace(base, pool) if pool else base
        res = simulate(m, make_cluster(gpu, 1, 8), Plan(), EngineConfig(name="vllm@0.12.0"), closed_loop(tr, 16))
        runs[pool] = res.metrics.to_dict()
    assert runs[0]["prefix_cache"]["hit_rate"] == 0.0
    assert runs[8]["prefix_cache"]["hit_rate"] > 0.8                # 56 of 64 prompts repeat, ~all their blocks hit
    assert runs[8]["tpot_ms"]["mean"] < runs[0]["tpot_ms"]["mean"]   # decodes no longer share steps with prefills
    assert runs[8]["ttft_ms"]["p50"] < runs[0]["ttft_ms"]["p50"]
