"""Simulate a disaggregated deployment: prefill instances, KV transfers, decode instances, as one event loop.

Each role gets its own engine settings (the profile's defaults, decode_max_num_seqs on decode),
memory report (KV pool sized as the engine sizes it) and step costs; `disagg_kernel` replays the
workload through both pools together, so a decode pool that is full holds the prefill blocks of the
requests waiting for it and stops the prefill admissions behind them (see its docstring). Requests
go to instances round-robin (NVIDIA Dynamo's default `--router-mode round-robin`) or to the one with
the fewest unfinished requests (`--routing least_loaded`), in both pools; inside an attention-DP
instance a request goes to one of its ranks as the engine hands it out (`routing.pick_rank`).
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
from apex_plan.abi import (ADP_ROUTES, ENGINE, LINK, REQUEST, ROUTE_LEAST_LOADED, ROUTE_ROUND_ROBIN, SCHED, XENGINE, XFER,
                           Pool, make_record)
from apex_plan.simulate import disagg_kernel as DK
from apex_plan.simulate.scheduler import admission_fields, batch_wait_fields, recv_fields
from apex_plan.simulate.engine import ResolvedEngine
from apex_plan.simulate.fit import fit_engine
from apex_plan.simulate.metrics import (Conservation, DecodePoolUse, DisaggRun, Distribution, KvTransfer, Metrics,
                                        PoolUse, PrefillPoolUse, TtftPhases)
from apex_plan.simulate.run import RequestTimes, compute_metrics
from apex_plan.simulate.transfer import Links, kv_transfer_bytes, nic_bytes, rank_links
from apex_plan.workload.spec import Slo, Workload


BOOTSTRAP_ROOM_SEED = 0       # seed of the requests' bootstrap rooms (any fixed value: results are reproducible)


@dataclass(frozen=True, eq=False)
class Role:
    """One pool's engine settings, memory and step costs."""

    plan: Plan
    engine: ResolvedEngine
    memory: MemoryReport
    step_cost: StepCost


@dataclass(frozen=True, eq=False)
class PhaseTimes:
    """Per-request absolute times (s) at which each disaggregated phase ended (-1: never reached)."""
    prefill_done_s: np.ndarray
    decode_admit_s: np.ndarray
    transfer_start_s: np.ndarray
    transfer_end_s: np.ndarray


@dataclass(frozen=True, eq=False)
class DisaggResult:
    plan: DisaggPlan
    prefill: Role | None
    decode: Role | None
    feasible: bool
    reason: str
    times: RequestTimes | None = None
    phases: PhaseTimes | None = None      # per-request absolute times of each phase (seconds)
    visits: np.ndarray | None = None      # (requests, 3): prefilled, transferred, decoded
    transfer_bytes: np.ndarray | None = None
    links: Links | None = None
    estats: np.ndarray | None = None
    makespan_s: float = 0.0
    energy_j: float = 0.0
    metrics: Metrics | None = None        # None when infeasible
    model_experts: int = 0                # the model's routed experts (launch: redundant slots when ep does not divide them)


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


