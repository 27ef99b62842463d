"""Checkpoint weight formats: bytes per parameter with their scales, and reading `quantization_config`.

A format name is one of `FORMATS`, optionally with a group size for INT4 (`int4-g32`). Bytes per
parameter include the scales each format stores:

* fp8 (per-tensor): 1 byte + one fp32 scale per matrix (negligible, not counted).
* fp8-block: 1 byte + one fp32 scale per 128 x 128 block (DeepSeek-V3 `weight_block_size`).
* mxfp8 / mxfp4: 1 or 0.5 bytes + one E8M0 (1-byte) scale per 32 elements (OCP Microscaling
  Formats v1.0 spec, block size 32).
* nvfp4: 0.5 bytes + one FP8 E4M3 scale per 16 elements (+ one fp32 per tensor, not counted)
  (NVIDIA Blackwell NVFP4 format; modelopt `group_size: 16`).
* int4-gG: 0.5 bytes + one bf16/fp16 scale per G elements (symmetric, compressed-tensors
  `pack-quantized`, GPTQ/AWQ group sizes; AWQ zero points are not counted).
"""

from __future__ import annotations

import re
from collections import Counter
from typing import Any

from apex_plan.errors import InputError

# name -> (bytes per weight element, bytes of scales per element, tensor-core dtype it computes in;
#          "" = weight-only: dequantised to the activation dtype)
FORMATS: dict[str, tuple[float, float, str]] = {
    "fp32": (4.0, 0.0, "fp32"),
    "bf16": (2.0, 0.0, "bf16"),
    "fp16": (2.0, 0.0, "fp16"),
    "fp8": (1.0, 0.0, "fp8"),
    "fp8-block": (1.0, 4.0 / (128 * 128), "fp8"),     # fp32 scale per 128x128 block
    "mxfp8": (1.0, 1.0 / 32, "fp8"),                  # E8M0 scale per 32 elements
    "mxfp4": (0.5, 1.0 / 32, "fp4"),                  # E8M0 scale per 32 elements
    "nvfp4": (0.5, 1.0 / 16, "fp4"),                  # E4M3 scale per 16 elements
    "int4": (0.5, 2.0 / 128, ""),                     # bf16 scale per group of 128 (default group)
    "int8": (1.0, 0.0, "int8"),
}

# Components a checkpoint can quantise differently.
COMPONENTS = ("attention", "indexer", "linear_attn", "mamba", "mlp", "experts", "shared_experts", "router",
              "embedding", "lm_head")

# The format a plan's `--weight-dtype` means when the checkpoint says nothing.
DEFAULT_FORMAT = {"bf16": "bf16", "fp16": "fp16", "fp32": "fp32", "fp8": "fp8", "int8": "int8", "fp4": "nvfp4",
                  "int4": "int4"}

_INT4 = re.compile(r"^int4(?:-g(\d+))?$")


def format_bytes(fmt: str) -> float:
    """Bytes per parameter of `fmt`, scales included."""
    m = _INT4.match(fmt)
    if m:
        group = int(m.group(1) or 128)
        return 0.5 + 2.0 / group                     # packed nibble + bf16 scale per group
    try:
        elem, scale, _ = FORMATS[fmt]
    except KeyError:
        raise InputError("weight format", None, f"unknown format '{fmt}'", "use one of " + ", ".join(FORMATS)) from None
    return elem + scale


def format_dtype(fmt: str) -> str:
    """The plan dtype a format belongs to (fp8-block -> fp8, nvfp4/mxfp4 -> fp4, int4-g32 -> int4)."""
    if _INT4.match(fmt):
        return "int4"
    return {"fp8-block": "fp8", "mxfp8": "fp8", "mxfp4": "fp4", "nvfp4": "fp4"}.get(fmt, fmt)


def component_format(formats: dict[str, str], component: str, weight_dtype: str, act_dtype: str) -> str:
    """Format of `component` when a plan runs the checkpoint with `weight_dtype`.

    bf16/fp16 plans run every weight in that dtype. A quantised plan keeps the checkpoint's layout
    where the checkpoint quantises the component to the same dtype, keeps the components it leaves
    unquantised in the activation dtype, and otherwise uses the dtype's default layout.
    """
    if weight_dtype in ("bf16", "fp16", "fp32"):
        return DEFAULT_FORMAT[weight_dtype]
    ckpt = formats.get(component, "")
    quantised = {format_dtype(f) for f in formats.values() if f not in ("bf16", "fp16")}
    if ckpt and format_dtype(ckpt) == weight_dtype:
        return ckpt
    if ckpt in ("bf16", "fp16") and weight_dtype in quantised:
        return act_dtype                                # the checkpoint leaves it unquantised
    if not formats and component in ("embedding", "lm_head"):
        return act_dtype
    return DEFAULT_FORMAT.get(weight_dtype, weight_dtype)


