"""Build the per-plan inputs of the numba step-cost kernel, and a typed wrapper around it."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from apex_plan.engine.load import resolve_engine_profile
from apex_plan.engine.spec import EngineProfile
from apex_plan.estimate import kernels as K
from apex_plan.estimate.shard import Shard, build_shard, layer_scalars
from apex_plan.hardware.spec import ClusterSpec, GpuSpec
from apex_plan.model.spec import ModelSpec
from apex_plan.plan.spec import Plan
from apex_plan.units import dtype_bytes

CUSTOM_ALLREDUCE_MAX_BYTES = 8 * 1024 * 1024   # vLLM custom all-reduce buffer (max_size = 8 MiB)
DEFAULT_ENGINE = "vllm"                         # the newest vLLM profile when no engine is given
GRAPH_MODES = {"decode_only": 0.0, "piecewise": 1.0, "full": 2.0}


@dataclass(frozen=True, eq=False)
class StepCost:
    """Everything the step-cost kernel needs for one replica of one plan."""

    tables: np.ndarray     # (n_gemms, G_NCOL) float64
    scal: np.ndarray       # (S_N,) float64
    shard: Shard
    gpu: GpuSpec
    plan: Plan

    profile: EngineProfile | None = None

    def time_s(self, tokens: int, n_decode: int = 0, n_prefill: int = 0, pf_attn_work: float = 0.0,
               dec_ctx_tokens: float = 0.0, pf_ctx_tokens: float = 0.0, n_logits: int = 0,
               eager: bool = False) -> tuple[float, dict[str, float]]:
        """Seconds of one step and its breakdown (see `kernels.step_time`). eager=True forces every
        kernel to be host-launched; False follows the engine's CUDA-graph policy. The prefill
        tokens count as one chunk after pf_ctx_tokens - chunk cached tokens for attention tiling."""
        out = K.new_breakdown()
        c = int(tokens) - int(n_decode)
        cached_tokens = max(0, int(pf_ctx_tokens) - c)
        pad = float(K.padded_pairs(c, cached_tokens)) if n_prefill else 0.0
        t = K.step_time(self.tables, self.scal, int(tokens), int(n_decode), int(n_prefill), float(pf_attn_work),
                        float(dec_ctx_tokens), float(pf_ctx_tokens), int(n_logits), 1 if eager else 0, out,
                        pad, pad if cached_tokens > 0 else 0.0, float(K.q_tiles(c)) if n_prefill else 0.0)
        names = ("gemm", "attention", "communication", "elementwise", "embed_lm_head", "engine_host", "flops", "bytes",
                 "scheduler")
        return float(t), dict(zip(names, (float(x) for x in out)))

    def prefill_time_s(self, prompt_tokens: int, chunk: int | None = None) -> float:
        """Seconds to prefill one prompt alone, in chunks of `chunk` tokens (the engine's graph policy)."""
        chunk = chunk or prompt_tokens
        done, total = 0, 0.0
        while done < prompt_tokens:
            c = min(chunk, prompt_tokens - done)
            work = c * (done + (c + 1) / 2)       # causal query x key pairs of this chunk
            total += self.time_s(c, 0, 1, work, 0.0, done + c, 1 if done + c == prompt_tokens else 0, False)[0]
            done += c
        return total

    def decode_time_s(self, batch: int, context_tokens: int) -> float:
        """Seconds of one decode step of `batch` sequences of `context_tokens` each (CUDA graph)."""
        return self.time_s(batch, batch, 0, 0.0, float(batch * context_tokens), 0.0, batch, False)[0]


def build_step_cost(model: ModelSpec, gpu: GpuSpec, plan: Plan, cluster: ClusterSpec | None = None,
                    custom_allreduce: bool = True, shard: Shard | None = None, *, engine=None,
                    profile: EngineProfile | None = None, activation_scales: str | None = None) -> StepCost:
    """Fold model, plan, GPU physics and engine profile into the kernel's arrays.

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
    tables = np.zeros((len(shard.gemms), K.G_NCOL))
    for i, g in enumerate(shard.gemms):
        tables[i] = (g.k, g.n, g.w_bytes, g.kind, g.experts, g.route_frac, g.active_p)
    gpn = cluster.nvlink_gpus if cluster else 8      # GPUs reached over NVLink (a node, or an NVL72 rack)
    in_node = plan.tp <= gpn
    intra_bw = (cluster.intra_node_bw_gbps if cluster else gpu.intra_node_bw_gbps) * 1e9
    inter_bw = (cluster.inter_node_bw_gbps if cluster else 50.0) * 1e9
    link_bw = (intra_bw if in_node else inter_bw) * c.link_efficiency
    pp_cross = plan.tp * plan.pp > gpn
    coll = prof.collectives
    custom = (custom_allreduce and in_node and plan.tp in coll.custom_allreduce_tp and gpu.vendor.lower() == "nvidia")
    st = shard.largest_stage
    s = np.zeros(K.S_N)
    s[K.S_PEAK_FLOPS] = gpu.peak_flops(plan.weight_dtype if plan.weight_dtype in ("fp8", "fp4", "int8") else plan.act_dtype)
    s[K.S_ATTN_PEAK] = gpu.peak_flops(plan.act_dtype)
    s[K.S_BW] = gpu.mem_bw_gbps * 1e9
    s[K.S_CE] = c.compute_efficiency
    s[K.S_BE] = c.bandwidth_efficiency
    s[K.S_AE] = c.attention_efficiency
    s[K.S_KLAT] = c.kernel_latency_us * 1e-6
    s[K.S_EAGER] = host.eager_kernel_us * 1e-6
    s[K.S_AR_LAT_NCCL] = c.allreduce_latency_us * 1e-6 + (0.0 if in_node else (cluster.inter_node_latency_us if cluster else 10.0) * 1e-6)
    s[K.S_AR_LAT] = c.custom_allreduce_latency_us * 1e-6 if custom else s[K.S_AR_LAT_NCCL]
    s[K.S_AR_CUSTOM_MAX] = coll.custom_allreduce_max_bytes if custom else 0.0
    s[K.S_LINK_BW] = link_bw
    s[K.S_TP] = plan.tp
    s[K.S_PP] = plan.pp
    s[K.S_LAYERS_DENSE] = st.dense_layers
    s[K.S_LAYERS_MOE] = st.moe_layers
    s[K.S_HIDDEN] = model.hidden_size
    s[K.S_ACT_B] = dtype_bytes(plan.act_dtype)
    s[K.S_KV_TOK_B] = shard.kv_bytes_per_token_layer
    s[K.S_ATTN_FLOP_TOK] = shard.attn_flops_per_pair
    # W8A8 (fp8/int8 weights): the engine quantises each GEMM's input on the fly; with dynamic scales
    # a reduction pass finds the scale first (vLLM 0.6 scaled_fp8_quant: 3 kernels), static scales
    # need one quantise kernel, and fused kernels none
    q = prof.quantization
    quant = plan.weight_dtype in ("fp8", "int8") and not q.fused_activation_quant
    per_gemm = (q.kernels_per_gemm_dynamic if scales == "dynamic" else q.kernels_per_gemm_static) if quant else 0
    passes = (2.0 if scales == "dynamic" else 1.0) if quant else 0.0   # reads of the GEMM input
    # quantisation bytes per token: read each GEMM input (activation dtype) per pass, write it in 1 byte
    quant_b = sum(g.k for g in shard.gemms if g.kind in (0, 2)) * (passes * dtype_bytes(plan.act_dtype) + 1.0) if quant else 0.0
    s[K.S_ELEM_B_TOK] = shard.elem_bytes_per_token_layer + quant_b
    # kernels per layer: 2 norms, qkv, rotary, KV write, attention, o, all-reduce, gate_up, act, down, all-reduce
    n_quant_dense = 4 * per_gemm               # qkv, o, gate_up, down
    n_quant_moe = 5 * per_gemm                 # qkv, o, router input, two expert GEMMs
    s[K.S_KERNELS_DENSE] = 12 + n_quant_dense
    # MoE layer: router, top-k, align, 2 fused-MoE GEMMs, act, sum replace the 3 MLP kernels (+3 shared)
    s[K.S_KERNELS_MOE] = 16 + (3 if model.num_shared_experts else 0) + n_quant_moe
    s[K.S_ELEM_KERNELS] = 5 + (n_quant_dense if model.n_dense_layers else n_quant_moe)
    s[K.S_VOCAB_GPU] = shard.vocab_per_gpu
    s[K.S_HEAD_W_B] = dtype_bytes(plan.act_dtype)
    s[K.S_P2P_LAT] = c.p2p_latency_us * 1e-6 + ((cluster.inter_node_latency_us if cluster else 10.0) * 1e-6 if pp_cross else 0.0)
    s[K.S_P2P_BW] = (inter_bw if pp_cross else intra_bw) * c.link_efficiency
    s[K.S_EP] = plan.ep
    s[K.S_A2A] = 1.0 if plan.adp > 1 else 0.0
    s[K.S_A2A_LAT] = c.alltoall_latency_us * 1e-6
    s[K.S_A2A_BW] = link_bw
    s[K.S_MOE_IMB] = c.moe_imbalance
    s[K.S_TOPK] = model.experts_per_token
    s[K.S_STEP_OH] = host.step_ms * 1e-3
    s[K.S_SEQ_OH] = host.per_seq_ms * 1e-3
    s[K.S_PF_TOK_OH] = host.per_prefill_token_us * 1e-6
    s[K.S_OVERLAP] = host.overlap
    s[K.S_GRAPH_MODE] = GRAPH_MODES[prof.graphs.mode]
    s[K.S_GRAPH_MAX] = prof.graphs.max_batch
    s[K.S_EAGER_MIXED] = prof.graphs.eager_kernels_per_layer_mixed
    backend = prof.attention_backend(plan.kv_dtype)
    # decode KV reads: once per KV head with GQA sharing, else once per query head of its group
    s[K.S_DEC_KV_REREAD] = 1.0 if backend.gqa_shared_kv else max(1.0, shard.heads_per_gpu / shard.kv_heads_per_gpu)
    s[K.S_ATTN_HEADS] = shard.heads_per_gpu
    s[K.S_SMS] = gpu.num_sms
    s[K.S_AE_FRESH] = backend.prefill_efficiency_scale
    s[K.S_AE_PREFIX] = backend.prefix_efficiency_scale
    s = np.concatenate((s, layer_scalars(shard)))   # layer-kind counts of the largest stage (K.S_N + L_*)
    return StepCost(tables, s, shard, gpu, plan, prof)
