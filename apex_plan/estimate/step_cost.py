"""Build the per-plan records of the numba step-cost kernel (by name), and a typed wrapper around it.

`build_step_cost` fills the `COST` record and the `OP` table of `apex_plan.abi` field by field;
`StepCost.time_s` costs any batch through the same `aggregate` + `step_time` the simulator runs.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from apex_plan.abi import COST, GEMM_ATTENTION, GEMM_DENSE_MLP, GEMM_ROUTED_EXPERTS, GRAPH_MODES, CostTables, make_record
from apex_plan.engine.load import resolve_engine_profile
from apex_plan.engine.spec import EngineProfile
from apex_plan.estimate import kernels as K
from apex_plan.estimate import moe as MOE
from apex_plan.estimate.collectives import multi_node_latency_s, multi_rail_bus_bytes_per_s, ring_crossings_latency_s
from apex_plan.estimate.mixers import op_table
from apex_plan.estimate.gemms import Gemm
from apex_plan.estimate.shard import Shard, build_shard
from apex_plan.hardware.formats import compute_dtype, gemm_shape
from apex_plan.hardware.spec import ClusterSpec, GpuSpec
from apex_plan.model import spec as S
from apex_plan.model.spec import ModelSpec
from apex_plan.plan.spec import Plan, expert_slots
from apex_plan.units import dtype_bytes

CUSTOM_ALLREDUCE_MAX_BYTES = 8 * 1024 * 1024   # vLLM custom all-reduce buffer (max_size = 8 MiB)
DEFAULT_ENGINE = "vllm"                         # the newest vLLM profile when no engine is given
DEFAULT_INTER_NODE_BW_GBPS = 50.0               # 400 Gb/s InfiniBand NDR per GPU, without a cluster file
DEFAULT_INTER_NODE_LATENCY_US = 10.0            # added latency of a collective crossing nodes, without a cluster file


@dataclass(frozen=True, eq=False)
class StepCost:
    """Everything the step-cost kernel needs for one replica of one plan."""

    cost: CostTables       # the COST record and OP table the kernels read
    shard: Shard
    gpu: GpuSpec
    plan: Plan

    profile: EngineProfile | None = None

    @property
    def params(self) -> np.ndarray:
        """The COST record (length-1 structured array): `sc.params["tp"][0]`."""
        return self.cost.params

    def time_s(self, batch: np.ndarray, eager: bool = False) -> tuple[float, dict[str, float]]:
        """Seconds of one step of a `BATCH` table (see `kernels.make_batch`) and its breakdown.
        eager=True forces every kernel to be host-launched; False follows the engine's graph policy."""
        t, br = K.batch_step_time(self.cost, batch, 1 if eager else 0)
        return float(t), {k: float(v) for k, v in br._asdict().items()}

    def replica_step_s(self, rank_batches: list[np.ndarray], eager: bool = False, pad_tokens: int = 0) -> float:
        """Seconds of one lock-step step of an attention-DP replica whose ranks run these `BATCH`
        tables (one per rank; an empty table for an idle rank): the busiest rank's time, every rank
        pushing the replica's mean tokens through the experts, or the busiest rank's when those are at
        most `pad_tokens` (the engine pads every rank to them: as `simulate.kernels.lockstep_step`)."""
        tokens = [int((b["new_tokens"] * b["count"]).sum()) if b.size else 0 for b in rank_batches]
        moe_m = sum(tokens) / max(len(rank_batches), 1)
        if tokens and max(tokens) <= pad_tokens:   # every rank padded to the busiest rank's tokens (vLLM DP)
            moe_m = float(max(tokens))
        return max((float(K.rank_batch_step_time(self.cost, b, 1 if eager else 0, moe_m)[0])
                    for b in rank_batches if b.size), default=0.0)

    def step_s(self, decodes: int = 0, context: int = 0, chunk: int = 0, cached: int = 0, samples: bool = True,
               eager: bool = False) -> tuple[float, dict[str, float]]:
        """`time_s` of `decodes` decodes at `context` tokens plus one chunk of `chunk` after `cached`."""
        return self.time_s(K.make_batch(decodes, context, chunk, cached, samples), eager)

    def prefill_time_s(self, prompt_tokens: int, chunk: int | None = None) -> float:
        """Seconds to prefill one prompt alone, in chunks of `chunk` tokens (the engine's graph policy)."""
        chunk = chunk or prompt_tokens
        done, total = 0, 0.0
        while done < prompt_tokens:
            c = min(chunk, prompt_tokens - done)
            total += self.step_s(chunk=c, cached=done, samples=done + c == prompt_tokens)[0]
            done += c
        return total

    def decode_time_s(self, batch: int, context_tokens: int) -> float:
        """Seconds of one decode step of `batch` sequences of `context_tokens` each (CUDA graph)."""
        return self.step_s(decodes=batch, context=context_tokens)[0]


