"""A model whose layers have two window sizes (sliding 512 beside chunked 8192, and full attention):
each windowed layer is capped at its own window (COST.window_tokens and COST.window2_tokens, a cap
slot per op row), in the op table, the step aggregates, the KV reads, the per-sequence KV reserve and
a one-request simulation."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from apex_plan.abi import OP_ATTENTION, CostTables
from apex_plan.errors import InputError
from apex_plan.estimate import kernels as K
from apex_plan.estimate.shard import build_shard
from apex_plan.estimate.step_cost import build_step_cost
from apex_plan.hardware.load import load_gpu, make_cluster
from apex_plan.model import spec as S
from apex_plan.model.load import load_model
from apex_plan.plan.spec import EngineConfig, Plan
from apex_plan.simulate.run import simulate
from apex_plan.workload.spec import Trace, Workload

H100 = load_gpu("h100-sxm-80gb")
SLIDING, CHUNK = 512, 8192
# per 4 layers: 2 sliding (512), 1 chunked (8192), 1 full; x 8 = 32 layers
KINDS = (S.LayerKind(S.SLIDING, S.DENSE, SLIDING), S.LayerKind(S.SLIDING, S.DENSE, SLIDING),
         S.LayerKind(S.CHUNKED, S.DENSE, CHUNK), S.LayerKind(S.FULL, S.DENSE))


def _model(kinds=KINDS):
    base = load_model("llama-3.1-8b")
    return dataclasses.replace(base, name="two-windows", layer_groups=(S.LayerGroup(kinds, 32 // len(kinds)),),
                               num_dense_layers=-1)


def test_each_window_has_its_own_cap_slot():
    sc = build_step_cost(_model(), H100, Plan(tp=1))
    p = sc.params
    assert (p["window_tokens"][0], p["window2_tokens"][0], p["topk_tokens"][0]) == (CHUNK, SLIDING, 0)
    attn = sc.cost.ops[sc.cost.ops["shape"] == OP_ATTENTION]
    # model.spec.MIXERS order: full, sliding (the second window: slot 3), chunked (the window: slot 1)
    assert [(r["count"], r["windowed"]) for r in attn] == [(8, 0), (16, 3), (8, 1)]


def test_aggregates_cap_each_window_exactly():
    """3 decodes at 20000 tokens and a 1024-token chunk after 3000 cached: the chunked layers' cap
    (8192) bites on the decodes only, the sliding layers' (512) on both."""
    batch = K.make_batch(decodes=3, context=20000, chunk=1024, cached=3000)
    sh = K.aggregate(batch, float(CHUNK), 0.0, float(SLIDING), 0)
    assert sh.dec_ctx_tokens == 3 * 20000 and sh.dec_ctx_w == 3 * CHUNK and sh.dec_ctx_v == 3 * SLIDING
    assert sh.pf_pairs_v == sum(min(3000 + i, SLIDING) for i in range(1, 1025)) == 1024 * SLIDING
    assert sh.pf_pairs_w == sh.pf_pairs == sum(3000 + i for i in range(1, 1025))
    assert sh.pf_ctx_v == SLIDING + 1024 and sh.pf_ctx_w == sh.pf_ctx_tokens == 3000 + 1024
    assert (sh.dec_ctx_k, sh.pf_pairs_k) == (sh.dec_ctx_tokens, sh.pf_pairs)     # no top-k cap


def test_decode_reads_each_layers_own_window():
    """Decode KV bytes read: full layers the whole context, chunked ones 8192 tokens, sliding ones 512."""
    sc = build_step_cost(_model(), H100, Plan(tp=1))
    batch, ctx = 16, 20000
    _, capped = sc.step_s(decodes=batch, context=ctx)
    uncapped = sc.params.copy()
    uncapped["window_tokens"] = uncapped["window2_tokens"] = 0     # every layer reads every cached token
    _, full = dataclasses.replace(sc, cost=CostTables(uncapped, sc.cost.ops)).step_s(decodes=batch, context=ctx)
    kv_b = sc.shard.kv_bytes_per_token_layer                       # 8 KV heads x 128 x (K, V) x 2 bytes
    assert kv_b == 8 * 128 * 2 * 2
    saved = 8 * batch * (ctx - CHUNK) + 16 * batch * (ctx - SLIDING)
    assert full["bytes"] - capped["bytes"] == pytest.approx(kv_b * saved, rel=1e-12)


def test_per_sequence_reserve_is_each_windows_own():
    """KV bytes a sequence holds whatever its length: each windowed layer its own window plus one block."""
    model, block, max_len = _model(), 16, 32768
    shard = build_shard(model, Plan(tp=1))
    st = shard.largest_stage
    kv_b = shard.kv_bytes_per_token_layer
    assert shard.seq_bytes_stage(st, max_len, block) == pytest.approx(
        16 * (SLIDING + block) * kv_b + 8 * (CHUNK + block) * kv_b, rel=1e-12)


def test_one_request_simulation_equals_the_analytic_steps():
    model, prompt = _model(), 20000
    res = simulate(model, make_cluster(H100, 1), Plan(tp=1), EngineConfig(max_model_len=32768, max_num_seqs=16),
                   Workload(Trace(np.zeros(1), np.array([prompt], np.int64), np.array([2], np.int64))))
    assert res.feasible, res.reason
    sc, e = res.step_cost, res.engine
    first = float(res.times.first_token_s[0])
    front = e.profile.host.serial_frontend_s(prompt)                  # the serial front end, then the prefill
    assert first - front == pytest.approx(sc.prefill_time_s(prompt, e.max_batched_tokens if e.chunked_prefill else None),
                                          rel=1e-12)
    assert float(res.times.finish_s[0]) - first == pytest.approx(sc.decode_time_s(1, prompt + 1), rel=1e-9)


def test_three_windows_are_refused_by_name():
    kinds = KINDS[:3] + (S.LayerKind(S.SLIDING, S.DENSE, 1024),)
    with pytest.raises(InputError, match="3 distinct attention windows"):
        build_shard(_model(kinds), Plan(tp=1))
