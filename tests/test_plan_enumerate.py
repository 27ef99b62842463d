"""Replica-plan enumeration: shapes, rejections with reasons, symmetry pruning."""

from __future__ import annotations

import dataclasses

import pytest

from apex_plan.errors import InputError
from apex_plan.hardware.spec import ClusterSpec, GpuSpec
from apex_plan.model.spec import ModelSpec
from apex_plan.plan.enumerate import (
    canonical_key,
    enumerate_replica_plans,
    layer_shard_key,
    raw_layouts,
)
from apex_plan.plan.spec import Plan

LLAMA_70B = ModelSpec(
    name="llama-3.1-70b", source="meta-llama/Llama-3.1-70B-Instruct", architecture="LlamaForCausalLM",
    num_layers=80, hidden_size=8192, num_heads=64, num_kv_heads=8, head_dim=128,
    intermediate_size=28672, vocab_size=128256, tie_word_embeddings=False, max_context=131072,
)
MIXTRAL = ModelSpec(
    name="mixtral-8x7b", source="mistralai/Mixtral-8x7B-v0.1", architecture="MixtralForCausalLM",
    num_layers=32, hidden_size=4096, num_heads=32, num_kv_heads=8, head_dim=128,
    intermediate_size=14336, vocab_size=32000, tie_word_embeddings=False, max_context=32768,
    num_experts=8, experts_per_token=2, expert_intermediate_size=14336, num_dense_layers=0,
)
QWEN_MOE = dataclasses.replace(  # 60 routed experts: ep=8 does not divide them
    MIXTRAL, name="qwen1.5-moe", num_heads=16, num_kv_heads=16, num_experts=60, num_layers=24)

H100 = GpuSpec(name="H100-SXM", vendor="nvidia", memory_bytes=80e9, mem_bw_gbps=3350,
               peak_tflops={"bf16": 989.4, "fp16": 989.4, "fp8": 1978.9},
               intra_node_bw_gbps=450, pcie_gbps=64, tdp_w=700, idle_w=90, num_sms=132)
A100 = GpuSpec(name="A100-SXM", vendor="nvidia", memory_bytes=80e9, mem_bw_gbps=2039,
               peak_tflops={"bf16": 312.0, "fp16": 312.0},
               intra_node_bw_gbps=300, pcie_gbps=32, tdp_w=400, idle_w=60, num_sms=108)


def cluster(gpu=H100, nodes=1, per_node=8) -> ClusterSpec:
    return ClusterSpec(gpu=gpu, num_nodes=nodes, gpus_per_node=per_node, intra_node_bw_gbps=450,
                       intra_node_latency_us=2.0, inter_node_bw_gbps=50, inter_node_latency_us=5.0)


def shapes(plans):
    return {(p.tp, p.pp) for p in plans}


def test_llama70b_one_node_shapes():
    # pp options: powers of two and divisors of the cluster's GPUs, with tp * pp <= 8
    plans, rejected, stats = enumerate_replica_plans(LLAMA_70B, cluster(), ["bf16"], ["bf16"])
    assert shapes(plans) == {(1, 1), (2, 1), (4, 1), (8, 1), (1, 2), (2, 2), (4, 2), (1, 4), (2, 4), (1, 8)}
    assert all(p.dp == 1 and p.ep == 1 for p in plans)
    assert len(plans) == len(set(plans)) == stats.after_symmetry == 10
    assert rejected == [] and stats.rejected == 0


def test_cross_node_tp_rejected_with_reason_unless_allowed():
    plans, rejected, stats = enumerate_replica_plans(LLAMA_70B, cluster(nodes=2), ["bf16"], ["bf16"])
    assert all(p.tp <= 8 for p in plans)
    assert (8, 2) in shapes(plans) and (1, 16) in shapes(plans)
    reasons = {r.reason for r in rejected}
    assert "tp=16 exceeds 8 GPUs per node (pass --allow-cross-node-tp)" in reasons
    assert stats.rejected_placement == 1
    plans, rejected, _ = enumerate_replica_plans(LLAMA_70B, cluster(nodes=2), ["bf16"], ["bf16"],
                                                 allow_cross_node_tp=True)
    assert (16, 1) in shapes(plans) and rejected == []


def test_tp_not_dividing_heads_rejected():
    plans, rejected, stats = enumerate_replica_plans(LLAMA_70B, cluster(per_node=6), ["bf16"], ["bf16"])
    by_tp = {r.plan.tp: r.reason for r in rejected}
    assert by_tp[3] == "tp=3 does not divide 64 attention heads"
    assert by_tp[6] == "tp=6 does not divide 64 attention heads"
    assert by_tp[4] == "tp=4 does not divide 6 GPUs per node"
    assert {p.tp for p in plans} == {1, 2}
    assert stats.rejected_divisibility == 2
    assert sum(stats.reasons.values()) == len(rejected) == stats.rejected


def test_kv_heads_split_or_replicated():
    few_kv = dataclasses.replace(LLAMA_70B, num_kv_heads=4)         # tp=8 replicates KV heads
    plans, rejected, _ = enumerate_replica_plans(few_kv, cluster(), ["bf16"], ["bf16"])
    assert (8, 1) in shapes(plans) and rejected == []
    odd_kv = dataclasses.replace(LLAMA_70B, num_heads=48, num_kv_heads=12)
    plans, rejected, _ = enumerate_replica_plans(odd_kv, cluster(), ["bf16"], ["bf16"])
    assert {r.reason for r in rejected} == {"tp=8 does not divide 12 KV heads"}
    assert 8 not in {p.tp for p in plans}


