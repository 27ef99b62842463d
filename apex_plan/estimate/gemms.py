"""The weight GEMMs one GPU runs for each concept of a layer (attention, its indexer, linear
attention, Mamba, the MLP, the MoE block, DeepSeek-V4's compressors and hyper-connections) under a
plan, and the per-GPU attention and state figures that come with them. `estimate.shard.build_shard`
assembles them into a `Shard`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple

from apex_plan.abi import (GEMM_ATTENTION, GEMM_DENSE_MLP, GEMM_LINEAR_ATTN, GEMM_MAMBA, GEMM_MOE_DENSE, GEMM_PROJ_MIXER,
                           GEMM_PROJ_MLP, GEMM_ROUTED_EXPERTS)
from apex_plan.model import spec as S
from apex_plan.model.kv import compressor_state_bytes, state_bytes_per_seq_per_layer
from apex_plan.model.quant import component_format, format_bytes
from apex_plan.model.spec import LayerKind, ModelSpec
from apex_plan.plan.spec import Plan, expert_slots
from apex_plan.units import dtype_bytes


@dataclass(frozen=True)
class Gemm:
    """One weight GEMM on one GPU: y[M, n] = x[M, k] @ W[k, n]."""

    name: str
    k: int
    n: int
    kind: int                 # GEMM_* kind (apex_plan.abi): which layers run it
    experts: int = 0          # routed experts held on this GPU (kind GEMM_ROUTED_EXPERTS)
    route_frac: float = 0.0   # expert-token copies reaching this GPU per input token
    active_p: float = 0.0     # chance that one token picks a given expert (topk / experts)
    copies: int = 1           # identical GEMMs (experts) on this GPU: weights = copies * k * n
    w_bytes: float = 2.0      # bytes per weight element, scales included (see apex_plan.model.quant)
    fmt: str = "bf16"         # the weight format of this GEMM (apex_plan.model.quant.FORMATS)
    layer_attr: str = ""      # runs only in the layers of its kind whose LayerKind.<layer_attr> == layer_value
    layer_value: int = 0      # (mlp_width, kv_heads, compress); "": every layer of its kind

    def runs_in(self, kind: LayerKind) -> bool:
        """Whether a layer of `kind` runs this GEMM."""
        mixers, mlps = GEMM_LAYERS[self.kind]
        if kind.mixer not in mixers and kind.mlp not in mlps:
            return False
        return not self.layer_attr or getattr(kind, self.layer_attr) == self.layer_value

    @property
    def weight_params(self) -> int:
        return self.copies * self.k * self.n

    @property
    def weight_bytes(self) -> float:
        return self.weight_params * self.w_bytes


# GEMM kind -> (token mixers, MLPs) of the layers that run it
GEMM_LAYERS = {
    GEMM_ATTENTION: (S.ATTENTION_MIXERS, ()),
    GEMM_LINEAR_ATTN: ((S.LINEAR,), ()),
    GEMM_MAMBA: ((S.MAMBA,), ()),
    GEMM_PROJ_MIXER: ((S.PROJ,), ()),
    GEMM_DENSE_MLP: ((), (S.DENSE,)),
    GEMM_ROUTED_EXPERTS: ((), (S.MOE,)),
    GEMM_MOE_DENSE: ((), (S.MOE,)),
    GEMM_PROJ_MLP: ((), (S.PROJ_MLP,)),
}


class Weights(NamedTuple):
    """The weight format of one component and its bytes per element (scales included)."""

    fmt: str
    bytes: float


def weights(model: ModelSpec, plan: Plan, component: str) -> Weights:
    """Format and bytes per weight element of `component` under the plan's weight dtype."""
    fmt = component_format(dict(model.weight_formats), component, plan.weight_dtype, plan.act_dtype)
    return Weights(fmt, format_bytes(fmt))


class Attention(NamedTuple):
    """The attention part of a layer on one GPU: its GEMMs and what its token mixer computes."""

    gemms: list                        # Gemm rows, in the order the shard lists them
    flops_per_pair: float = 0.0        # FLOPs per (query x key) pair in decode
    prefill_flops_per_pair: float = 0.0  # in prefill (MLA: the expanded form); 0: as decode
    kv_bytes_per_token: float = 0.0    # KV-cache bytes per cached token per layer
    q_out: int = 0                     # query features per token (rotary, elementwise bytes)
    k_out: int = 0                     # key features per token
    norm_params: int = 0               # norm weights per layer
    kv_variants: tuple = ()            # (kv_heads value, its heads per GPU, its KV bytes per token) per DeciLM variant
    full_kv_bytes_per_token: float = 0.0  # Gemma 4 full layers' own KV bytes per token (0: as the others)
    full_flops_per_pair: float = 0.0   # and their FLOPs per pair


