"""Simulate a disaggregated deployment: prefill instances, KV transfers, decode instances, as one event loop.

Each role gets its own engine settings (the profile's defaults, decode_max_num_seqs on decode),
memory report (KV pool sized as the engine sizes it) and step costs; `disagg_kernel` replays the
workload through both pools together, so a decode pool that is full holds the prefill blocks of the
requests waiting for it and stops the prefill admissions behind them (see its docstring). Requests
go to instances round-robin (NVIDIA Dynamo's default `--router-mode round-robin`) or to the one with
the fewest unfinished requests (`--routing least_loaded`), in both pools.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np

from apex_plan.estimate.memory import MemoryReport
from apex_plan.estimate.shard import build_shard
from apex_plan.estimate.step_cost import StepCost, build_step_cost
from apex_plan.hardware.spec import ClusterSpec
from apex_plan.model.spec import ModelSpec
from apex_plan.plan.disagg import DisaggPlan
from apex_plan.plan.spec import EngineConfig, Plan
from apex_plan.simulate import disagg_kernel as DK
from apex_plan.simulate import kernels as SK
from apex_plan.simulate.engine import ResolvedEngine
from apex_plan.simulate.fit import fit_engine
from apex_plan.simulate.run import RequestTimes, client_delays_s, compute_metrics, distribution
from apex_plan.simulate.transfer import Links, kv_transfer_bytes, nic_bytes, rank_links
from apex_plan.workload.spec import Slo, Workload


@dataclass(frozen=True, eq=False)
class Role:
    """One pool's engine settings, memory and step costs."""

    plan: Plan
    engine: ResolvedEngine
    memory: MemoryReport
    step_cost: StepCost


@dataclass(frozen=True, eq=False)
class DisaggResult:
    plan: DisaggPlan
    prefill: Role | None
    decode: Role | None
    feasible: bool
    reason: str
    times: RequestTimes | None = None
    phases: dict | None = None            # per-request absolute times of each phase (seconds)
    visits: np.ndarray | None = None      # (requests, 3): prefilled, transferred, decoded
    transfer_bytes: np.ndarray | None = None
    links: Links | None = None
    estats: np.ndarray | None = None
    makespan_s: float = 0.0
    energy_j: float = 0.0
    metrics: dict = dataclasses.field(default_factory=dict)


def _role(model: ModelSpec, cluster: ClusterSpec, plan: Plan, cfg: EngineConfig, need_len: int,
          longest_prompt: int) -> tuple[Role | None, str]:
    """One role's engine settings fitted to its plan and memory (`apex_plan.simulate.fit.fit_engine`,
    the rule aggregated plans follow) and its step costs; (None, reason) when it cannot hold the
    workload's longest request."""
    shard = build_shard(model, plan)
    eng, mem, why = fit_engine(model, plan, shard, cfg, cluster.gpu, need_len, longest_prompt)
    if eng is None:
        return None, why
    return Role(plan, eng, mem, build_step_cost(model, cluster.gpu, plan, cluster, engine=eng, shard=shard)), ""


def _cfg(role: Role, base: int, least_loaded: bool) -> np.ndarray:
    """The kernel's role vector (see disagg_kernel.C_*)."""
    e, p = role.engine, role.plan
    nblocks = role.memory.kv_blocks // p.pp        # the pool is shared out over the pp virtual engines
    c = np.zeros(DK.C_N, np.int64)
    c[DK.C_BASE] = base
    c[DK.C_RANKS] = p.dp * p.adp
    c[DK.C_PP] = p.pp
    c[DK.C_MAX_SEQS] = e.max_num_seqs
    c[DK.C_BUDGET] = e.max_batched_tokens
    c[DK.C_CHUNKED] = int(e.chunked_prefill)
    c[DK.C_BLOCK] = e.block_size
    c[DK.C_NBLOCKS] = nblocks
    c[DK.C_WATERMARK] = int(e.watermark_fraction * nblocks)
    c[DK.C_PF_FIRST] = int(e.profile.prefill_first(e.chunked_prefill))
    c[DK.C_RESERVE] = int(e.profile.scheduler.reserve_full_sequence)
    c[DK.C_LEAST_LOADED] = int(least_loaded)
    return c


