"""Readers of the 2026 model families' Hugging Face configs: one function per family, each mapping
its fields onto layer kinds (`apex_plan.model.spec`). Field meanings are those of each checkpoint's
own config class and modelling code (DeciLM `block_configs`, MiMo-V2 `hybrid_layer_pattern`,
Step-3.7 `layer_types`, MiniMax-M3 `moe_layer_freq`, DeepSeek-V4 `compress_ratios`); parameter totals
are checked against the model cards in tests/test_model_2026_families.py."""

from __future__ import annotations

from collections import Counter
from typing import Any, Callable

from apex_plan.errors import InputError
from apex_plan.model import spec as S
from apex_plan.model.fields import _bool, _get, _int, _str_list
from apex_plan.model.spec import LayerKind, ModelSpec, group_layers


def _spec(common: dict, **fields) -> ModelSpec:
    """A ModelSpec of the shared fields with the family's own over them."""
    return ModelSpec(**{**common, **fields})


def _flags(cfg: dict, where: str, field: str, n: int) -> list[int]:
    """A per-layer 0/1 list (MiMo-V2 `hybrid_layer_pattern`, MiniMax-M3 `moe_layer_freq`) of length n."""
    value = _get(cfg, where, field)
    if not isinstance(value, list):
        got = f"{type(value).__name__} {value!r}"[:60]
    elif len(value) != n:
        got = f"{len(value)} values"
    else:
        bad = [(i, v) for i, v in enumerate(value) if v not in (0, 1) or isinstance(v, bool)]
        got = f"{bad[0][1]!r} at layer {bad[0][0]}" if bad else ""
    if got:
        raise InputError(where, field, f"must list 0 or 1 for each of the {n} layers, got {got}",
                         "copy it from the model's config.json")
    return value


