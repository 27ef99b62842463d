"""Load engine profiles (`engine_profiles/*.yaml`) and resolve `--engine NAME[@VERSION]`."""

from __future__ import annotations

import dataclasses
import functools
import math
import os
import re
import typing
from pathlib import Path
from typing import Any

from apex_plan.engine.spec import (AttentionBackend, Collectives, EngineProfile, Features, GraphPolicy, HostModel,
                                   Layouts, MemoryPolicy, Quantization, SchedulerPolicy)
from apex_plan.builtin import builtin_dir
from apex_plan.errors import InputError, did_you_mean
from apex_plan.hardware.load import _read_yaml

FAMILIES = ("vllm", "sglang", "trtllm")
KV_DTYPES = ("bf16", "fp8")                   # what an engine's --kv-cache-dtype can set per GPU
_ALIASES = {"tensorrt-llm": "trtllm", "tensorrt_llm": "trtllm", "trt-llm": "trtllm", "trt_llm": "trtllm"}
_SECTIONS = {"scheduler": SchedulerPolicy, "host": HostModel, "graphs": GraphPolicy, "quantization": Quantization,
             "collectives": Collectives, "memory": MemoryPolicy, "layouts": Layouts, "features": Features}
_CHOICES = {"chunked_prefill": ("always", "never", "long_context"), "mode": ("decode_only", "piecewise", "full"),
            "accounting": ("profile", "static_fraction", "free_fraction"), "activation_scales": ("dynamic", "static"),
            "batching_chunked": ("mixed", "prefill_first"), "batching_unchunked": ("mixed", "prefill_first"),
            "closed_loop": ("desync", "lockstep"), "speculative": ("mtp", "eagle3"), "gpu_vendors": ("nvidia", "amd"),
            "ep_degrees": ("divisors", "all"), "default_ep": ("none", "all"), "moe_dispatch": ("allgather", "alltoall", "dp_buffer"),
            "moe_dispatch_mnnvl": ("", "allgather", "alltoall", "dp_buffer"),
            "a2a_decode_kernel": ("low_latency", "normal"),
            "adp_routing": ("round_robin", "least_loaded"),
            "adp_routing_prefill": ("", "round_robin", "least_loaded", "bootstrap_room"),
            "adp_padding": ("none", "every_step", "graph_steps"),
            "fused_quant_producers": ("norm", "activation", "attention"),
            "allreduce_kernel": ("", "vllm", "sglang", "trtllm")}


def engine_dir() -> Path:
    """Folder of built-in engine profiles ($APEX_PLAN_ENGINE_DIR, the wheel's copy, or the checkout's)."""
    return builtin_dir("engine_profiles")


def release(version: str) -> tuple[int, ...]:
    """Numeric release of a version string: '1.0.0rc3' -> (1, 0, 0), '0.5.1.post1' -> (0, 5, 1).

    Pre-release and post-release tags are ignored: a release candidate runs its release's code."""
    m = re.match(r"^\s*v?(\d+(?:\.\d+)*)", version or "")
    if not m:
        raise ValueError(version)
    parts = [int(p) for p in m.group(1).split(".")]
    while len(parts) > 1 and parts[-1] == 0:
        parts.pop()
    return tuple(parts)


def _value(raw: dict, key: str, ftype: Any, where: str, field: str) -> Any:
    v = raw[key]
    if ftype is bool:
        if not isinstance(v, bool):
            raise InputError(where, field, f"expected true or false, got '{v}'", "write true or false")
        return v
    if ftype in (int, float):
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0:
            raise InputError(where, field, f"expected a finite non-negative number, got '{v}'", "write a bare number")
        if ftype is int and int(v) != v:
            raise InputError(where, field, f"expected a whole number, got {v}", "write an integer")
        return ftype(v)
    if ftype is str:
        if not isinstance(v, str):
            raise InputError(where, field, f"expected text, got '{v}'", "write a word")
        if key in _CHOICES and v not in _CHOICES[key]:
            raise InputError(where, field, f"unknown value '{v}'", did_you_mean(v, _CHOICES[key]))
        return v
    if typing.get_origin(ftype) is tuple and typing.get_args(ftype)[0] is str:
        if not isinstance(v, list) or not all(isinstance(x, str) and x in _CHOICES.get(key, (x,)) for x in v):
            raise InputError(where, field, f"expected a list of {', '.join(_CHOICES.get(key, ('words',)))}, got '{v}'",
                             "write e.g. [mtp, eagle3]")
        return tuple(v)
    if typing.get_origin(ftype) is tuple:
        if not isinstance(v, list) or not all(isinstance(x, int) and not isinstance(x, bool) for x in v):
            raise InputError(where, field, f"expected a list of whole numbers, got '{v}'", "write e.g. [2, 4, 8]")
        return tuple(v)
    raise AssertionError(ftype)


