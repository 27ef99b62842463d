"""The SM clock a plan runs at under an operating point (power cap, locked clock), and its cluster.

A power cap holds the GPU's power at or below the cap by lowering its SM clock. Which clock that
is depends on how busy the plan keeps the GPU (`hardware.power.power_w`): a decode-bound plan
reading HBM draws less at the same clock than a prefill-heavy one. The plan's utilisation is
taken from its representative busy step: the largest decode batch (powers of two up to
max_num_seqs and what the KV cache holds at the mix's mean context) whose step keeps the TPOT
SLO at the peak clock, with one prefill chunk riding along (the step mix of `search.bounds`).
One clock per plan: the step-to-step clock changes of the GPU's power controller are not modelled.
"""

from __future__ import annotations

import dataclasses
import math

from apex_plan.estimate.step_cost import StepCost, build_step_cost
from apex_plan.hardware.power import CLOCK_STEP_MHZ, OperatingPoint, at_clock, power_w
from apex_plan.hardware.spec import ClusterSpec


@dataclasses.dataclass(frozen=True)
class RepStep:
    """The composition of a plan's representative busy step (fixed while the clock changes)."""

    batch: int
    chunk: int
    ctx: int


def representative_step(sc: StepCost, mean_prompt: float, mean_output: float, kv_tokens: int, max_num_seqs: int,
                        budget: int, chunked: bool, tpot_slo_s: float | None) -> RepStep:
    pp = sc.plan.pp
    ctx = max(int(mean_prompt + mean_output / 2), 1)
    b_max = int(max(1, min(max_num_seqs, kv_tokens // pp // ctx)))
    batch = 1
    for b in sorted({b_max, *(2 ** k for k in range(0, 12) if 2 ** k < b_max)}):
        t = sc.decode_time_s(b, ctx)
        if tpot_slo_s and t > tpot_slo_s:
            break
        batch = b
    chunk = max(1, min(budget, int(mean_prompt)) if chunked else int(mean_prompt))
    return RepStep(batch, chunk, ctx)


def utilisation(sc: StepCost, step: RepStep) -> float:
    """The simulator's utilisation of this step: the busier of compute and HBM relative to the peaks
    of `sc`'s GPU (as `simulate/kernels.py` accounts it), at most 1."""
    t, br = sc.step_s(decodes=step.batch, context=step.ctx, chunk=step.chunk, cached=0, eager=True)
    busy_s = t / sc.plan.pp                       # each stage works 1/pp of the step
    if busy_s <= 0:
        return 0.0
    peak_flops = float(sc.params["gemm_peak_flops_per_s"][0])
    peak_bytes = float(sc.params["hbm_bytes_per_s"][0])
    # utilisation: the busier of FLOPs and HBM bytes per GPU over the busy seconds, relative to the peaks
    u = max(br["flops"] / (peak_flops * busy_s), br["bytes"] / (peak_bytes * busy_s))
    return min(u, 1.0)


def plan_clock_mhz(point: OperatingPoint, cluster: ClusterSpec, build, step: RepStep) -> float:
    """The SM clock of a plan under `point`: the highest clock on the 15 MHz table, at most the locked
    clock (else the peak clock), at which the representative step's power stays within the cap
    (else TDP). `build(gpu)` gives the plan's StepCost on a GPU spec."""
    gpu = cluster.gpu
    c = gpu.clocks
    top = point.sm_clock_mhz if point.sm_clock_mhz is not None else c.sm_peak_mhz
    cap = min(point.power_cap_w if point.power_cap_w is not None else math.inf, gpu.tdp_w)
    if top <= c.sm_peak_mhz and cap >= gpu.tdp_w:
        return top                                 # below the peak clock the draw never exceeds TDP

    def fits(f: float) -> bool:
        return power_w(gpu, f, utilisation(build(at_clock(gpu, f)), step)) <= cap

    if fits(top):
        return top
    lo = math.ceil(c.sm_min_mhz / CLOCK_STEP_MHZ)
    hi = math.floor(top / CLOCK_STEP_MHZ)
    if not fits(lo * CLOCK_STEP_MHZ):
        return lo * CLOCK_STEP_MHZ                 # the cap is below what even the lowest clock draws
    while hi - lo > 1:                             # power grows with the clock: bisect on the clock table
        mid = (lo + hi) // 2
        if fits(mid * CLOCK_STEP_MHZ):
            lo = mid
        else:
            hi = mid
    return lo * CLOCK_STEP_MHZ


def point_cluster(cluster: ClusterSpec, point: OperatingPoint, clock_mhz: float) -> ClusterSpec:
    """The cluster whose GPU runs at `clock_mhz` (the same object at the peak clock)."""
    if cluster.gpu.clocks is None or clock_mhz == cluster.gpu.clocks.sm_peak_mhz:
        return cluster
    what = (f"cap {point.power_cap_w:g} W: " if point.power_cap_w is not None else "locked: ")
    gpu = at_clock(cluster.gpu, clock_mhz, f"{what}SM {clock_mhz:.0f} MHz")
    return dataclasses.replace(cluster, gpu=gpu)


def step_cost_builder(model, plan, cluster: ClusterSpec, shard, engine):
    """`build(gpu)`: the plan's StepCost on this GPU spec (for clock searches)."""
    return lambda gpu: build_step_cost(model, gpu, plan, dataclasses.replace(cluster, gpu=gpu), shard=shard,
                                       engine=engine)