def _ffn_width(mult: float, hidden: int) -> int:
    """DeciLM `_ffn_mult_to_intermediate_size`: int(2 * ffn_mult * hidden / 3) rounded up to a multiple of 256."""
    width = int(2 * mult * hidden / 3)
    return -(-width // 256) * 256


def decilm_spec(cfg: dict, where: str, common: dict) -> ModelSpec:
    """DeciLM / Nemotron-NAS (Llama-3.x-Nemotron 51B, Super, Ultra): every layer has its own `block_configs`
    entry: attention with `n_heads_in_group` query heads per KV head, `no_op` (no mixer) or
    `replace_with_linear` (one hidden x hidden linear, mixer PROJ), and an FFN of `ffn_mult` (width by
    `_ffn_width`), `no_op` or `replace_with_linear` (MLP PROJ_MLP), as TensorRT-LLM's
    modeling_nemotron_nas.py builds them. Each layer kind carries its FFN width, and its KV heads when the
    attention layers differ in them; the model's intermediate_size is the mean FFN width and its
    num_kv_heads the most common (what per-model figures such as the elementwise bytes use)."""
    blocks = _get(cfg, where, "block_configs")
    n, h, heads = common["num_layers"], common["hidden_size"], common["num_heads"]
    if not isinstance(blocks, list) or len(blocks) != n or not all(isinstance(b, dict) for b in blocks):
        raise InputError(where, "block_configs", f"must list one block per layer ({n})", "copy it from the config.json")
    parts = []                                                   # (mixer, KV heads or 0, mlp, width) per layer
    for i, b in enumerate(blocks):
        att, ffn = b.get("attention") or {}, b.get("ffn") or {}
        for part, what in ((att, "attention"), (ffn, "ffn")):
            if not isinstance(part, dict):
                raise InputError(where, f"block_configs[{i}].{what}", "must be a mapping", "copy it from the config.json")
            for flag in ("no_op", "replace_with_linear"):
                if part.get(flag) not in (None, True, False):
                    raise InputError(where, f"block_configs[{i}].{what}.{flag}",
                                     f"must be true or false, got {part.get(flag)!r}", "copy it from the config.json")
            if part.get("sparsify"):
                raise InputError(where, f"block_configs[{i}].{what}.sparsify", "sparsified blocks are not supported",
                                 "use a Nemotron-NAS model whose blocks are dense, linear or no_op")
        kv = 0
        if att.get("no_op"):
            mixer = S.NO_MIXER
        elif att.get("replace_with_linear"):
            mixer = S.PROJ
        else:
            mixer = S.FULL
            group = _int(att, f"{where}: block_configs[{i}].attention", "n_heads_in_group")
            if heads % group:
                raise InputError(where, f"block_configs[{i}].attention.n_heads_in_group",
                                 f"{group} does not divide {heads} heads", "copy it from the config.json")
            kv = heads // group
        if ffn.get("no_op") or ffn.get("replace_with_linear"):
            parts.append((mixer, kv, S.NO_MLP if ffn.get("no_op") else S.PROJ_MLP, 0))
            continue
        mult = ffn.get("ffn_mult")
        if isinstance(mult, bool) or not isinstance(mult, (int, float)) or not 0 < mult < 1000:
            raise InputError(where, f"block_configs[{i}].ffn.ffn_mult", f"must be a positive number, got {mult!r}",
                             "copy it from the config.json")
        parts.append((mixer, kv, S.DENSE, _ffn_width(float(mult), h)))
    kv_counts = Counter(kv for _, kv, _, _ in parts if kv)
    kv_model = kv_counts.most_common(1)[0][0] if kv_counts else heads
    varied = len(kv_counts) > 1                                  # layer kinds carry KV heads only when they differ
    layers = [LayerKind(mixer, mlp, mlp_width=width, kv_heads=kv if varied else 0) for mixer, kv, mlp, width in parts]
    widths = [k.mlp_width for k in layers if k.mlp == S.DENSE]
    mean = round(sum(widths) / len(widths)) if widths else 0
    common = dict(common, intermediate_size=mean)
    return _spec(common, num_kv_heads=kv_model, head_dim=_int(cfg, where, "head_dim", h // heads),
                 layer_groups=group_layers(layers))


def mimo_v2_spec(cfg: dict, where: str, common: dict) -> ModelSpec:
    """MiMo-V2-Flash: `hybrid_layer_pattern` 1 = sliding-window attention (window `sliding_window`, its own
    `swa_*` heads, an attention-sink bias), 0 = full attention (`num_key_value_heads`, `head_dim`); q/k head
    dim `head_dim`, value head dim `v_head_dim`; `moe_layer_freq` 1 = MoE (`n_routed_experts` of
    `moe_intermediate_size`, sigmoid routing with a score bias), 0 = dense of `intermediate_size`."""
    n = common["num_layers"]
    swa = _flags(cfg, where, "hybrid_layer_pattern", n)
    moe = _flags(cfg, where, "moe_layer_freq", n)
    window = _int(cfg, where, "sliding_window")
    layers = [LayerKind(S.SLIDING if swa[i] else S.FULL, S.MOE if moe[i] else S.DENSE, window if swa[i] else 0)
              for i in range(n)]
    head_dim = _int(cfg, where, "swa_head_dim", _int(cfg, where, "head_dim"))
    if head_dim != _int(cfg, where, "head_dim") or _int(cfg, where, "swa_v_head_dim", 0, minimum=0) not in (
            0, _int(cfg, where, "v_head_dim")):
        raise InputError(where, "swa_head_dim", "sliding and full layers with different head dims are not supported",
                         "use the published MiMo-V2 config")
    return _spec(common, num_kv_heads=_int(cfg, where, "swa_num_key_value_heads"), head_dim=head_dim,
                     global_num_kv_heads=_int(cfg, where, "num_key_value_heads"), v_head_dim=_int(cfg, where, "v_head_dim"),
                     num_experts=_int(cfg, where, "n_routed_experts"), experts_per_token=_int(cfg, where, "num_experts_per_tok"),
                     expert_intermediate_size=_int(cfg, where, "moe_intermediate_size"),
                     num_shared_experts=_int(cfg, where, "n_shared_experts", 0, minimum=0),
                     shared_expert_intermediate_size=_int(cfg, where, "moe_intermediate_size"),
                     num_dense_layers=moe.count(0), layer_groups=group_layers(layers),
                     qkv_bias=_bool(cfg, where, "attention_bias", False),
                     score_bias=str(cfg.get("topk_method", "")) == "noaux_tc")


def step3p7_spec(cfg: dict, where: str, common: dict) -> ModelSpec:
    """Step-3.7-Flash (as Step-3.5): `layer_types` full / sliding (`sliding_window`), the first
    `first_k_dense_replace` layers dense of `intermediate_size`, the rest MoE (`num_experts` of
    `moe_intermediate_size`, `n_shared_experts` of `share_expert_dim`, router bias)."""
    n = common["num_layers"]
    first_k = _int(cfg, where, "first_k_dense_replace", 0, minimum=0)
    window = _int(cfg, where, "sliding_window")
    names = {"full_attention": (S.FULL, 0), "sliding_attention": (S.SLIDING, window)}
    types = _str_list(cfg, where, "layer_types")[:n]          # MTP layers may be listed after the decoder's
    if len(types) != n or any(t not in names for t in types):
        raise InputError(where, "layer_types", f"must name full_attention or sliding_attention for each of {n} layers",
                         "copy it from the config.json")
    layers = [LayerKind(names[t][0], S.DENSE if i < first_k else S.MOE, names[t][1]) for i, t in enumerate(types)]
    shared = _int(cfg, where, "n_shared_experts", 0, minimum=0)
    return _spec(common, num_experts=_int(cfg, where, "num_experts"),
                     experts_per_token=_int(cfg, where, "num_experts_per_tok"),
                     expert_intermediate_size=_int(cfg, where, "moe_intermediate_size"), num_shared_experts=shared,
                     shared_expert_intermediate_size=_int(cfg, where, "share_expert_dim", 0, minimum=0) if shared else 0,
                     num_dense_layers=min(first_k, n), layer_groups=group_layers(layers),
                     score_bias=_bool(cfg, where, "use_moe_router_bias", False))


def minimax_m3_spec(cfg: dict, where: str, common: dict) -> ModelSpec:
    """MiniMax-M3: GQA attention with q/k RMSNorm per head (`qk_norm_type: per_head`); `moe_layer_freq` 0 =
    dense of `dense_intermediate_size`, 1 = MoE (`num_local_experts` of `moe_intermediate_size`, one shared
    expert of `shared_intermediate_size`, routing bias). MiniMax Sparse Attention picks KV blocks per
    query but caches every token, so its layers are full attention here."""
    n = common["num_layers"]
    moe = _flags(cfg, where, "moe_layer_freq", n)
    layers = [LayerKind(S.FULL, S.MOE if moe[i] else S.DENSE) for i in range(n)]
    qk = ""
    if _bool(cfg, where, "use_qk_norm", False):
        qk = "head" if str(cfg.get("qk_norm_type", "per_head")) == "per_head" else "layer"
    shared_width = _int(cfg, where, "shared_intermediate_size", 0, minimum=0)
    # the expert width: moe_intermediate_size, or (NVFP4 export) intermediate_size beside dense_intermediate_size
    expert_width = _int(cfg, where, "moe_intermediate_size", common["intermediate_size"])
    common = dict(common, intermediate_size=_int(cfg, where, "dense_intermediate_size", common["intermediate_size"]))
    return _spec(common, num_experts=_int(cfg, where, "num_local_experts"),
                     experts_per_token=_int(cfg, where, "num_experts_per_tok"),
                     expert_intermediate_size=expert_width, num_dense_layers=moe.count(0),
                     num_shared_experts=_int(cfg, where, "n_shared_experts", 1 if shared_width else 0, minimum=0),
                     shared_expert_intermediate_size=shared_width, layer_groups=group_layers(layers), qk_norm=qk,
                     score_bias=_bool(cfg, where, "use_routing_bias", False))


def deepseek_v4_spec(cfg: dict, where: str, common: dict) -> ModelSpec:
    """DeepSeek-V4: per layer `compress_ratios` 0 = sliding-window attention only (`sliding_window`),
    4 = compressed sparse attention (CSA: one KV row per 4 tokens, an indexer picks `index_topk` rows),
    128 = heavily compressed attention (HCA: one row per 128 tokens, all attended), each beside the raw
    window; one KV head of `head_dim` serving as K and V, queries through `q_lora_rank`, the output
    through `o_groups` low-rank (`o_lora_rank`) projections; `hc_mult` hyper-connection streams; every
    MLP a MoE of `n_routed_experts` plus `n_shared_experts` of `moe_intermediate_size`."""
    n = common["num_layers"]
    ratios = _get(cfg, where, "compress_ratios")
    if not isinstance(ratios, list) or len(ratios) < n or any(r not in (0, 4, 128) for r in ratios[:n]):
        raise InputError(where, "compress_ratios", f"must give 0, 4 or 128 for each of the {n} layers",
                         "copy it from the config.json")
    window = _int(cfg, where, "sliding_window")
    kinds = {0: LayerKind(S.SLIDING, S.MOE, window), 4: LayerKind(S.SPARSE, S.MOE, window, compress=4),
             128: LayerKind(S.FULL, S.MOE, window, compress=128)}
    width = _int(cfg, where, "moe_intermediate_size")
    shared = _int(cfg, where, "n_shared_experts", 0, minimum=0)
    return _spec(common, num_kv_heads=_int(cfg, where, "num_key_value_heads"), head_dim=_int(cfg, where, "head_dim"),
                     kv_one_vector=True, q_lora_rank=_int(cfg, where, "q_lora_rank"),
                     o_lora_rank=_int(cfg, where, "o_lora_rank"), o_groups=_int(cfg, where, "o_groups"),
                     hc_mult=_int(cfg, where, "hc_mult", 0, minimum=0), attention_sinks=True,
                     index_topk=_int(cfg, where, "index_topk"), index_n_heads=_int(cfg, where, "index_n_heads"),
                     index_head_dim=_int(cfg, where, "index_head_dim"),
                     num_experts=_int(cfg, where, "n_routed_experts"), experts_per_token=_int(cfg, where, "num_experts_per_tok"),
                     expert_intermediate_size=width, num_shared_experts=shared,
                     shared_expert_intermediate_size=width if shared else 0, num_dense_layers=0,
                     layer_groups=group_layers([kinds[r] for r in ratios[:n]]),
                     score_bias=str(cfg.get("topk_method", "noaux_tc")) == "noaux_tc")


def kimi_k3_spec(cfg: dict, where: str, common: dict) -> ModelSpec:
    """Kimi-K3 (text_config of KimiK3ForConditionalGeneration, Kimi-Linear layout): layers listed in
    `linear_attn_config.kda_layers` (1-based) are Kimi Delta Attention (`num_heads` x `head_dim`, short convs
    of `short_conv_kernel_size`, a full-rank output gate with `use_full_rank_gate`), the others MLA
    (DeepSeek-V3 geometry with `q_lora_rank`, and an output gate with `mla_use_output_gate`); the first
    `first_k_dense_replace` layers a dense MLP, the others a latent MoE: `num_experts` experts of
    `moe_intermediate_size` working in `routed_expert_hidden_size`, `num_shared_experts` in the hidden size."""
    n = common["num_layers"]
    lin = _get(cfg, where, "linear_attn_config")
    kda = lin.get("kda_layers") if isinstance(lin, dict) else None
    if not isinstance(kda, list) or any(isinstance(i, bool) or not isinstance(i, int) or not 1 <= i <= n for i in kda):
        raise InputError(where, "linear_attn_config.kda_layers", f"must list 1-based layer numbers up to {n}",
                         "copy it from the config.json")
    sub = f"{where}: linear_attn_config"
    heads, dim = _int(lin, sub, "num_heads"), _int(lin, sub, "head_dim")
    first_k = _int(cfg, where, "first_k_dense_replace", 0, minimum=0)
    kda_set = set(kda)
    layers = [LayerKind(S.LINEAR if i + 1 in kda_set else S.MLA, S.DENSE if i < first_k else S.MOE) for i in range(n)]
    shared = _int(cfg, where, "num_shared_experts", 0, minimum=0)
    width = _int(cfg, where, "moe_intermediate_size")
    v_head_dim = _int(cfg, where, "v_head_dim")
    return _spec(common, attention="mla", num_kv_heads=common["num_heads"], head_dim=v_head_dim,
                 q_lora_rank=_int(cfg, where, "q_lora_rank", 0, minimum=0), kv_lora_rank=_int(cfg, where, "kv_lora_rank"),
                 qk_rope_head_dim=_int(cfg, where, "qk_rope_head_dim"), qk_nope_head_dim=_int(cfg, where, "qk_nope_head_dim"),
                 v_head_dim=v_head_dim, attn_output_gate=_bool(cfg, where, "mla_use_output_gate", False),
                 linear_kind="kda", linear_num_key_heads=heads, linear_num_value_heads=heads, linear_key_head_dim=dim,
                 linear_value_head_dim=dim, linear_conv_kernel=_int(lin, sub, "short_conv_kernel_size", 4),
                 linear_full_rank_gate=_bool(lin, sub, "use_full_rank_gate", False), mamba_state_bytes=4.0,
                 num_experts=_int(cfg, where, "num_experts"),
                 experts_per_token=_int(cfg, where, "num_experts_per_token", _int(cfg, where, "num_experts_per_tok", 0, minimum=0)),
                 expert_intermediate_size=width, num_shared_experts=shared,
                 shared_expert_intermediate_size=width if shared else 0, num_dense_layers=min(first_k, n),
                 moe_latent_size=_int(cfg, where, "routed_expert_hidden_size", 0, minimum=0),
                 score_bias=str(cfg.get("topk_method", "noaux_tc")) == "noaux_tc", layer_groups=group_layers(layers))


# architecture -> reader; the readers take `common` (the fields every family shares, see hf.spec_from_hf)
READERS: dict[str, Callable[[dict, str, dict], ModelSpec]] = {
    "DeciLMForCausalLM": decilm_spec,
    "MiMoV2FlashForCausalLM": mimo_v2_spec,
    "Step3p7FlashForCausalLM": step3p7_spec,
    "MiniMaxM3ForCausalLM": minimax_m3_spec,
    "MiniMaxM3SparseForConditionalGeneration": minimax_m3_spec,
    "DeepseekV4ForCausalLM": deepseek_v4_spec,
    "KimiK3ForConditionalGeneration": kimi_k3_spec,
    "KimiLinearForCausalLM": kimi_k3_spec,
}
# families with MLA full-attention layers (no GQA head fields to read)
MLA_FAMILIES = ("KimiK3ForConditionalGeneration", "KimiLinearForCausalLM")
# families whose configs may leave the dense intermediate_size out (all-MoE, or per-layer widths)
NO_DENSE_WIDTH = ("DeciLMForCausalLM", "DeepseekV4ForCausalLM")


def read_2026(arch: str, cfg: dict, where: str, common: dict[str, Any]) -> ModelSpec:
    return READERS[arch](cfg, where, common)
