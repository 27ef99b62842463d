"""Load a `ModelSpec` from a built-in name, a `models/*.yaml` file or a Hugging Face `config.json`.

The YAML files hold `name`, `source` and then Hugging Face config fields under their HF names,
so both inputs go through the same mapping (`spec_from_hf`). Every bad input raises `InputError`.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Callable

import yaml

from apex_plan.errors import InputError, did_you_mean
from apex_plan.limits import check_model_field
from apex_plan.yamlio import load_yaml
from apex_plan.model.spec import ModelSpec

MODELS_DIR_ENV = "APEX_PLAN_MODELS_DIR"

# Architectures we can cost, by family.
_GQA_DENSE = ("LlamaForCausalLM", "MistralForCausalLM", "Qwen2ForCausalLM", "Qwen3ForCausalLM")
_QWEN_MOE = ("Qwen2MoeForCausalLM", "Qwen3MoeForCausalLM")
_MLA = ("DeepseekV2ForCausalLM", "DeepseekV3ForCausalLM")
SUPPORTED_ARCHITECTURES: tuple[str, ...] = _GQA_DENSE + ("MixtralForCausalLM",) + _QWEN_MOE + _MLA

_MISSING = object()


def models_dir() -> Path:
    """Folder of built-in model files: $APEX_PLAN_MODELS_DIR, else the packaged or checkout `models/`."""
    from apex_plan.builtin import builtin_dir
    return builtin_dir("models")


def list_models() -> list[str]:
    """Names of the built-in models (YAML file stems), sorted."""
    folder = models_dir()
    if not folder.is_dir():
        return []
    return sorted({p.stem for p in folder.iterdir() if p.suffix in (".yaml", ".yml") and p.is_file()})


def load_model(name_or_path: str) -> ModelSpec:
    """A built-in name (`llama-3.1-70b`), a `.yaml` path, or a Hugging Face `config.json` path."""
    text = str(name_or_path).strip()
    if not text:
        raise InputError("--model", None, "no model given", "give a built-in name or a path to a .yaml/config.json")
    path = Path(text).expanduser()
    looks_like_path = path.suffix.lower() in (".yaml", ".yml", ".json") or os.sep in text or "/" in text
    if not looks_like_path:
        for suffix in (".yaml", ".yml"):
            builtin = models_dir() / f"{text}{suffix}"
            if builtin.is_file():
                return _load_file(builtin)
    if not looks_like_path and not path.exists():
        raise InputError("--model", None, f"unknown model '{text}'", did_you_mean(text, list_models())
                         + "; or give a path to a .yaml or Hugging Face config.json")
    if path.is_dir():
        path = path / "config.json"
    if not path.is_file():
        raise InputError(str(path), None, "model file not found",
                         "check the path, or use a built-in name: " + ", ".join(list_models()))
    return _load_file(path)


def _load_file(path: Path) -> ModelSpec:
    """Parse one YAML or JSON file into a `ModelSpec`."""
    where = str(path)
    try:
        raw = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise InputError(where, None, f"cannot read file: {err}", "check the path and permissions") from None
    is_json = path.suffix.lower() == ".json"
    try:
        data = json.loads(raw) if is_json else load_yaml(raw)
    except json.JSONDecodeError as err:
        raise InputError(where, None, f"malformed JSON at line {err.lineno} column {err.colno}: {err.msg}",
                         "fix the JSON syntax") from None
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        at = f" at line {mark.line + 1} column {mark.column + 1}" if mark is not None else ""
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise InputError(where, None, f"malformed YAML{at}: {problem}", "fix the YAML syntax") from None
    if not isinstance(data, dict):
        raise InputError(where, None, "expected a mapping of config fields at the top level",
                         "write 'field: value' lines (YAML) or a JSON object")
    default_name = path.parent.name if path.name == "config.json" else path.stem
    return spec_from_hf(data, where, default_name=default_name)


# ---------------------------------------------------------------- field readers

def _get(cfg: dict, where: str, field: str, default: Any = _MISSING) -> Any:
    value = cfg.get(field, None)
    if value is None:
        if default is _MISSING:
            raise InputError(where, field, "required field is missing",
                             f"add '{field}' with the value from the model's Hugging Face config.json")
        return default
    return value


def _int(cfg: dict, where: str, field: str, default: Any = _MISSING, minimum: int = 1) -> int:
    """A whole number >= `minimum` (floats with an integer value are accepted, bools are not)."""
    value = _get(cfg, where, field, default)
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise InputError(where, field, f"must be a whole number, got {value!r}", f"write '{field}' as an integer")
    if value < minimum:
        what = "positive" if minimum == 1 else f"at least {minimum}"
        raise InputError(where, field, f"must be {what}, got {value}", f"give '{field}' a value of {minimum} or more")
    return check_model_field(where, field, value)


def _bool(cfg: dict, where: str, field: str, default: bool) -> bool:
    value = _get(cfg, where, field, default)
    if not isinstance(value, bool):
        raise InputError(where, field, f"must be true or false, got {value!r}", f"write '{field}: true' or 'false'")
    return value


def _int_list(cfg: dict, where: str, field: str) -> list[int]:
    value = _get(cfg, where, field, [])
    if not isinstance(value, list) or any(isinstance(v, bool) or not isinstance(v, int) for v in value):
        raise InputError(where, field, f"must be a list of layer indices, got {value!r}", f"write '{field}: [0, 1]' or '[]'")
    return value


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


def _count_dense(num_layers: int, is_moe_layer: Callable[[int], bool]) -> int:
    return sum(1 for i in range(num_layers) if not is_moe_layer(i))


# ---------------------------------------------------------------- mapping

def spec_from_hf(cfg: dict, where: str, default_name: str = "model") -> ModelSpec:
    """Map Hugging Face config fields (plus optional `name`/`source`) onto a validated `ModelSpec`."""
    arch = _architecture(cfg, where)
    name = str(cfg.get("name") or default_name)
    source = str(cfg.get("source") or cfg.get("_name_or_path") or where)
    hidden = _int(cfg, where, "hidden_size")
    num_layers = _int(cfg, where, "num_hidden_layers")
    num_heads = _int(cfg, where, "num_attention_heads")
    common = dict(
        name=name, source=source, architecture=arch, num_layers=num_layers, hidden_size=hidden,
        num_heads=num_heads, intermediate_size=_int(cfg, where, "intermediate_size"),
        vocab_size=_int(cfg, where, "vocab_size"),
        tie_word_embeddings=_bool(cfg, where, "tie_word_embeddings", False),
        max_context=_int(cfg, where, "max_position_embeddings"),
    )

    if arch in _MLA:
        spec = _mla_spec(cfg, where, arch, common)
    else:
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
        if arch == "MixtralForCausalLM":
            spec = ModelSpec(**common, num_experts=_int(cfg, where, "num_local_experts"),
                             experts_per_token=_int(cfg, where, "num_experts_per_tok"),
                             expert_intermediate_size=common["intermediate_size"], num_dense_layers=0)
        elif arch in _QWEN_MOE:
            spec = _qwen_moe_spec(cfg, where, arch, common)
        else:
            spec = ModelSpec(**common)

    if spec.is_moe:
        field = "num_local_experts" if arch == "MixtralForCausalLM" else (
            "n_routed_experts" if arch in _MLA else "num_experts")
        if spec.experts_per_token > spec.num_experts:
            raise InputError(where, "num_experts_per_tok",
                             f"{spec.experts_per_token} is more than the {spec.num_experts} experts ({field})",
                             f"use at most {spec.num_experts}")
    return spec


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
                     num_dense_layers=n_dense)


def _mla_spec(cfg: dict, where: str, arch: str, common: dict) -> ModelSpec:
    """DeepSeek-V2/V3: MLA attention; layer i is dense if i < first_k_dense_replace or i % moe_layer_freq."""
    num_layers = common["num_layers"]
    first_k = _int(cfg, where, "first_k_dense_replace", 0, minimum=0)
    freq = _int(cfg, where, "moe_layer_freq", 1)
    n_dense = _count_dense(num_layers, lambda i: i >= first_k and i % freq == 0)
    moe_width = _int(cfg, where, "moe_intermediate_size")
    n_shared = _int(cfg, where, "n_shared_experts", 0, minimum=0)
    v_head_dim = _int(cfg, where, "v_head_dim")
    return ModelSpec(
        **common, num_kv_heads=common["num_heads"], head_dim=v_head_dim,
        num_experts=_int(cfg, where, "n_routed_experts"),
        experts_per_token=_int(cfg, where, "num_experts_per_tok"),
        num_shared_experts=n_shared, expert_intermediate_size=moe_width,
        shared_expert_intermediate_size=moe_width if n_shared else 0, num_dense_layers=n_dense,
        attention="mla", q_lora_rank=_int(cfg, where, "q_lora_rank", 0, minimum=0),
        kv_lora_rank=_int(cfg, where, "kv_lora_rank"), qk_rope_head_dim=_int(cfg, where, "qk_rope_head_dim"),
        qk_nope_head_dim=_int(cfg, where, "qk_nope_head_dim"), v_head_dim=v_head_dim,
    )