def _section(cls: type, raw: Any, where: str, prefix: str) -> Any:
    """Build a section dataclass from a mapping; unknown keys refused, missing keys take defaults."""
    if raw is None:
        return cls()
    if not isinstance(raw, dict):
        raise InputError(where, prefix, f"expected a mapping, got '{raw}'", f"write '{prefix}:' then indented fields")
    hints = typing.get_type_hints(cls)
    fields = {f.name for f in dataclasses.fields(cls)}
    for key in raw:
        if key not in fields:
            from apex_plan.hardware.load import MOVED_TO_ENGINE
            new = MOVED_TO_ENGINE.get(str(key))
            if new:                              # a GPU-profile calibration key of round 1, renamed here
                raise InputError(where, f"{prefix}.{key}", f"is the old GPU-profile name of '{new}'",
                                 f"write it as '{new}' in the engine profile")
            raise InputError(where, f"{prefix}.{key}", "unknown field", did_you_mean(str(key), fields))
    return cls(**{k: _value(raw, k, hints[k], where, f"{prefix}.{k}") for k in raw})


def profile_from_dict(doc: dict, where: str) -> EngineProfile:
    """Validate a parsed profile mapping and build an EngineProfile (errors name `where`)."""
    top = {f.name for f in dataclasses.fields(EngineProfile)} - {"version", "version_note", "path"}
    for key in doc:
        if key not in top:
            raise InputError(where, str(key), "unknown field", did_you_mean(str(key), top))
    for key in ("name", "family", "min_version", "max_version"):
        if not isinstance(doc.get(key), (str, int, float)) or isinstance(doc.get(key), bool):
            raise InputError(where, key, "missing", f"add '{key}: <text>'")
    family = str(doc["family"])
    if family not in FAMILIES:
        raise InputError(where, "family", f"unknown engine family '{family}'", did_you_mean(family, FAMILIES))
    for key in ("min_version", "max_version"):
        try:
            release(str(doc[key]))
        except ValueError:
            raise InputError(where, key, f"cannot read version '{doc[key]}'", "write e.g. 0.8.0") from None
    if release(str(doc["min_version"])) >= release(str(doc["max_version"])):
        raise InputError(where, "min_version", f"{doc['min_version']} is not below max_version {doc['max_version']}",
                         "profiles cover [min_version, max_version): make min_version the lower")
    sections = {k: _section(cls, doc.get(k), where, k) for k, cls in _SECTIONS.items()}
    _check_ranges(sections, where)
    attn_raw = doc.get("attention") or {"bf16": {}}
    if not isinstance(attn_raw, dict):
        raise InputError(where, "attention", "expected a mapping of KV dtype to backend", "write 'attention: {bf16: {...}}'")
    attention = {str(k): _section(AttentionBackend, v or {}, where, f"attention.{k}") for k, v in attn_raw.items()}
    kv = doc.get("kv_cache_dtype") or {}
    if not isinstance(kv, dict) or not all(isinstance(v, str) for v in kv.values()):
        raise InputError(where, "kv_cache_dtype", "expected a mapping of weight dtype to KV dtype", "write e.g. {fp8: fp8}")
    kv_gpu = doc.get("kv_cache_dtype_by_gpu") or {}
    if not isinstance(kv_gpu, dict) or not all(v in KV_DTYPES for v in kv_gpu.values()):
        raise InputError(where, "kv_cache_dtype_by_gpu", "expected a mapping of GPU profile name to a KV dtype "
                         f"({' | '.join(KV_DTYPES)})", "write e.g. {b200-sxm-180gb: fp8}")
    by_gpu = doc.get("host_by_gpu") or {}
    if not isinstance(by_gpu, dict):
        raise InputError(where, "host_by_gpu", "expected a mapping of GPU profile name to host constants",
                         "write e.g. 'host_by_gpu: {h200-sxm-141gb: {step_ms: 1.2}}'")
    # each GPU's entry overrides the base host constants it names
    host_by_gpu = {str(g): _host_over(sections["host"], v or {}, where, f"host_by_gpu.{g}") for g, v in by_gpu.items()}
    cal_err = _error_band(doc.get("calibration_error"), where, "calibration_error")
    by_gpu_err = doc.get("calibration_error_by_gpu") or {}
    if not isinstance(by_gpu_err, dict):
        raise InputError(where, "calibration_error_by_gpu", "expected a mapping of GPU profile name to an error band",
                         "write e.g. 'calibration_error_by_gpu: {h200-sxm-141gb: {level: 0.8, ttft_low: -0.2, ...}}'")
    by_gpu_err = {str(g): _error_band(v, where, f"calibration_error_by_gpu.{g}") for g, v in by_gpu_err.items()}
    new_err = _error_band(doc.get("calibration_error_new_model"), where, "calibration_error_new_model")
    models = doc.get("calibrated_models") or []
    if not isinstance(models, list) or not all(isinstance(m, str) for m in models):
        raise InputError(where, "calibrated_models", "expected a list of built-in model names",
                         "write e.g. 'calibrated_models: [deepseek-r1, llama-3.1-8b]'")
    return EngineProfile(name=str(doc["name"]), family=family, min_version=str(doc["min_version"]),
                         max_version=str(doc["max_version"]), source=str(doc.get("source", "")),
                         attention=attention, kv_cache_dtype={str(k): v for k, v in kv.items()},
                         kv_cache_dtype_by_gpu={str(k): v for k, v in kv_gpu.items()},
                         calibration=str(doc.get("calibration", "")).strip(),
                         calibration_error=cal_err, calibration_error_by_gpu=by_gpu_err,
                         calibration_error_new_model=new_err, calibrated_models=tuple(models), path=where,
                         host_by_gpu=host_by_gpu, **sections)


