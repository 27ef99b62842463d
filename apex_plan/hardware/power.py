"""GPU operating points: a power cap or a locked SM clock, as a transformation of the GPU spec.

Power model (per GPU, while stepping; the simulator's energy accounting, `simulate/kernels.py`):

    P(f, u) = idle + [P_hbm + (TDP - idle - P_hbm) x (f / f_peak)^k] x u

u is the busier of compute and memory utilisation relative to the peaks *at clock f*, f_peak the SM
clock the datasheet peaks hold at (`Clocks.sm_peak_mhz`), k the profile's DVFS exponent (3: dynamic
power a C V^2 f with the voltage scaled in proportion to the clock). P_hbm is the part of the
dynamic power an SM clock change leaves alone: HBM traffic at full bandwidth, peak bytes/s x 8 x
the profile's HBM energy per bit (`Clocks.hbm_pj_per_bit`). At f = f_peak this is the model the
project always used (P = idle + (TDP - idle) x u), so a cap at TDP changes nothing.

Time: compute-bound kernel time scales as f_peak / f (peak FLOP/s x f / f_peak); memory-bound time
with the memory clock, which power caps and SM-clock locks leave unchanged on HBM GPUs, so HBM
bandwidth is kept. Fixed kernel, launch and collective latencies are kept (not modelled per clock).

A spec at clock f has peak FLOP/s x f / f_peak and `tdp_w` = P(f, 1), the power at full utilisation
at that clock: the simulator's unchanged accounting, (tdp_w - idle) x u x busy time, then gives the
energy of the model above with no kernel change.

A power cap C gives the highest clock whose power at the plan's utilisation stays within C
(`apex_plan.search.power_point.plan_clock_mhz`, from a representative step of the plan).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from apex_plan.errors import InputError
from apex_plan.hardware.spec import Clocks, GpuSpec

CLOCK_STEP_MHZ = 15.0      # NVIDIA SM clock table granularity (nvidia-smi -q -d SUPPORTED_CLOCKS steps of 15 MHz)


@dataclass(frozen=True)
class OperatingPoint:
    """What the operator sets: a power cap (W per GPU), a locked SM clock (MHz), or neither."""

    power_cap_w: float | None = None
    sm_clock_mhz: float | None = None

    @property
    def label(self) -> str:
        """Short suffix for plan keys: '' (datasheet clock), '@500W', '@1410MHz'."""
        if self.power_cap_w is not None:
            return f"@{self.power_cap_w:g}W"
        if self.sm_clock_mhz is not None:
            return f"@{self.sm_clock_mhz:g}MHz"
        return ""

    @property
    def is_default(self) -> bool:
        return self.power_cap_w is None and self.sm_clock_mhz is None


DEFAULT_POINT = OperatingPoint()


def power_w(gpu: GpuSpec, sm_clock_mhz: float, utilisation: float) -> float:
    """Watts one GPU draws at this clock and utilisation (the model in the module docstring)."""
    c = _clocks(gpu, "--power-cap")
    u = min(max(utilisation, 0.0), 1.0)
    hbm_w = hbm_power_w(gpu)
    # idle + (HBM watts + the SM-clock domain's dynamic watts scaled by (f / f_peak)^k) x utilisation
    return gpu.idle_w + (hbm_w + (gpu.tdp_w - gpu.idle_w - hbm_w) * (sm_clock_mhz / c.sm_peak_mhz) ** c.dvfs_power_exponent) * u


def hbm_power_w(gpu: GpuSpec) -> float:
    """Watts of HBM traffic at full bandwidth: bytes/s x 8 bits x joules per bit (at most the dynamic range)."""
    c = _clocks(gpu, "--power-cap")
    return min(gpu.mem_bw_gbps * 1e9 * 8 * c.hbm_pj_per_bit * 1e-12, gpu.tdp_w - gpu.idle_w)


def at_clock(gpu: GpuSpec, sm_clock_mhz: float, label: str = "") -> GpuSpec:
    """The spec of this GPU running at `sm_clock_mhz`: the same object at the peak clock."""
    c = _clocks(gpu, "--sm-clock")
    if sm_clock_mhz == c.sm_peak_mhz:
        return gpu
    ratio = sm_clock_mhz / c.sm_peak_mhz
    return dataclasses.replace(
        gpu,
        peak_tflops={k: v * ratio for k, v in gpu.peak_tflops.items()},     # FLOP/s per clock x clock
        tdp_w=power_w(gpu, sm_clock_mhz, 1.0),                             # full-utilisation watts at this clock
        operating_point=label or f"SM {sm_clock_mhz:.0f} MHz",
    )


def check_point(gpu: GpuSpec, point: OperatingPoint, where: str) -> None:
    """Refuse a cap or clock outside the GPU's ranges (one line naming the option and the range)."""
    if point.power_cap_w is not None:
        c = _clocks(gpu, "--power-cap", where)
        if not c.power_limit_min_w <= point.power_cap_w <= gpu.tdp_w:
            raise InputError("--power-cap", where, f"{point.power_cap_w:g} W is outside {gpu.name}'s power-limit "
                             f"range [{c.power_limit_min_w:g}, {gpu.tdp_w:g}] W",
                             f"give caps between {c.power_limit_min_w:g}W and {gpu.tdp_w:g}W")
    if point.sm_clock_mhz is not None:
        c = _clocks(gpu, "--sm-clock", where)
        if not c.sm_min_mhz <= point.sm_clock_mhz <= c.sm_max_mhz:
            raise InputError("--sm-clock", where, f"{point.sm_clock_mhz:g} MHz is outside {gpu.name}'s SM clock "
                             f"range [{c.sm_min_mhz:g}, {c.sm_max_mhz:g}] MHz",
                             f"give clocks between {c.sm_min_mhz:g} and {c.sm_max_mhz:g} MHz")


def _clocks(gpu: GpuSpec, option: str, where: str | None = None) -> Clocks:
    if gpu.clocks is None:
        raise InputError(option, where, f"GPU profile '{gpu.name}' gives no clock or power-limit ranges",
                         "add a 'clocks:' block (sm_peak_mhz, sm_max_mhz, sm_min_mhz, mem_mhz, power_limit_min_w) "
                         "to the profile, as hardware_profiles/h100-sxm-80gb.yaml has")
    return gpu.clocks