def gemm_rates(gpu: GpuSpec, act_dtype: str, family: str = ""):
    """OP-row rates of a weight GEMM on `gpu`: the dense peak of the tensor cores its own weight format runs
    on (a mixed checkpoint's components each at theirs: bf16 attention beside fp4 experts runs at the bf16
    peak), at the calibration's efficiency, bandwidth and fixed time per call; a dense GEMM whose format has a
    measured shape term (`gemm_shapes:`, scripts/fit_gemm_shapes.py) at its compute efficiency plus its K-depth
    overhead per output tile and its weight bytes at its memory-bound ratio to bf16; routed experts at the
    fused-MoE kernel engine `family` runs, where measured
    (estimate.moe.expert_rates), else at the calibration's figures."""
    c = gpu.calibration
    bw = gpu.mem_bw_gbps * 1e9

    def rates(g: Gemm) -> dict:
        if g.kind == GEMM_ROUTED_EXPERTS:
            own = MOE.expert_rates(gpu, family, g)
            if own is not None:
                return own
        shape = gemm_shape(gpu, g.fmt, act_dtype) if g.kind != GEMM_ROUTED_EXPERTS else None
        return dict(peak_flops_per_s=gpu.peak_flops(compute_dtype(gpu, g.fmt, act_dtype)),
                    efficiency=shape.compute_efficiency if shape else c.compute_efficiency,
                    k_overhead=shape.k_overhead if shape else 0.0,
                    # weight bytes at the calibration's bytes/s, scaled by the format's small-M ratio to bf16's
                    bytes_per_s=bw * c.bandwidth_efficiency * (shape.bandwidth_ratio if shape else 1.0),
                    latency_s=c.kernel_latency_us * 1e-6)
    return rates


def attention_rates(gpu: GpuSpec, fa2_prefill: bool = False, family: str = ""):
    """OP-row rates of attention on `gpu` (prefill and decode efficiency, decode KV bytes/s, fixed time per
    call): the calibration's, MLA rows included (their prefill runs the expanded form, see build_shard);
    prefill at engine `family`'s measured prefill-attention kernel on the chip (Calibration.prefill_attention_for),
    or for a backend of FlashAttention-2 kernels (`fa2_prefill`) at the calibration's attention_efficiency."""
    c = gpu.calibration
    bw = gpu.mem_bw_gbps * 1e9

    mla = gpu.kernel_formats.mla

    def rates(latent: bool) -> dict:
        # MLA prefill (expanded form) at the GPU's fitted MLA context efficiency when its tables have one (ratio to
        # H100's attention_efficiency, as that figure: both unchanged); other attention at the engine's kernel
        if latent:
            pf = mla.prefill_efficiency if mla is not None else c.attention_efficiency
        else:
            pf = c.attention_efficiency if fa2_prefill else c.prefill_attention_for(family)
        return dict(efficiency=pf, decode_efficiency=c.attention_efficiency,
                    bytes_per_s=bw * c.bandwidth_efficiency, latency_s=c.kernel_latency_us * 1e-6)
    return rates


