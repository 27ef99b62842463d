"""Load a `ModelSpec` from a built-in name, a Hugging Face repo id, a `models/*.yaml` file or a
Hugging Face `config.json`.

The YAML files hold `name`, `source` (the Hugging Face repo id), optional `aliases` (repo ids of
the same weights in other formats) and then Hugging Face config fields under their HF names, so
both inputs go through the same mapping (`spec_from_hf`). Every bad input raises `InputError`.

`--model ORG/NAME` resolves, case-insensitively, to the built-in whose `source` or `aliases` is
that id; failing that, quantisation suffixes (`-FP8`, `-NVFP4`, `-AWQ`, `-GPTQ-Int4`, ...) are
stripped from the name and the rest compared with each built-in's repo ids, then with their
names alone (re-quantised checkpoints are often published under another organisation).
"""

from __future__ import annotations

import json
import os
import re
from functools import lru_cache
from pathlib import Path

import yaml

from apex_plan.errors import InputError, did_you_mean
from apex_plan.model.hf import SUPPORTED_ARCHITECTURES, spec_from_hf
from apex_plan.model.spec import ModelSpec
from apex_plan.yamlio import load_yaml

__all__ = ["SUPPORTED_ARCHITECTURES", "list_models", "load_model", "models_dir", "resolve_repo_id", "spec_from_hf",
           "strip_quant_suffixes"]

MODELS_DIR_ENV = "APEX_PLAN_MODELS_DIR"

# A quantisation tag at the end of a repo id: -FP8, -FP8-Dynamic, -FP8-Static-PerTensor, -NVFP4,
# -MXFP4, -FP4, -AWQ, -GPTQ-Int4, -Int4, -Int8, -W4A16, -W8A8, -BF16, -quantized.w4a16, ...
_QUANT_SUFFIX = re.compile(
    r"[-_.](?:(?:fp8|fp4|nvfp4|mxfp4|mxfp8|awq|gptq|int4|int8|w4a16|w8a8|w4a8|bf16|fp16|quantized|"
    r"dynamic|static|per-?tensor|per-?channel|block|kv|fp8kv)(?:[-_.]?int[48])?)$", re.IGNORECASE)


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


def _builtin_file(name: str) -> Path | None:
    for suffix in (".yaml", ".yml"):
        path = models_dir() / f"{name}{suffix}"
        if path.is_file():
            return path
    return None


@lru_cache(maxsize=8)
def _repo_index(folder: str, stamp: float) -> dict[str, str]:
    """Lower-case repo id (source and aliases) -> built-in name, for the files in `folder`."""
    index: dict[str, str] = {}
    for path in sorted(Path(folder).glob("*.y*ml")):
        try:
            data = yaml.safe_load(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, yaml.YAMLError):
            continue                                    # reported when that file itself is loaded
        if not isinstance(data, dict):
            continue
        ids = [data.get("source")] + list(data.get("aliases") or [])
        for rid in ids:
            if isinstance(rid, str) and "/" in rid:
                index.setdefault(rid.strip().lower(), path.stem)
    return index


_REVISION = re.compile(r"[-_.]v\d+$", re.IGNORECASE)     # a re-quantisation's revision: -FP4-v2


def strip_quant_suffixes(repo_id: str) -> str:
    """`Qwen/Qwen3-32B-FP8-Static-PerTensor` -> `Qwen/Qwen3-32B` (every trailing quantisation tag,
    and a revision tag right after one: `DeepSeek-R1-0528-FP4-v2` -> `DeepSeek-R1-0528`)."""
    prev, text = None, repo_id.strip()
    while prev != text:
        prev, text = text, _QUANT_SUFFIX.sub("", text)
        rev = _REVISION.search(text)
        if rev and _QUANT_SUFFIX.search(text[:rev.start()]):
            text = text[:rev.start()]
    return text


def resolve_repo_id(repo_id: str) -> str | None:
    """The built-in model name a Hugging Face repo id stands for, or None (see module docstring)."""
    folder = models_dir()
    if not folder.is_dir():
        return None
    index = _repo_index(str(folder), folder.stat().st_mtime)
    rid = repo_id.strip().lower()
    if rid in index:
        return index[rid]
    base = strip_quant_suffixes(rid)
    if base in index:
        return index[base]
    by_name: dict[str, set[str]] = {}
    for known, name in index.items():
        by_name.setdefault(known.split("/", 1)[1], set()).add(name)
    hits = by_name.get(base.split("/", 1)[-1], set())
    return next(iter(hits)) if len(hits) == 1 else None


def _looks_like_repo_id(text: str) -> bool:
    """ORG/NAME with no file suffix and no further path parts."""
    parts = text.split("/")
    return len(parts) == 2 and all(parts) and Path(text).suffix.lower() not in (".yaml", ".yml", ".json")


