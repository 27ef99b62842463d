"""Exact parameter counts and weight bytes derived from a `ModelSpec` (KV-cache and state bytes:
`model.kv`).

Counts follow the Hugging Face `transformers` (or the checkpoint's own remote-code) modules of each
architecture: bias-free linear layers unless the spec says otherwise (Qwen2 q/k/v biases, gpt-oss
biases and sinks), RMSNorm weights of `hidden_size` before each mixer and each MLP, SwiGLU MLPs
(gate, up, down) or plain up/down MLPs (Nemotron-H). Multi-token-prediction modules and vision
towers are not counted (serving engines load them separately, if at all).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from apex_plan.model.spec import (
    ATTENTION_MIXERS, CHUNKED, DENSE, FULL, LINEAR, MAMBA, MOE, NO_MIXER, NO_MLP, PROJ, PROJ_MLP, SLIDING, SPARSE, LayerKind, ModelSpec,
)
from apex_plan.model.quant import component_format, format_bytes
from apex_plan.units import dtype_bytes

_SCORE_BIAS = ("DeepseekV3ForCausalLM",)                     # router e_score_correction_bias (legacy flag)
_SHARED_GATE = ("Qwen2MoeForCausalLM",)                      # sigmoid gate on the shared expert (legacy flag)


@dataclass(frozen=True)
class ParamCounts:
    """Parameters of one model, by component (per layer where named so) and in total."""

    attention_per_layer: int         # one attention (KV-cache) layer's mixer; 0 when the model has none
    dense_mlp_per_layer: int         # in a dense layer (0 when no layer is dense)
    routed_experts_per_layer: int    # all routed experts of one MoE layer
    routed_expert_each: int          # one routed expert
    shared_experts_per_layer: int    # all shared experts of one MoE layer
    router_per_layer: int            # gate (and any router bias / shared-expert gate / latent projections) of one MoE layer
    norms_per_layer: int             # input and post-attention RMSNorm
    embedding: int
    lm_head: int                     # 0 when tied to the embedding
    final_norm: int
    n_dense_layers: int
    n_moe_layers: int
    total: int
    active: int                      # used per token, embedding and lm_head included
    mixer_per_layer: dict = field(default_factory=dict)   # mixer kind -> parameters of one such mixer
    layer_params: dict = field(default_factory=dict)      # LayerKind -> parameters of one such layer

    @property
    def dense_layer(self) -> int:
        """All parameters of one dense-MLP layer."""
        return self.attention_per_layer + self.norms_per_layer + self.dense_mlp_per_layer

    @property
    def moe_layer(self) -> int:
        """All parameters of one MoE layer."""
        return (self.attention_per_layer + self.norms_per_layer + self.router_per_layer
                + self.shared_experts_per_layer + self.routed_experts_per_layer)

    @property
    def active_matmul(self) -> int:
        """Active per token that enter a matmul: `active` less the embedding lookup (kept when tied,
        as the lm_head then multiplies by it). DeepSeek's "37B activated" counts this way."""
        return self.active - (self.embedding if self.lm_head else 0)

    @property
    def total_non_embedding(self) -> int:
        """Total without the embedding and lm_head."""
        return self.total - self.embedding - self.lm_head

    @property
    def active_non_embedding(self) -> int:
        """Active per token without the embedding and lm_head."""
        return self.active - self.embedding - self.lm_head


def swiglu_mlp_params(hidden_size: int, intermediate_size: int) -> int:
    """gate_proj + up_proj (hidden x inter each) + down_proj (inter x hidden), no biases."""
    return 3 * hidden_size * intermediate_size


def mlp_params(spec: ModelSpec, hidden: int, inter: int) -> int:
    """One MLP of width `inter`: SwiGLU (3 matrices) or plain up/down (2 matrices)."""
    return (3 if spec.mlp_gated else 2) * hidden * inter