def layer_fields(shard: Shard) -> dict:
    """COST fields of the largest stage's layer counts (each mixer's count is on its OP rows)."""
    st = shard.largest_stage
    return dict(dense_layers=st.dense_layers, moe_layers=st.moe_layers, mlp_free_layers=st.mlp_free_layers,
                mixerless_layers=st.count(S.NO_MIXER), latent_layers=st.count(S.MLA, S.SPARSE),
                window_tokens=shard.window, topk_tokens=shard.topk_tokens,
                window2_tokens=shard.window2,
                attn_heads=shard.heads_per_gpu)


def _shot_fields(c, family: str, intra_bw: float, custom: bool) -> dict:
    """COST fields of the engine's one-shot / two-shot custom all-reduce on this chip (0: the ring term alone)."""
    shots = c.custom_allreduce_shots(family) if custom else None
    if shots is None:
        return dict(allreduce_one_shot_bytes_per_s=0.0, allreduce_two_shot_latency_s=0.0,
                    allreduce_two_shot_bytes_per_s=0.0)
    one_eff, two_lat_us, two_eff = shots
    return dict(allreduce_one_shot_bytes_per_s=intra_bw * one_eff, allreduce_two_shot_latency_s=two_lat_us * 1e-6,
                allreduce_two_shot_bytes_per_s=intra_bw * two_eff)


