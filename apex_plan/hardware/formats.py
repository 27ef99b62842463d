"""Kernel physics per weight format: the `kernel_formats:` section of a GPU profile, and which fit a
GEMM, a fused-MoE layer or an MLA attention call runs at.

The section is written by scripts/fit_gpu_constants.py from aiconfigurator-core's measured per-op
tables (GEMM, fused MoE, MLA), one entry per weight format (names of apex_plan.model.quant):

    kernel_formats:
      gemm:
        fp8: {peak: fp8, compute_efficiency: 0.52, bandwidth_efficiency: 0.70, latency_us: 5.1, error_pct: 31}
      moe:
        fp8-block: {peak: fp8, compute_efficiency: 0.20, bandwidth_efficiency: 0.79, latency_us: 46.0, error_pct: 29}
      mla: {prefill_efficiency: 0.55, decode_compute_efficiency: 0.6, decode_bandwidth_efficiency: 0.7, latency_us: 12}

A GPU profile's `moe_kernels:` section (scripts/fit_moe_kernels.py) holds each engine family's own
fused-MoE kernel per format, with two more fields: `latency_per_expert_us` (fixed time per expert held)
and `tile_rows` (the grouped GEMM's row tile): `engine_moe_fit` reads it, no fallback across formats.
Its `moe_compute_kernels:` section (same fields, same script) holds engine kernels whose compute rate alone is
taken, the rest of the expert rows keeping the dense calibration (`engine_moe_compute_fit`, estimate/moe.py).

A format without its own fit takes its nearest measured relative (`FALLBACK`: fp8-block -> fp8,
mxfp4 -> nvfp4 on GPUs with fp4 tensor cores, else the 4-bit weight-only kernels), and without any,
the calibration's bf16 figures at the format's own tensor-core peak.
"""

from __future__ import annotations

import re
from typing import Any, Callable

from apex_plan.errors import InputError, did_you_mean
from apex_plan.hardware.spec import Calibration, GemmShape, GpuSpec, KernelFit, KernelFormats, MlaFit
from apex_plan.model.quant import FORMATS
from apex_plan.units import DTYPE_BYTES

_INT4_GROUP = re.compile(r"^int4-g\d+$")
_FIT_KEYS = ("peak", "compute_efficiency", "bandwidth_efficiency", "latency_us", "error_pct")
_MOE_KEYS = _FIT_KEYS + ("latency_per_expert_us", "tile_rows")
_ENGINES = ("vllm", "sglang", "trtllm")
_SHAPE_KEYS = ("compute_efficiency", "k_overhead", "error_pct", "bandwidth_ratio")
# the format whose GEMM shape stands in for a tensor-core dtype without a fit of its own format
_BASE_FORMAT = {"bf16": "bf16", "fp16": "bf16", "fp8": "fp8", "int8": "fp8", "fp4": "nvfp4"}
_MLA_KEYS = ("prefill_efficiency", "decode_compute_efficiency", "decode_bandwidth_efficiency", "latency_us",
             "prefill_error_pct", "decode_error_pct")


def _fallbacks(fmt: str, fp4: bool) -> tuple[str, ...]:
    """Formats whose kernels stand in for `fmt` when it has no fit of its own, nearest first.
    4-bit weights without fp4 tensor cores run weight-only kernels (Marlin): int4 and mxfp4/nvfp4 alike."""
    if _INT4_GROUP.match(fmt):
        fmt = "int4"
    four_bit = ("nvfp4", "mxfp4") if fp4 else ("int4", "mxfp4", "nvfp4")
    table = {"fp8-block": ("fp8",), "fp8": ("fp8-block",), "mxfp8": ("fp8-block", "fp8"), "int8": ("fp8",),
             "mxfp4": four_bit, "nvfp4": four_bit, "int4": ("int4", "mxfp4") if not fp4 else ("int4", "mxfp4", "nvfp4"),
             "fp16": ("bf16",)}
    return (fmt,) + tuple(f for f in table.get(fmt, ()) if f != fmt)


def compute_dtype(gpu: GpuSpec, fmt: str, act_dtype: str) -> str:
    """Tensor-core dtype a GEMM with `fmt` weights computes in on `gpu`: the format's own when the GPU
    has it, else the activations' (weight-only dequantisation)."""
    fmt = "int4" if _INT4_GROUP.match(fmt) else fmt
    dt = FORMATS.get(fmt, (0.0, 0.0, ""))[2]
    return dt if dt and gpu.supports(dt) else act_dtype


def gemm_fit(gpu: GpuSpec, fmt: str, act_dtype: str) -> KernelFit:
    """The fit a dense GEMM with `fmt` weights runs at on `gpu`."""
    fits = gpu.kernel_formats.gemm
    for f in _fallbacks(fmt, gpu.supports("fp4")):
        if f in fits:
            return fits[f]
    c: Calibration = gpu.calibration
    return KernelFit(compute_dtype(gpu, fmt, act_dtype), c.compute_efficiency, c.bandwidth_efficiency,
                     c.kernel_latency_us)