def indexer_params(spec: ModelSpec) -> int:
    """DeepSeek sparse-attention indexer (DeepSeek-V3.2 `Indexer`): wq_b (q_lora x heads*dim),
    wk (hidden x dim), k_norm LayerNorm (weight + bias of dim), weights_proj (hidden x heads)."""
    n, d, h = spec.index_n_heads, spec.index_head_dim, spec.hidden_size
    q_in = spec.q_lora_rank or h
    if spec.hc_mult:                                    # DeepSeek-V4: keys from the indexer's compressor
        return q_in * n * d + h * n
    return q_in * n * d + h * d + 2 * d + h * n


def attention_params(spec: ModelSpec, mixer: str = FULL, kv_heads: int = 0) -> int:
    """Parameters of one token mixer of kind `mixer` (projections, biases, norms, sinks, state params);
    `kv_heads`: the layer kind's own KV heads (LayerKind.kv_heads, DeciLM), 0 for the model's."""
    h = spec.hidden_size
    if mixer == NO_MIXER:
        return 0
    if mixer == PROJ:
        return h * h                                        # DeciLM LinearAttention: one bias-free hidden x hidden linear
    if mixer == LINEAR:
        return linear_attention_params(spec)
    if mixer == MAMBA:
        return mamba_params(spec)
    if spec.attention == "mla":
        n, nope, rope, v = spec.num_heads, spec.qk_nope_head_dim, spec.qk_rope_head_dim, spec.v_head_dim
        if spec.q_lora_rank:
            # q_a_proj (hidden x q_lora) + q_a_layernorm (q_lora) + q_b_proj (q_lora x heads*(nope+rope))
            q = h * spec.q_lora_rank + spec.q_lora_rank + spec.q_lora_rank * n * (nope + rope)
        else:
            # q_proj (hidden x heads*(nope+rope)), DeepSeek-V2-Lite style
            q = h * n * (nope + rope)
        # kv_a_proj_with_mqa (hidden x (kv_lora+rope)) + kv_a_layernorm (kv_lora)
        kv_a = h * (spec.kv_lora_rank + rope) + spec.kv_lora_rank
        # kv_b_proj (kv_lora x heads*(nope+v))
        kv_b = spec.kv_lora_rank * n * (nope + v)
        # o_proj (heads*v x hidden), and an output gate hidden -> heads*v (Kimi-K3 mla_use_output_gate)
        o = n * v * h * (2 if spec.attn_output_gate else 1)
        params = q + kv_a + kv_b + o
    else:
        head_dim, kv_heads = spec.attention_dims(mixer, kv_heads)
        v_dim = spec.v_head_dim or head_dim                 # value/output head dim when it differs (MiMo-V2)
        q_out = spec.num_heads * head_dim
        kv_out = kv_heads * head_dim
        gate = q_out if spec.attn_output_gate else 0         # q_proj also emits one gate per q element
        n_kv_proj = 1 if ((spec.global_k_eq_v and mixer == FULL) or spec.kv_one_vector) else 2  # V reuses K
        v_out = kv_heads * v_dim if n_kv_proj == 2 else 0
        # q_proj (+gate; or q_a (hidden x q_lora) + q_norm + q_b (q_lora x heads*head_dim)), k_proj and v_proj
        q = spec.q_lora_rank * (h + 1) + spec.q_lora_rank * (q_out + gate) if spec.q_lora_rank else h * (q_out + gate)
        params = q + h * kv_out + h * v_out + output_proj_params(spec, spec.num_heads * v_dim)
        if spec.kv_one_vector:
            params += head_dim                              # kv_norm of the one cached vector
        if spec.qkv_bias:
            params += q_out + gate + kv_out + v_out         # q/k/v biases
        if spec.o_bias:
            params += h                                     # o_proj bias
        if spec.qk_norm == "head":
            params += 2 * head_dim                          # q_norm + k_norm, one head_dim vector each
        elif spec.qk_norm == "layer":
            params += q_out + kv_out                        # q_norm over all q heads, k_norm over all k heads
    if spec.attention_sinks:
        params += spec.num_heads                            # one sink logit per query head
    if mixer == SPARSE:
        params += indexer_params(spec)
    return params