def attention(model: ModelSpec, plan: Plan, heads: float, kv_heads: int) -> Attention:
    """The attention GEMMs and figures of `model` on one GPU (`heads`, `kv_heads` per GPU)."""
    h = model.hidden_size
    if model.attention == "mla":
        return _mla(model, plan, heads)
    if set(S.ATTENTION_MIXERS) & {k.mixer for k in model.layers()}:
        return _gqa(model, plan, heads, kv_heads)
    return Attention([], norm_params=2 * h)


def _mla(model: ModelSpec, plan: Plan, heads: float) -> Attention:
    """Multi-head latent attention (DeepSeek): low-rank q and kv projections over a latent cache."""
    h = model.hidden_size
    wa = weights(model, plan, "attention")
    kvb = dtype_bytes(plan.kv_dtype)
    qk = model.qk_nope_head_dim + model.qk_rope_head_dim
    hq = int(round(heads))
    gemms = []
    if model.q_lora_rank:
        gemms.append(Gemm("q_a", h, model.q_lora_rank, GEMM_ATTENTION, w_bytes=wa.bytes, fmt=wa.fmt))              # replicated
        gemms.append(Gemm("q_b", model.q_lora_rank, hq * qk, GEMM_ATTENTION, w_bytes=wa.bytes, fmt=wa.fmt))
    else:
        gemms.append(Gemm("q", h, hq * qk, GEMM_ATTENTION, w_bytes=wa.bytes, fmt=wa.fmt))
    gemms.append(Gemm("kv_a", h, model.kv_lora_rank + model.qk_rope_head_dim, GEMM_ATTENTION, w_bytes=wa.bytes, fmt=wa.fmt))  # replicated
    gemms.append(Gemm("kv_b", model.kv_lora_rank, hq * (model.qk_nope_head_dim + model.v_head_dim), GEMM_ATTENTION,
                      w_bytes=wa.bytes, fmt=wa.fmt))
    gemms.append(Gemm("o", hq * model.v_head_dim, h, GEMM_ATTENTION, w_bytes=wa.bytes, fmt=wa.fmt))
    return Attention(
        gemms,
        # absorbed MLA attention over the latent cache (decode): scores over (kv_lora + rope), values over kv_lora
        flops_per_pair=2.0 * heads * (2 * model.kv_lora_rank + model.qk_rope_head_dim),
        # prefill runs the expanded form (the engines' MLA context kernels; aiconfigurator-core context_mla
        # tables): per head QK^T over nope + rope and PV over v_head_dim
        prefill_flops_per_pair=2.0 * heads * (qk + model.v_head_dim),
        kv_bytes_per_token=(model.kv_lora_rank + model.qk_rope_head_dim) * kvb,   # latent cache, replicated per GPU
        q_out=hq * qk, k_out=model.qk_rope_head_dim,
        norm_params=2 * h + model.kv_lora_rank + model.q_lora_rank)


