"""Map a Hugging Face `config.json` (or a model YAML holding the same fields) onto a `ModelSpec`:
one function per architecture family; an architecture not listed is a one-line error. What every
config shares (dtype, quantization, aliases, nested text config, MTP layers) is read in `model.hf_config`."""

from __future__ import annotations

from typing import Any, Callable

from apex_plan.errors import InputError
from apex_plan.model import spec as S
from apex_plan.model.fields import _MISSING, _bool, _count_dense, _get, _int, _int_list, _str_list
from apex_plan.model.hf2026 import MLA_FAMILIES, NO_DENSE_WIDTH, READERS
from apex_plan.model.hf_config import alias_formats, aliases, check_dtype, checkpoint_formats, mtp_layers, text_config
from apex_plan.model.spec import LayerKind, ModelSpec, group_layers

# ---------------------------------------------------------------- mapping

# Architectures we can cost, by family.
_GQA_DENSE = ("LlamaForCausalLM", "MistralForCausalLM", "Qwen2ForCausalLM", "Qwen3ForCausalLM",
              "Qwen3VLForConditionalGeneration", "MiMoForCausalLM")
_QWEN_MOE = ("Qwen2MoeForCausalLM", "Qwen3MoeForCausalLM", "Qwen3VLMoeForConditionalGeneration")
_MLA = ("DeepseekV2ForCausalLM", "DeepseekV3ForCausalLM", "KimiK25ForConditionalGeneration",
        "DeepseekV32ForCausalLM", "GlmMoeDsaForCausalLM")
_SPARSE_MLA = ("DeepseekV32ForCausalLM", "GlmMoeDsaForCausalLM")      # DeepSeek sparse attention on every layer
_QWEN_HYBRID = ("Qwen3_5MoeForConditionalGeneration", "Qwen3_5ForConditionalGeneration", "Qwen3NextForCausalLM")
_QK_HEAD_NORM = ("Qwen3ForCausalLM", "Qwen3MoeForCausalLM", "Qwen3VLForConditionalGeneration",
                 "Qwen3VLMoeForConditionalGeneration") + _QWEN_HYBRID
SUPPORTED_ARCHITECTURES: tuple[str, ...] = (
    _GQA_DENSE + ("MixtralForCausalLM",) + _QWEN_MOE + _MLA + _QWEN_HYBRID
    + ("GptOssForCausalLM", "MiniMaxM2ForCausalLM", "NemotronHForCausalLM", "Llama4ForConditionalGeneration",
       "Gemma4ForConditionalGeneration") + tuple(READERS))


def _architecture(cfg: dict, where: str) -> str:
    value = _get(cfg, where, "architectures")
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not value or not all(isinstance(v, str) for v in value):
        raise InputError(where, "architectures", f"must be a list of class names, got {value!r}",
                         "write e.g. 'architectures: [LlamaForCausalLM]'")
    for arch in value:
        if arch in SUPPORTED_ARCHITECTURES:
            return arch
    raise InputError(where, "architectures", f"unsupported architecture {', '.join(value)}",
                     "supported: " + ", ".join(SUPPORTED_ARCHITECTURES))