# ---------------------------------------------------------------- quantization_config

def _component_of(module: str) -> str | None:
    """Which component a module name or pattern in a quantisation config belongs to."""
    m = module.lower()
    if "embed_tokens" in m or m.endswith("embed") or "embed_vision" in m:
        return "embedding"
    if "lm_head" in m or m in ("head", "language_model.lm_head"):
        return "lm_head"
    if "indexer" in m:
        return "indexer"
    if "linear_attn" in m:
        return "linear_attn"
    if "shared_expert" in m:
        return "shared_experts"
    if "e_score_correction_bias" in m or m.endswith(".gate") or m == "gate" or "router" in m or "mlp.gate" in m:
        return "router"
    if "experts" in m:
        return "experts"
    if "self_attn" in m or ".attn" in m or "attn." in m:
        return "attention"
    if "mixer.in_proj" in m or "mixer.out_proj" in m:
        return "mamba"
    if ".mixer.q_proj" in m or ".mixer.k_proj" in m or ".mixer.v_proj" in m or ".mixer.o_proj" in m:
        return "attention"
    if ".mlp" in m or "mlp." in m or ".ffn" in m:
        return "mlp"
    return None


def _fmt_of_algo(algo: str, group: Any = None) -> str | None:
    a = str(algo).upper()
    if a in ("FP8", "FP8_PER_CHANNEL_PER_TOKEN", "FP8_BLOCK"):
        return "fp8-block" if a == "FP8_BLOCK" else "fp8"
    if a == "MXFP8":
        return "mxfp8"
    if a in ("NVFP4", "W4A16_NVFP4", "W4A8_NVFP4_FP8"):
        return "nvfp4"
    if a in ("MXFP4", "W4A8_MXFP4_FP8", "W4A16_MXFP4"):
        return "mxfp4"
    if a in ("W4A16_AWQ", "W4A8_AWQ", "INT4_AWQ", "W4A16_GPTQ"):
        return f"int4-g{int(group)}" if isinstance(group, int) else "int4"
    return None


def _group_fmt(weights: dict) -> str | None:
    """Format of a compressed-tensors `config_groups` weights entry."""
    bits, kind, group = weights.get("num_bits"), weights.get("type"), weights.get("group_size")
    if bits == 8:
        return "fp8-block" if weights.get("block_structure") else "fp8"
    if bits == 4 and kind == "float":
        return "mxfp4" if group == 32 else "nvfp4"
    if bits == 4 and kind == "int":
        return f"int4-g{int(group)}" if isinstance(group, int) and group > 0 else "int4"
    return None


def _excluded_components(patterns: list, n_layers: int) -> set[str]:
    """Components a list of excluded modules leaves unquantised: every one named with a wildcard
    over layers, or named in at least half of the layers."""
    per: Counter = Counter()
    wild: set[str] = set()
    for p in patterns:
        if not isinstance(p, str):
            continue
        comp = _component_of(p)
        if comp is None:
            continue
        if comp in ("embedding", "lm_head") or "*" in p.split("layers")[-1][:3] or "re:" in p or "layers" not in p:
            wild.add(comp)
        else:
            per[comp] += 1
    return wild | {c for c, n in per.items() if n * 2 >= max(1, n_layers)}


