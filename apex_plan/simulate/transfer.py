"""KV-cache transfer from prefill to decode instances: bytes per request and the link between ranks.

Bytes: what the prefill instance computed for the prompt and the decode instance needs to go on,
exactly as the memory model counts it (`apex_plan.model.kv.kv_cache_bytes_per_seq`): every
token's KV in full and sparse attention layers (plus the sparse indexer's keys), at most the window
in sliding / chunked layers, and the fixed recurrent state of linear-attention and Mamba layers.

Links: instances are laid out on consecutive GPUs (prefill instances first, then decode ones; in an
instance, pipeline stage, then attention-DP rank, then tensor-parallel GPU). A prefill rank and a
decode rank whose GPUs all sit in one NVLink domain (a node, or an NVL72 rack) move KV over NVLink
(the cluster's intra-node bandwidth and latency), others over RDMA (its inter-node bandwidth per
GPU NIC and latency), both at the GPU profile's achievable link fraction. Each GPU has its own NIC
(DGX/HGX H100/H200/B200: one 400 Gb/s ConnectX-7 per GPU), so a rank moves its bytes over all its
GPUs' links at once, and the bytes on the busiest link set the time.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from apex_plan.hardware.spec import ClusterSpec
from apex_plan.model.kv import kv_cache_bytes_per_seq
from apex_plan.model.spec import ModelSpec
from apex_plan.plan.disagg import DisaggPlan
from apex_plan.plan.spec import Plan


def kv_transfer_bytes(model: ModelSpec, kv_dtype: str, prompt_tokens: np.ndarray, act_dtype: str = "bf16") -> np.ndarray:
    """Bytes of KV cache and recurrent state one request's prompt leaves behind (all layers, one copy)."""
    lengths, inverse = np.unique(np.asarray(prompt_tokens, dtype=np.int64), return_inverse=True)
    per_len = np.array([kv_cache_bytes_per_seq(model, kv_dtype, int(n), act_dtype) for n in lengths], dtype=np.float64)
    return per_len[inverse.reshape(-1)]


def kv_head_fraction(model: ModelSpec, tp: int) -> float:
    """Share of a request's KV one GPU of a tp group holds: its KV heads' share (GQA, heads replicated
    when tp exceeds them), or all of it for MLA's latent cache (replicated on every tp GPU)."""
    if model.attention == "mla" or model.num_kv_heads <= 0:
        return 1.0
    return math.ceil(model.num_kv_heads / tp) / model.num_kv_heads


def nic_bytes(model: ModelSpec, prefill: Plan, decode: Plan, total_bytes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(bytes on each sending GPU's link, bytes on each receiving GPU's link) per request.

    Every decode GPU receives its own shard: its KV heads' share of its stage's layers (pp stages
    split the layers evenly). The copies all decode GPUs need (tp x that share, over the stages) are
    spread evenly over the prefill rank's tp x pp GPUs, which all hold what they send (MLA) or
    their own heads' part of it."""
    recv_share = kv_head_fraction(model, decode.tp) / decode.pp            # of one request's bytes, per decode GPU
    copies = decode.tp * kv_head_fraction(model, decode.tp)                 # tp GPUs each receiving its head share
    send_share = copies / (prefill.tp * prefill.pp)                         # per prefill GPU
    return total_bytes * send_share, total_bytes * recv_share


@dataclass(frozen=True, eq=False)
class Links:
    """Per (prefill rank, decode rank) pair: achievable bandwidth (bytes/s) and latency (s);
    over_nvlink says which pairs share an NVLink domain."""

    bw_bytes_per_s: np.ndarray
    latency_s: np.ndarray
    over_nvlink: np.ndarray


def _rank_gpus(plan: Plan, base: int) -> list[np.ndarray]:
    """GPU indices of each attention rank (replica-major, then rank) of `plan`'s instances from GPU `base`."""
    per = plan.gpus_per_replica
    out = []
    for rep in range(plan.dp):
        start = base + rep * per
        for a in range(plan.adp):
            gpus = [start + s * plan.adp * plan.tp + a * plan.tp + t for s in range(plan.pp) for t in range(plan.tp)]
            out.append(np.array(gpus, dtype=np.int64))
    return out


def rank_links(cluster: ClusterSpec, dp: DisaggPlan, decode_first_gpu: int | None = None,
               prefill_first_gpu: int = 0) -> Links:
    """Links between every prefill attention rank and every decode attention rank. `decode_first_gpu`:
    where the decode instances start (default: right after the prefill ones; a search places the pools
    with `rank.disagg.placement`), `prefill_first_gpu` where the prefill ones do."""
    dom = max(cluster.nvlink_gpus, 1)
    eff = cluster.gpu.calibration.link_efficiency
    pr = _rank_gpus(dp.prefill, prefill_first_gpu)
    dr = _rank_gpus(dp.decode, dp.prefill.num_gpus if decode_first_gpu is None else decode_first_gpu)
    nv = np.zeros((len(pr), len(dr)), dtype=bool)
    for i, pg in enumerate(pr):
        pdom = set((pg // dom).tolist())
        for j, dg in enumerate(dr):
            nv[i, j] = len(pdom | set((dg // dom).tolist())) == 1
    bw = np.where(nv, cluster.intra_node_bw_gbps, cluster.inter_node_bw_gbps) * 1e9 * eff
    lat = np.where(nv, cluster.intra_node_latency_us, cluster.inter_node_latency_us) * 1e-6
    return Links(bw.astype(np.float64), lat.astype(np.float64), nv)