def spec_from_hf(cfg: dict, where: str, default_name: str = "model") -> ModelSpec:
    """Map Hugging Face config fields (plus optional `name`/`source`) onto a validated `ModelSpec`."""
    arch = _architecture(cfg, where)
    cfg, notes = text_config(cfg, where)
    if arch == "NemotronHForCausalLM":
        cfg = _nemotron_pattern(cfg, where)
    name = str(cfg.get("name") or default_name)
    source = str(cfg.get("source") or cfg.get("_name_or_path") or where)
    hidden = _int(cfg, where, "hidden_size")
    num_layers = _int(cfg, where, "num_hidden_layers")
    num_heads = _int(cfg, where, "num_attention_heads")
    inter_field = "intermediate_size_mlp" if arch == "Llama4ForConditionalGeneration" else "intermediate_size"
    # all-MoE hybrids may carry no dense width at all
    inter_default: Any = 0 if arch in ("Qwen3_5MoeForConditionalGeneration",) + NO_DENSE_WIDTH else _MISSING
    common: dict[str, Any] = dict(
        name=name, source=source, architecture=arch, num_layers=num_layers, hidden_size=hidden,
        num_heads=num_heads, intermediate_size=_int(cfg, where, inter_field, inter_default, minimum=0 if inter_default is not _MISSING else 1),
        vocab_size=_int(cfg, where, "vocab_size"),
        tie_word_embeddings=_bool(cfg, where, "tie_word_embeddings", False),
        max_context=_int(cfg, where, "max_position_embeddings"),
        notes=tuple(notes), remote_code=isinstance(cfg.get("auto_map"), dict),
        mtp_layers=mtp_layers(cfg),
        aliases=aliases(cfg, where),
    )
    common["alias_formats"] = alias_formats(cfg, where, common["aliases"], num_layers)
    check_dtype(cfg, where)
    qc = cfg.get("quantization_config")
    formats = checkpoint_formats(qc, where, num_layers)
    if formats:
        common["weight_formats"] = tuple(sorted(formats.items()))

    if arch in _MLA:
        spec = _mla_spec(cfg, where, arch, common)
    elif arch in READERS:
        if arch not in MLA_FAMILIES:
            _gqa_fields(cfg, where, arch, common)
        spec = READERS[arch](cfg, where, common)
    else:
        _gqa_fields(cfg, where, arch, common)
        if arch == "MixtralForCausalLM":
            spec = ModelSpec(**common, num_experts=_int(cfg, where, "num_local_experts"),
                             experts_per_token=_int(cfg, where, "num_experts_per_tok"),
                             expert_intermediate_size=common["intermediate_size"], num_dense_layers=0)
        elif arch in _QWEN_MOE:
            spec = _qwen_moe_spec(cfg, where, arch, common)
        elif arch in _QWEN_HYBRID:
            spec = _qwen_hybrid_spec(cfg, where, arch, common)
        elif arch == "GptOssForCausalLM":
            spec = _gpt_oss_spec(cfg, where, common)
        elif arch == "MiniMaxM2ForCausalLM":
            spec = _minimax_m2_spec(cfg, where, common)
        elif arch == "NemotronHForCausalLM":
            spec = _nemotron_h_spec(cfg, where, common)
        elif arch == "Llama4ForConditionalGeneration":
            spec = _llama4_spec(cfg, where, common)
        elif arch == "Gemma4ForConditionalGeneration":
            spec = _gemma4_spec(cfg, where, common)
        else:
            spec = ModelSpec(**common)

    if spec.is_moe and spec.experts_per_token > spec.num_experts:
        field = {"MixtralForCausalLM": "num_local_experts", "Gemma4ForConditionalGeneration": "num_experts", "GptOssForCausalLM": "num_local_experts",
                 "MiniMaxM2ForCausalLM": "num_local_experts", "Llama4ForConditionalGeneration": "num_local_experts",
                 }.get(arch, "n_routed_experts" if arch in _MLA or arch == "NemotronHForCausalLM" else "num_experts")
        raise InputError(where, "num_experts_per_tok",
                         f"{spec.experts_per_token} is more than the {spec.num_experts} experts ({field})",
                         f"use at most {spec.num_experts}")
    return spec


def _gqa_fields(cfg: dict, where: str, arch: str, common: dict) -> None:
    """num_kv_heads, head_dim and the q/k norm and bias flags of a GQA attention."""
    hidden, num_heads = common["hidden_size"], common["num_heads"]
    num_kv_heads = _int(cfg, where, "num_key_value_heads", num_heads)
    if num_heads % num_kv_heads:
        raise InputError(where, "num_key_value_heads",
                         f"num_attention_heads ({num_heads}) is not a multiple of it ({num_kv_heads})",
                         "use a divisor of num_attention_heads")
    if "head_dim" in cfg and cfg["head_dim"] is not None:
        head_dim = _int(cfg, where, "head_dim")
    elif hidden % num_heads:
        raise InputError(where, "head_dim", f"missing, and hidden_size ({hidden}) is not a multiple of "
                         f"num_attention_heads ({num_heads})", "add 'head_dim' from the config")
    else:
        head_dim = hidden // num_heads
    common.update(num_kv_heads=num_kv_heads, head_dim=head_dim)
    if arch in ("Qwen2ForCausalLM", "Qwen2MoeForCausalLM"):
        common["qkv_bias"] = True                                  # Qwen2 attention: q/k/v biases
    elif arch == "MiMoForCausalLM":
        common["qkv_bias"] = _bool(cfg, where, "attention_bias", True)   # MiMo: Qwen2 attention, q/k/v biases
    if arch in _QK_HEAD_NORM:
        common["qk_norm"] = "head"                                 # Qwen3: RMSNorm of head_dim on q and k