def formats_from_config(qc: Any, n_layers: int) -> dict[str, str]:
    """Per-component formats a Hugging Face `quantization_config` (or modelopt `hf_quant_config`)
    describes; {} when it describes none we read."""
    if not isinstance(qc, dict):
        return {}
    if isinstance(qc.get("quantization"), dict):          # modelopt hf_quant_config.json
        qc = qc["quantization"]
    method = str(qc.get("quant_method", "")).lower()
    base: str | None = None
    per_layer: dict[str, Counter] = {}
    if method == "fp8":
        base = "fp8-block" if qc.get("weight_block_size") else "fp8"
    elif method == "mxfp4":
        base = "mxfp4"
    elif method in ("awq", "gptq"):
        g = qc.get("group_size")
        base = f"int4-g{int(g)}" if isinstance(g, int) and g > 0 else "int4"
    elif isinstance(qc.get("config_groups"), dict):        # compressed-tensors / modelopt export
        for group in qc["config_groups"].values():
            if isinstance(group, dict) and isinstance(group.get("weights"), dict):
                base = _group_fmt(group["weights"])
                if base:
                    break
    elif "quant_algo" in qc:
        algo = str(qc.get("quant_algo")).upper()
        if algo == "MIXED_PRECISION" and isinstance(qc.get("quantized_layers"), dict):
            for mod, entry in qc["quantized_layers"].items():
                comp = _component_of(mod)
                fmt = _fmt_of_algo(entry.get("quant_algo", ""), entry.get("group_size")) if isinstance(entry, dict) else None
                if comp and fmt:
                    per_layer.setdefault(comp, Counter())[fmt] += 1
        else:
            base = _fmt_of_algo(algo, qc.get("group_size"))
    if base is None and not per_layer:
        return {}
    out: dict[str, str] = {}
    if base:
        out = {c: base for c in COMPONENTS if c not in ("router", "embedding", "lm_head")}
        out.update(router="bf16", embedding="bf16", lm_head="bf16")   # engines keep these unquantised
    for comp, counts in per_layer.items():
        out[comp] = counts.most_common(1)[0][0]
    excluded = qc.get("modules_to_not_convert") or qc.get("ignore") or qc.get("exclude_modules") or []
    if isinstance(excluded, list):
        for comp in _excluded_components(excluded, n_layers):
            out[comp] = "bf16"
    return out


# ---------------------------------------------------------------- a repo id's quantisation tag

# the trailing tag of a quantised re-publication -> the format its tag names when the checkpoint's own
# quantization_config is not known (-NVFP4 / -FP4 nvfp4; -MXFP4 mxfp4; -FP8 fp8 per-tensor; AWQ / GPTQ /
# -Int4 / W4A16 int4 weight-only; -Int8 / W8A8 int8). A tag cannot tell per-tensor from block fp8
# (Qwen/...-FP8 is block fp8 by its config.json), so a stated config always wins (`repo_formats`).
_TAG_FORMAT = (("nvfp4", "nvfp4"), ("mxfp4", "mxfp4"), ("fp4", "nvfp4"), ("fp8", "fp8"), ("awq", "int4"),
               ("gptq", "int4"), ("int4", "int4"), ("w4a16", "int4"), ("int8", "int8"), ("w8a8", "int8"))


def repo_format(repo_id: str) -> str:
    """The weight format a repo id's quantisation tag names ('Qwen/Qwen3-235B-A22B-FP8' -> 'fp8'), or ''."""
    name = repo_id.rsplit("/", 1)[-1].lower().replace("_", "-")
    parts = set(re.split(r"[-.]", name))
    for tag, fmt in _TAG_FORMAT:
        if tag in parts:
            return fmt
    return ""


def tag_formats(fmt: str) -> dict[str, str]:
    """Per-component formats of a checkpoint quantised to `fmt` as its repo tag says: every linear layer
    but the router, embedding and LM head (which quantisation recipes leave in bf16)."""
    out = {c: fmt for c in COMPONENTS if c not in ("router", "embedding", "lm_head")}
    out.update(router="bf16", embedding="bf16", lm_head="bf16")
    return out


def repo_formats(repo_id: str, stated: dict[str, str] | None) -> dict[str, str]:
    """Per-component formats of checkpoint `repo_id`: the one rule. Its own quantization_config decides
    (`stated`: `formats_from_config` of it, as a model file records it); only without one does the repo
    tag; {} when neither says anything (the weights are the base checkpoint's)."""
    if stated:
        return dict(stated)
    fmt = repo_format(repo_id)
    return tag_formats(fmt) if fmt else {}


def checkpoint_dtype(formats: dict[str, str]) -> str:
    """The plan dtype a checkpoint's weights are in: that of its expert (else MLP, else attention) weights;
    bf16 when it states no format."""
    for comp in ("experts", "mlp", "attention"):
        if formats.get(comp):
            return format_dtype(formats[comp])
    return "bf16"