BAND_KEYS = ("level", "runs", "held_out", "ttft_low", "ttft_high", "tpot_low", "tpot_high", "new_model")   # held_out:
# 1 when the quantiles come from runs the fit did not see (0: in-sample); new_model: 1 in a band EngineProfile.for_model
# gave a model the bands did not see


def _error_band(raw, where: str, field: str) -> dict[str, float]:
    """A `calibration_error` block: numbers under the known keys, each low end at or below its high end,
    relative errors above -1 (pred > 0), a level in (0, 1)."""
    raw = raw or {}
    example = "write e.g. {level: 0.8, ttft_low: -0.2, ttft_high: 0.15, tpot_low: -0.1, tpot_high: 0.1}"
    if not isinstance(raw, dict) or not all(isinstance(v, (int, float)) and not isinstance(v, bool) and v == v
                                           for v in raw.values()):
        raise InputError(where, field, "expected a mapping of names to numbers", example)
    for k in raw:
        if k not in BAND_KEYS:
            raise InputError(where, f"{field}.{k}", "unknown field", did_you_mean(str(k), BAND_KEYS))
    band = {str(k): float(v) for k, v in raw.items()}
    if "level" in band and not 0 < band["level"] < 1:
        raise InputError(where, f"{field}.level", f"{band['level']:g} is not a fraction in (0, 1)", "e.g. 0.8")
    for key in ("ttft", "tpot"):
        lo, hi = band.get(f"{key}_low"), band.get(f"{key}_high")
        for end, v in (("low", lo), ("high", hi)):
            if v is not None and v <= -1:
                raise InputError(where, f"{field}.{key}_{end}", f"{v:g} is at or below -1 (a prediction of zero)",
                                 "give the relative error (pred - measured) / measured, above -1")
        if lo is not None and hi is not None and lo > hi:
            raise InputError(where, f"{field}.{key}_low", f"{lo:g} is above {key}_high {hi:g}", "swap them")
    return band


def _host_over(base: HostModel, raw, where: str, prefix: str) -> HostModel:
    """`base` with the fields `raw` names (validated like the host section)."""
    if not isinstance(raw, dict):
        raise InputError(where, prefix, f"expected a mapping, got '{raw}'", f"write '{prefix}:' then indented fields")
    _section(HostModel, raw, where, prefix)                     # unknown fields and types refused
    hints = typing.get_type_hints(HostModel)
    return dataclasses.replace(base, **{k: _value(raw, k, hints[k], where, f"{prefix}.{k}") for k in raw})


# (section, field) -> (low, high, low is allowed, why): the values an engine could run with
_RANGES = {
    ("scheduler", "max_num_seqs"): (1, None, True, "the engine runs at least one sequence per step"),
    ("scheduler", "token_budget"): (1, None, True, "a step needs a token budget (vLLM max_num_batched_tokens)"),
    ("scheduler", "unchunked_min_budget"): (1, None, True, "a step needs a token budget"),
    ("scheduler", "long_context_tokens"): (1, None, True, "a context length in tokens"),
    ("scheduler", "block_size"): (1, None, True, "a KV block holds at least one token"),
    ("scheduler", "recv_interval"): (1, None, True, "the scheduler receives at least every step"),
    ("scheduler", "watermark_fraction"): (0, 1, True, "a fraction of the KV blocks, below 1"),
    ("host", "overlap"): (0, 1, True, "the fraction of host time hidden behind the GPU, 0 to 1"),
    ("memory", "gpu_memory_utilization"): (0, 1, False, "a fraction of GPU memory, above 0 and at most 1"),
}


