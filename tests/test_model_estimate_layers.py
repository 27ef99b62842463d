"""The estimator over layer kinds: pipeline splits of layer groups, windowed and sparse attention,
per-sequence state in the KV pool, and per-component weight formats."""

from __future__ import annotations

import dataclasses

import pytest

from apex_plan.abi import OP_ATTENTION, CostTables
from apex_plan.estimate.kernels import window_pairs
from apex_plan.estimate.memory import memory_report, stage_weight_bytes
from apex_plan.estimate.shard import build_shard, split_layers
from apex_plan.estimate.step_cost import build_step_cost
from apex_plan.hardware.load import load_gpu
from apex_plan.model import spec as S
from apex_plan.model.load import load_model
from apex_plan.model.kv import state_bytes_per_seq_per_layer
from apex_plan.model.params import component_params
from apex_plan.plan.spec import Plan

H100 = load_gpu("h100-sxm-80gb")


def test_pipeline_stages_split_groups_evenly_in_order():
    model = load_model("qwen3.5-397b-a17b")               # (3 linear + 1 full) x 15
    stages = split_layers(model, 4)
    assert [s.layers for s in stages] == [15, 15, 15, 15]
    assert [(s.count(S.LINEAR), s.count(S.FULL)) for s in stages] == [(12, 3), (11, 4), (11, 4), (11, 4)]
    assert sum(s.moe_layers for s in stages) == 60
    glm = split_layers(load_model("glm-5"), 2)             # 3 dense first, then 75 MoE
    assert [(s.dense_layers, s.moe_layers) for s in glm] == [(3, 36), (0, 39)]


def test_each_kind_costed_once_times_its_count():
    """gpt-oss-120b tp=8: the step's attention time is 18 full-layer terms plus 18 windowed terms."""
    model = load_model("gpt-oss-120b")
    sc = build_step_cost(model, H100, Plan(tp=8, weight_dtype="fp4", kv_dtype="bf16"))
    p = sc.params
    attn = sc.cost.ops[sc.cost.ops["shape"] == OP_ATTENTION]
    assert [(r["count"], r["windowed"]) for r in attn] == [(18, 0), (18, 1)] and p["window_tokens"][0] == 128
    batch, ctx = 32, 8192
    capped = float(batch * min(ctx, 128))
    _, windowed = sc.step_s(decodes=batch, context=ctx)
    unwindowed = p.copy()
    unwindowed["window_tokens"] = 0                          # every layer reads every cached token
    _, full = dataclasses.replace(sc, cost=CostTables(unwindowed, sc.cost.ops)).step_s(decodes=batch, context=ctx)
    kv_b = sc.shard.kv_bytes_per_token_layer                 # one KV head of 64 x 2 (K, V) x 2 bytes on each GPU
    assert kv_b == 2 * 1 * 64 * 2
    assert full["bytes"] - windowed["bytes"] == pytest.approx(18 * kv_b * (batch * ctx - capped), rel=1e-12)


def test_window_pairs_of_a_causal_chunk():
    # brute force: sum over query positions of min(position, window)
    for k0, c, w in ((0, 100, 128), (100, 100, 128), (500, 64, 128), (0, 300, 128), (10, 5, 4)):
        assert window_pairs(k0, c, w) == sum(min(x, w) for x in range(k0 + 1, k0 + c + 1))


def test_sparse_attention_reads_top_k_plus_the_indexer():
    model = load_model("deepseek-v3.2")
    sc = build_step_cost(model, H100, Plan(tp=8, weight_dtype="fp8", kv_dtype="fp8"))
    top_k, indexer = sc.cost.ops[sc.cost.ops["shape"] == OP_ATTENTION]
    assert (top_k["count"], top_k["windowed"], sc.params["topk_tokens"][0]) == (61, 2, 2048)
    assert sc.params["window_tokens"][0] == 0               # no sliding window: the top-k cap is its own
    assert (indexer["count"], indexer["windowed"], indexer["rereads"]) == (61, 0, 1.0)
    assert indexer["bytes_per_unit"] == 128                 # one fp8 indexer key per token per layer
    assert indexer["flops_per_unit"] == 2.0 * (64 / 8) * 128


def test_hybrid_state_is_a_per_sequence_reserve():
    """Qwen3.5-397B on 8 GPUs: the KV pool holds the 15 full layers' KV per token after setting aside
    the 45 Gated DeltaNet layers' state for max_num_seqs sequences."""
    model = load_model("qwen3.5-397b-a17b")
    gpu = load_gpu("b300-sxm-288gb")
    plan = Plan(tp=8, weight_dtype="fp8", kv_dtype="fp8")
    shard = build_shard(model, plan)
    assert shard.state_bytes_linear == state_bytes_per_seq_per_layer(model, S.LINEAR) / 8
    kw = dict(gpu_memory_utilization=0.9, max_batched_tokens=8192, block_size=16, max_model_len=32768)
    few = memory_report(model, gpu, plan, shard, max_num_seqs=16, **kw)
    many = memory_report(model, gpu, plan, shard, max_num_seqs=256, **kw)
    per_token = 15 * 2 * 1 * 256 * 1                         # 2 KV heads over tp=8: one per GPU, K and V, fp8
    assert few.kv_bytes_per_token == per_token
    reserve = 45 * shard.state_bytes_linear * (256 - 16)      # more sequences: more state set aside
    act_delta = many.activation_bytes - few.activation_bytes  # the sampler's logits scale with max_num_seqs
    assert (few.kv_tokens - many.kv_tokens) * per_token == pytest.approx(reserve + act_delta, abs=16 * per_token)


def test_mixed_formats_in_stage_weights():
    """gpt-oss-120b fp4 on one GPU: MXFP4 experts, bf16 attention and router, as the checkpoint."""
    model = load_model("gpt-oss-120b")
    plan = Plan(tp=1, weight_dtype="fp4", kv_dtype="bf16")
    shard = build_shard(model, plan)
    by_name = {g.name: g.w_bytes for g in shard.gemms}
    assert by_name["experts_gate_up"] == 0.5 + 1 / 32 and by_name["qkv"] == 2.0 and by_name["router"] == 2.0
    (stage,) = shard.stages
    comp = component_params(model)
    expected_experts = comp["experts"] * (0.5 + 1 / 32)
    w = stage_weight_bytes(model, plan, shard, stage)
    # GEMM shapes leave out biases and sinks (< 0.1%); the rest is bf16
    assert w == pytest.approx(expected_experts + (sum(comp.values()) - comp["experts"]) * 2, rel=2e-3)


