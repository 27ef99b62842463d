"""What every Hugging Face `config.json` says beside its architecture's own fields: the weight dtype
(`torch_dtype`), the checkpoint's quantization formats, alias names, the text model nested in a
multimodal config, and multi-token-prediction layers. `model.hf` maps the architecture's fields."""

from __future__ import annotations

from typing import Any

from apex_plan.errors import InputError
from apex_plan.model.quant import formats_from_config


# torch dtype names a config's `torch_dtype` / `dtype` may hold (transformers PretrainedConfig)
TORCH_DTYPES = ("float32", "float16", "bfloat16", "float64", "float8_e4m3fn", "float8_e5m2", "auto")
# quant_method values apex-plan reads the formats of (transformers QuantizationMethod)
QUANT_METHODS = ("fp8", "mxfp4", "awq", "gptq", "compressed-tensors", "modelopt")


def check_dtype(cfg: dict, where: str) -> None:
    """`torch_dtype` / `dtype`, when given, must be a torch dtype name (torch.bfloat16 or bfloat16)."""
    for key in ("torch_dtype", "dtype"):
        value = cfg.get(key)
        if value is None:
            continue
        name = str(value).removeprefix("torch.")
        if not isinstance(value, str) or name not in TORCH_DTYPES:
            raise InputError(where, key, f"unknown torch dtype {value!r}", "use one of " + ", ".join(TORCH_DTYPES))


def checkpoint_formats(qc: Any, where: str, num_layers: int) -> dict[str, str]:
    """Per-component weight formats of a `quantization_config`; a config that is not a mapping, or names a
    quant_method whose formats apex-plan cannot read, is an InputError (never silently bf16)."""
    if qc is None:
        return {}
    if not isinstance(qc, dict):
        raise InputError(where, "quantization_config", f"must be a mapping, got {type(qc).__name__} {qc!r:.40}",
                         "copy the checkpoint's quantization_config object, or remove it for bf16 weights")
    formats = formats_from_config(qc, num_layers)
    method = qc.get("quant_method")
    if method is not None and (not isinstance(method, str) or method.lower() not in QUANT_METHODS):
        raise InputError(where, "quantization_config.quant_method", f"unknown method {method!r}",
                         "apex-plan reads " + ", ".join(QUANT_METHODS) + " checkpoints")
    if method is not None and not formats:
        raise InputError(where, "quantization_config", f"quant_method '{method}' names no weight format apex-plan reads",
                         "give num_bits/type in config_groups (compressed-tensors) or quant_algo (modelopt)")
    return formats


def aliases(cfg: dict, where: str) -> tuple[str, ...]:
    """A model YAML's `aliases`: repo ids (ORG/NAME) of the same weights in other formats."""
    value = cfg.get("aliases")
    if value is None:
        return ()
    if not isinstance(value, list) or not all(isinstance(a, str) and "/" in a for a in value):
        raise InputError(where, "aliases", f"must be a list of Hugging Face repo ids, got {value!r:.60}",
                         "write e.g. 'aliases: [Qwen/Qwen3-32B-FP8]'")
    return tuple(value)


def alias_formats(cfg: dict, where: str, names: tuple[str, ...], num_layers: int) -> tuple:
    """A model YAML's `alias_quantization`: alias repo id -> the quantization_config of that repo's own
    config.json (or modelopt hf_quant_config.json), read as `checkpoint_formats` reads the model's own.
    Returns ((alias, sorted formats), ...)."""
    value = cfg.get("alias_quantization")
    if value is None:
        return ()
    if not isinstance(value, dict):
        raise InputError(where, "alias_quantization", f"must be a mapping of alias to quantization_config, got {value!r:.60}",
                         "write e.g. 'alias_quantization: {Qwen/Qwen3-32B-FP8: {quant_method: fp8, weight_block_size: [128, 128]}}'")
    known = {a.lower() for a in names}
    out = []
    for alias, qc in value.items():
        if not isinstance(alias, str) or alias.lower() not in known:
            raise InputError(where, f"alias_quantization.{alias}", "not one of the model's aliases",
                             "add it to 'aliases' or use one of: " + ", ".join(names))
        formats = checkpoint_formats(qc, f"{where} alias_quantization.{alias}", num_layers)
        if not formats:
            raise InputError(where, f"alias_quantization.{alias}", "states no weight format",
                             "copy that repo's quantization_config (quant_method fp8 / modelopt / ...), or remove the entry")
        out.append((alias, tuple(sorted(formats.items()))))
    return tuple(out)


def text_config(cfg: dict, where: str) -> tuple[dict, list[str]]:
    """A multimodal config's text decoder fields merged over the top level (the architecture and
    `name`/`source` stay the top level's), and notes on what is not planned."""
    notes = []
    text = cfg.get("text_config")
    if isinstance(text, dict):
        merged = {**cfg, **{k: v for k, v in text.items() if k not in ("architectures", "name", "source", "aliases")}}
        if "tie_word_embeddings" in cfg and "tie_word_embeddings" not in text:
            merged["tie_word_embeddings"] = cfg["tie_word_embeddings"]
        cfg = merged
    elif text is not None:
        raise InputError(where, "text_config", f"must be a mapping of the text decoder's fields, got {text!r}",
                         "copy 'text_config' from the model's config.json")
    if isinstance(cfg.get("vision_config"), dict):
        notes.append("vision tower (vision_config) reported, not planned: only the text decoder is costed")
    mtp = cfg.get("num_nextn_predict_layers") or cfg.get("mtp_num_hidden_layers") or cfg.get("num_mtp_modules")
    if isinstance(mtp, int) and mtp > 0:
        notes.append(f"{mtp} multi-token-prediction module(s) not counted")
    return cfg, notes


def mtp_layers(cfg: dict) -> int:
    """Multi-token-prediction modules of the checkpoint (DeepSeek-V3 num_nextn_predict_layers, MiMo
    num_mtp_modules, Qwen3-Next mtp_num_hidden_layers): the drafts of MTP speculative decoding."""
    mtp = cfg.get("num_nextn_predict_layers") or cfg.get("mtp_num_hidden_layers") or cfg.get("num_mtp_modules")
    return mtp if isinstance(mtp, int) and not isinstance(mtp, bool) and mtp > 0 else 0