def _layers_from_types(cfg: dict, where: str, field: str, num_layers: int, mlp_of: Callable[[int], str],
                       names: dict[str, tuple[str, int]]) -> tuple[S.LayerGroup, ...]:
    """Layer groups from a per-layer type list such as gpt-oss / Qwen3.5 `layer_types`."""
    types = _str_list(cfg, where, field)
    if len(types) != num_layers:
        raise InputError(where, field, f"lists {len(types)} layers but num_hidden_layers is {num_layers}",
                         "give one type per layer")
    layers = []
    for i, t in enumerate(types):
        if t not in names:
            raise InputError(where, field, f"layer {i} has an unknown type '{t}'", "use one of " + ", ".join(names))
        mixer, window = names[t]
        layers.append(LayerKind(mixer, mlp_of(i), window))
    return group_layers(layers)


def _qwen_moe_spec(cfg: dict, where: str, arch: str, common: dict) -> ModelSpec:
    """Qwen2-MoE / Qwen3-MoE: layer i is MoE unless in mlp_only_layers or (i+1) % decoder_sparse_step != 0."""
    num_layers = common["num_layers"]
    step = _int(cfg, where, "decoder_sparse_step", 1)
    mlp_only = set(_int_list(cfg, where, "mlp_only_layers"))
    n_dense = _count_dense(num_layers, lambda i: i not in mlp_only and (i + 1) % step == 0)
    shared, shared_width = 0, 0
    if arch == "Qwen2MoeForCausalLM":
        shared_width = _int(cfg, where, "shared_expert_intermediate_size", 0, minimum=0)
        shared = 1 if shared_width else 0
    return ModelSpec(**common, num_experts=_int(cfg, where, "num_experts"),
                     experts_per_token=_int(cfg, where, "num_experts_per_tok"),
                     expert_intermediate_size=_int(cfg, where, "moe_intermediate_size"),
                     num_shared_experts=shared, shared_expert_intermediate_size=shared_width,
                     num_dense_layers=n_dense, shared_expert_gate=bool(shared))


def _qwen_hybrid_spec(cfg: dict, where: str, arch: str, common: dict) -> ModelSpec:
    """Qwen3.5 / Qwen3-Next: Gated DeltaNet linear-attention layers and gated full attention
    (`layer_types`, else every `full_attention_interval`-th layer is full); MoE with one shared expert
    behind a sigmoid gate, or a dense MLP (Qwen3.5 dense models)."""
    num_layers = common["num_layers"]
    moe = "num_experts" in cfg and cfg.get("num_experts") not in (None, 0)
    mlp_only = set(_int_list(cfg, where, "mlp_only_layers")) if moe else set()
    mlp_of = (lambda i: S.DENSE if i in mlp_only else S.MOE) if moe else (lambda i: S.DENSE)
    names = {"linear_attention": (S.LINEAR, 0), "full_attention": (S.FULL, 0)}
    if "layer_types" in cfg and cfg["layer_types"] is not None:
        groups = _layers_from_types(cfg, where, "layer_types", num_layers, mlp_of, names)
    else:
        every = _int(cfg, where, "full_attention_interval", 4)
        groups = group_layers([LayerKind(S.FULL if (i + 1) % every == 0 else S.LINEAR, mlp_of(i))
                               for i in range(num_layers)])
    extra: dict[str, Any] = dict(
        layer_groups=groups, attn_output_gate=_bool(cfg, where, "attn_output_gate", True),
        linear_num_key_heads=_int(cfg, where, "linear_num_key_heads"),
        linear_num_value_heads=_int(cfg, where, "linear_num_value_heads"),
        linear_key_head_dim=_int(cfg, where, "linear_key_head_dim"),
        linear_value_head_dim=_int(cfg, where, "linear_value_head_dim"),
        linear_conv_kernel=_int(cfg, where, "linear_conv_kernel_dim", 4),
        # recurrent state dtype (Qwen3.5 `mamba_ssm_dtype: float32`); 0: the activation dtype
        mamba_state_bytes=4.0 if str(cfg.get("mamba_ssm_dtype", "")) in ("float32", "fp32") else 0.0,
    )
    if moe:
        shared_width = _int(cfg, where, "shared_expert_intermediate_size", 0, minimum=0)
        extra.update(num_experts=_int(cfg, where, "num_experts"), experts_per_token=_int(cfg, where, "num_experts_per_tok"),
                     expert_intermediate_size=_int(cfg, where, "moe_intermediate_size"),
                     num_shared_experts=1 if shared_width else 0, shared_expert_intermediate_size=shared_width,
                     shared_expert_gate=bool(shared_width), num_dense_layers=len(mlp_only))
    return ModelSpec(**common, **extra)