def output_proj_params(spec: ModelSpec, in_width: int) -> int:
    """o_proj (heads*v_dim x hidden), or DeepSeek-V4's grouped low-rank output: per group a
    (in_width/groups x o_lora) matrix, then (groups*o_lora x hidden)."""
    if spec.o_lora_rank and spec.o_groups:
        return in_width * spec.o_lora_rank + spec.o_groups * spec.o_lora_rank * spec.hidden_size
    return in_width * spec.hidden_size


def compressor_params(spec: ModelSpec, kind: LayerKind) -> int:
    """DeepSeek-V4 KV compressor of a layer pooling `compress` tokens per row: wkv and wgate (hidden x
    coff*head_dim each, coff 2 for overlapping ratio-4 windows), positional bias (ratio x coff*head_dim),
    RMSNorm (head_dim); ratio-4 layers' indexer has its own compressor of index_head_dim."""
    if not kind.compress:
        return 0
    h, d = spec.hidden_size, spec.head_dim
    coff = 2 if kind.compress == 4 else 1
    out = 2 * h * coff * d + kind.compress * coff * d + d
    if kind.mixer == SPARSE:
        di = spec.index_head_dim
        out += 2 * h * 2 * di + kind.compress * 2 * di + di
    return out


def hyper_connection_params(spec: ModelSpec) -> int:
    """mHC of one layer (DeepSeek-V4): before the mixer and before the MLP, a mapping of the hc_mult
    streams (hc_mult*hidden) to (2 + hc_mult)*hc_mult mixing weights, its bias and 3 scales."""
    if not spec.hc_mult:
        return 0
    mix = (2 + spec.hc_mult) * spec.hc_mult
    return 2 * (mix * spec.hc_mult * spec.hidden_size + mix + 3)


def linear_attention_params(spec: ModelSpec) -> int:
    """Gated DeltaNet (Qwen3-Next / Qwen3.5 `linear_attn`): in_proj_qkvz (hidden x 2*key_dim + 2*value_dim),
    in_proj_ba (hidden x 2*v_heads), depthwise conv1d over q,k,v (conv_dim x kernel, no bias), dt_bias and
    A_log (v_heads each), gated RMSNorm (value head dim), out_proj (value_dim x hidden)."""
    h = spec.hidden_size
    key_dim = spec.linear_num_key_heads * spec.linear_key_head_dim
    value_dim = spec.linear_num_value_heads * spec.linear_value_head_dim
    conv_dim = 2 * key_dim + value_dim
    if spec.linear_kind == "kda":
        return kda_params(spec)
    return (h * (2 * key_dim + 2 * value_dim) + h * 2 * spec.linear_num_value_heads
            + conv_dim * spec.linear_conv_kernel + 2 * spec.linear_num_value_heads
            + spec.linear_value_head_dim + value_dim * h)


def kda_params(spec: ModelSpec) -> int:
    """Kimi Delta Attention (Kimi-Linear `KimiDeltaAttention`; K3 per aiconfigurator-core kimi_k3.py): q, k, v
    projections (hidden x heads*dim each), the output gate (full rank: hidden x heads*dim; else low rank
    g_a hidden x dim + g_b dim x heads*dim), the decay gate f_a (hidden x dim) + f_b (dim x heads*dim), beta
    b_proj (hidden x heads), depthwise short convs over q, k, v (3 x heads*dim x kernel), A_log (heads),
    dt_bias (heads*dim), the gated output RMSNorm (dim) and o_proj (heads*dim x hidden)."""
    h, d, n = spec.hidden_size, spec.linear_value_head_dim, spec.linear_num_value_heads
    width = n * d
    gate = h * width if spec.linear_full_rank_gate else h * d + d * width
    return (3 * h * width + gate + h * d + d * width + h * n + 3 * width * spec.linear_conv_kernel + n + width + d
            + width * h)


