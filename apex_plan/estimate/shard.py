"""What one GPU holds and computes under a plan: per-GPU GEMM shapes, parameters, KV bytes.

All layers of a kind are identical, so one dense layer and one MoE layer are described and the
layer counts of the largest pipeline stage multiply them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from apex_plan.model.spec import ModelSpec
from apex_plan.plan.spec import Plan
from apex_plan.units import dtype_bytes

# GEMM kinds (see apex_plan.estimate.kernels, column G_MOE)
EVERY_LAYER, ROUTED_EXPERTS, DENSE_MLP, MOE_DENSE_PART = 0, 1, 2, 3


@dataclass(frozen=True)
class Gemm:
    """One weight GEMM on one GPU: y[M, n] = x[M, k] @ W[k, n]."""

    name: str
    k: int
    n: int
    kind: int
    experts: int = 0          # routed experts held on this GPU (kind ROUTED_EXPERTS)
    route_frac: float = 0.0   # expert-token copies reaching this GPU per input token
    active_p: float = 0.0     # chance that one token picks a given expert (topk / experts)
    copies: int = 1           # identical GEMMs (experts) on this GPU: weights = copies * k * n

    @property
    def weight_params(self) -> int:
        return self.copies * self.k * self.n


@dataclass(frozen=True)
class Stage:
    """Layers of one pipeline stage."""

    dense_layers: int
    moe_layers: int
    has_embedding: bool
    has_lm_head: bool

    @property
    def layers(self) -> int:
        return self.dense_layers + self.moe_layers


@dataclass(frozen=True)
class Shard:
    """Per-GPU view of one model replica under `plan`."""

    gemms: tuple[Gemm, ...]
    stages: tuple[Stage, ...]
    heads_per_gpu: float
    kv_heads_per_gpu: int
    attn_flops_per_pair: float       # attention FLOPs per (query token x context token) per layer
    kv_bytes_per_token_layer: float  # KV cache bytes per token per layer on one GPU
    elem_bytes_per_token_layer: float  # elementwise-kernel bytes per token per layer on one GPU
    norm_params_per_layer: int
    vocab_per_gpu: int

    def layer_weight_params(self, kind_filter: tuple[int, ...]) -> int:
        return sum(g.weight_params for g in self.gemms if g.kind in kind_filter)

    @property
    def largest_stage(self) -> Stage:
        """The stage with the most layers (MoE layers breaking ties): it sets the pipeline's pace."""
        return max(self.stages, key=lambda s: (s.layers, s.moe_layers))


def split_layers(model: ModelSpec, pp: int) -> tuple[Stage, ...]:
    """Contiguous, as-even-as-possible split of the layers into pp stages (earlier stages take the
    remainder); dense layers come first, as in DeepSeek-V3 (first_k_dense_replace)."""
    base, extra = divmod(model.num_layers, pp)
    stages, start = [], 0
    for s in range(pp):
        n = base + (1 if s < extra else 0)
        end = start + n
        dense = max(0, min(end, model.n_dense_layers) - start)
        stages.append(Stage(dense, n - dense, s == 0, s == pp - 1))
        start = end
    return tuple(stages)