def _check_ranges(sections: dict, where: str) -> None:
    """Values of the right type that no engine could run with (max_num_seqs 0, overlap 2.5)."""
    for (sec, key), (low, high, low_ok, why) in _RANGES.items():
        v = getattr(sections[sec], key)
        if v < low or (v == low and not low_ok) or (high is not None and v > high):
            raise InputError(where, f"{sec}.{key}", f"{v:g} is out of range", why)


@functools.lru_cache(maxsize=64)
def _parse_cached(path: str, mtime_ns: int) -> EngineProfile:
    return profile_from_dict(_read_yaml(Path(path)), path)


def profile_to_dict(profile: EngineProfile) -> dict:
    """The YAML mapping of a profile (what `profile_from_dict` reads back)."""
    d = dataclasses.asdict(profile)
    for key in ("version", "version_note", "path"):
        d.pop(key)
    d["collectives"]["custom_allreduce_tp"] = list(d["collectives"]["custom_allreduce_tp"])
    d["features"]["speculative"] = list(d["features"]["speculative"])
    d["features"]["gpu_vendors"] = list(d["features"]["gpu_vendors"])
    d["quantization"]["fused_quant_producers"] = list(d["quantization"]["fused_quant_producers"])
    if not d["kv_cache_dtype_by_gpu"]:
        d.pop("kv_cache_dtype_by_gpu")
    if not d["calibration_error_by_gpu"]:
        d.pop("calibration_error_by_gpu")
    d["calibrated_models"] = list(d["calibrated_models"])
    for key in ("calibration_error_new_model", "calibrated_models"):
        if not d[key]:
            d.pop(key)
    return d


def list_engine_profiles() -> list[EngineProfile]:
    """Every built-in profile, oldest range first within a family (parsed once per file version)."""
    out = [_parse_cached(str(p), p.stat().st_mtime_ns) for p in sorted(engine_dir().glob("*.yaml"))]
    return sorted(out, key=lambda e: (e.family, release(e.min_version)))


def load_engine_file(path: str | Path) -> EngineProfile:
    """A profile from a YAML path (a user's own or calibrated overlay)."""
    return profile_from_dict(_read_yaml(Path(path)), str(path))


def resolve_engine_profile(text: str, where: str = "--engine") -> EngineProfile:
    """'vllm' (newest vLLM profile), 'vllm@0.6.0', 'sglang@0.5.1.post1', a profile name ('vllm-v1'),
    or a path to a profile YAML."""
    text = (text or "").strip()
    if text.endswith((".yaml", ".yml")) or os.sep in text:
        return load_engine_file(text)
    name, at, version = text.partition("@")
    name = _ALIASES.get(name.lower(), name.lower())
    version = version.strip()
    if at and not version:
        raise InputError(where, None, f"'{text}' has an empty version after '@'",
                         f"write e.g. {name or 'vllm'}@0.11.2, or {name or 'vllm'} for the newest profile")
    profiles = list_engine_profiles()
    by_name = {p.name: p for p in profiles}
    if name in by_name and not version:
        return by_name[name]
    family = by_name[name].family if name in by_name else name
    cands = [p for p in profiles if p.family == family]
    if not cands:
        known = sorted(set(FAMILIES) | set(by_name))
        raise InputError(where, None, f"unknown engine '{name}'",
                         did_you_mean(name, known) + "; built-in profiles: " + ", ".join(sorted(by_name)))
    if not version:
        return cands[-1]
    try:
        rel = release(version)
    except ValueError:
        # a nightly, dev or branch build ('nightly-5b8c30d6', 'gpt-oss-dev', 'glm5-hopper') carries no release
        # number: it is built from the family's newest code, so it takes the newest profile, and says so
        newest = cands[-1]
        note = (f"'{version}' is not a release number: taken as a {family} development build, "
                f"newest profile {newest.name} [{newest.min_version}, {newest.max_version})")
        return dataclasses.replace(newest, version=version, version_note=note)
    for p in cands:
        if release(p.min_version) <= rel < release(p.max_version):
            return dataclasses.replace(p, version=version)
    ranges = ", ".join(f"{p.name} [{p.min_version}, {p.max_version})" for p in cands)
    raise InputError(where, None, f"no {family} profile covers version {version}", f"profiles: {ranges}")