def mamba_params(spec: ModelSpec) -> int:
    """Mamba-2 mixer (Nemotron-H `NemotronHMamba2Mixer`): in_proj (hidden x 2*d_inner + 2*groups*state + heads),
    conv1d (conv_dim x kernel + conv_dim bias), dt_bias, A_log, D (heads each), gated RMSNorm (d_inner),
    out_proj (d_inner x hidden)."""
    h = spec.hidden_size
    d_inner = spec.mamba_num_heads * spec.mamba_head_dim
    gs = spec.mamba_n_groups * spec.mamba_state_size
    conv_dim = d_inner + 2 * gs
    return (h * (2 * d_inner + 2 * gs + spec.mamba_num_heads) + conv_dim * spec.mamba_conv_kernel + conv_dim
            + 3 * spec.mamba_num_heads + d_inner + d_inner * h)


def _moe_parts(spec: ModelSpec) -> tuple[int, int, int]:
    """(one routed expert, all shared experts, router and its extras) of one MoE layer."""
    h = spec.hidden_size
    width_in = spec.moe_latent_size or h                    # experts may work in a latent space
    expert_each = mlp_params(spec, width_in, spec.expert_intermediate_size)
    if spec.expert_bias:
        # gate_up bias (2 * inter) + down bias (hidden), or up + down biases for a plain MLP
        expert_each += (2 if spec.mlp_gated else 1) * spec.expert_intermediate_size + width_in
    shared = spec.num_shared_experts * mlp_params(spec, h, spec.shared_expert_intermediate_size)
    router = h * spec.num_experts                           # gate: hidden -> expert logits
    if spec.router_bias:
        router += spec.num_experts                          # gate bias
    if spec.score_bias or spec.architecture in _SCORE_BIAS:
        router += spec.num_experts                          # e_score_correction_bias
    if (spec.shared_expert_gate or spec.architecture in _SHARED_GATE) and spec.num_shared_experts:
        router += h                                         # shared_expert_gate: hidden -> 1
    if spec.moe_latent_size:
        router += 2 * h * spec.moe_latent_size              # fc1_latent_proj + fc2_latent_proj
    if spec.router_scales:
        router += h + spec.num_experts                      # router input scale + per-expert scale
    if spec.moe_with_dense_mlp:
        shared += mlp_params(spec, h, spec.intermediate_size) + 3 * h   # the dense MLP beside the experts + its 3 norms
    return expert_each, shared, router


def layer_params(spec: ModelSpec, kind: LayerKind) -> tuple[int, int]:
    """(all, active per token) parameters of one layer of `kind`."""
    h = spec.hidden_size
    mixer = attention_params(spec, kind.mixer, kind.kv_heads) + compressor_params(spec, kind) + hyper_connection_params(spec)
    norms = (h if kind.mixer != NO_MIXER else 0) + (h if kind.mlp != NO_MLP else 0)   # pre-mixer + pre-MLP RMSNorm
    norms += spec.extra_norms_per_layer * h                                         # post-norms (Gemma)
    if kind.mlp == DENSE:
        mlp = mlp_params(spec, h, kind.mlp_width or spec.intermediate_size)
        return mixer + norms + mlp, mixer + norms + mlp
    if kind.mlp == PROJ_MLP:                                # DeciLM LinearMLP: one bias-free hidden x hidden linear
        return mixer + norms + h * h, mixer + norms + h * h
    if kind.mlp == MOE:
        each, shared, router = _moe_parts(spec)
        base = mixer + norms + router + shared
        return base + spec.num_experts * each, base + spec.experts_per_token * each
    return mixer + norms, mixer + norms


