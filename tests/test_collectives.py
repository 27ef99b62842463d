"""Tensor-parallel all-reduce across nodes: NCCL's ring per NIC (bandwidth) and tree (latency), exactly, and
what they do to a step (apex_plan.estimate.collectives)."""

from __future__ import annotations

import pytest

from apex_plan.estimate.collectives import multi_node_latency_s, multi_rail_bus_bytes_per_s
from apex_plan.estimate.step_cost import build_step_cost
from apex_plan.hardware.load import load_gpu, make_cluster
from apex_plan.model.load import load_model
from apex_plan.plan.spec import Plan


def test_ring_per_nic_bandwidth_is_the_slower_of_the_nics_and_nvlink():
    # 8 GPUs a node, 50 GB/s NIC each, 900 GB/s NVLink: 8 NICs carry the ring traffic (NVLink's 8/7 x 900 is faster)
    assert multi_rail_bus_bytes_per_s(900e9, 50e9, 8) == pytest.approx(400e9)
    # fast NICs: NVLink carries 7/8 of the traffic and becomes the bound
    assert multi_rail_bus_bytes_per_s(900e9, 400e9, 8) == pytest.approx(8 / 7 * 900e9)
    # one GPU a node: its NIC carries everything
    assert multi_rail_bus_bytes_per_s(900e9, 50e9, 1) == 50e9
    # never below a single NIC, never above what the node's NICs and NVLink can carry together
    for g in (2, 4, 8):
        bw = multi_rail_bus_bytes_per_s(900e9, 50e9, g)
        assert 50e9 <= bw <= g * 50e9


def test_tree_latency_grows_with_the_log_of_the_nodes():
    assert multi_node_latency_s(1, 10e-6) == 0.0
    assert multi_node_latency_s(2, 10e-6) == pytest.approx(20e-6)      # one level, up and down
    assert multi_node_latency_s(8, 10e-6) == pytest.approx(60e-6)      # three levels
    assert multi_node_latency_s(5, 10e-6) == multi_node_latency_s(8, 10e-6)
    lat = [multi_node_latency_s(n, 10e-6) for n in (1, 2, 3, 4, 8, 16)]
    assert lat == sorted(lat)


def test_a_64_gpu_tensor_parallel_prefill_reduces_over_every_nic_of_its_nodes():
    model, gpu = load_model("deepseek-v3"), load_gpu("b200-sxm-180gb")
    cluster = make_cluster(gpu, 64)
    sc = build_step_cost(model, gpu, Plan(tp=64, ep=8, weight_dtype="fp8", kv_dtype="fp8"), cluster)
    eff = gpu.calibration.link_efficiency
    assert sc.params["link_bytes_per_s"][0] == pytest.approx(8 * cluster.inter_node_bw_gbps * 1e9 * eff)
    assert sc.params["allreduce_nccl_latency_s"][0] == pytest.approx(
        gpu.calibration.allreduce_latency_us * 1e-6 + 6 * cluster.inter_node_latency_us * 1e-6)
    # an 8K-token prefill's all-reduces: 2 per layer of 8192 x hidden bf16 activations over the ring
    t, br = sc.step_s(chunk=8192)
    msg = 8192 * model.hidden_size * 2
    ring = 2 * 63 / 64 * msg / (8 * cluster.inter_node_bw_gbps * 1e9 * eff)
    assert br["communication"] >= 2 * model.num_layers * ring
    # the same GPUs in one NVLink node would reduce faster: crossing nodes never helps
    tp8 = build_step_cost(model, gpu, Plan(tp=8, weight_dtype="fp8", kv_dtype="fp8"), make_cluster(gpu, 8))
    assert tp8.params["link_bytes_per_s"][0] > sc.params["link_bytes_per_s"][0]


def test_ring_crossings_one_per_further_node():
    from apex_plan.estimate.collectives import ring_crossings_latency_s
    assert ring_crossings_latency_s(1, 10e-6) == 0.0
    assert ring_crossings_latency_s(2, 10e-6) == pytest.approx(10e-6)
    assert ring_crossings_latency_s(8, 10e-6) == pytest.approx(70e-6)
    lat = [ring_crossings_latency_s(n, 1.0) for n in range(1, 17)]
    assert lat == sorted(lat) and lat[-1] == 15.0


def test_attention_dp_exchange_over_nodes_by_collective():
    # TRT-LLM's attention-DP all-gather (NCCL) spreads over every NIC of a node; DeepEP's all-to-all does not
    import dataclasses
    from apex_plan.engine.load import resolve_engine_profile
    model, gpu = load_model("deepseek-v3"), load_gpu("b200-sxm-180gb")
    cluster = make_cluster(gpu, 64)
    plan = Plan(tp=1, ep=8, adp=64, weight_dtype="fp4", kv_dtype="fp8")
    trt = resolve_engine_profile("trtllm")
    eff = gpu.calibration.link_efficiency
    gather = build_step_cost(model, gpu, plan, cluster, profile=trt)
    assert gather.params["a2a_rdma_bytes_per_s"][0] == pytest.approx(8 * cluster.inter_node_bw_gbps * 1e9 * eff)
    assert gather.params["a2a_latency_s"][0] == pytest.approx(
        gpu.calibration.alltoall_latency_us * 1e-6 + 7 * cluster.inter_node_latency_us * 1e-6)
    a2a = dataclasses.replace(trt, layouts=dataclasses.replace(trt.layouts, moe_dispatch="alltoall"))
    deepep = build_step_cost(model, gpu, plan, cluster, profile=a2a)
    assert deepep.params["a2a_rdma_bytes_per_s"][0] == pytest.approx(cluster.inter_node_bw_gbps * 1e9 * eff)
    assert deepep.params["a2a_latency_s"][0] == pytest.approx(
        gpu.calibration.alltoall_latency_us * 1e-6 + cluster.inter_node_latency_us * 1e-6)