def build_shard(model: ModelSpec, plan: Plan) -> Shard:
    """Per-GPU GEMMs and sizes of one replica of `model` under `plan` (tp, pp, ep)."""
    tp, ep = plan.tp, plan.ep
    h = model.hidden_size
    heads = model.num_heads / tp                       # query heads per GPU
    kv_heads = max(1, math.ceil(model.num_kv_heads / tp))  # KV heads replicated when tp > KV heads
    kvb = dtype_bytes(plan.kv_dtype)
    ab = dtype_bytes(plan.act_dtype)
    gemms: list[Gemm] = []
    if model.attention == "mla":
        qk = model.qk_nope_head_dim + model.qk_rope_head_dim
        hq = int(round(heads))
        if model.q_lora_rank:
            gemms.append(Gemm("q_a", h, model.q_lora_rank, EVERY_LAYER))              # replicated
            gemms.append(Gemm("q_b", model.q_lora_rank, hq * qk, EVERY_LAYER))
        else:
            gemms.append(Gemm("q", h, hq * qk, EVERY_LAYER))
        gemms.append(Gemm("kv_a", h, model.kv_lora_rank + model.qk_rope_head_dim, EVERY_LAYER))  # replicated
        gemms.append(Gemm("kv_b", model.kv_lora_rank, hq * (model.qk_nope_head_dim + model.v_head_dim), EVERY_LAYER))
        gemms.append(Gemm("o", hq * model.v_head_dim, h, EVERY_LAYER))
        # absorbed MLA attention over the latent cache: scores over (kv_lora + rope), values over kv_lora
        attn_flops = 2.0 * heads * (2 * model.kv_lora_rank + model.qk_rope_head_dim)
        kv_tok = (model.kv_lora_rank + model.qk_rope_head_dim) * kvb   # latent cache, replicated per GPU
        q_out, k_out = hq * qk, model.qk_rope_head_dim
        norm_params = 2 * h + model.kv_lora_rank + model.q_lora_rank
    else:
        d = model.head_dim
        hq = int(round(heads))
        gemms.append(Gemm("qkv", h, (hq + 2 * kv_heads) * d, EVERY_LAYER))
        gemms.append(Gemm("o", hq * d, h, EVERY_LAYER))
        attn_flops = 2.0 * heads * d * 2.0            # QK^T and PV: 2 FLOPs per multiply-add each
        kv_tok = 2.0 * kv_heads * d * kvb             # K and V
        q_out, k_out = hq * d, kv_heads * d
        norm_params = 2 * h
    # dense MLP (SwiGLU: gate and up fused, then down)
    inter = model.intermediate_size / tp
    if model.n_dense_layers > 0:
        gemms.append(Gemm("gate_up", h, int(2 * inter), DENSE_MLP))
        gemms.append(Gemm("down", int(inter), h, DENSE_MLP))
    act_inter = inter
    if model.is_moe:
        E, k = model.num_experts, model.experts_per_token
        adp = plan.adp
        e_local = E // ep                              # whole experts per expert-parallel rank
        e_inter = model.expert_intermediate_size / (tp * adp // ep)  # each expert sharded over tp*adp/ep GPUs
        # expert-token copies landing here per local input token: the MoE layer gathers the tokens of
        # all adp attention ranks, so this GPU sees adp x its own share
        route = k * e_local / E * adp
        gemms.append(Gemm("router", h, E, MOE_DENSE_PART))
        gemms.append(Gemm("experts_gate_up", h, int(2 * e_inter), ROUTED_EXPERTS, e_local, route, k / E, e_local))
        gemms.append(Gemm("experts_down", int(e_inter), h, ROUTED_EXPERTS, e_local, route, k / E, e_local))
        if model.num_shared_experts:
            s_inter = model.num_shared_experts * model.shared_expert_intermediate_size / tp
            gemms.append(Gemm("shared_gate_up", h, int(2 * s_inter), MOE_DENSE_PART))
            gemms.append(Gemm("shared_down", int(s_inter), h, MOE_DENSE_PART))
        act_inter = max(inter if model.n_dense_layers else 0.0, k * model.expert_intermediate_size / tp)
    # elementwise bytes per token: two fused add+RMSNorm (read x, residual; write both),
    # rotary on q and k (read + write), SwiGLU activation (read 2I, write I), KV-cache write
    elem = (8 * h + 2 * (q_out + k_out) + 3 * act_inter) * ab + kv_tok
    return Shard(
        gemms=tuple(gemms),
        stages=split_layers(model, plan.pp),
        heads_per_gpu=heads,
        kv_heads_per_gpu=kv_heads,
        attn_flops_per_pair=attn_flops,
        kv_bytes_per_token_layer=kv_tok,
        elem_bytes_per_token_layer=elem,
        norm_params_per_layer=norm_params,
        vocab_per_gpu=math.ceil(model.vocab_size / tp),
    )