def link_fields(gpu: GpuSpec, plan: Plan, cluster: ClusterSpec | None, prof: EngineProfile,
                custom_allreduce: bool) -> dict:
    """COST fields of the collectives: all-reduce, all-to-all and pipeline links."""
    c = gpu.calibration
    gpn = cluster.nvlink_gpus if cluster else 8      # GPUs reached over NVLink (a node, or an NVL72 rack)
    in_node = plan.tp <= gpn
    intra_bw = (cluster.intra_node_bw_gbps if cluster else gpu.intra_node_bw_gbps) * 1e9
    inter_bw = (cluster.inter_node_bw_gbps if cluster else DEFAULT_INTER_NODE_BW_GBPS) * 1e9
    inter_lat_s = (cluster.inter_node_latency_us if cluster else DEFAULT_INTER_NODE_LATENCY_US) * 1e-6
    link_bw = (intra_bw if in_node else multi_rail_bus_bytes_per_s(intra_bw, inter_bw, gpn)) * c.link_efficiency
    pp_cross = plan.tp * plan.pp > gpn
    coll = prof.collectives
    custom = (custom_allreduce and in_node and plan.tp in coll.custom_allreduce_tp and gpu.vendor.lower() == "nvidia")
    nodes = -(-plan.tp // gpn)                       # NVLink domains the tensor-parallel group spans
    kernel = coll.allreduce_kernel or prof.family    # whose measured custom kernel runs the small messages
    nccl_s = c.allreduce_latency_us * 1e-6 + multi_node_latency_s(nodes, inter_lat_s)
    return dict(
        allreduce_nccl_latency_s=nccl_s,
        # each engine runs its own one-shot kernel (vLLM custom_all_reduce.cu, SGLang's, TRT-LLM allReduceFusion),
        # measured per chip: its small-message latency, the GPU's figure when the engine's is not known
        allreduce_latency_s=c.custom_allreduce_us(kernel) * 1e-6 if custom else nccl_s,
        custom_allreduce_max_bytes=coll.custom_allreduce_max_bytes if custom else 0.0,
        link_bytes_per_s=link_bw,
        **_shot_fields(c, kernel, intra_bw, custom),
        p2p_latency_s=c.p2p_latency_us * 1e-6 + (inter_lat_s if pp_cross else 0.0),
        p2p_bytes_per_s=(inter_bw if pp_cross else intra_bw) * c.link_efficiency,
    )


def moe_fields(model: ModelSpec, gpu: GpuSpec, plan: Plan, cluster: ClusterSpec | None, prof: EngineProfile) -> dict:
    """COST fields of the MoE layers' expert load and token exchange (`apex_plan.estimate.moe`)."""
    c = gpu.calibration
    ranks = plan.tp * plan.adp                       # GPUs of a stage the MoE spans
    domain = cluster.nvlink_gpus if cluster else (gpu.nvlink_domain_gpus or gpu.gpus_per_node)
    dom = min(ranks, domain)                         # of them, the GPUs sharing this GPU's NVLink domain
    intra_bw = (cluster.intra_node_bw_gbps if cluster else gpu.intra_node_bw_gbps) * 1e9
    inter_bw = (cluster.inter_node_bw_gbps if cluster else DEFAULT_INTER_NODE_BW_GBPS) * 1e9
    inter_lat_s = (cluster.inter_node_latency_us if cluster else DEFAULT_INTER_NODE_LATENCY_US) * 1e-6
    E, k = (model.num_experts, model.experts_per_token) if model.is_moe else (1, 1)
    # a system whose NVLink fabric spans nodes (NVL72: 72 GPUs over trays of 4), where TRT-LLM's MNNVL all-to-all runs
    mnnvl = ((cluster.nvlink_domain_gpus if cluster else gpu.nvlink_domain_gpus) or 0) > (
        cluster.gpus_per_node if cluster else gpu.gpus_per_node)
    dispatch, decode_kernel = prof.layouts.dispatch(plan.ep, k, mnnvl)
    kind = MOE.A2A_KINDS[dispatch] if (model.is_moe and plan.adp > 1) else MOE.A2A_NONE
    # dispatched activations: quantised to fp8 with 128-element block scales under fp8/fp4 weights
    # (DeepSeek-V3 report sec. 3.3: FP8 dispatch, BF16 combine; TRT-LLM quantises before its AllGather)
    quant = plan.weight_dtype in ("fp8", "fp4")
    return dict(
        a2a_kind=kind, a2a_ranks=ranks, a2a_domain_gpus=dom,
        a2a_latency_s=c.alltoall_latency_us * 1e-6 + _exchange_network_latency_s(kind, -(-ranks // dom), inter_lat_s),
        a2a_bytes_per_s=intra_bw * c.link_efficiency,
        # NCCL's all-gather / all-reduce (allgather, dp_buffer) run a ring per NIC across domains, so every NIC of a
        # domain carries the exchange; DeepEP's all-to-all sends each GPU's tokens through its own NIC
        a2a_rdma_bytes_per_s=(inter_bw if kind == MOE.A2A_ALLTOALL else
                              multi_rail_bus_bytes_per_s(intra_bw, inter_bw, domain)) * c.link_efficiency,
        a2a_dispatch_bytes=1.0 + MOE.FP8_BLOCK_SCALE_BYTES if quant else dtype_bytes(plan.act_dtype),
        a2a_rank_copies=MOE.expected_rank_copies(expert_slots(E, plan.ep), k, plan.ep),
        a2a_ll_decode=1.0 if decode_kernel == "low_latency" else 0.0,
        moe_imbalance=MOE.popularity_skew(c.moe_imbalance, plan.ep),
        ep_max_z=MOE.expected_max_z(plan.ep),
    )


def _exchange_network_latency_s(kind: float, domains: int, inter_lat_s: float) -> float:
    """Network latency a MoE token exchange over `domains` NVLink domains adds: DeepEP's all-to-all one crossing,
    NCCL's all-gather ring one per further domain, the DP buffer's all-reduce NCCL's tree."""
    if domains <= 1:
        return 0.0
    if kind == MOE.A2A_ALLGATHER:
        return ring_crossings_latency_s(domains, inter_lat_s)
    if kind == MOE.A2A_DP_BUFFER:
        return multi_node_latency_s(domains, inter_lat_s)
    return inter_lat_s


def _variant_share(shard: Shard, g) -> float:
    """1 for a GEMM every layer of its kind runs; for one of a kind's per-layer variants (DeciLM FFN widths,
    KV heads) the share of the largest stage's variant layers running it."""
    if not g.layer_attr:
        return 1.0
    st = shard.largest_stage
    peers = sum(st.gemm_layers(x) for x in shard.gemms if x.kind == g.kind and x.layer_attr == g.layer_attr)
    return st.gemm_layers(g) / peers if peers else 0.0


# the kernel that produces each quantised GEMM input of a layer (a fused engine quantises in it):
# RMSNorm feeds qkv, gate_up and the router, the attention output feeds o, SiLU-and-mul feeds down
QUANT_PRODUCERS = ("norm", "activation", "attention")
DENSE_QUANT_INPUTS = ("norm", "attention", "norm", "activation")            # qkv, o, gate_up, down
# MoE layer: the attention GEMMs' inputs only. The router runs in bf16 (recipes leave it unquantised:
# model.quant), and the fused-MoE op quantises the experts' inputs inside itself, which the per-op MoE tables
# time whole (vLLM fused_moe/fused_moe.py fused_experts_impl: moe_kernel_quantize_input before each grouped
# GEMM; SGLang fused_moe_triton/fused_moe.py per_token_group_quant_fp8; TRT-LLM's fused_moe op for block scales)
MOE_QUANT_INPUTS = ("norm", "attention")                                    # qkv, o


def gemm_input_producer(g: Gemm) -> str:
    """The kernel whose output is `g`'s input: the attention output (o, o_a), the activation (down), another
    GEMM (o_b after o_a: never fused), else a norm."""
    if g.name in ("o", "o_a"):
        return "attention"
    return "activation" if g.name.startswith("down") else "gemm" if g.name == "o_b" else "norm"


def fused_producers(q, block: bool) -> frozenset:
    """Producers that quantise their output for the next GEMM (`q`: the profile's quantization section).
    Block-scaled fp8 (1x128 activation scales) takes its own quantise kernel even on engines that fuse
    per-tensor quantisation (TRT-LLM _torch/modules/linear.py FP8BlockScalesLinearMethod.apply:
    fp8_quantize_1x128 before fp8_block_scaling_gemm)."""
    if block:
        return frozenset()
    return frozenset(QUANT_PRODUCERS if q.fused_activation_quant else q.fused_quant_producers)


def kernel_count_fields(model: ModelSpec, plan: Plan, shard: Shard, prof: EngineProfile, scales: str) -> dict:
    """COST fields of the kernels per layer and the activation-quantisation bytes."""
    # W8A8 (fp8/int8 weights): the engine quantises each GEMM's input on the fly; with dynamic scales
    # a reduction pass finds the scale first (vLLM 0.6 scaled_fp8_quant: 3 kernels), static scales
    # need one quantise kernel, and an input whose producer fuses the quantisation none
    q = prof.quantization
    block = any(g.fmt == "fp8-block" for g in shard.gemms if g.kind in (GEMM_ATTENTION, GEMM_DENSE_MLP))
    fused = fused_producers(q, block)
    quant = plan.weight_dtype in ("fp8", "int8")
    per_gemm = (q.kernels_per_gemm_dynamic if scales == "dynamic" else q.kernels_per_gemm_static) if quant else 0
    passes = (2.0 if scales == "dynamic" else 1.0) if quant else 0.0   # reads of the GEMM input
    # quantisation bytes per token: read each unfused GEMM input (activation dtype) per pass, write it in 1 byte
    quant_k = sum(g.k * _variant_share(shard, g) for g in shard.gemms
                  if g.kind in (GEMM_ATTENTION, GEMM_DENSE_MLP) and gemm_input_producer(g) not in fused)
    quant_b = quant_k * (passes * dtype_bytes(plan.act_dtype) + 1.0) if quant else 0.0
    # kernels per layer: 2 norms, qkv, rotary, KV write, attention, o, all-reduce, gate_up, act, down, all-reduce
    n_quant_dense = per_gemm * sum(p not in fused for p in DENSE_QUANT_INPUTS)
    n_quant_moe = per_gemm * sum(p not in fused for p in MOE_QUANT_INPUTS)
    return dict(
        elem_bytes_per_token=shard.elem_bytes_per_token_layer + quant_b,
        kernels_per_dense_layer=12 + n_quant_dense,
        # MoE layer: router, top-k, align, 2 fused-MoE GEMMs, act, sum replace the 3 MLP kernels (+3 shared)
        kernels_per_moe_layer=16 + (3 if model.num_shared_experts else 0) + n_quant_moe,
        elem_kernels_per_layer=5 + (n_quant_dense if model.n_dense_layers else n_quant_moe),
    )


def build_step_cost(model: ModelSpec, gpu: GpuSpec, plan: Plan, cluster: ClusterSpec | None = None,
                    custom_allreduce: bool = True, shard: Shard | None = None, *, engine=None,
                    profile: EngineProfile | None = None, activation_scales: str | None = None) -> StepCost:
    """Fold model, plan, GPU physics and engine profile into the kernel's records.

    `engine`: a ResolvedEngine (its profile, activation scales and custom all-reduce choice win);
    else `profile` (default: the newest vLLM profile). `shard`: a precomputed
    `build_shard(model, plan)`, e.g. memoised across plans sharing a (tp, ep, dtype) layer shard."""
    if engine is not None:
        profile = engine.profile
        activation_scales = engine.activation_scales
        custom_allreduce = custom_allreduce and engine.custom_allreduce
    prof = profile or resolve_engine_profile(DEFAULT_ENGINE)
    scales = activation_scales or prof.quantization.activation_scales
    c = gpu.calibration
    host = prof.host
    shard = shard or build_shard(model, plan)
    backend = prof.attention_backend(plan.kv_dtype)
    weight_peak_dtype = plan.weight_dtype if plan.weight_dtype in ("fp8", "fp4", "int8") else plan.act_dtype
    params = make_record(
        COST,
        gemm_peak_flops_per_s=gpu.peak_flops(weight_peak_dtype),
        attn_peak_flops_per_s=gpu.peak_flops(plan.act_dtype),
        hbm_bytes_per_s=gpu.mem_bw_gbps * 1e9,
        gemm_efficiency=c.compute_efficiency,
        hbm_efficiency=c.bandwidth_efficiency,
        attn_efficiency=c.attention_efficiency,
        kernel_latency_s=c.kernel_latency_us * 1e-6,
        eager_launch_s=host.eager_kernel_us * 1e-6, eager_latent_layer_s=host.eager_latent_layer_us * 1e-6,
        tp=plan.tp, pp=plan.pp, ep=plan.ep,
        hidden=model.hidden_size,
        act_bytes=dtype_bytes(plan.act_dtype),
        vocab_per_gpu=shard.vocab_per_gpu,
        head_weight_bytes=dtype_bytes(plan.act_dtype),
        experts_per_token=model.experts_per_token,
        host_step_s=host.step_ms * 1e-3,
        host_per_seq_s=host.per_seq_ms * 1e-3,
        host_per_prefill_token_s=host.per_prefill_token_us * 1e-6,
        host_overlap=host.overlap,
        graph_mode=GRAPH_MODES[prof.graphs.mode],
        graph_max=prof.graphs.max_batch,
        eager_kernels_mixed=prof.graphs.eager_kernels_per_layer_mixed,
        sms=gpu.num_sms,
        attn_scale_fresh=backend.prefill_efficiency_scale,
        attn_scale_prefix=backend.prefix_efficiency_scale,
        **link_fields(gpu, plan, cluster, prof, custom_allreduce),
        **moe_fields(model, gpu, plan, cluster, prof),
        **kernel_count_fields(model, plan, shard, prof, scales),
        **layer_fields(shard),
    )
    # decode KV reads: once per KV head with GQA sharing, else once per query head of its group
    rereads = 1.0 if backend.gqa_shared_kv else max(1.0, shard.heads_per_gpu / shard.kv_heads_per_gpu)
    ops = op_table(shard, gemm_rates(gpu, plan.act_dtype, prof.family), attention_rates(gpu, backend.fa2_prefill, prof.family),
                   rereads)
    return StepCost(CostTables(params, ops), shard, gpu, plan, prof)