def load_model(name_or_path: str) -> ModelSpec:
    """A built-in name (`llama-3.1-70b`), a Hugging Face repo id (`Qwen/Qwen3-32B`), a `.yaml`
    path, or a Hugging Face `config.json` path (or a folder holding one)."""
    text = str(name_or_path).strip()
    if not text:
        raise InputError("--model", None, "no model given", "give a built-in name or a path to a .yaml/config.json")
    path = Path(text).expanduser()
    looks_like_path = path.suffix.lower() in (".yaml", ".yml", ".json") or os.sep in text or "/" in text
    if not looks_like_path:
        builtin = _builtin_file(text)
        if builtin is not None:
            return _load_file(builtin)
    if not path.exists() and _looks_like_repo_id(text):
        name = resolve_repo_id(text)
        builtin = _builtin_file(name) if name else None
        if builtin is not None:
            return as_checkpoint(_load_file(builtin), text)
        raise InputError("--model", None, f"no built-in model has the Hugging Face repo id '{text}'",
                         "give a built-in name (" + ", ".join(list_models()) + ") or a path to its config.json")
    if not looks_like_path and not path.exists():
        raise InputError("--model", None, f"unknown model '{text}'", did_you_mean(text, list_models())
                         + "; or give a Hugging Face repo id of a built-in, or a path to a .yaml or config.json")
    if path.is_dir():
        path = path / "config.json"
    if not path.is_file():
        raise InputError(str(path), None, "model file not found",
                         "check the path, or use a built-in name: " + ", ".join(list_models()))
    return _load_file(path)


def as_checkpoint(spec: ModelSpec, repo_id: str) -> ModelSpec:
    """The built-in `spec` as the checkpoint `repo_id` names: its source becomes that repo (what a launch
    command serves), and a quantised re-publication of the weights gets its own formats (`quant.repo_formats`:
    the quantization_config the model file records for that alias, else its tag '-FP8', '-NVFP4', ...), so it
    is planned in its own format, not the base checkpoint's."""
    import dataclasses

    from apex_plan.model.quant import checkpoint_dtype, repo_formats
    rid = repo_id.strip()
    if rid.lower() == spec.source.lower():
        return spec
    stated = spec.stated_formats(rid)
    own = repo_formats(rid, stated)
    formats = dict(spec.weight_formats)
    if own and (stated or spec.checkpoint_dtype != checkpoint_dtype(own)):
        formats = own
    others = tuple(a for a in (spec.source, *spec.aliases) if a.lower() != rid.lower())
    return dataclasses.replace(spec, source=rid, aliases=others, weight_formats=tuple(sorted(formats.items())),
                               aliases_dtype=spec.aliases_dtype or spec.checkpoint_dtype)


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
    if is_json and not data.get("source"):
        data = dict(data, source=servable_source(path, data))
    if is_json and "quantization_config" not in data:
        companion = quant_companion(path)
        if companion is not None:
            data = dict(data, quantization_config=companion)
    return spec_from_hf(data, where, default_name=default_name)


def quant_companion(path: Path) -> dict | None:
    """The modelopt quantisation file beside a config.json that states no quantization_config (NVIDIA's
    NVFP4 / FP8 exports keep it in hf_quant_config.json, which vLLM's modelopt loader reads): the folder's
    hf_quant_config.json, or aiconfigurator-core's ORG--NAME_hf_quant_config.json beside ORG--NAME_config.json.
    None when there is none; an unreadable one is a field error of the config."""
    stem = path.stem.removesuffix("_config")
    for cand in (path.with_name("hf_quant_config.json"), path.with_name(f"{stem}_hf_quant_config.json")):
        if cand != path and cand.is_file():
            try:
                doc = json.loads(cand.read_text(encoding="utf-8"))
            except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
                raise InputError(str(cand), None, f"cannot read the quantisation companion: {err}",
                                 "fix or remove it (its config.json states no quantization_config)") from None
            if not isinstance(doc, dict) or not isinstance(doc.get("quantization"), dict):
                raise InputError(str(cand), "quantization", "must be a mapping (modelopt hf_quant_config.json)",
                                 "fix or remove it (its config.json states no quantization_config)")
            return doc
    return None


_REPO = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")          # a Hugging Face repo id: ORG/NAME


def servable_source(path: Path, cfg: dict) -> str:
    """What an engine can serve for the config.json at `path` (the launch line's model): the repo id
    its path spells in the Hugging Face cache's ORG--NAME form (`models--ORG--NAME/snapshots/...`, or
    aiconfigurator-core's `ORG--NAME_config.json`), else its `_name_or_path` when that is a repo id,
    else the folder holding it (engines serve a local folder with its weights)."""
    for part in (*path.parent.parts[::-1], path.stem.removesuffix("_config")):
        org, sep, name = part.removeprefix("models--").partition("--")
        if sep and org and name and _REPO.match(f"{org}/{name}"):
            return f"{org}/{name}"
    named = str(cfg.get("_name_or_path") or "")
    if _REPO.match(named):
        return named
    return str(path.resolve().parent)