def _sched(role: Role, gpu, least_loaded: bool, closed: int, engine_base: int) -> np.ndarray:
    """One role's SCHED record (the aggregated loop's fields, by name); its engines are numbered from
    `engine_base`, and a decode pool's (engine_base > 0) first token comes with its first step."""
    e, p = role.engine, role.plan
    lay = e.profile.layouts
    rank_routing = (lay.adp_routing_prefill if engine_base == 0 else "") or lay.adp_routing   # a prefill pool's own
    nblocks = role.memory.kv_blocks // p.pp        # the pool is shared out over the pp virtual engines
    return make_record(
        SCHED, ranks=p.dp * p.adp, pp=p.pp, routing=ROUTE_LEAST_LOADED if least_loaded else ROUTE_ROUND_ROBIN,
        max_seqs=e.max_num_seqs,
        budget_tokens=e.max_batched_tokens, chunked=e.chunked_prefill, block_tokens=e.block_size, kv_blocks=nblocks,
        watermark_blocks=int(e.watermark_fraction * nblocks), prefill_first=e.profile.prefill_first(e.chunked_prefill),
        reserve_full=e.profile.scheduler.reserve_full_sequence, closed_concurrency=closed,
        # the engine's own Python API server is not on this path: disaggregated deployments are fronted by the
        # serving stack's router (NVIDIA Dynamo's frontend, SGLang's router), whose serial time is not modelled
        frontend_token_s=0.0, tdp_w=gpu.tdp_w,
        idle_w=gpu.idle_w, gpus_per_engine=p.tp * p.pp, adp_ranks=p.adp,
        adp_routing=ADP_ROUTES[rank_routing], adp_lockstep=1,
        adp_balance_steps=e.profile.scheduler.adp_balance_steps, draft_tokens=0, seed=0, engine_base=engine_base,
        adp_pad_tokens=e.profile.adp_pad_tokens(),
        first_token_generated=2 if engine_base > 0 else 1,
        **admission_fields(None), **batch_wait_fields(e), **recv_fields(None))   # SGLang's admission, receive
        # interval: aggregated engines only


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
                            else f"decode instances: {why_d}", model_experts=model.num_experts)
    if plan.num_gpus > cluster.num_gpus:
        return DisaggResult(plan, pre, dec, False, f"the deployment needs {plan.num_gpus} GPUs, the cluster has "
                                                   f"{cluster.num_gpus}", model_experts=model.num_experts)
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
    n_pe = plan.prefill.dp * plan.prefill.adp * plan.prefill.pp
    unit = plan.decode.pp * plan.decode.adp
    base_d = -(-n_pe // unit) * unit        # decode engines start on a whole replica (host thread, ADP balance)
    ne = base_d + plan.decode.dp * plan.decode.adp * plan.decode.pp
    gpu = cluster.gpu
    link = np.zeros(links.bw_bytes_per_s.shape, LINK)
    link["bytes_per_s"], link["latency_s"] = links.bw_bytes_per_s, links.latency_s
    # each request's bootstrap room, drawn uniformly as the router does (SGLang mini_lb / Dynamo's SGLang
    # handler: random.randint(0, 2**63 - 1)); fixed seed, so a deployment always simulates the same
    rooms = np.random.default_rng(BOOTSTRAP_ROOM_SEED).integers(0, 2 ** 62, n)

    def run(arr, prm, out, sb, rb, closed):
        m = prm.size
        req_p, req_d = np.zeros(m, REQUEST), np.zeros(m, REQUEST)
        req_p["prompt_tokens"], req_p["output_tokens"] = prm, 1          # a prefill engine ends at the first token
        req_d["arrival_s"], req_d["prompt_tokens"], req_d["output_tokens"], req_d["client_delay_s"] = arr, prm, out, 0.0
        req_p["bootstrap_room"] = rooms[:m]
        x = np.zeros(m, XFER)
        x["send_bytes"], x["recv_bytes"] = sb, rb
        eng, xe = np.zeros(ne, ENGINE), np.zeros(ne, XENGINE)
        end = DK.disagg_kernel(Pool(req_p, _sched(pre, gpu, least, 0, 0), pre.step_cost.cost),
                               Pool(req_d, _sched(dec, gpu, least, closed, base_d), dec.step_cost.cost), x, eng, xe,
                               link)
        t = [np.ascontiguousarray(a) for a in (req_d["sent_s"], req_d["first_token_s"], req_d["finish_s"],
                                               req_p["scheduled_s"], x["prefill_done_s"], x["admit_s"],
                                               x["transfer_start_s"], x["transfer_end_s"])]
        visits = np.stack([x["prefilled"], x["transferred"], req_d["finishes"]], axis=1)
        return t, req_p["preemptions"] + req_d["preemptions"], visits, eng, end

    # A closed loop runs as the event loop evolves it: each finished request is replaced at once, the first
    # wave sent together. The aggregated simulator spreads the C starts over one lifetime where an engine
    # breaks the waves up (each prefill stalls the other requests' decodes separately: profile `closed_loop`);
    # decode instances never prefill, so every request decodes in exactly osl - 1 steps of its instance and the
    # groups the prefill batches form come back together a lifetime later, whatever the engine.
    conc = workload.concurrency if workload.mode == "closed" else 0
    t, npre, visits, st, end = run(arrival, prompt, output, send_b, recv_b, conc)
    t_arr, t_first, t_fin, t_sched, t_pf, t_admit, t_xs, t_xe = t
    times = RequestTimes(t_arr, t_first, t_fin, t_sched, npre, output, prompt, dec.engine.profile.host.frontend_ms * 1e-3)
    phases = PhaseTimes(t_pf, t_admit, t_xs, t_xe)
    t0 = float(t_arr.min()) if n else 0.0
    makespan = max(float(end) - t0, 1e-9)
    energy = float(st["dynamic_j"].sum()) + gpu.idle_w * plan.num_gpus * makespan
    metrics = compute_metrics(times, st[base_d:], makespan, energy, dec.memory.kv_blocks // plan.decode.pp, slo)
    res = DisaggResult(plan, pre, dec, True, "", times, phases, visits, total_b, links, st, makespan, energy,
                       model_experts=model.num_experts)
    return dataclasses.replace(res, metrics=dataclasses.replace(
        metrics, requests_refused_too_long=int((~valid).sum()),
        disagg=disagg_metrics(res, n_pe, pre.memory.kv_blocks // plan.prefill.pp)))


def disagg_metrics(res: DisaggResult, n_pe: int, nblocks_p: int) -> DisaggRun:
    """Per-phase breakdown of TTFT (means and percentiles, ms), transfer volumes, each pool's load,
    and the conservation counts."""
    st = res.estats
    n_de = res.decode.plan.dp * res.decode.plan.adp * res.decode.plan.pp
    pst, dst = st[:n_pe], st[st.shape[0] - n_de:]
    tb = res.transfer_bytes
    kv = KvTransfer(bytes_per_request_mean=float(tb.mean()) if tb.size else 0.0,
                    bytes_total=float(tb[res.visits[:, 1] > 0].sum()),
                    rank_pairs_over_nvlink=float(res.links.over_nvlink.mean()),
                    link_gbps=tuple(sorted({round(float(b) / 1e9, 3) for b in res.links.bw_bytes_per_s.ravel()})))
    # busy seconds over makespan x engines of each pool; the prefill pool's fullest KV cache
    pools = PoolUse(PrefillPoolUse(float(pst["busy_s"].sum() / res.makespan_s / max(n_pe, 1)),
                                   float(pst["kv_peak_blocks"].max() / max(nblocks_p, 1)), int(pst["steps"].sum())),
                    DecodePoolUse(float(dst["busy_s"].sum() / res.makespan_s / max(n_de, 1)), int(dst["steps"].sum())))
    prefilled, transferred, decoded = (int(v) for v in res.visits.sum(axis=0))
    return DisaggRun(ttft_phases(res), kv, pools, Conservation(prefilled, transferred, decoded))


def ttft_phases(res: DisaggResult, mask: np.ndarray | None = None) -> TtftPhases:
    """Each phase of TTFT (ms: mean and percentiles) over the completed requests, or those in `mask`."""
    tm, ph = res.times, res.phases
    ok = tm.ok & (ph.transfer_end_s >= 0)
    if mask is not None:
        ok &= mask
    def ms(x: np.ndarray) -> Distribution:
        return Distribution.of(x[ok], 1e3)
    return TtftPhases(prefill_queue_ms=ms(tm.scheduled_s - tm.arrival_s),
                      prefill_ms=ms(ph.prefill_done_s - tm.scheduled_s),
                      decode_admission_wait_ms=ms(ph.decode_admit_s - ph.prefill_done_s),
                      link_queue_ms=ms(ph.transfer_start_s - ph.decode_admit_s),
                      kv_transfer_ms=ms(ph.transfer_end_s - ph.transfer_start_s),
                      first_decode_step_ms=ms(tm.first_token_s - ph.transfer_end_s),
                      frontend_ms=tm.frontend_s * 1e3)
