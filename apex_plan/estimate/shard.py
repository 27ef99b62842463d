"""What one GPU holds and computes under a plan: per-GPU GEMM shapes, parameters, KV bytes.

All layers of a kind are identical, so each distinct layer kind (its token mixer and its MLP) is
described once and the layer counts of the largest pipeline stage multiply it. Layer kinds that
differ in a shape (DeciLM's per-layer FFN widths and KV heads, DeepSeek-V4's compression ratios)
get their own GEMMs (`Gemm.layer_attr` names the LayerKind field they depend on) and their own
KV figures (`Shard.view`). The GEMMs of each concept of a layer are built in `estimate.gemms`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

from apex_plan.estimate import gemms as G
from apex_plan.estimate.gemms import Gemm
from apex_plan.errors import InputError
from apex_plan.estimate.mixers import MIXERS
from apex_plan.model import spec as S
from apex_plan.model.spec import LayerKind, ModelSpec
from apex_plan.plan.spec import Plan
from apex_plan.units import dtype_bytes


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
    latent: bool = False                         # an MLA model: sparse attention too runs over the latent cache
    kv_variants: tuple[tuple[int, int, float], ...] = ()   # (LayerKind.kv_heads, KV heads on one GPU, KV bytes per
                                                           # token per layer on one GPU) of layers with their own KV heads
    topk_tokens: int = 0             # sparse attention: tokens of context its top-k rows span (index_topk x compress)
    window2: int = 0                 # a second, smaller window of some windowed layers (their own cap); 0: one window
    compress: int = 0                # in a view of a compressed layer kind: tokens pooled per cached row; 0 otherwise
    raw_window: int = 0              # in a view of a compressed layer kind: raw tokens kept beside the rows
    compressor_state_bytes: float = 0.0   # in a view of a compressed layer kind: its compressor's state per sequence
    compressor_states: tuple[tuple[int, float], ...] = ()   # (compress, compressor state bytes per sequence on one GPU)

    def view(self, kind: LayerKind) -> "Shard":
        """This shard as one layer of `kind` sees it: its own KV heads (DeciLM) and compression (DeepSeek-V4);
        itself when the kind has neither."""
        own_window = kind.window != self.window and (kind.mixer in (S.SLIDING, S.CHUNKED) or kind.compress)
        if not (kind.kv_heads or kind.compress or own_window):
            return self
        fields = {"window": kind.window} if own_window else {}
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


def build_shard(model: ModelSpec, plan: Plan) -> Shard:
    """Per-GPU GEMMs and sizes of one replica of `model` under `plan` (tp, pp, ep)."""
    tp = plan.tp
    h = model.hidden_size
    heads = model.num_heads / tp                       # query heads per GPU
    kv_heads = max(1, math.ceil(model.num_kv_heads / tp))  # KV heads replicated when tp > KV heads
    at = G.attention(model, plan, heads, kv_heads)
    idx, lin, mam = G.sparse_indexer(model, plan), G.linear_attention(model, plan), G.mamba(model, plan)
    comp_gemms, states = G.compressors(model, plan)
    gemms = at.gemms + idx.gemms + lin.gemms + mam.gemms + G.dense_mlp(model, plan) + G.moe(model, plan) + comp_gemms
    act_inter = model.intermediate_size / tp if model.n_dense_layers else 0.0
    if model.is_moe:
        act_inter = max(act_inter, model.experts_per_token * model.expert_intermediate_size / tp)
    # elementwise bytes per token: two fused add+RMSNorm (read x, residual; write both),
    # rotary on q and k (read + write), SwiGLU activation (read 2I, write I), KV-cache write.
    # With mHC (DeepSeek-V4) the residual is hc_mult streams: per block the norm (read h, write h), the
    # combine of the streams into the block input (read hc*h, write h) and the write-back of the block
    # output into them (read h and hc*h, write hc*h)
    resid = 2 * (2 + (model.hc_mult + 1) + (1 + 2 * model.hc_mult)) * h if model.hc_mult else 8 * h
    elem = (resid + 2 * (at.q_out + at.k_out) + 3 * act_inter) * dtype_bytes(plan.act_dtype) + at.kv_bytes_per_token
    # window caps for sliding / chunked layers and compressed layers' raw windows (the largest, and a
    # second for layers of a smaller one), one for the span of sparse attention's top-k rows (index_topk
    # rows of `compress` tokens each)
    windows = sorted({k.window for k in model.layers() if k.mixer in (S.SLIDING, S.CHUNKED) or k.compress},
                     reverse=True)
    if len(windows) > 2:
        raise InputError(model.source or model.name, "layer windows", f"{len(windows)} distinct attention windows "
                         f"({', '.join(map(str, windows))} tokens); the estimator costs at most two per model",
                         "give the layers at most two window sizes")
    sparse = [max(k.compress, 1) for k in model.layers() if k.mixer == S.SPARSE]
    return Shard(
        gemms=tuple(gemms),
        stages=split_layers(model, plan.pp),
        heads_per_gpu=heads,
        kv_heads_per_gpu=kv_heads,
        attn_flops_per_pair=at.flops_per_pair,
        kv_bytes_per_token_layer=at.kv_bytes_per_token,
        elem_bytes_per_token_layer=elem,
        norm_params_per_layer=at.norm_params,
        vocab_per_gpu=math.ceil(model.vocab_size / tp),
        window=windows[0] if windows else 0, window2=windows[1] if len(windows) > 1 else 0,
        index_kv_bytes_per_token=idx.bytes_per_unit,
        index_flops_per_pair=idx.flops_per_unit,
        state_bytes_linear=lin.bytes_per_unit, state_bytes_mamba=mam.bytes_per_unit,
        linear_flops_per_token=lin.flops_per_unit, mamba_flops_per_token=mam.flops_per_unit,
        full_kv_bytes_per_token_layer=at.full_kv_bytes_per_token, full_attn_flops_per_pair=at.full_flops_per_pair,
        prefill_flops_per_pair=at.prefill_flops_per_pair, latent=model.attention == "mla",
        kv_variants=at.kv_variants, topk_tokens=model.index_topk * max(sparse) if sparse else 0,
        compressor_states=states,
    )
