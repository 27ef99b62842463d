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


# ---- each engine's custom all-reduce inside a node: one-shot or two-shot, whichever is faster -------------------

def _ar_s(gpu_name: str, family: str, tp: int, msg_bytes: float) -> float:
    from apex_plan.engine.load import resolve_engine_profile
    from apex_plan.estimate.kernels import _allreduce_s
    gpu = load_gpu(gpu_name)
    sc = build_step_cost(load_model("llama-3.1-70b"), gpu, Plan(tp=tp, weight_dtype="fp8"), make_cluster(gpu, 8),
                         profile=resolve_engine_profile(family))
    return float(_allreduce_s(sc.params[0], msg_bytes))


def test_one_shot_allreduce_reads_every_peer():
    """B200 TRT-LLM, 1 MiB at TP8 (64 decode tokens x 8192 x bf16): a one-shot kernel reads 7 x the message, so it
    takes the profile latency + 7 MiB / (NVLink x its fraction); aiconfigurator-core's trtllm 1.3.0rc20 table
    measures 17.8 us (+ the in-service excess), where the ring term 2 x 7/8 x 1 MiB would give ~4 us of transfer."""
    gpu = load_gpu("b200-sxm-180gb")
    c = gpu.calibration
    one_eff, _, _ = c.custom_allreduce_shots("trtllm")
    t = _ar_s("b200-sxm-180gb", "trtllm", 8, 2.0 ** 20)
    one_s = c.custom_allreduce_us("trtllm") * 1e-6 + 7 * 2.0 ** 20 / (900e9 * one_eff)
    # NCCL's ring is as fast there (its table: 20.4 us), and the step never pays more than NCCL would
    nccl_s = c.allreduce_latency_us * 1e-6 + 2 * 7 / 8 * 2.0 ** 20 / (900e9 * c.link_efficiency)
    assert t == pytest.approx(min(one_s, nccl_s))
    assert 17.8e-6 < t < 17.8e-6 + 4e-6
    ring_s = c.custom_allreduce_us("trtllm") * 1e-6 + 2 * 7 / 8 * 2.0 ** 20 / (900e9 * c.link_efficiency)
    assert t - ring_s > 5e-6                 # the ring term alone (the old model) misses the table by 6-8 us
    # at two ranks one-shot reads one peer's buffer: the table's 6.4 us + the excess
    assert _ar_s("b200-sxm-180gb", "trtllm", 2, 2.0 ** 20) < 10e-6


@pytest.mark.parametrize("gpu_name", ["h100-sxm-80gb", "h200-sxm-141gb", "b200-sxm-180gb"])
@pytest.mark.parametrize("family", ["vllm", "sglang", "trtllm"])
def test_custom_allreduce_grows_with_size_and_ranks(gpu_name, family):
    """Over 1 KiB - 64 MiB the all-reduce never gets cheaper with more bytes (across the custom kernel's limit to
    NCCL too) or with more ranks."""
    sizes = [2.0 ** k for k in range(10, 27)]
    prev_tp = None
    for tp in (2, 4, 8):
        ts = [_ar_s(gpu_name, family, tp, b) for b in sizes]
        assert all(b >= a for a, b in zip(ts, ts[1:]))
        if prev_tp is not None:
            assert all(t >= u for t, u in zip(ts, prev_tp))
        prev_tp = ts