def _gpt_oss_spec(cfg: dict, where: str, common: dict) -> ModelSpec:
    """gpt-oss: sliding-window and full attention alternating (`layer_types`), biases on every
    projection, one attention-sink logit per head; every MLP a MoE with biased experts and router."""
    window = _int(cfg, where, "sliding_window")
    names = {"sliding_attention": (S.SLIDING, window), "full_attention": (S.FULL, 0)}
    groups = _layers_from_types(cfg, where, "layer_types", common["num_layers"], lambda i: S.MOE, names)
    bias = _bool(cfg, where, "attention_bias", True)
    return ModelSpec(**common, num_experts=_int(cfg, where, "num_local_experts"),
                     experts_per_token=_int(cfg, where, "num_experts_per_tok"),
                     expert_intermediate_size=common["intermediate_size"], num_dense_layers=0,
                     layer_groups=groups, qkv_bias=bias, o_bias=bias, attention_sinks=True,
                     router_bias=True, expert_bias=True)


def _minimax_m2_spec(cfg: dict, where: str, common: dict) -> ModelSpec:
    """MiniMax-M2: full GQA attention with q/k RMSNorm over all heads (`qk_norm_type: per_layer`),
    every MLP a MoE (`intermediate_size` is the expert width) with a routing score bias."""
    qk = ""
    if _bool(cfg, where, "use_qk_norm", False):
        qk = "layer" if str(cfg.get("qk_norm_type", "per_layer")) == "per_layer" else "head"
    shared_width = _int(cfg, where, "shared_intermediate_size", 0, minimum=0)
    return ModelSpec(**common, num_experts=_int(cfg, where, "num_local_experts"),
                     experts_per_token=_int(cfg, where, "num_experts_per_tok"),
                     expert_intermediate_size=common["intermediate_size"], num_dense_layers=0,
                     num_shared_experts=1 if shared_width else 0, shared_expert_intermediate_size=shared_width,
                     qk_norm=qk, score_bias=_bool(cfg, where, "use_routing_bias", False))


_NEMOTRON_BLOCKS = {"mamba": "M", "attention": "*", "mlp": "-", "moe": "E"}


def _nemotron_pattern(cfg: dict, where: str) -> dict:
    """Newer Nemotron-H configs list `layers_block_type` names instead of `hybrid_override_pattern`
    characters, and may leave `num_hidden_layers` to its length."""
    if cfg.get("hybrid_override_pattern") is not None or cfg.get("layers_block_type") is None:
        return cfg
    blocks = cfg["layers_block_type"]
    if not isinstance(blocks, list) or not blocks or any(b not in _NEMOTRON_BLOCKS for b in blocks):
        raise InputError(where, "layers_block_type", f"must be a list of {', '.join(_NEMOTRON_BLOCKS)}, got {blocks!r}",
                         "copy it from the model's config.json")
    out = {**cfg, "hybrid_override_pattern": "".join(_NEMOTRON_BLOCKS[b] for b in blocks)}
    out.setdefault("num_hidden_layers", len(blocks))
    if out["num_hidden_layers"] is None:
        out["num_hidden_layers"] = len(blocks)
    return out


