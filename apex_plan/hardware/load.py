"""Load GPU profiles and cluster descriptions from YAML, and build clusters from CLI flags."""

from __future__ import annotations

import dataclasses
import math
import os
import re
from pathlib import Path
from typing import Any

import yaml

from apex_plan.errors import InputError, did_you_mean
from apex_plan.hardware.formats import kernel_formats
from apex_plan.hardware.spec import Calibration, Clocks, ClusterSpec, GpuSpec
from apex_plan.limits import check_cluster_size, check_hardware_field
from apex_plan.yamlio import load_yaml
from apex_plan.units import DTYPE_BYTES

HARDWARE_DIR_ENV = "APEX_PLAN_HARDWARE_DIR"
GIB_BYTES = 2**30

# Cluster defaults used when the YAML (or the CLI) leaves a field out.
DEFAULT_INTRA_NODE_LATENCY_US = 2.0
DEFAULT_INTER_NODE_BW_GBPS = 50.0      # one 400 Gb/s InfiniBand NDR NIC per GPU = 50 GB/s per direction
DEFAULT_INTER_NODE_LATENCY_US = 10.0

# Top-level GPU profile fields: (unit shown in errors, required).
_GPU_FIELDS: dict[str, tuple[str, bool]] = {
    "name": ("text", True),
    "vendor": ("text", True),
    "source": ("text", False),
    "calibrated_with": ("text", False),
    "memory_gib": ("GiB (2**30 bytes)", True),
    "mem_bw_gbps": ("GB/s (1e9 bytes/s)", True),
    "peak_tflops": ("TFLOP/s per dtype", True),
    "intra_node_bw_gbps": ("GB/s per direction", True),
    "pcie_gbps": ("GB/s per direction", True),
    "tdp_w": ("W", True),
    "idle_w": ("W", True),
    "num_sms": ("count", True),
    "calibration": ("mapping", False),
    "nvlink_domain_gpus": ("count", False),
    "clocks": ("mapping", False),
    "kernel_formats": ("mapping", False),
    "moe_kernels": ("mapping", False),
    "moe_compute_kernels": ("mapping", False),
    "gemm_shapes": ("mapping", False),
    "gpus_per_node": ("count", False),
}

_CLUSTER_FIELDS: dict[str, str] = {
    "name": "text",
    "gpu": "profile name or path",
    "nodes": "count",
    "gpus_per_node": "count",
    "intra_node_bw_gbps": "GB/s per direction",
    "intra_node_latency_us": "microseconds",
    "inter_node_bw_gbps": "GB/s per direction",
    "inter_node_latency_us": "microseconds",
    "price_per_gpu_hour": "USD per GPU-hour",
    "nvlink_domain_gpus": "count",
}

# Unit suffixes a user might write, and their factor into each field unit, to suggest a fix.
_UNIT_FACTORS: dict[str, dict[str, float]] = {
    "GB/s": {"TB/s": 1e3, "GB/s": 1.0, "GBps": 1.0, "MB/s": 1e-3, "Gb/s": 1 / 8, "Gbps": 1 / 8,
             "Tb/s": 1e3 / 8, "GiB/s": GIB_BYTES / 1e9},
    "GiB": {"GiB": 1.0, "GB": 1e9 / GIB_BYTES, "TB": 1e12 / GIB_BYTES, "MiB": 1 / 1024, "MB": 1e6 / GIB_BYTES},
    "TFLOP/s": {"TFLOPS": 1.0, "TFLOP/s": 1.0, "PFLOPS": 1e3, "PFLOP/s": 1e3, "GFLOPS": 1e-3, "TOPS": 1.0,
                "POPS": 1e3},
    "W": {"W": 1.0, "kW": 1e3},
    "microseconds": {"us": 1.0, "µs": 1.0, "ms": 1e3, "s": 1e6, "ns": 1e-3},
}
_SUFFIX_UNITS = {"us": "microseconds", "ms": "milliseconds", "gib": "GiB", "s": "seconds"}
_VALUE_WITH_UNIT = re.compile(r"^\s*([-+]?[0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)\s*([A-Za-zµ/]+)\s*$")


def hardware_dir() -> Path:
    """Folder of built-in profiles: $APEX_PLAN_HARDWARE_DIR, else the packaged or checkout hardware_profiles/."""
    from apex_plan.builtin import builtin_dir
    return builtin_dir("hardware_profiles")


def list_gpus() -> list[str]:
    """Names of the built-in GPU profiles, sorted."""
    folder = hardware_dir()
    if not folder.is_dir():
        return []
    return sorted(p.stem for p in folder.iterdir() if p.suffix in (".yaml", ".yml") and p.is_file())


