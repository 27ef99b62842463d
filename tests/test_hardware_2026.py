"""Blackwell, Blackwell Ultra, NVL72 racks and CDNA 3/4 profiles: datasheet figures, fp4 peaks,
the NVLink domain, and dtype rejections."""

from __future__ import annotations

import dataclasses

import pytest

from apex_plan.errors import InputError

from apex_plan.hardware.load import load_gpu, make_cluster
from apex_plan.estimate.step_cost import build_step_cost
from apex_plan.model.load import load_model
from apex_plan.plan.enumerate import enumerate_replica_plans
from apex_plan.plan.spec import Plan

NEW = ["b300-sxm-288gb", "gb200-nvl72", "gb300-nvl72", "mi325x", "mi355x"]
FP4 = {"b200-sxm-180gb": 9000, "b300-sxm-288gb": 13500, "gb200-nvl72": 10000, "gb300-nvl72": 15000, "mi355x": 10066.3}


@pytest.mark.parametrize("name", NEW)
def test_new_profiles_load_with_sources(name):
    gpu = load_gpu(name)
    assert gpu.source and gpu.peak_tflops["fp8"] == pytest.approx(2 * gpu.peak_tflops["bf16"], rel=1e-4)
    assert gpu.memory_bytes > 170 * 2**30 and gpu.mem_bw_gbps >= 6000


def test_fp4_peaks_where_the_chip_has_them():
    for name, tflops in FP4.items():
        assert load_gpu(name).peak_tflops["fp4"] == tflops
    for name in ("h100-sxm-80gb", "h200-sxm-141gb", "mi300x", "mi325x"):
        assert not load_gpu(name).supports("fp4")


def test_nvl72_is_one_nvlink_domain():
    gpu = load_gpu("gb200-nvl72")
    rack = make_cluster(gpu, 72)
    assert (rack.num_nodes, rack.gpus_per_node, rack.nvlink_gpus) == (18, 4, 72)   # 18 compute trays of 4 GPUs
    two_racks = make_cluster(gpu, 144)
    assert two_racks.nvlink_gpus == 72
    hgx = make_cluster(load_gpu("b300-sxm-288gb"), 16)
    assert hgx.nvlink_gpus == 8


def test_nvl72_trays_of_four():
    """--gpus 36 on an NVL72 rack is 9 trays of 4 (not 'whole nodes of 8'), all in one NVLink domain;
    an HGX board stays 8 GPUs a node; an explicit --gpus-per-node wins."""
    for name in ("gb200-nvl72", "gb300-nvl72"):
        half = make_cluster(load_gpu(name), 36)
        assert (half.num_nodes, half.gpus_per_node, half.nvlink_gpus) == (9, 4, 36)
    assert make_cluster(load_gpu("b200-sxm-180gb"), 16).gpus_per_node == 8
    assert make_cluster(load_gpu("gb200-nvl72"), 72, 8).num_nodes == 9
    with pytest.raises(InputError, match="do not fill whole nodes of 8"):
        make_cluster(load_gpu("b200-sxm-180gb"), 36)
    with pytest.raises(InputError, match="do not fill whole nodes of 4"):
        make_cluster(load_gpu("gb200-nvl72"), 38)


def test_tensor_parallel_spans_trays_inside_the_rack():
    model = load_model("qwen3-235b-a22b")
    plans, rejected, _ = enumerate_replica_plans(model, make_cluster(load_gpu("gb200-nvl72"), 72), ["fp8"], ["fp8"])
    assert any(p.tp == 16 for p in plans)                   # 16 GPUs of one rack: NVLink, no flag needed
    plans, rejected, _ = enumerate_replica_plans(model, make_cluster(load_gpu("h100-sxm-80gb"), 16), ["fp8"], ["fp8"])
    assert not any(p.tp == 16 for p in plans)
    assert any("tp=16 exceeds 8 GPUs per node" in r.reason for r in rejected)
    # the step cost of tp=16 in the rack reduces over NVLink, not the inter-node network
    rack = make_cluster(load_gpu("gb200-nvl72"), 72)
    sc = build_step_cost(model, rack.gpu, Plan(tp=16, weight_dtype="fp8", kv_dtype="fp8"), rack)
    nodes = dataclasses.replace(rack, nvlink_domain_gpus=0)     # the same GPUs as 8-GPU nodes on InfiniBand
    sc_ib = build_step_cost(model, nodes.gpu, Plan(tp=16, weight_dtype="fp8", kv_dtype="fp8"), nodes)
    assert sc.params["link_bytes_per_s"][0] == 900e9 * rack.gpu.calibration.link_efficiency
    # over InfiniBand NCCL runs a ring per NIC: each of a node's 4 NICs carries 1/4 of the ring traffic
    assert sc_ib.params["link_bytes_per_s"][0] == pytest.approx(
        min(4 * rack.inter_node_bw_gbps, 4 / 3 * 900) * 1e9 * rack.gpu.calibration.link_efficiency)
    assert sc.decode_time_s(64, 2048) < sc_ib.decode_time_s(64, 2048)


def test_missing_dtype_is_a_rejection_with_its_reason():
    model = load_model("llama-3.1-8b")
    a100 = make_cluster(load_gpu("a100-sxm-80gb"), 8)
    plans, rejected, _ = enumerate_replica_plans(model, a100, ["fp8"], ["bf16"])
    assert not plans and any("does not support weight dtype fp8" in r.reason for r in rejected)
    # 4-bit weights run weight-only (dequantised to bf16) where the tensor cores lack fp4 ...
    h100 = make_cluster(load_gpu("h100-sxm-80gb"), 8)
    plans, _, _ = enumerate_replica_plans(model, h100, ["fp4"], ["bf16"])
    assert plans
    # ... but a KV cache in fp4 needs the format itself
    plans, rejected, _ = enumerate_replica_plans(model, h100, ["bf16"], ["fp4"])
    assert not plans and any("does not support KV dtype fp4" in r.reason for r in rejected)


def test_linear_attention_heads_bound_tensor_parallelism():
    """Qwen3.5-397B: 16 Gated DeltaNet key heads, so tp=32 (which 32 query heads would allow) is out."""
    model = load_model("qwen3.5-397b-a17b")
    plans, rejected, _ = enumerate_replica_plans(model, make_cluster(load_gpu("gb300-nvl72"), 72), ["fp4"], ["fp8"])
    assert plans and max(p.tp for p in plans) == 16
    assert any("tp=32 does not divide 16 linear-attention key heads" in r.reason for r in rejected)