def gemm_shape(gpu: GpuSpec, fmt: str, act_dtype: str) -> GemmShape | None:
    """The size-dependent term a dense GEMM with `fmt` weights runs at (`gemm_shapes:`): the format's own, a
    fallback's (`_fallbacks`) or the base format's of the same tensor-core dtype; None without one."""
    shapes = gpu.kernel_formats.gemm_shapes
    dt = compute_dtype(gpu, fmt, act_dtype)
    for f in _fallbacks(fmt, gpu.supports("fp4")) + (_BASE_FORMAT.get(dt, ""),):
        if f in shapes and compute_dtype(gpu, f, act_dtype) == dt:
            return shapes[f]
    return None


def moe_fit(gpu: GpuSpec, fmt: str, act_dtype: str) -> KernelFit:
    """The fit a fused-MoE layer (routing, both grouped GEMMs, activation) with `fmt` experts runs at;
    without a MoE fit, the dense GEMM fit of the format with one latency per grouped GEMM."""
    fits = gpu.kernel_formats.moe
    for f in _fallbacks(fmt, gpu.supports("fp4")):
        if f in fits:
            return fits[f]
    g = gemm_fit(gpu, fmt, act_dtype)
    return KernelFit(g.peak_dtype, g.compute_efficiency, g.bandwidth_efficiency, 2.0 * g.latency_us, g.error_pct)


def engine_moe_fit(gpu: GpuSpec, family: str, fmt: str) -> KernelFit | None:
    """The fit of the fused-MoE kernel engine `family` runs for `fmt` experts on `gpu` (`moe_kernels:`), if
    measured; a group-size suffix (int4-g128) names its base format."""
    return _by_format(gpu.kernel_formats.moe_by_engine.get(family, {}), fmt)


def engine_moe_compute_fit(gpu: GpuSpec, family: str, fmt: str) -> KernelFit | None:
    """The fit of engine `family`'s fused-MoE kernel for `fmt` experts on `gpu` whose compute rate alone applies
    (`moe_compute_kernels:`), if measured."""
    return _by_format(gpu.kernel_formats.moe_compute_by_engine.get(family, {}), fmt)


def _by_format(fits: dict[str, KernelFit], fmt: str) -> KernelFit | None:
    """The fit for `fmt` among one engine's fits; a group-size suffix (int4-g128) names its base format."""
    return fits.get(fmt) or fits.get("int4" if _INT4_GROUP.match(fmt) else fmt)


def _engine_fits(raw: Any, where: str, number: Callable[..., float],
                 section: str = "moe_kernels") -> dict[str, dict[str, KernelFit]]:
    """Parse a profile's `moe_kernels:` (or `moe_compute_kernels:`) mapping: engine family -> weight format -> fit."""
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise InputError(where, section, f"expected a mapping, got '{raw}'",
                         f"write '{section}:' then indented engine families (vllm, sglang, trtllm)")
    out = {}
    for engine, fits in raw.items():
        if engine not in _ENGINES:
            raise InputError(where, f"{section}.{engine}", "unknown engine family", did_you_mean(str(engine), _ENGINES))
        out[engine] = _fits(fits, where, f"{section}.{engine}", number, _MOE_KEYS)
    return out


def _gemm_shapes(raw: Any, where: str, number: Callable[..., float]) -> dict[str, GemmShape]:
    """Parse a profile's `gemm_shapes:` mapping: weight format -> {compute_efficiency, k_overhead, error_pct,
    bandwidth_ratio (optional, 1)}."""
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise InputError(where, "gemm_shapes", f"expected a mapping, got '{raw}'",
                         "write 'gemm_shapes:' then e.g. 'fp8: {compute_efficiency: 0.75, k_overhead: 400}'")
    out = {}
    for fmt, doc in raw.items():
        name, f = str(fmt), f"gemm_shapes.{fmt}"
        if name not in FORMATS:
            raise InputError(where, f, "unknown weight format", did_you_mean(name, FORMATS))
        if not isinstance(doc, dict):
            raise InputError(where, f, f"expected a mapping, got '{doc}'", "write '{compute_efficiency: 0.75, k_overhead: 400}'")
        for key in doc:
            if key not in _SHAPE_KEYS:
                raise InputError(where, f"{f}.{key}", "unknown field", did_you_mean(str(key), _SHAPE_KEYS))
        ce = _value(doc, "compute_efficiency", where, f"{f}.compute_efficiency", number)
        k0 = number(doc, "k_overhead", where, "elements", field=f"{f}.k_overhead", allow_min=True)
        err = _value(doc, "error_pct", where, f"{f}.error_pct", number) if "error_pct" in doc else 0.0
        ratio = number(doc, "bandwidth_ratio", where, "ratio to bf16's bytes/s", field=f"{f}.bandwidth_ratio",
                       default=1.0, required=False)
        if not 0.25 <= ratio <= 2.0:
            raise InputError(where, f"{f}.bandwidth_ratio", f"must be in [0.25, 2], got {ratio}",
                             "write the format's memory-bound bytes/s over bf16's, e.g. 0.86")
        out[name] = GemmShape(ce, k0, err, ratio)
    return out