def _looks_like_path(text: str) -> bool:
    return text.endswith((".yaml", ".yml")) or "/" in text or os.sep in text


def _resolve_gpu_path(name_or_path: str | Path, where: str, field: str | None) -> Path:
    if isinstance(name_or_path, Path) or _looks_like_path(str(name_or_path)):
        path = Path(name_or_path).expanduser()
        if not path.is_file():
            raise InputError(where, field, f"GPU profile file '{path}' not found",
                             "give an existing .yaml path or a built-in name: " + ", ".join(list_gpus()))
        return path
    name = str(name_or_path).strip().lower()
    folder = hardware_dir()
    for suffix in (".yaml", ".yml"):
        if (folder / f"{name}{suffix}").is_file():
            return folder / f"{name}{suffix}"
    raise InputError(where, field, f"unknown GPU '{name_or_path}'", did_you_mean(name, list_gpus()))


def _read_yaml(path: Path) -> dict[str, Any]:
    """Parse a YAML file into a mapping, turning every failure into an InputError naming the file."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise InputError(str(path), None, f"cannot read file: {exc.strerror or exc}", "check the path") from None
    try:
        doc = load_yaml(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or "syntax error"
        raise InputError(str(path), None, f"malformed YAML{at}: {problem}",
                         "fix the YAML syntax (indentation, 'key: value' pairs)") from None
    if not isinstance(doc, dict):
        kind = "empty" if doc is None else f"a {type(doc).__name__}"
        raise InputError(str(path), None, f"expected a mapping of 'field: value' lines, file is {kind}",
                         "write one 'field: value' per line")
    return doc


def _unit_hint(value: str, unit: str) -> str:
    """Fix text for a string where a number is expected, converting '3.35 TB/s' when we can."""
    base = next((u for u in _UNIT_FACTORS if unit.startswith(u)), None)
    m = _VALUE_WITH_UNIT.match(value)
    if base and m:
        factor = _UNIT_FACTORS[base].get(m.group(2))
        if factor is not None:
            return f"write a bare number in {unit}: {float(m.group(1)) * factor:.6g}"
    return f"write a bare number in {unit}"


def _number(doc: dict[str, Any], key: str, where: str, unit: str, *, default: float | None = None,
            required: bool = True, min_value: float = 0.0, allow_min: bool = False,
            integer: bool = False, field: str | None = None) -> float:
    """Read a numeric field; checks type, finiteness, sign (> min_value, or >= when allow_min)."""
    field = field or key
    if key not in doc or doc[key] is None:
        if required and default is None:
            raise InputError(where, field, "missing", f"add '{key}: <number in {unit}>'")
        return default  # type: ignore[return-value]
    value = doc[key]
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InputError(where, field, f"expected a number in {unit}, got '{value}'", _unit_hint(str(value), unit))
    if not math.isfinite(value):
        raise InputError(where, field, f"must be finite, got {value}", f"write a number in {unit}")
    if integer and float(value) != int(value):
        raise InputError(where, field, f"expected a whole number, got {value}", "write an integer")
    if value < min_value or (value == min_value and not allow_min):
        bound = f">= {min_value:g}" if allow_min else f"> {min_value:g}"
        raise InputError(where, field, f"must be {bound}, got {value}", f"write a {'non-negative' if allow_min else 'positive'} number in {unit}")
    check_hardware_field(where, field, float(value))
    return int(value) if integer else float(value)


def _text(doc: dict[str, Any], key: str, where: str, *, default: str | None = None) -> str:
    value = doc.get(key)
    if value is None:
        if default is None:
            raise InputError(where, key, "missing", f"add '{key}: <text>'")
        return default
    if not isinstance(value, (str, int, float)) or isinstance(value, bool):
        raise InputError(where, key, f"expected text, got {type(value).__name__}", f"write '{key}: <text>'")
    return str(value)


def _check_keys(doc: dict[str, Any], allowed: Any, where: str, prefix: str = "") -> None:
    for key in doc:
        if key not in allowed:
            raise InputError(where, f"{prefix}{key}", "unknown field", did_you_mean(str(key), allowed))


def _peak_tflops(doc: dict[str, Any], where: str) -> dict[str, float]:
    raw = doc.get("peak_tflops")
    if raw is None:
        raise InputError(where, "peak_tflops", "missing", "add 'peak_tflops: {bf16: <dense TFLOP/s>, ...}'")
    if not isinstance(raw, dict):
        raise InputError(where, "peak_tflops", f"expected a mapping of dtype to dense TFLOP/s, got '{raw}'",
                         "write e.g. 'peak_tflops: {bf16: 989.4, fp8: 1978.9}'")
    peaks: dict[str, float] = {}
    for dtype in raw:
        key = str(dtype).lower()
        if key not in DTYPE_BYTES:
            raise InputError(where, f"peak_tflops.{dtype}", "unknown dtype", did_you_mean(key, DTYPE_BYTES))
        peaks[key] = _number(raw, dtype, where, "TFLOP/s (dense)", field=f"peak_tflops.{dtype}")
    if "bf16" not in peaks:
        raise InputError(where, "peak_tflops.bf16", "missing", "every profile needs a dense bf16 TFLOP/s figure")
    return peaks


# GPU-profile calibration keys of engine behaviour, moved to the engine profiles (engine_profiles/*.yaml)
# when GPU profiles were cut down to chip physics: old key -> the engine-profile field that replaced it
MOVED_TO_ENGINE = {"step_overhead_ms": "host.step_ms", "per_seq_overhead_ms": "host.per_seq_ms",
                   "per_prefill_token_overhead_us": "host.per_prefill_token_us",
                   "frontend_latency_ms": "host.frontend_ms", "eager_kernel_overhead_us": "host.eager_kernel_us",
                   "engine_reserve_gib": "memory.reserve_gib"}


def _calibration(doc: dict[str, Any], where: str) -> Calibration:
    """Calibration block: unknown keys refused, missing keys take the dataclass defaults."""
    raw = doc.get("calibration")
    if raw is None:
        return Calibration()
    if not isinstance(raw, dict):
        raise InputError(where, "calibration", f"expected a mapping, got '{raw}'", "write 'calibration:' then indented 'field: value' lines")
    fields = {f.name: f for f in dataclasses.fields(Calibration)}
    for key in raw:
        if key in MOVED_TO_ENGINE:
            raise InputError(where, f"calibration.{key}", "is engine behaviour, no longer read from a GPU profile: it "
                             f"moved to the engine profile as '{MOVED_TO_ENGINE[key]}'",
                             f"delete it here; set {MOVED_TO_ENGINE[key]} in an engine profile YAML (--engine FILE)")
    _check_keys(raw, fields, where, prefix="calibration.")
    values: dict[str, Any] = {}
    for key in raw:
        field = f"calibration.{key}"
        if key.endswith("_by_engine"):
            values[key] = _by_engine(raw[key], where, field, fraction="_efficiency" in key)
            continue
        if key.endswith("_efficiency"):
            value = _number(raw, key, where, "fraction of peak", field=field)
            if value > 1.0:
                raise InputError(where, field, f"must be in (0, 1], got {value}",
                                 "write an efficiency as a fraction, e.g. 0.7 for 70%")
        elif key == "moe_imbalance":
            value = _number(raw, key, where, "ratio of busiest to mean load", field=field, min_value=1.0,
                            allow_min=True)
        else:
            unit = key.rsplit("_", 1)[-1]
            value = _number(raw, key, where, _SUFFIX_UNITS.get(unit, unit), field=field, allow_min=True)
        values[key] = value
    if "prefill_attention_efficiency" not in values:   # no measured prefill kernel: the chip's attention figure
        values["prefill_attention_efficiency"] = values.get("attention_efficiency", Calibration.attention_efficiency)
    return Calibration(**values)


ENGINE_FAMILIES = ("vllm", "sglang", "trtllm")


def _by_engine(raw: Any, where: str, field: str, fraction: bool = False) -> tuple[tuple[str, float], ...]:
    """A {engine family: microseconds, or a fraction of peak when `fraction`} mapping of the calibration block,
    as sorted pairs."""
    if not isinstance(raw, dict):
        raise InputError(where, field, f"expected a mapping, got '{raw}'",
                         "write e.g. '{vllm: 0.57, sglang: 0.56, trtllm: 0.47}'" if fraction
                         else "write e.g. '{vllm: 7.4, sglang: 5.9, trtllm: 5.7}'")
    out = []
    for fam in raw:
        if fam not in ENGINE_FAMILIES:
            raise InputError(where, f"{field}.{fam}", "unknown engine family", did_you_mean(str(fam), ENGINE_FAMILIES))
        if fraction:
            value = _number(raw, fam, where, "fraction of peak", field=f"{field}.{fam}")
            if value > 1.0:
                raise InputError(where, f"{field}.{fam}", f"must be in (0, 1], got {value}",
                                 "write an efficiency as a fraction, e.g. 0.55 for 55%")
        else:
            value = _number(raw, fam, where, "us", field=f"{field}.{fam}", allow_min=True)
        out.append((fam, value))
    return tuple(sorted(out))


def _clocks(doc: dict[str, Any], where: str, tdp_w: float) -> Clocks | None:
    """The optional `clocks:` block: SM clock range, memory clock, lowest power limit, DVFS exponent."""
    raw = doc.get("clocks")
    if raw is None:
        return None
    if not isinstance(raw, dict):
        raise InputError(where, "clocks", f"expected a mapping, got '{raw}'",
                         "write 'clocks:' then indented 'sm_peak_mhz: 1830' style lines")
    fields = {f.name: f for f in dataclasses.fields(Clocks)}
    _check_keys(raw, fields, where, prefix="clocks.")
    v = {}
    for key in fields:
        unit = {"dvfs_power_exponent": "ratio", "hbm_pj_per_bit": "pJ per bit"}.get(key, "W" if key.endswith("_w") else "MHz")
        v[key] = _number(raw, key, where, unit, field=f"clocks.{key}", allow_min=key == "hbm_pj_per_bit",
                         default={"dvfs_power_exponent": 3.0, "hbm_pj_per_bit": 0.0}.get(key))
    if not v["sm_min_mhz"] <= v["sm_peak_mhz"] <= v["sm_max_mhz"]:
        raise InputError(where, "clocks.sm_peak_mhz", f"must lie in [sm_min_mhz, sm_max_mhz] = "
                         f"[{v['sm_min_mhz']:g}, {v['sm_max_mhz']:g}], got {v['sm_peak_mhz']:g}",
                         "give the SM clock the datasheet peaks are quoted at")
    if not v["power_limit_min_w"] <= tdp_w:
        raise InputError(where, "clocks.power_limit_min_w", f"{v['power_limit_min_w']:g} W exceeds tdp_w {tdp_w:g} W",
                         "the lowest settable power limit (nvidia-smi -q -d POWER, 'Min Power Limit')")
    if not 1.0 <= v["dvfs_power_exponent"] <= 4.0:
        raise InputError(where, "clocks.dvfs_power_exponent", f"must be in [1, 4], got {v['dvfs_power_exponent']:g}",
                         "3 for dynamic power ~ V^2 f with the voltage scaled with the clock")
    return Clocks(**v)


def gpu_from_dict(doc: dict[str, Any], where: str) -> GpuSpec:
    """Validate a parsed profile mapping and build a GpuSpec (errors name `where`)."""
    _check_keys(doc, _GPU_FIELDS, where)
    num = lambda key, **kw: _number(doc, key, where, _GPU_FIELDS[key][0], **kw)  # noqa: E731
    tdp_w = num("tdp_w")
    idle_w = num("idle_w", allow_min=True)
    if idle_w > tdp_w:
        raise InputError(where, "idle_w", f"idle power {idle_w:g} W exceeds tdp_w {tdp_w:g} W",
                         "idle power is usually 10-15% of TDP")
    return GpuSpec(
        name=_text(doc, "name", where),
        vendor=_text(doc, "vendor", where),
        memory_bytes=num("memory_gib") * GIB_BYTES,
        mem_bw_gbps=num("mem_bw_gbps"),
        peak_tflops=_peak_tflops(doc, where),
        intra_node_bw_gbps=num("intra_node_bw_gbps"),
        pcie_gbps=num("pcie_gbps"),
        tdp_w=tdp_w,
        idle_w=idle_w,
        num_sms=int(num("num_sms", integer=True)),
        calibration=_calibration(doc, where),
        source=_text(doc, "source", where, default=""),
        calibrated_with=_text(doc, "calibrated_with", where, default=""),
        nvlink_domain_gpus=int(num("nvlink_domain_gpus", integer=True, default=0, allow_min=True)),
        clocks=_clocks(doc, where, tdp_w),
        kernel_formats=kernel_formats(doc.get("kernel_formats"), where, _number, doc.get("moe_kernels"),
                                      doc.get("moe_compute_kernels"), doc.get("gemm_shapes")),
        gpus_per_node=int(num("gpus_per_node", integer=True, default=8)),
    )


def load_gpu(name_or_path: str | Path, where: str = "--gpu", field: str | None = None) -> GpuSpec:
    """A GPU profile by built-in name ('h100-sxm-80gb') or by path to a YAML file."""
    path = _resolve_gpu_path(name_or_path, where, field)
    return gpu_from_dict(_read_yaml(path), str(path))


def make_cluster(gpu: GpuSpec, gpus: int, gpus_per_node: int | None = None, *, name: str = "",
                 inter_node_bw_gbps: float = DEFAULT_INTER_NODE_BW_GBPS,
                 price_per_gpu_hour: float | None = None) -> ClusterSpec:
    """Cluster for `--gpu NAME --gpus N --gpus-per-node G` (N < G means one node of N GPUs; G defaults to
    the GPU profile's node size: 8 on HGX boards, 4 on an NVL72 compute tray)."""
    gpus_per_node = gpu.gpus_per_node if gpus_per_node is None else gpus_per_node
    for option, value in (("--gpus", gpus), ("--gpus-per-node", gpus_per_node)):
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            raise InputError(option, None, f"must be a positive whole number, got {value!r}", "e.g. 8")
    check_cluster_size("--gpus", None, gpus_per_node, total=gpus)
    if gpus < gpus_per_node:
        num_nodes, per_node = 1, gpus
    elif gpus % gpus_per_node:
        lower, upper = gpus - gpus % gpus_per_node, gpus - gpus % gpus_per_node + gpus_per_node
        raise InputError("--gpus", None, f"{gpus} GPUs do not fill whole nodes of {gpus_per_node}",
                         f"use a multiple of --gpus-per-node, e.g. {lower} or {upper}")
    else:
        num_nodes, per_node = gpus // gpus_per_node, gpus_per_node
    return ClusterSpec(
        gpu=gpu, num_nodes=num_nodes, gpus_per_node=per_node,
        intra_node_bw_gbps=gpu.intra_node_bw_gbps, intra_node_latency_us=DEFAULT_INTRA_NODE_LATENCY_US,
        inter_node_bw_gbps=inter_node_bw_gbps, inter_node_latency_us=DEFAULT_INTER_NODE_LATENCY_US,
        price_per_gpu_hour=price_per_gpu_hour, name=name or f"{num_nodes}x{per_node}-{gpu.name}",
        nvlink_domain_gpus=min(gpu.nvlink_domain_gpus, gpus),
    )


def load_cluster(path: str | Path) -> ClusterSpec:
    """A cluster from YAML: name, gpu, nodes, gpus_per_node, links (defaults as documented), price.
    A file with node groups (`groups:`) is a fleet: `apex_plan.hardware.fleet.load_fleet` reads it."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise InputError(str(path), None, "cluster file not found", "check the path")
    doc = _read_yaml(path)
    if "groups" in doc:
        raise InputError(str(path), "groups", "this command takes one node group, the file has a list",
                         "use `search` for a fleet of node groups, or a cluster file of one group here")
    return cluster_from_dict(doc, path)


def cluster_from_dict(doc: dict[str, Any], path: Path, prefix: str = "", default_name: str | None = None) -> ClusterSpec:
    """Validate one cluster (or node-group) mapping read from `path`; fields are named `prefix`+key."""
    where = str(path)
    _check_keys(doc, _CLUSTER_FIELDS, where, prefix=prefix)
    gpu_ref = doc.get("gpu")
    if gpu_ref is None:
        raise InputError(where, f"{prefix}gpu", "missing", "add 'gpu: <profile name or path>', e.g. one of: " + ", ".join(list_gpus()))
    if not isinstance(gpu_ref, str):
        raise InputError(where, f"{prefix}gpu", f"expected a profile name or path, got '{gpu_ref}'", "e.g. 'gpu: h100-sxm-80gb'")
    if _looks_like_path(gpu_ref) and not Path(gpu_ref).is_absolute():
        gpu_ref = str(path.parent / gpu_ref)        # relative to the cluster file
    gpu = load_gpu(gpu_ref, where=where, field=f"{prefix}gpu")
    num = lambda key, **kw: _number(doc, key, where, _CLUSTER_FIELDS[key], field=prefix + key, **kw)  # noqa: E731
    nodes, per_node = check_cluster_size(where, int(num("nodes", integer=True)), int(num("gpus_per_node", integer=True)))
    return ClusterSpec(
        gpu=gpu,
        num_nodes=nodes,
        gpus_per_node=per_node,
        intra_node_bw_gbps=num("intra_node_bw_gbps", default=gpu.intra_node_bw_gbps),
        intra_node_latency_us=num("intra_node_latency_us", default=DEFAULT_INTRA_NODE_LATENCY_US, allow_min=True),
        inter_node_bw_gbps=num("inter_node_bw_gbps", default=DEFAULT_INTER_NODE_BW_GBPS),
        inter_node_latency_us=num("inter_node_latency_us", default=DEFAULT_INTER_NODE_LATENCY_US, allow_min=True),
        price_per_gpu_hour=num("price_per_gpu_hour", required=False, allow_min=True),
        name=_text(doc, "name", where, default=default_name or path.stem),
        nvlink_domain_gpus=int(num("nvlink_domain_gpus", integer=True, default=gpu.nvlink_domain_gpus, allow_min=True)),
    )