def _epar(role: Role, gpu) -> np.ndarray:
    p = role.plan
    return np.array([gpu.tdp_w, gpu.idle_w, role.step_cost.scal[0], gpu.mem_bw_gbps * 1e9, p.tp * p.pp, p.pp], float)


def simulate_disagg(model: ModelSpec, cluster: ClusterSpec, plan: DisaggPlan, engine_cfg: EngineConfig,
                    workload: Workload, slo: Slo | None = None, links: Links | None = None) -> DisaggResult:
    """Replay `workload` on the prefill and decode pools of `plan`. `links` overrides the cluster's
    links between ranks (tests: an infinite link)."""
    tr = workload.trace
    need = int((tr.prompt_tokens + tr.output_tokens).max()) if len(tr) else 1
    longest = int(tr.prompt_tokens.max()) if len(tr) else 1
    pre, why_p = _role(model, cluster, plan.prefill, dataclasses.replace(
        engine_cfg, max_num_seqs=plan.prefill_max_num_seqs or engine_cfg.max_num_seqs), need, longest)
    dec, why_d = _role(model, cluster, plan.decode, dataclasses.replace(
        engine_cfg, max_num_seqs=plan.decode_max_num_seqs or engine_cfg.max_num_seqs), need, longest)
    if pre is None or dec is None:
        return DisaggResult(plan, pre, dec, False, f"prefill instances: {why_p}" if pre is None
                            else f"decode instances: {why_d}")
    if plan.num_gpus > cluster.num_gpus:
        return DisaggResult(plan, pre, dec, False, f"the deployment needs {plan.num_gpus} GPUs, the cluster has "
                                                   f"{cluster.num_gpus}")
    max_len = min(pre.engine.max_model_len, dec.engine.max_model_len)
    valid = tr.prompt_tokens < max_len
    if not pre.engine.chunked_prefill:
        valid &= tr.prompt_tokens <= pre.engine.max_batched_tokens
    n = int(valid.sum())
    prompt = np.ascontiguousarray(tr.prompt_tokens[valid], dtype=np.int64)
    output = np.minimum(np.maximum(tr.output_tokens[valid], 1), max_len - prompt).astype(np.int64)
    arrival = np.ascontiguousarray(tr.arrival_s[valid], dtype=np.float64)
    links = links or rank_links(cluster, plan)
    total_b = kv_transfer_bytes(model, plan.decode.kv_dtype, prompt, plan.decode.act_dtype)
    send_b, recv_b = nic_bytes(model, plan.prefill, plan.decode, total_b)
    least = engine_cfg.routing == "least_loaded"
    cfg_p = _cfg(pre, 0, least)
    cfg_d = _cfg(dec, plan.prefill.dp * plan.prefill.adp * plan.prefill.pp, least)
    ne = int(cfg_d[DK.C_BASE] + cfg_d[DK.C_RANKS] * cfg_d[DK.C_PP])
    gpu = cluster.gpu
    ep_, ed_ = _epar(pre, gpu), _epar(dec, gpu)

    def run(arr, prm, out, sb, rb, closed, delay):
        m = prm.size
        t = [np.empty(m) for _ in range(8)]
        npre = np.zeros(m, np.int64)
        visits = np.zeros((m, 3), np.int64)
        st = np.zeros((ne, SK.E_NCOL))
        end = DK.disagg_kernel(arr, prm, out, closed, delay, cfg_p, cfg_d, pre.step_cost.tables, pre.step_cost.scal,
                               ep_, dec.step_cost.tables, dec.step_cost.scal, ed_, sb, rb, links.bw_bytes_per_s,
                               links.latency_s, *t, npre, visits, st)
        return t, npre, visits, st, end

    conc = workload.concurrency if workload.mode == "closed" else 0
    if conc and dec.engine.profile.scheduler.closed_loop != "lockstep":
        # de-synchronised closed loop, as the aggregated simulator: starts spread over one lifetime,
        # the first wave (sent at once) from its own lock-step pass
        batch = max(1, min(conc, dec.engine.max_num_seqs))
        life = (pre.step_cost.prefill_time_s(int(prompt.mean())) + float(output.mean())
                * dec.step_cost.decode_time_s(batch, int(prompt.mean() + output.mean() / 2)))
        t, npre, visits, st, end = run(arrival, prompt, output, send_b, recv_b, conc, client_delays_s(n, conc, life))
        k = min(conc, n)
        w = run(np.zeros(k), prompt[:k].copy(), output[:k].copy(), send_b[:k].copy(), recv_b[:k].copy(), 0, np.zeros(k))
        for dst, src in zip(t, w[0]):
            dst[:k] = src
        npre[:k] = w[1]
        visits[:k] = w[2]
    else:
        t, npre, visits, st, end = run(arrival, prompt, output, send_b, recv_b, conc, np.zeros(n))
    t_arr, t_first, t_fin, t_sched, t_pf, t_admit, t_xs, t_xe = t
    times = RequestTimes(t_arr, t_first, t_fin, t_sched, npre, output, prompt, dec.engine.profile.host.frontend_ms * 1e-3)
    phases = {"prefill_done_s": t_pf, "decode_admit_s": t_admit, "transfer_start_s": t_xs, "transfer_end_s": t_xe}
    t0 = float(t_arr.min()) if n else 0.0
    makespan = max(float(end) - t0, 1e-9)
    energy = float(st[:, SK.E_DYN_J].sum()) + gpu.idle_w * plan.num_gpus * makespan
    base_d = int(cfg_d[DK.C_BASE])
    metrics = compute_metrics(times, st[base_d:], makespan, energy, int(cfg_d[DK.C_NBLOCKS]), slo)
    metrics["requests_refused_too_long"] = int((~valid).sum())
    res = DisaggResult(plan, pre, dec, True, "", times, phases, visits, total_b, links, st, makespan, energy, metrics)
    metrics.update(disagg_metrics(res, int(cfg_p[DK.C_NBLOCKS])))
    return res