def test_pp_limited_by_layers_and_replica_size():
    tiny = dataclasses.replace(LLAMA_70B, num_layers=4)
    plans, rejected, _ = enumerate_replica_plans(tiny, cluster(), ["bf16"], ["bf16"])
    assert max(p.pp for p in plans) == 4
    assert "pp=8 exceeds 4 layers" in {r.reason for r in rejected}
    plans, rejected, stats = enumerate_replica_plans(LLAMA_70B, cluster(nodes=2), ["bf16"], ["bf16"],
                                                     max_gpus_per_replica=8)
    assert max(p.gpus_per_replica for p in plans) == 8
    assert "replica of 16 GPUs exceeds --max-gpus-per-replica 8" in stats.reasons
    assert stats.rejected_limit > 0


def test_replica_spanning_part_of_a_node_rejected():
    plans, rejected, _ = enumerate_replica_plans(LLAMA_70B, cluster(nodes=3), ["bf16"], ["bf16"])
    assert (4, 3) not in shapes(plans)   # 12 GPUs = 1.5 nodes
    assert any(r.reason.startswith("replica of 12 GPUs (tp=4 x pp=3) spans nodes") for r in rejected)
    assert (8, 3) in shapes(plans)       # 24 GPUs = 3 whole nodes


def test_moe_ep_options():
    plans, rejected, _ = enumerate_replica_plans(MIXTRAL, cluster(), ["bf16"], ["bf16"])
    eps = {}
    for p in plans:
        eps.setdefault((p.tp, p.pp), set()).add(p.ep)
    assert eps[(1, 1)] == {1}
    assert eps[(4, 1)] == {1, 2, 4}
    assert eps[(8, 1)] == {1, 2, 4, 8}
    # experts spread over a stage's tp GPUs (expert TP = tp / ep): ep never exceeds tp, whatever pp is
    assert eps[(2, 4)] == {1, 2}
    assert rejected == []
    plans, rejected, _ = enumerate_replica_plans(QWEN_MOE, cluster(), ["bf16"], ["bf16"])
    assert 8 not in {p.ep for p in plans} and {1, 2, 4} <= {p.ep for p in plans}
    assert {r.reason for r in rejected} == {"ep=8 does not divide 60 experts"}
    dense, _, _ = enumerate_replica_plans(LLAMA_70B, cluster(), ["bf16"], ["bf16"])
    assert {p.ep for p in dense} == {1}


def test_unsupported_dtype_rejected_with_reason():
    plans, rejected, stats = enumerate_replica_plans(LLAMA_70B, cluster(gpu=A100), ["bf16", "fp8"], ["bf16"])
    assert {p.weight_dtype for p in plans} == {"bf16"}
    assert {r.reason for r in rejected} == {"A100-SXM does not support weight dtype fp8"}
    assert stats.rejected_dtype == len(rejected) == 10
    _, rejected, _ = enumerate_replica_plans(LLAMA_70B, cluster(gpu=A100), ["bf16"], ["fp8"])
    assert {r.reason for r in rejected} == {"A100-SXM does not support KV dtype fp8"}
    plans, rejected, _ = enumerate_replica_plans(LLAMA_70B, cluster(), ["bf16", "fp8"], ["bf16", "fp8"])
    assert len(plans) == 40 and rejected == []


def test_empty_dtype_list_is_input_error():
    with pytest.raises(InputError):
        enumerate_replica_plans(LLAMA_70B, cluster(), [], ["bf16"])


@pytest.mark.parametrize("model,nodes", [(LLAMA_70B, 1), (LLAMA_70B, 2), (MIXTRAL, 2)])
def test_symmetry_pruning_keeps_the_same_plans_and_winner(model, nodes):
    on, rej_on, s_on = enumerate_replica_plans(model, cluster(nodes=nodes), ["bf16", "fp8"], ["bf16"])
    off, rej_off, s_off = enumerate_replica_plans(model, cluster(nodes=nodes), ["bf16", "fp8"], ["bf16"],
                                                  prune_symmetry=False)
    assert set(on) == set(off) and rej_on == rej_off
    assert len(on) == len(set(on)) == s_on.after_symmetry
    assert len(off) == s_off.enumerated == s_on.enumerated > s_on.after_symmetry

    def score(p: Plan) -> tuple:   # any deterministic cost: the winner must not change
        return (abs(p.tp * p.pp - 4) + 0.1 * p.pp - 0.01 * p.ep, p.weight_dtype, p)

    assert min(on, key=score) == min(off, key=score)


def test_raw_layouts_collapse_to_one_canonical_key():
    lays = raw_layouts(2, 2, num_nodes=2, gpus_per_node=8)
    assert len(lays) == 2 * 2 * 2            # axis orders x nodes x aligned slots
    assert len({canonical_key(2, 2, lay, 8) for lay in lays}) == 1
    lays = raw_layouts(8, 2, num_nodes=3, gpus_per_node=8)
    assert len(lays) == 6                    # start node x stage direction
    keys = {canonical_key(8, 2, lay, 8) for lay in lays}
    assert keys == {(0,) * 8 + (1,) * 8}     # TP inside a node, the two stages on two nodes


def test_layer_shard_key_ignores_pp():
    a = Plan(tp=4, pp=1, ep=2, weight_dtype="fp8")
    b = Plan(tp=4, pp=2, ep=2, weight_dtype="fp8")
    assert layer_shard_key(a) == layer_shard_key(b) == (4, 2, "fp8", "bf16", "bf16")
    assert layer_shard_key(a) != layer_shard_key(Plan(tp=2, pp=1, ep=2, weight_dtype="fp8"))