def _gqa(model: ModelSpec, plan: Plan, heads: float, kv_heads: int) -> Attention:
    """Grouped-query attention (full, sliding, chunked, sparse layers): q/k/v and output projections."""
    h = model.hidden_size
    wa = weights(model, plan, "attention")
    kvb = dtype_bytes(plan.kv_dtype)
    tp = plan.tp
    d = model.head_dim
    hq = int(round(heads))
    gate = hq if model.attn_output_gate else 0     # gated attention: q_proj also emits a gate per head
    own_kv = sorted({k.kv_heads for k in model.layers() if k.mixer in S.ATTENTION_MIXERS})
    gemms, kv_variants = [], []
    if model.q_lora_rank:
        # queries through a low-rank bottleneck (DeepSeek-V4): q_a replicated, q_b split over tp; one KV vector
        gemms.append(Gemm("q_a", h, model.q_lora_rank, GEMM_ATTENTION, w_bytes=wa.bytes, fmt=wa.fmt))
        gemms.append(Gemm("q_b", model.q_lora_rank, (hq + gate) * d, GEMM_ATTENTION, w_bytes=wa.bytes, fmt=wa.fmt))
        gemms.append(Gemm("kv", h, (1 if model.kv_one_vector else 2) * kv_heads * d, GEMM_ATTENTION,
                          w_bytes=wa.bytes, fmt=wa.fmt))
    elif own_kv == [0]:
        gemms.append(Gemm("qkv", h, (hq + gate + 2 * kv_heads) * d, GEMM_ATTENTION, w_bytes=wa.bytes, fmt=wa.fmt))
    for value in own_kv if own_kv != [0] else ():  # layers with their own KV heads (DeciLM): their own qkv
        v_heads = max(1, math.ceil((value or model.num_kv_heads) / tp))
        gemms.append(Gemm(f"qkv_kv{value}", h, (hq + gate + 2 * v_heads) * d, GEMM_ATTENTION, w_bytes=wa.bytes,
                          fmt=wa.fmt, layer_attr="kv_heads", layer_value=value))
        kv_variants.append((value, v_heads, 2.0 * v_heads * d * kvb))   # K and V of its KV heads
    if model.o_lora_rank and model.o_groups:
        # DeepSeek-V4 grouped low-rank output: per group (heads*d/groups x o_lora), groups split over tp
        # (one GEMM of the same weights and FLOPs), then (groups*o_lora x hidden) row-parallel
        gemms.append(Gemm("o_a", hq * d, model.o_lora_rank, GEMM_ATTENTION, w_bytes=wa.bytes, fmt=wa.fmt))
        gemms.append(Gemm("o_b", math.ceil(model.o_groups / tp) * model.o_lora_rank, h, GEMM_ATTENTION,
                          w_bytes=wa.bytes, fmt=wa.fmt))
    else:
        gemms.append(Gemm("o", hq * d, h, GEMM_ATTENTION, w_bytes=wa.bytes, fmt=wa.fmt))
    kv_vectors = 1 if model.kv_one_vector else 2  # one cached vector serves as K and V (DeepSeek-V4), else K and V
    full_kv = full_flops = 0.0
    gd, gkv = model.attention_dims(S.FULL)
    if (gd, gkv) != (d, model.num_kv_heads) and S.FULL in {k.mixer for k in model.layers()}:
        # full layers with their own geometry (Gemma 4): K and V of their KV heads; GEMMs costed at the
        # sliding layers' shapes (the larger full-layer q/o projections are not modelled separately)
        g_kv_heads = max(1, math.ceil(gkv / tp))
        full_kv = 2.0 * g_kv_heads * gd * kvb
        full_flops = 2.0 * heads * gd * 2.0
    return Attention(
        gemms,
        flops_per_pair=2.0 * heads * d * 2.0,            # QK^T and PV: 2 FLOPs per multiply-add each
        kv_bytes_per_token=kv_vectors * kv_heads * d * kvb,
        q_out=hq * d, k_out=kv_heads * d, norm_params=2 * h, kv_variants=tuple(kv_variants),
        full_kv_bytes_per_token=full_kv, full_flops_per_pair=full_flops)


class Recurrent(NamedTuple):
    """A per-token op beside (or instead of) attention on one GPU: its GEMMs, its cache or state
    bytes and its FLOPs."""

    gemms: list
    bytes_per_unit: float = 0.0    # indexer: key-cache bytes per token; recurrent: state bytes per sequence per layer
    flops_per_unit: float = 0.0    # indexer: FLOPs per (query x key) pair; recurrent: FLOPs per token per layer


def sparse_indexer(model: ModelSpec, plan: Plan) -> Recurrent:
    """DeepSeek sparse attention's indexer (replicated key, heads split over tp)."""
    if S.SPARSE not in {k.mixer for k in model.layers()}:
        return Recurrent([])
    h, tp = model.hidden_size, plan.tp
    wi = weights(model, plan, "indexer")
    ih = max(1, int(round(model.index_n_heads / tp)))
    return Recurrent(
        [Gemm("index_q", model.q_lora_rank or h, ih * model.index_head_dim, GEMM_ATTENTION, w_bytes=wi.bytes, fmt=wi.fmt),
         Gemm("index_k_w", h, model.index_head_dim + ih, GEMM_ATTENTION, w_bytes=wi.bytes, fmt=wi.fmt)],  # wk + weights_proj
        bytes_per_unit=model.index_head_dim * dtype_bytes(plan.kv_dtype),   # indexer key cache per token
        flops_per_unit=2.0 * ih * model.index_head_dim)                    # q.k score per head: 2 FLOPs per multiply-add


