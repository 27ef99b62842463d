"""What one GPU holds and computes under a plan: per-GPU GEMM shapes, parameters, KV bytes.

All layers of a kind are identical, so each distinct layer kind (its token mixer and its MLP) is
described once and the layer counts of the largest pipeline stage multiply it. Layer kinds that
differ in a shape (DeciLM's per-layer FFN widths and KV heads, DeepSeek-V4's compression ratios)
get their own GEMMs (`Gemm.layer_attr` names the LayerKind field they depend on) and their own
KV figures (`Shard.view`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import NamedTuple

from apex_plan.abi import (GEMM_ATTENTION, GEMM_DENSE_MLP, GEMM_LINEAR_ATTN, GEMM_MAMBA, GEMM_MOE_DENSE, GEMM_PROJ_MIXER,
                           GEMM_PROJ_MLP, GEMM_ROUTED_EXPERTS)
from apex_plan.estimate.mixers import MIXERS
from apex_plan.model import spec as S
from apex_plan.model.params import compressor_state_bytes, state_bytes_per_seq_per_layer
from apex_plan.model.quant import component_format, format_bytes
from apex_plan.model.spec import LayerKind, ModelSpec
from apex_plan.plan.spec import Plan
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


@dataclass(frozen=True)
class Stage:
    """Layers of one pipeline stage."""

    dense_layers: int
    moe_layers: int
    has_embedding: bool
    has_lm_head: bool
    kinds: tuple[tuple[LayerKind, int], ...] = ()   # layer kinds and their counts on this stage
    mlp_free_layers: int = 0                         # blocks without an MLP (Nemotron-H mixer blocks)

    @property
    def layers(self) -> int:
        return self.dense_layers + self.moe_layers + self.mlp_free_layers

    def count(self, *mixers: str) -> int:
        """Layers of this stage whose token mixer is one of `mixers`."""
        return sum(n for k, n in self.kinds if k.mixer in mixers)

    def mixer_counts(self) -> list[tuple[str, int]]:
        """(mixer, layers) of this stage in `model.spec.MIXERS` order, mixers it has only."""
        return [(m, self.count(m)) for m in S.MIXERS if self.count(m)]

    def mixer_kinds(self) -> list[tuple[LayerKind, int]]:
        """(layer kind with its MLP left out, layers) of this stage: one entry per distinct token mixer
        shape (mixer, window, compression, KV heads), in `model.spec.MIXERS` order."""
        out: dict[LayerKind, int] = {}
        for k, n in self.kinds:
            key = LayerKind(k.mixer, S.NO_MLP, k.window, 0, k.compress, k.kv_heads)
            out[key] = out.get(key, 0) + n
        return sorted(out.items(), key=lambda kn: (S.MIXERS.index(kn[0].mixer), kn[0]))

    def gemm_layers(self, g: Gemm) -> int:
        """Layers of this stage that run GEMM `g`."""
        return sum(n for k, n in self.kinds if g.runs_in(k))


@dataclass(frozen=True)
class Shard:
    """Per-GPU view of one model replica under `plan`."""

    gemms: tuple[Gemm, ...]
    stages: tuple[Stage, ...]
    heads_per_gpu: float
    kv_heads_per_gpu: int
    attn_flops_per_pair: float       # attention FLOPs per (query token x context token) per layer
    kv_bytes_per_token_layer: float  # KV cache bytes per token per attention layer on one GPU
    elem_bytes_per_token_layer: float  # elementwise-kernel bytes per token per layer on one GPU
    norm_params_per_layer: int
    vocab_per_gpu: int
    window: int = 0                  # tokens a sliding / chunked / sparse layer attends to
    index_kv_bytes_per_token: float = 0.0   # sparse attention: indexer key bytes per token per layer on one GPU
    index_flops_per_pair: float = 0.0       # sparse attention: indexer FLOPs per (query x cached token)
    state_bytes_linear: float = 0.0  # linear attention: state bytes per sequence per layer on one GPU
    state_bytes_mamba: float = 0.0   # Mamba: state bytes per sequence per layer on one GPU
    linear_flops_per_token: float = 0.0
    mamba_flops_per_token: float = 0.0
    full_kv_bytes_per_token_layer: float = 0.0   # full-attention layers' KV bytes when they differ (Gemma 4); 0: same
    full_attn_flops_per_pair: float = 0.0        # full-attention layers' FLOPs per pair when they differ; 0: same
    prefill_flops_per_pair: float = 0.0          # MLA: prefill attention FLOPs per pair in the expanded form; 0: as decode
    latent: bool = False                         # MLA: attention runs over the latent cache (the MLA kernels)
    kv_variants: tuple[tuple[int, int, float], ...] = ()   # (LayerKind.kv_heads, KV heads on one GPU, KV bytes per
                                                           # token per layer on one GPU) of layers with their own KV heads
    topk_tokens: int = 0             # sparse attention: tokens of context its top-k rows span (index_topk x compress)
    compress: int = 0                # in a view of a compressed layer kind: tokens pooled per cached row; 0 otherwise
    raw_window: int = 0              # in a view of a compressed layer kind: raw tokens kept beside the rows
    compressor_state_bytes: float = 0.0   # in a view of a compressed layer kind: its compressor's state per sequence
    compressor_states: tuple[tuple[int, float], ...] = ()   # (compress, compressor state bytes per sequence on one GPU)

    def view(self, kind: LayerKind) -> "Shard":
        """This shard as one layer of `kind` sees it: its own KV heads (DeciLM) and compression (DeepSeek-V4);
        itself when the kind has neither."""
        if not (kind.kv_heads or kind.compress):
            return self
        fields = {}
        for value, heads, kv_b in self.kv_variants:
            if value == kind.kv_heads:
                fields.update(kv_heads_per_gpu=heads, kv_bytes_per_token_layer=kv_b)
        if kind.compress:
            fields.update(compress=kind.compress, raw_window=kind.window,
                          compressor_state_bytes=dict(self.compressor_states).get(kind.compress, 0.0))
        return replace(self, **fields)

    def layer_weight_params(self, kind_filter: tuple[int, ...]) -> int:
        return sum(g.weight_params for g in self.gemms if g.kind in kind_filter)

    def layer_weight_bytes(self, kind_filter: tuple[int, ...]) -> float:
        """Weight bytes (scales included) of this shard's GEMMs of the given kinds, one layer each."""
        return sum(g.weight_bytes for g in self.gemms if g.kind in kind_filter)

    @property
    def largest_stage(self) -> Stage:
        """The stage with the most layers (MoE layers breaking ties): it sets the pipeline's pace."""
        return max(self.stages, key=lambda s: (s.layers, s.moe_layers))

    def kv_bytes_per_token_stage(self, stage: Stage) -> float:
        """KV bytes one token takes on one GPU of `stage`, over its layers that keep every token (a
        compressed layer: its share of a row per `compress` tokens)."""
        return sum(n * MIXERS[k.mixer].kv_bytes_per_token(self.view(k)) for k, n in stage.mixer_kinds())

    def seq_bytes_stage(self, stage: Stage, max_model_len: int, block_size: int) -> float:
        """Bytes one sequence holds on one GPU of `stage` whatever its length: windowed layers' KV
        (the window plus one block, capped at max_model_len; compressed layers' raw window and
        compressor state) and linear-attention / Mamba states."""
        return sum(n * MIXERS[k.mixer].seq_bytes(self.view(k), max_model_len, block_size)
                   for k, n in stage.mixer_kinds())