def disagg_metrics(res: DisaggResult, nblocks_p: int) -> dict:
    """Per-phase breakdown of TTFT (means and percentiles, ms), transfer volumes, each pool's load,
    and the conservation counts."""
    tm, ph = res.times, res.phases
    ok = tm.ok & (ph["transfer_end_s"] >= 0)
    parts = {
        "prefill_queue_ms": tm.scheduled_s - tm.arrival_s,
        "prefill_ms": ph["prefill_done_s"] - tm.scheduled_s,
        "decode_admission_wait_ms": ph["decode_admit_s"] - ph["prefill_done_s"],
        "link_queue_ms": ph["transfer_start_s"] - ph["decode_admit_s"],
        "kv_transfer_ms": ph["transfer_end_s"] - ph["transfer_start_s"],
        "first_decode_step_ms": tm.first_token_s - ph["transfer_end_s"],
    }
    phases = {k: distribution(v[ok], 1e3) for k, v in parts.items()}
    phases["frontend_ms"] = tm.frontend_s * 1e3
    st = res.estats
    base_d = st.shape[0] - res.decode.plan.dp * res.decode.plan.adp * res.decode.plan.pp
    tb = res.transfer_bytes
    return {
        "serving": "disagg",
        "ttft_phases": phases,
        "kv_transfer": {
            "bytes_per_request_mean": float(tb.mean()) if tb.size else 0.0,
            "bytes_total": float(tb[res.visits[:, DK.V_TRANSFERRED] > 0].sum()),
            "rank_pairs_over_nvlink": float(res.links.over_nvlink.mean()),
            "link_gbps": sorted({round(float(b) / 1e9, 3) for b in res.links.bw_bytes_per_s.ravel()}),
        },
        "pools": {
            "prefill": {"busy_fraction": float(st[:base_d, SK.E_BUSY_S].sum() / res.makespan_s / max(base_d, 1)),
                        "kv_peak_utilization": float(st[:base_d, SK.E_KV_PEAK].max() / max(nblocks_p, 1)),
                        "steps": int(st[:base_d, SK.E_STEPS].sum())},
            "decode": {"busy_fraction": float(st[base_d:, SK.E_BUSY_S].sum() / res.makespan_s / max(st.shape[0] - base_d, 1)),
                       "steps": int(st[base_d:, SK.E_STEPS].sum())},
        },
        "conservation": {k: int(v) for k, v in zip(("prefilled", "transferred", "decoded"), res.visits.sum(axis=0))},
    }