def param_counts(spec: ModelSpec) -> ParamCounts:
    """Exact parameter counts of `spec` (see module docstring for what is counted)."""
    h = spec.hidden_size
    counts = spec.kind_counts()
    attn_kinds = [k for k in counts if k.mixer in ATTENTION_MIXERS]
    attention = attention_params(spec, attn_kinds[0].mixer) if attn_kinds else 0
    n_dense, n_moe = spec.n_dense_layers, spec.n_moe_layers
    dense_mlp = mlp_params(spec, h, spec.intermediate_size) if n_dense else 0
    each, shared, router = _moe_parts(spec) if spec.is_moe else (0, 0, 0)
    embedding = spec.vocab_size * h                                 # embed_tokens
    lm_head = 0 if spec.tie_word_embeddings else spec.vocab_size * h
    final_norm = h                                                  # model.norm
    total = active = embedding + lm_head + final_norm
    per_kind = {}
    for kind, n in counts.items():
        all_p, act_p = layer_params(spec, kind)
        per_kind[kind] = all_p
        total += n * all_p
        active += n * act_p
    return ParamCounts(
        attention_per_layer=attention, dense_mlp_per_layer=dense_mlp,
        routed_experts_per_layer=spec.num_experts * each, routed_expert_each=each,
        shared_experts_per_layer=shared, router_per_layer=router, norms_per_layer=2 * h,
        embedding=embedding, lm_head=lm_head, final_norm=final_norm, n_dense_layers=n_dense, n_moe_layers=n_moe,
        total=total, active=active, mixer_per_layer={k.mixer: attention_params(spec, k.mixer) for k in counts},
        layer_params=per_kind,
    )


def weight_bytes(spec: ModelSpec, weight_dtype: str, act_dtype: str = "bf16") -> float:
    """Bytes of all weights. Without a checkpoint format: every parameter in `weight_dtype`. With
    one (`spec.weight_formats`): each component in the format the checkpoint gives it, scales
    included, norms in the activation dtype."""
    if not spec.weight_formats:
        dtype_bytes(weight_dtype, where="weight_dtype")
        return param_counts(spec).total * dtype_bytes(weight_dtype, where="weight_dtype")
    formats = dict(spec.weight_formats)
    return sum(n * (dtype_bytes(act_dtype) if comp == "norms" else
                    format_bytes(component_format(formats, comp, weight_dtype, act_dtype)))
               for comp, n in component_params(spec).items())


def component_params(spec: ModelSpec) -> dict[str, int]:
    """Parameters by weight component (as `apex_plan.model.quant.COMPONENTS`), plus 'norms'."""
    h = spec.hidden_size
    out = dict(attention=0, indexer=0, linear_attn=0, mamba=0, mlp=0, experts=0, shared_experts=0, router=0,
               norms=h, embedding=spec.vocab_size * h, lm_head=0 if spec.tie_word_embeddings else spec.vocab_size * h)
    for kind, n in spec.kind_counts().items():
        if kind.mixer == LINEAR:
            out["linear_attn"] += n * linear_attention_params(spec)
        elif kind.mixer == MAMBA:
            out["mamba"] += n * mamba_params(spec)
        elif kind.mixer != NO_MIXER:
            idx = indexer_params(spec) if kind.mixer == SPARSE else 0
            out["attention"] += n * (attention_params(spec, kind.mixer, kind.kv_heads) - idx + compressor_params(spec, kind)
                                     + hyper_connection_params(spec))
            out["indexer"] += n * idx
        out["norms"] += n * ((h if kind.mixer != NO_MIXER else 0) + (h if kind.mlp != NO_MLP else 0)
                             + spec.extra_norms_per_layer * h)
        if kind.mlp == DENSE:
            out["mlp"] += n * mlp_params(spec, h, kind.mlp_width or spec.intermediate_size)
        elif kind.mlp == PROJ_MLP:
            out["mlp"] += n * h * h
        elif kind.mlp == MOE:
            each, shared, router = _moe_parts(spec)
            out["experts"] += n * spec.num_experts * each
            out["shared_experts"] += n * shared
            out["router"] += n * router
    return out