def kernel_formats(raw: Any, where: str, number: Callable[..., float], engines: Any = None,
                   compute_engines: Any = None, shapes: Any = None) -> KernelFormats:
    """Parse a profile's `kernel_formats:` mapping, its `moe_kernels:` mapping (`engines`), its
    `moe_compute_kernels:` mapping (`compute_engines`) and its `gemm_shapes:` mapping (`shapes`); `number` is the
    loader's checked-number reader."""
    by_engine = _engine_fits(engines, where, number)
    compute = _engine_fits(compute_engines, where, number, "moe_compute_kernels")
    gemm_shapes = _gemm_shapes(shapes, where, number)
    if raw is None:
        return KernelFormats(moe_by_engine=by_engine, moe_compute_by_engine=compute, gemm_shapes=gemm_shapes)
    if not isinstance(raw, dict):
        raise InputError(where, "kernel_formats", f"expected a mapping, got '{raw}'",
                         "write 'kernel_formats:' then indented 'gemm:', 'moe:' and 'mla:' mappings")
    for key in raw:
        if key not in ("gemm", "moe", "mla"):
            raise InputError(where, f"kernel_formats.{key}", "unknown field", did_you_mean(str(key), ("gemm", "moe", "mla")))
    gemm = _fits(raw.get("gemm"), where, "kernel_formats.gemm", number)
    moe = _fits(raw.get("moe"), where, "kernel_formats.moe", number)
    mla = None
    if raw.get("mla") is not None:
        m = raw["mla"]
        field = "kernel_formats.mla"
        if not isinstance(m, dict):
            raise InputError(where, field, f"expected a mapping, got '{m}'", "write 'mla: {prefill_efficiency: 0.5, ...}'")
        for key in m:
            if key not in _MLA_KEYS:
                raise InputError(where, f"{field}.{key}", "unknown field", did_you_mean(str(key), _MLA_KEYS))
        vals = {k: _value(m, k, where, f"{field}.{k}", number) for k in _MLA_KEYS if k in m or not k.endswith("_pct")}
        mla = MlaFit(**vals)
    return KernelFormats(gemm, moe, mla, by_engine, compute, gemm_shapes)


def _value(doc: dict, key: str, where: str, field: str, number: Callable[..., float]) -> float:
    """One fitted number: efficiencies in (0, 1], latencies and errors >= 0."""
    if key.endswith("efficiency"):
        v = number(doc, key, where, "fraction of peak", field=field)
        if v > 1.0:
            raise InputError(where, field, f"must be in (0, 1], got {v}", "write an efficiency as a fraction, e.g. 0.7")
        return v
    unit = "microseconds" if key.endswith("_us") else "rows" if key == "tile_rows" else "percent"
    return number(doc, key, where, unit, field=field, allow_min=True)


def _fits(raw: Any, where: str, field: str, number: Callable[..., float], keys: tuple = _FIT_KEYS) -> dict[str, KernelFit]:
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise InputError(where, field, f"expected a mapping of weight format to fit, got '{raw}'",
                         "write e.g. 'fp8: {peak: fp8, compute_efficiency: 0.5, bandwidth_efficiency: 0.7, latency_us: 5}'")
    out: dict[str, KernelFit] = {}
    for fmt, fit in raw.items():
        name = str(fmt)
        if name not in FORMATS and not _INT4_GROUP.match(name):
            raise InputError(where, f"{field}.{fmt}", "unknown weight format", did_you_mean(name, FORMATS))
        f = f"{field}.{fmt}"
        if not isinstance(fit, dict):
            raise InputError(where, f, f"expected a mapping, got '{fit}'",
                             "write '{peak: fp8, compute_efficiency: 0.5, bandwidth_efficiency: 0.7, latency_us: 5}'")
        for key in fit:
            if key not in keys:
                raise InputError(where, f"{f}.{key}", "unknown field", did_you_mean(str(key), keys))
        peak = str(fit.get("peak", ""))
        if peak not in DTYPE_BYTES:
            raise InputError(where, f"{f}.peak", f"unknown dtype '{peak}'", "use one of " + ", ".join(DTYPE_BYTES))
        vals = [_value(fit, k, where, f"{f}.{k}", number) for k in _FIT_KEYS[1:4]]
        extra = {k: _value(fit, k, where, f"{f}.{k}", number) for k in ("error_pct",) + keys[len(_FIT_KEYS):] if k in fit}
        out[name] = KernelFit(peak, *vals, **extra)
    return out