def _nemotron_h_spec(cfg: dict, where: str, common: dict) -> ModelSpec:
    """Nemotron-H: one block per character of `hybrid_override_pattern`: M Mamba-2, * attention,
    - plain relu2 MLP, E MoE (non-gated experts, a shared expert, optionally in a latent space)."""
    pattern = _get(cfg, where, "hybrid_override_pattern")
    if not isinstance(pattern, str) or len(pattern) != common["num_layers"] or set(pattern) - set("M*-E"):
        raise InputError(where, "hybrid_override_pattern",
                         f"must be a string of M, *, - or E, one per layer ({common['num_layers']}), got {pattern!r}",
                         "copy it from the model's config.json")
    kinds = {"M": LayerKind(S.MAMBA, S.NO_MLP), "*": LayerKind(S.FULL, S.NO_MLP),
             "-": LayerKind(S.NO_MIXER, S.DENSE), "E": LayerKind(S.NO_MIXER, S.MOE)}
    groups = group_layers([kinds[c] for c in pattern])
    extra: dict[str, Any] = {}
    if "E" in pattern:
        shared_width = _int(cfg, where, "moe_shared_expert_intermediate_size", 0, minimum=0)
        extra = dict(num_experts=_int(cfg, where, "n_routed_experts"), experts_per_token=_int(cfg, where, "num_experts_per_tok"),
                     expert_intermediate_size=_int(cfg, where, "moe_intermediate_size"),
                     num_shared_experts=_int(cfg, where, "n_shared_experts", 1 if shared_width else 0, minimum=0),
                     shared_expert_intermediate_size=shared_width, score_bias=True,
                     moe_latent_size=_int(cfg, where, "moe_latent_size", 0, minimum=0))
    cache = str(cfg.get("mamba_ssm_cache_dtype") or "float32")
    return ModelSpec(**common, **extra, layer_groups=groups, mlp_gated=False,
                     mamba_num_heads=_int(cfg, where, "mamba_num_heads"), mamba_head_dim=_int(cfg, where, "mamba_head_dim"),
                     mamba_state_size=_int(cfg, where, "ssm_state_size"), mamba_n_groups=_int(cfg, where, "n_groups"),
                     mamba_conv_kernel=_int(cfg, where, "conv_kernel"),
                     mamba_state_bytes=4.0 if cache in ("float32", "fp32") else 2.0)


def _llama4_spec(cfg: dict, where: str, common: dict) -> ModelSpec:
    """Llama 4: every `interleave_moe_layer_step`-th layer a MoE (one shared expert plus routed
    experts of `intermediate_size`), the others dense of `intermediate_size_mlp`; every 4th layer
    global attention (NoPE), the others chunked local attention of `attention_chunk_size`
    (transformers `no_rope_layers` default)."""
    num_layers = common["num_layers"]
    step = _int(cfg, where, "interleave_moe_layer_step", 1)
    chunk = _int(cfg, where, "attention_chunk_size")
    no_rope = cfg.get("no_rope_layers")
    if isinstance(no_rope, list) and len(no_rope) == num_layers:
        local = [bool(v) for v in no_rope]                      # 1: uses rope, i.e. a chunked local layer
    else:
        local = [(i + 1) % 4 != 0 for i in range(num_layers)]
    layers = [LayerKind(S.CHUNKED if local[i] else S.FULL, S.MOE if (i + 1) % step == 0 else S.DENSE,
                        chunk if local[i] else 0) for i in range(num_layers)]
    moe_width = _int(cfg, where, "intermediate_size")
    return ModelSpec(**common, num_experts=_int(cfg, where, "num_local_experts"),
                     experts_per_token=_int(cfg, where, "num_experts_per_tok"), expert_intermediate_size=moe_width,
                     num_shared_experts=1, shared_expert_intermediate_size=moe_width,
                     num_dense_layers=sum(1 for k in layers if k.mlp == S.DENSE), layer_groups=group_layers(layers))