def linear_attention(model: ModelSpec, plan: Plan) -> Recurrent:
    """Gated DeltaNet linear attention (heads split over tp)."""
    if S.LINEAR not in {k.mixer for k in model.layers()}:
        return Recurrent([])
    h, tp = model.hidden_size, plan.tp
    wl = weights(model, plan, "linear_attn")
    key_dim = model.linear_num_key_heads * model.linear_key_head_dim
    value_dim = model.linear_num_value_heads * model.linear_value_head_dim
    nv = model.linear_num_value_heads
    return Recurrent(
        [Gemm("lin_in", h, int((2 * key_dim + 2 * value_dim + 2 * nv) / tp), GEMM_LINEAR_ATTN, w_bytes=wl.bytes, fmt=wl.fmt),
         Gemm("lin_out", int(value_dim / tp), h, GEMM_LINEAR_ATTN, w_bytes=wl.bytes, fmt=wl.fmt)],
        bytes_per_unit=state_bytes_per_seq_per_layer(model, S.LINEAR, plan.act_dtype) / tp,
        # delta-rule step per value head: read-out q.S, k.S, and the rank-1 update (2 FLOPs per multiply-add each)
        flops_per_unit=6.0 * nv * model.linear_key_head_dim * model.linear_value_head_dim / tp)


def mamba(model: ModelSpec, plan: Plan) -> Recurrent:
    """Mamba-2 mixer (heads split over tp)."""
    if S.MAMBA not in {k.mixer for k in model.layers()}:
        return Recurrent([])
    h, tp = model.hidden_size, plan.tp
    wm = weights(model, plan, "mamba")
    d_inner = model.mamba_num_heads * model.mamba_head_dim
    gs = model.mamba_n_groups * model.mamba_state_size
    return Recurrent(
        [Gemm("mamba_in", h, int((2 * d_inner + 2 * gs + model.mamba_num_heads) / tp), GEMM_MAMBA, w_bytes=wm.bytes, fmt=wm.fmt),
         Gemm("mamba_out", int(d_inner / tp), h, GEMM_MAMBA, w_bytes=wm.bytes, fmt=wm.fmt)],
        bytes_per_unit=state_bytes_per_seq_per_layer(model, S.MAMBA, plan.act_dtype) / tp,
        # SSM scan per head: state update (B x) and read-out (C . state), 2 FLOPs per multiply-add, plus the decay
        flops_per_unit=6.0 * d_inner * model.mamba_state_size / tp)


def dense_mlp(model: ModelSpec, plan: Plan) -> list[Gemm]:
    """Dense-MLP GEMMs (SwiGLU: gate and up fused, then down; one pair per FFN width when layers
    differ, DeciLM) and the linear replacements of attention / the FFN (DeciLM replace_with_linear:
    hidden x hidden, column-parallel with the output gathered, TensorRT-LLM modeling_nemotron_nas.py;
    the gather is costed as the block's collective)."""
    h, tp = model.hidden_size, plan.tp
    n_mlp = 2 if model.mlp_gated else 1                # gate+up fused, or up alone
    gemms = []
    widths = sorted({k.mlp_width for k in model.layers() if k.mlp == S.DENSE})
    for value in widths:
        wd = weights(model, plan, "mlp")
        w_inter = (value or model.intermediate_size) / tp
        only = dict(layer_attr="mlp_width", layer_value=value) if widths != [0] else {}
        tag = f"_{value}" if only else ""
        gemms.append(Gemm(f"gate_up{tag}", h, int(n_mlp * w_inter), GEMM_DENSE_MLP, w_bytes=wd.bytes, fmt=wd.fmt, **only))
        gemms.append(Gemm(f"down{tag}", int(w_inter), h, GEMM_DENSE_MLP, w_bytes=wd.bytes, fmt=wd.fmt, **only))
    if S.PROJ in {k.mixer for k in model.layers()}:
        wa = weights(model, plan, "attention")
        gemms.append(Gemm("proj_attn", h, math.ceil(h / tp), GEMM_PROJ_MIXER, w_bytes=wa.bytes, fmt=wa.fmt))
    if any(k.mlp == S.PROJ_MLP for k in model.layers()):
        wd = weights(model, plan, "mlp")
        gemms.append(Gemm("proj_mlp", h, math.ceil(h / tp), GEMM_PROJ_MLP, w_bytes=wd.bytes, fmt=wd.fmt))
    return gemms