def split_layers(model: ModelSpec, pp: int) -> tuple[Stage, ...]:
    """Contiguous, as-even-as-possible split of the layers into pp stages (earlier stages take the
    remainder), in model order, so repeated groups are spread as evenly as the split allows."""
    layers = model.layers()
    base, extra = divmod(len(layers), pp)
    stages, start = [], 0
    for s in range(pp):
        n = base + (1 if s < extra else 0)
        part = layers[start:start + n]
        counts: dict[LayerKind, int] = {}
        for k in part:
            counts[k] = counts.get(k, 0) + 1
        dense = sum(1 for k in part if k.mlp in (S.DENSE, S.PROJ_MLP))   # a linear FFN is a one-GEMM dense block
        moe = sum(1 for k in part if k.mlp == S.MOE)
        stages.append(Stage(dense, moe, s == 0, s == pp - 1, tuple(counts.items()), n - dense - moe))
        start += n
    return tuple(stages)


class Weights(NamedTuple):
    """The weight format of one component and its bytes per element (scales included)."""

    fmt: str
    bytes: float


def _w(model: ModelSpec, plan: Plan, component: str) -> Weights:
    """Format and bytes per weight element of `component` under the plan's weight dtype."""
    fmt = component_format(dict(model.weight_formats), component, plan.weight_dtype, plan.act_dtype)
    return Weights(fmt, format_bytes(fmt))


