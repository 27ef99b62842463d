"""KV-cache bytes per token and per sequence, and the fixed per-sequence state of recurrent layers
(linear attention, Mamba) and of DeepSeek-V4 compressors, derived from a `ModelSpec`; what the
memory model, the KV transfer of disaggregated serving and the reports count."""

from __future__ import annotations

from apex_plan.model.spec import CHUNKED, FULL, LINEAR, MLA, MAMBA, NO_MIXER, PROJ, SLIDING, SPARSE, LayerKind, ModelSpec
from apex_plan.units import dtype_bytes


def kv_cache_bytes_per_token_per_layer(spec: ModelSpec, kv_dtype: str, mixer: str = FULL, kv_heads: int = 0) -> float:
    """KV-cache bytes one token takes in one attention layer of kind `mixer`.

    GQA: K and V of every KV head. MLA: the compressed latent plus the shared rope key,
    which is what vLLM/SGLang cache (not the up-projected per-head K/V). Sparse attention also
    caches the indexer's key (index_head_dim) per token. Linear attention / Mamba: 0 (a
    per-sequence state instead, see `state_bytes_per_seq_per_layer`). `kv_heads`: the layer kind's own
    KV heads (LayerKind.kv_heads), 0 for the model's.
    """
    b = dtype_bytes(kv_dtype, where="kv_dtype")
    if mixer in (LINEAR, MAMBA, PROJ, NO_MIXER):
        return 0.0
    if spec.attention == "mla":
        per = (spec.kv_lora_rank + spec.qk_rope_head_dim) * b
    else:
        head_dim, kv_heads = spec.attention_dims(mixer, kv_heads)
        if spec.kv_one_vector:                              # one vector per head serves as K and V (DeepSeek-V4)
            per = kv_heads * head_dim * b
        else:                                               # K and V (engines cache V even when it equals K)
            per = kv_heads * (head_dim + (spec.v_head_dim or head_dim)) * b
    if mixer == SPARSE:
        per += spec.index_head_dim * b                      # indexer key cache
    return per


def state_bytes_per_seq_per_layer(spec: ModelSpec, mixer: str, act_dtype: str = "bf16") -> float:
    """Bytes of the fixed-size recurrent state one sequence keeps in one linear-attention / Mamba layer:
    the recurrent state (heads x key dim x value dim, or heads x head dim x state size; in the
    checkpoint's state dtype when it names one, e.g. fp32) plus the causal-conv window
    (conv_dim x (kernel - 1)) in the activation dtype."""
    ab = dtype_bytes(act_dtype, where="act_dtype")
    if mixer == LINEAR:
        key_dim = spec.linear_num_key_heads * spec.linear_key_head_dim
        value_dim = spec.linear_num_value_heads * spec.linear_value_head_dim
        rec = spec.linear_num_value_heads * spec.linear_key_head_dim * spec.linear_value_head_dim
        conv = (2 * key_dim + value_dim) * (spec.linear_conv_kernel - 1)
        return rec * (spec.mamba_state_bytes or ab) + conv * ab
    if mixer == MAMBA:
        d_inner = spec.mamba_num_heads * spec.mamba_head_dim
        rec = spec.mamba_num_heads * spec.mamba_head_dim * spec.mamba_state_size
        conv = (d_inner + 2 * spec.mamba_n_groups * spec.mamba_state_size) * (spec.mamba_conv_kernel - 1)
        return rec * (spec.mamba_state_bytes or ab) + conv * ab
    return 0.0


def kv_tokens_held(kind: LayerKind, context_tokens: int) -> int:
    """Tokens whose KV one layer of `kind` keeps for a sequence of `context_tokens`: all of them for
    full and sparse attention (the indexer picks among all), at most the window for sliding and
    chunked attention, none for state mixers."""
    if kind.mixer in (SLIDING, CHUNKED):
        return min(context_tokens, kind.window)
    if kind.mixer in (FULL, SPARSE) and kind.compress:     # raw window + one row per `compress` tokens
        return min(context_tokens, kind.window) + context_tokens // kind.compress
    if kind.mixer in (FULL, MLA, SPARSE):
        return context_tokens
    return 0


def compressor_state_bytes(spec: ModelSpec, kind: LayerKind) -> float:
    """DeepSeek-V4 compressor decode state of one sequence in one layer pooling `kind.compress` tokens per
    row: fp32 kv_state and score_state of compress x coff x head_dim each (coff 2 for the overlapping
    ratio-4 windows), and in CSA layers the indexer compressor's of index_head_dim (aiconfigurator-core
    0.12.0 sdk/models/deepseek_v4.py, get_kvcache_bytes_per_sequence)."""
    if not kind.compress:
        return 0.0
    coff = 2 if kind.compress == 4 else 1
    b = 2 * kind.compress * coff * spec.head_dim * 4.0
    if kind.mixer == SPARSE:
        b += 2 * kind.compress * 2 * spec.index_head_dim * 4.0
    return b


def kv_cache_bytes_per_seq(spec: ModelSpec, kv_dtype: str, context_tokens: int, act_dtype: str = "bf16") -> float:
    """KV cache plus recurrent state of one sequence of `context_tokens`, over all layers. Compressed
    layers (DeepSeek-V4) keep the raw window's rows (no indexer key), one row per `compress` tokens
    (with the indexer key in CSA layers) and the compressor state."""
    total = 0.0
    for kind, n in spec.kind_counts().items():
        row = kv_cache_bytes_per_token_per_layer(spec, kv_dtype, kind.mixer, kind.kv_heads)
        if kind.compress:
            raw_row = kv_cache_bytes_per_token_per_layer(spec, kv_dtype, FULL, kind.kv_heads)
            per = (min(context_tokens, kind.window) * raw_row + context_tokens // kind.compress * row
                   + compressor_state_bytes(spec, kind))
        else:
            per = kv_tokens_held(kind, context_tokens) * row
        total += n * (per + state_bytes_per_seq_per_layer(spec, kind.mixer, act_dtype))
    return total


def kv_cache_bytes_per_token(spec: ModelSpec, kv_dtype: str, context_tokens: int | None = None) -> float:
    """KV-cache bytes per token over all layers. Without `context_tokens`: every attention layer
    holds every token (the classic figure; sliding windows not applied), a compressed layer (DeepSeek-V4)
    its share of one row per `compress` tokens. With it: the average per token of a sequence of that
    length, windows capped and per-sequence states spread over its tokens."""
    if context_tokens is None:
        return sum(n * kv_cache_bytes_per_token_per_layer(spec, kv_dtype, k.mixer, k.kv_heads) / max(k.compress, 1)
                   for k, n in spec.kind_counts().items())
    return kv_cache_bytes_per_seq(spec, kv_dtype, context_tokens) / context_tokens