def _gemma4_spec(cfg: dict, where: str, common: dict) -> ModelSpec:
    """Gemma 4 (transformers `Gemma4TextDecoderLayer`): sliding-window and full attention per
    `layer_types`, full layers with their own head dim and KV heads (`global_head_dim`,
    `num_global_key_value_heads` when `attention_k_eq_v`: K reused as V, no v_proj); q/k RMSNorm of the
    head dim; four norms per layer; GeGLU MLP, and with `enable_moe_block` routed experts beside it
    (router with input and per-expert scales, three more norms)."""
    if _int(cfg, where, "hidden_size_per_layer_input", 0, minimum=0) or _int(cfg, where, "num_kv_shared_layers", 0, minimum=0):
        raise InputError(where, "hidden_size_per_layer_input", "per-layer embeddings and shared KV layers (Gemma 4 "
                         "E2B/E4B) are not supported", "use a Gemma 4 model without them (26B-A4B, 31B)")
    window = _int(cfg, where, "sliding_window")
    moe = _bool(cfg, where, "enable_moe_block", False)
    names = {"sliding_attention": (S.SLIDING, window), "full_attention": (S.FULL, 0)}
    groups = _layers_from_types(cfg, where, "layer_types", common["num_layers"], lambda i: S.MOE if moe else S.DENSE, names)
    k_eq_v = _bool(cfg, where, "attention_k_eq_v", False)
    extra: dict[str, Any] = {}
    if moe:
        extra = dict(num_experts=_int(cfg, where, "num_experts"), experts_per_token=_int(cfg, where, "top_k_experts"),
                     expert_intermediate_size=_int(cfg, where, "moe_intermediate_size"), num_dense_layers=0,
                     moe_with_dense_mlp=True, router_scales=True)
    return ModelSpec(**common, **extra, layer_groups=groups, qk_norm="head", extra_norms_per_layer=2,
                     global_head_dim=_int(cfg, where, "global_head_dim", 0, minimum=0),
                     global_num_kv_heads=_int(cfg, where, "num_global_key_value_heads", 0, minimum=0) if k_eq_v else 0,
                     global_k_eq_v=k_eq_v)


def _mla_spec(cfg: dict, where: str, arch: str, common: dict) -> ModelSpec:
    """DeepSeek-V2/V3 (Kimi-K2, GLM-5): MLA attention; layer i is dense if i < first_k_dense_replace
    or i % moe_layer_freq; DeepSeek-V3.2 / GLM-5 add the sparse-attention indexer on every layer."""
    num_layers = common["num_layers"]
    first_k = _int(cfg, where, "first_k_dense_replace", 0, minimum=0)
    freq = _int(cfg, where, "moe_layer_freq", 1)
    n_dense = _count_dense(num_layers, lambda i: i >= first_k and i % freq == 0)
    moe_width = _int(cfg, where, "moe_intermediate_size")
    n_shared = _int(cfg, where, "n_shared_experts", 0, minimum=0)
    v_head_dim = _int(cfg, where, "v_head_dim")
    extra: dict[str, Any] = {}
    if arch in _SPARSE_MLA:
        layers = [LayerKind(S.SPARSE, S.MOE if (i >= first_k and i % freq == 0) else S.DENSE) for i in range(num_layers)]
        extra = dict(layer_groups=group_layers(layers), index_topk=_int(cfg, where, "index_topk"),
                     index_n_heads=_int(cfg, where, "index_n_heads"), index_head_dim=_int(cfg, where, "index_head_dim"))
    return ModelSpec(
        **common, num_kv_heads=common["num_heads"], head_dim=v_head_dim,
        num_experts=_int(cfg, where, "n_routed_experts"),
        experts_per_token=_int(cfg, where, "num_experts_per_tok"),
        num_shared_experts=n_shared, expert_intermediate_size=moe_width,
        shared_expert_intermediate_size=moe_width if n_shared else 0, num_dense_layers=n_dense,
        attention="mla", q_lora_rank=_int(cfg, where, "q_lora_rank", 0, minimum=0),
        kv_lora_rank=_int(cfg, where, "kv_lora_rank"), qk_rope_head_dim=_int(cfg, where, "qk_rope_head_dim"),
        qk_nope_head_dim=_int(cfg, where, "qk_nope_head_dim"), v_head_dim=v_head_dim,
        score_bias=arch != "DeepseekV2ForCausalLM" and str(cfg.get("topk_method", "noaux_tc")) == "noaux_tc",
        **extra,
    )