def build_shard(model: ModelSpec, plan: Plan) -> Shard:
    """Per-GPU GEMMs and sizes of one replica of `model` under `plan` (tp, pp, ep)."""
    tp, ep = plan.tp, plan.ep
    h = model.hidden_size
    heads = model.num_heads / tp                       # query heads per GPU
    kv_heads = max(1, math.ceil(model.num_kv_heads / tp))  # KV heads replicated when tp > KV heads
    kvb = dtype_bytes(plan.kv_dtype)
    ab = dtype_bytes(plan.act_dtype)
    mixers = {k.mixer for k in model.layers()}
    has_attn = bool(mixers & set(S.ATTENTION_MIXERS))
    wa = _w(model, plan, "attention")
    gemms: list[Gemm] = []
    kv_variants: list[tuple[int, int, float]] = []
    q_out = k_out = 0
    full_kv = full_flops = pf_flops = 0.0
    attn_flops = kv_tok = 0.0
    norm_params = 2 * h
    if model.attention == "mla":
        qk = model.qk_nope_head_dim + model.qk_rope_head_dim
        hq = int(round(heads))
        if model.q_lora_rank:
            gemms.append(Gemm("q_a", h, model.q_lora_rank, GEMM_ATTENTION, w_bytes=wa.bytes, fmt=wa.fmt))              # replicated
            gemms.append(Gemm("q_b", model.q_lora_rank, hq * qk, GEMM_ATTENTION, w_bytes=wa.bytes, fmt=wa.fmt))
        else:
            gemms.append(Gemm("q", h, hq * qk, GEMM_ATTENTION, w_bytes=wa.bytes, fmt=wa.fmt))
        gemms.append(Gemm("kv_a", h, model.kv_lora_rank + model.qk_rope_head_dim, GEMM_ATTENTION, w_bytes=wa.bytes, fmt=wa.fmt))  # replicated
        gemms.append(Gemm("kv_b", model.kv_lora_rank, hq * (model.qk_nope_head_dim + model.v_head_dim), GEMM_ATTENTION,
                          w_bytes=wa.bytes, fmt=wa.fmt))
        gemms.append(Gemm("o", hq * model.v_head_dim, h, GEMM_ATTENTION, w_bytes=wa.bytes, fmt=wa.fmt))
        # absorbed MLA attention over the latent cache (decode): scores over (kv_lora + rope), values over kv_lora
        attn_flops = 2.0 * heads * (2 * model.kv_lora_rank + model.qk_rope_head_dim)
        # prefill runs the expanded form (the engines' MLA context kernels; aiconfigurator-core context_mla
        # tables): per head QK^T over nope + rope and PV over v_head_dim
        pf_flops = 2.0 * heads * (qk + model.v_head_dim)
        kv_tok = (model.kv_lora_rank + model.qk_rope_head_dim) * kvb   # latent cache, replicated per GPU
        q_out, k_out = hq * qk, model.qk_rope_head_dim
        norm_params = 2 * h + model.kv_lora_rank + model.q_lora_rank
    elif has_attn:
        d = model.head_dim
        hq = int(round(heads))
        gate = hq if model.attn_output_gate else 0     # gated attention: q_proj also emits a gate per head
        own_kv = sorted({k.kv_heads for k in model.layers() if k.mixer in S.ATTENTION_MIXERS})
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
        attn_flops = 2.0 * heads * d * 2.0            # QK^T and PV: 2 FLOPs per multiply-add each
        kv_vectors = 1 if model.kv_one_vector else 2  # one cached vector serves as K and V (DeepSeek-V4), else K and V
        kv_tok = kv_vectors * kv_heads * d * kvb
        q_out, k_out = hq * d, kv_heads * d
        gd, gkv = model.attention_dims(S.FULL)
        if (gd, gkv) != (d, model.num_kv_heads) and S.FULL in mixers:
            # full layers with their own geometry (Gemma 4): K and V of their KV heads; GEMMs costed at the
            # sliding layers' shapes (the larger full-layer q/o projections are not modelled separately)
            g_kv_heads = max(1, math.ceil(gkv / tp))
            full_kv = 2.0 * g_kv_heads * gd * kvb
            full_flops = 2.0 * heads * gd * 2.0
    # DeepSeek sparse attention indexer (replicated key, heads split over tp)
    idx_kv = idx_flops = 0.0
    if S.SPARSE in mixers:
        wi = _w(model, plan, "indexer")
        ih = max(1, int(round(model.index_n_heads / tp)))
        gemms.append(Gemm("index_q", model.q_lora_rank or h, ih * model.index_head_dim, GEMM_ATTENTION, w_bytes=wi.bytes, fmt=wi.fmt))
        gemms.append(Gemm("index_k_w", h, model.index_head_dim + ih, GEMM_ATTENTION, w_bytes=wi.bytes, fmt=wi.fmt))  # wk + weights_proj
        idx_kv = model.index_head_dim * kvb                            # indexer key cache per token
        idx_flops = 2.0 * ih * model.index_head_dim                    # q.k score per head: 2 FLOPs per multiply-add
    # Gated DeltaNet linear attention (heads split over tp)
    st_lin = fl_lin = 0.0
    if S.LINEAR in mixers:
        wl = _w(model, plan, "linear_attn")
        key_dim = model.linear_num_key_heads * model.linear_key_head_dim
        value_dim = model.linear_num_value_heads * model.linear_value_head_dim
        nv = model.linear_num_value_heads
        gemms.append(Gemm("lin_in", h, int((2 * key_dim + 2 * value_dim + 2 * nv) / tp), GEMM_LINEAR_ATTN, w_bytes=wl.bytes, fmt=wl.fmt))
        gemms.append(Gemm("lin_out", int(value_dim / tp), h, GEMM_LINEAR_ATTN, w_bytes=wl.bytes, fmt=wl.fmt))
        st_lin = state_bytes_per_seq_per_layer(model, S.LINEAR, plan.act_dtype) / tp
        # delta-rule step per value head: read-out q.S, k.S, and the rank-1 update (2 FLOPs per multiply-add each)
        fl_lin = 6.0 * nv * model.linear_key_head_dim * model.linear_value_head_dim / tp
    st_mamba = fl_mamba = 0.0
    if S.MAMBA in mixers:
        wm = _w(model, plan, "mamba")
        d_inner = model.mamba_num_heads * model.mamba_head_dim
        gs = model.mamba_n_groups * model.mamba_state_size
        gemms.append(Gemm("mamba_in", h, int((2 * d_inner + 2 * gs + model.mamba_num_heads) / tp), GEMM_MAMBA, w_bytes=wm.bytes, fmt=wm.fmt))
        gemms.append(Gemm("mamba_out", int(d_inner / tp), h, GEMM_MAMBA, w_bytes=wm.bytes, fmt=wm.fmt))
        st_mamba = state_bytes_per_seq_per_layer(model, S.MAMBA, plan.act_dtype) / tp
        # SSM scan per head: state update (B x) and read-out (C . state), 2 FLOPs per multiply-add, plus the decay
        fl_mamba = 6.0 * d_inner * model.mamba_state_size / tp
    n_mlp = 2 if model.mlp_gated else 1                # gate+up fused, or up alone
    # dense MLP (SwiGLU: gate and up fused, then down); one pair per FFN width when layers differ (DeciLM)
    inter = model.intermediate_size / tp
    widths = sorted({k.mlp_width for k in model.layers() if k.mlp == S.DENSE})
    for value in widths:
        wd = _w(model, plan, "mlp")
        w_inter = (value or model.intermediate_size) / tp
        only = dict(layer_attr="mlp_width", layer_value=value) if widths != [0] else {}
        tag = f"_{value}" if only else ""
        gemms.append(Gemm(f"gate_up{tag}", h, int(n_mlp * w_inter), GEMM_DENSE_MLP, w_bytes=wd.bytes, fmt=wd.fmt, **only))
        gemms.append(Gemm(f"down{tag}", int(w_inter), h, GEMM_DENSE_MLP, w_bytes=wd.bytes, fmt=wd.fmt, **only))
    # linear replacements of attention / the FFN (DeciLM replace_with_linear): hidden x hidden, column-parallel
    # with the output gathered (TensorRT-LLM modeling_nemotron_nas.py); the gather is costed as the block's collective
    if S.PROJ in mixers:
        gemms.append(Gemm("proj_attn", h, math.ceil(h / tp), GEMM_PROJ_MIXER, w_bytes=wa.bytes, fmt=wa.fmt))
    if any(k.mlp == S.PROJ_MLP for k in model.layers()):
        wd = _w(model, plan, "mlp")
        gemms.append(Gemm("proj_mlp", h, math.ceil(h / tp), GEMM_PROJ_MLP, w_bytes=wd.bytes, fmt=wd.fmt))
    act_inter = inter if model.n_dense_layers else 0.0
    if model.is_moe:
        E, k = model.num_experts, model.experts_per_token
        adp = plan.adp
        e_local = E // ep                              # whole experts per expert-parallel rank
        e_inter = model.expert_intermediate_size / (tp * adp // ep)  # each expert sharded over tp*adp/ep GPUs
        # expert-token copies landing here per local input token: the MoE layer gathers the tokens of
        # all adp attention ranks, so this GPU sees adp x its own share
        route = k * e_local / E * adp
        width = model.moe_latent_size or h             # experts may work in a latent space
        we = _w(model, plan, "experts")
        wr = _w(model, plan, "router")
        gemms.append(Gemm("router", h, E, GEMM_MOE_DENSE, w_bytes=wr.bytes, fmt=wr.fmt))
        if model.moe_latent_size:
            gemms.append(Gemm("latent_in", h, model.moe_latent_size, GEMM_MOE_DENSE, w_bytes=we.bytes, fmt=we.fmt))
            gemms.append(Gemm("latent_out", model.moe_latent_size, h, GEMM_MOE_DENSE, w_bytes=we.bytes, fmt=we.fmt))
        gemms.append(Gemm("experts_gate_up", width, int(n_mlp * e_inter), GEMM_ROUTED_EXPERTS, e_local, route, k / E, e_local,
                          w_bytes=we.bytes, fmt=we.fmt))
        gemms.append(Gemm("experts_down", int(e_inter), width, GEMM_ROUTED_EXPERTS, e_local, route, k / E, e_local, w_bytes=we.bytes, fmt=we.fmt))
        if model.moe_with_dense_mlp:                   # the dense MLP runs beside the experts (Gemma 4)
            wd = _w(model, plan, "mlp")
            gemms.append(Gemm("mlp_gate_up", h, int(n_mlp * inter), GEMM_MOE_DENSE, w_bytes=wd.bytes, fmt=wd.fmt))
            gemms.append(Gemm("mlp_down", int(inter), h, GEMM_MOE_DENSE, w_bytes=wd.bytes, fmt=wd.fmt))
        if model.num_shared_experts:
            ws = _w(model, plan, "shared_experts")
            s_inter = model.num_shared_experts * model.shared_expert_intermediate_size / tp
            gemms.append(Gemm("shared_gate_up", h, int(n_mlp * s_inter), GEMM_MOE_DENSE, w_bytes=ws.bytes, fmt=ws.fmt))
            gemms.append(Gemm("shared_down", int(s_inter), h, GEMM_MOE_DENSE, w_bytes=ws.bytes, fmt=ws.fmt))
        act_inter = max(act_inter, k * model.expert_intermediate_size / tp)
    # elementwise bytes per token: two fused add+RMSNorm (read x, residual; write both),
    # rotary on q and k (read + write), SwiGLU activation (read 2I, write I), KV-cache write.
    # With mHC (DeepSeek-V4) the residual is hc_mult streams: per block the norm (read h, write h), the
    # combine of the streams into the block input (read hc*h, write h) and the write-back of the block
    # output into them (read h and hc*h, write hc*h)
    resid = 2 * (2 + (model.hc_mult + 1) + (1 + 2 * model.hc_mult)) * h if model.hc_mult else 8 * h
    elem = (resid + 2 * (q_out + k_out) + 3 * act_inter) * ab + kv_tok
    # DeepSeek-V4 compressed layers: the compressor's kv and gate projections (hidden x coff*head_dim each; CSA
    # also the indexer's, of index_head_dim) replicated like the one KV head; its fp32 state per sequence
    states = []
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
    # one window cap for sliding / chunked layers and compressed layers' raw window, one for the span of
    # sparse attention's top-k rows (index_topk rows of `compress` tokens each)
    windows = [k.window for k in model.layers() if k.mixer in (S.SLIDING, S.CHUNKED) or k.compress]
    window = max(windows) if windows else 0
    sparse = [max(k.compress, 1) for k in model.layers() if k.mixer == S.SPARSE]
    topk_tokens = model.index_topk * max(sparse) if sparse else 0
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
        window=window, index_kv_bytes_per_token=idx_kv, index_flops_per_pair=idx_flops,
        state_bytes_linear=st_lin, state_bytes_mamba=st_mamba,
        linear_flops_per_token=fl_lin, mamba_flops_per_token=fl_mamba,
        full_kv_bytes_per_token_layer=full_kv, full_attn_flops_per_pair=full_flops,
        prefill_flops_per_pair=pf_flops, latent=model.attention == "mla",
        kv_variants=tuple(kv_variants), topk_tokens=topk_tokens, compressor_states=tuple(states),
    )