def moe(model: ModelSpec, plan: Plan) -> list[Gemm]:
    """The MoE block's GEMMs on one GPU: router, latent projections, routed experts (whole experts
    per expert-parallel rank), the dense MLP beside them (Gemma 4) and the shared experts."""
    if not model.is_moe:
        return []
    h, tp, ep, adp = model.hidden_size, plan.tp, plan.ep, plan.adp
    n_mlp = 2 if model.mlp_gated else 1
    E, k = model.num_experts, model.experts_per_token
    slots = expert_slots(E, ep)                    # the experts, padded with redundant copies to a multiple of ep
    e_local = slots // ep                          # whole expert slots per expert-parallel rank
    e_inter = model.expert_intermediate_size / (tp * adp // ep)  # each expert sharded over tp*adp/ep GPUs
    # expert-token copies landing here per local input token: the MoE layer gathers the tokens of
    # all adp attention ranks, so this GPU sees adp x its own share (a logical expert's tokens split
    # evenly over its slots)
    route = k * e_local / slots * adp
    width = model.moe_latent_size or h             # experts may work in a latent space
    we = weights(model, plan, "experts")
    wr = weights(model, plan, "router")
    gemms = [Gemm("router", h, E, GEMM_MOE_DENSE, w_bytes=wr.bytes, fmt=wr.fmt)]
    if model.moe_latent_size:
        gemms.append(Gemm("latent_in", h, model.moe_latent_size, GEMM_MOE_DENSE, w_bytes=we.bytes, fmt=we.fmt))
        gemms.append(Gemm("latent_out", model.moe_latent_size, h, GEMM_MOE_DENSE, w_bytes=we.bytes, fmt=we.fmt))
    gemms.append(Gemm("experts_gate_up", width, int(n_mlp * e_inter), GEMM_ROUTED_EXPERTS, e_local, route, k / slots,
                      e_local, w_bytes=we.bytes, fmt=we.fmt))
    gemms.append(Gemm("experts_down", int(e_inter), width, GEMM_ROUTED_EXPERTS, e_local, route, k / slots, e_local,
                      w_bytes=we.bytes, fmt=we.fmt))
    if model.moe_with_dense_mlp:                   # the dense MLP runs beside the experts (Gemma 4)
        inter = model.intermediate_size / tp
        wd = weights(model, plan, "mlp")
        gemms.append(Gemm("mlp_gate_up", h, int(n_mlp * inter), GEMM_MOE_DENSE, w_bytes=wd.bytes, fmt=wd.fmt))
        gemms.append(Gemm("mlp_down", int(inter), h, GEMM_MOE_DENSE, w_bytes=wd.bytes, fmt=wd.fmt))
    if model.num_shared_experts:
        ws = weights(model, plan, "shared_experts")
        s_inter = model.num_shared_experts * model.shared_expert_intermediate_size / tp
        gemms.append(Gemm("shared_gate_up", h, int(n_mlp * s_inter), GEMM_MOE_DENSE, w_bytes=ws.bytes, fmt=ws.fmt))
        gemms.append(Gemm("shared_down", int(s_inter), h, GEMM_MOE_DENSE, w_bytes=ws.bytes, fmt=ws.fmt))
    return gemms


def compressors(model: ModelSpec, plan: Plan) -> tuple[list[Gemm], tuple]:
    """DeepSeek-V4's compressed layers: the compressor's kv and gate projections (hidden x
    coff*head_dim each; CSA also the indexer's, of index_head_dim) replicated like the one KV head,
    and the mHC hyper-connection weights; with (compress ratio, fp32 state bytes per sequence) per
    compressed kind."""
    h = model.hidden_size
    wa = weights(model, plan, "attention")
    gemms, states = [], []
    for c in sorted({k.compress for k in model.layers() if k.compress}):
        kind = next(k for k in model.layers() if k.compress == c)
        coff = 2 if c == 4 else 1
        width = 2 * coff * model.head_dim + (2 * 2 * model.index_head_dim if kind.mixer == S.SPARSE else 0)
        gemms.append(Gemm(f"compressor_c{c}", h, width, GEMM_ATTENTION, w_bytes=wa.bytes, fmt=wa.fmt,
                          layer_attr="compress", layer_value=c))
        states.append((c, compressor_state_bytes(model, kind)))
    if model.hc_mult:
        # mHC (DeepSeek-V4): before the mixer and the MLP, hc_mult*hidden streams -> (2 + hc_mult)*hc_mult weights
        mix = (2 + model.hc_mult) * model.hc_mult
        gemms.append(Gemm("hyper_conn", model.hc_mult * h, 2 * mix, GEMM_ATTENTION, w_bytes=wa.bytes, fmt=wa.fmt))
    return gemms, tuple(states)
