"""Simulate one plan on a workload: memory check, step costs, event loop, metrics."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np

from apex_plan.abi import ADP_ROUTES, ENGINE, REQUEST, ROUTES, SCHED, make_record
from apex_plan.estimate.memory import MemoryReport
from apex_plan.estimate.shard import build_shard
from apex_plan.estimate.step_cost import StepCost, build_step_cost
from apex_plan.hardware.spec import ClusterSpec
from apex_plan.model.spec import ModelSpec
from apex_plan.plan.spec import EngineConfig, Plan
from apex_plan.simulate import features as F
from apex_plan.simulate import kernels as SK
from apex_plan.simulate import metrics as M
from apex_plan.simulate.engine import ResolvedEngine, resolve_engine
from apex_plan.simulate.fit import fit_engine
from apex_plan.simulate.scheduler import admission_fields, batch_wait_fields, recv_fields
from apex_plan.workload.spec import Slo, Workload


@dataclass(frozen=True, eq=False)
class RequestTimes:
    """Per-request results, seconds (arrays aligned with the trace)."""

    arrival_s: np.ndarray
    first_token_s: np.ndarray     # absolute time of the first token (-1: rejected)
    finish_s: np.ndarray
    scheduled_s: np.ndarray       # first time the request was scheduled
    preemptions: np.ndarray
    output_tokens: np.ndarray
    prompt_tokens: np.ndarray
    frontend_s: float             # API-server / streaming latency added to TTFT and end-to-end

    @property
    def ok(self) -> np.ndarray:
        return self.finish_s >= 0

    @property
    def ttft_s(self) -> np.ndarray:
        return (self.first_token_s - self.arrival_s + self.frontend_s)[self.ok]

    @property
    def e2e_s(self) -> np.ndarray:
        return (self.finish_s - self.arrival_s + self.frontend_s)[self.ok]

    @property
    def tpot_per_request_s(self) -> np.ndarray:
        """Per completed request: decode time over its inter-token gaps (0 for one-token outputs)."""
        ok = self.ok
        gaps = self.output_tokens[ok] - 1
        span = (self.finish_s - self.first_token_s)[ok]
        return np.divide(span, gaps, out=np.zeros(span.size), where=gaps > 0)

    @property
    def tpot_s(self) -> np.ndarray:
        """Per request with more than one output token: its time per output token."""
        return self.tpot_per_request_s[self.output_tokens[self.ok] > 1]

    @property
    def queue_s(self) -> np.ndarray:
        return (self.scheduled_s - self.arrival_s)[self.ok]


@dataclass(frozen=True, eq=False)
class SimResult:
    """Outcome of simulating one plan on one workload."""

    plan: Plan
    engine: ResolvedEngine
    memory: MemoryReport
    feasible: bool
    reason: str
    times: RequestTimes | None = None
    engine_stats: np.ndarray | None = None
    makespan_s: float = 0.0
    energy_j: float = 0.0
    metrics: M.Metrics | None = None       # None when infeasible
    step_cost: StepCost | None = None


def distribution(x: np.ndarray, scale: float) -> dict:
    """mean, p50, p90, p99 of `x` times `scale` (None when empty), as a JSON mapping."""
    return M.Distribution.of(x, scale).to_dict()


# Closed loops as benchmark clients run them (`vllm bench serve --max-concurrency C`, aiperf
# `--concurrency C`): C requests start together, each finished one is replaced at once. Engines then
# de-synchronise the loop (the measured TPOT of the shared rows falls with the output length as
# 1 / osl, as when each request's prefill interrupts the others' decodes separately), so the steady
# state is simulated with the C starts spread over one request lifetime, and the first wave, all
# sent at t = 0, is simulated in lock-step on its own and counted with the rest, as a benchmark
# that reports every request does. See README "Closed loops".
BENCH_REQUESTS_PER_SLOT = 5   # requests per concurrency slot of a benchmark run (fitted, see README)
STEADY_JITTER = 0.1    # replacement dispatch jitter, as a fraction of the mean gap lifetime / C


def _lifetime_s(sc: StepCost, prompt: np.ndarray, output: np.ndarray, batch: int) -> float:
    """One request's lifetime in a batch of `batch`: its prefill plus its decode steps (seconds)."""
    ctx = int(prompt.mean() + output.mean() / 2)
    return sc.prefill_time_s(int(prompt.mean())) + float(output.mean()) * sc.decode_time_s(batch, ctx)


def _balance_window_s(sc: StepCost, eng: ResolvedEngine, plan: Plan, prompt: np.ndarray, output: np.ndarray,
                      batch: int) -> float:
    """How long TRT-LLM's attention-DP balance holds a context at most (seconds): its timeout in decode steps
    of a full rank (`adp_balance_steps`), 0 without the hold. The hold releases every waiting context in one
    step, so fixed-length requests would then finish in one step and come back together, and a de-synchronised
    loop would lock into waves that never wait; the shared TRT-LLM attention-DP rows wait (TTFT 1.4-3.0 s at
    1K prompts against ~0.15 s for such waves), so a replacement is sent within a spread at least this wide."""
    steps = eng.profile.scheduler.adp_balance_steps
    if plan.adp <= 1 or steps <= 0:
        return 0.0
    return steps * sc.decode_time_s(batch, int(prompt.mean() + output.mean() / 2))   # steps x one decode step


def client_delays_s(n: int, concurrency: int, lifetime_s: float, seed: int = 0, jitter_s: float = 0.0) -> np.ndarray:
    """Dispatch delays of a de-synchronised closed loop (seconds): the first `concurrency` starts
    spread evenly over one lifetime, each replacement sent after a small uniform jitter (at least
    `jitter_s` wide)."""
    width = max(STEADY_JITTER * lifetime_s / max(concurrency, 1), jitter_s)
    d = np.random.default_rng(seed).uniform(0.0, width, n)
    k = min(concurrency, n)
    d[:k] = lifetime_s * np.arange(k) / max(k, 1)
    return d


def simulate(model: ModelSpec, cluster: ClusterSpec, plan: Plan, engine_cfg: EngineConfig, workload: Workload,
             slo: Slo | None = None, step_cost: StepCost | None = None) -> SimResult:
    """Replay `workload` on `plan.dp` replicas of `plan` and measure what a client would see."""
    gpu = cluster.gpu
    tr = workload.trace
    shard = step_cost.shard if step_cost is not None else build_shard(model, plan)
    longest = int((tr.prompt_tokens + tr.output_tokens).max()) if tr.prompt_tokens.size else 1
    eng, mem, why = fit_engine(model, plan, shard, engine_cfg, gpu, longest,
                               int(tr.prompt_tokens.max()) if tr.prompt_tokens.size else 0)
    if eng is None:                                  # the settings as resolved, with the reason they do not fit
        eng = resolve_engine(engine_cfg, model)
        sc = step_cost or build_step_cost(model, gpu, plan, cluster, shard=shard, engine=eng)
        return SimResult(plan, eng, mem, False, why, step_cost=sc)
    sc = step_cost or build_step_cost(model, gpu, plan, cluster, shard=shard, engine=eng)
    if plan.num_gpus > cluster.num_gpus:
        reason = f"plan needs {plan.num_gpus} GPUs, the cluster has {cluster.num_gpus}"
        return SimResult(plan, eng, mem, False, reason, step_cost=sc)
    if plan.adp > 1 and eng.recv_interval > 1 and eng.recv_interval_asked:
        # SGLang 0.5.3-0.5.9 srt/managers/scheduler_recv_skipper.py: assert not server_args.enable_dp_attention
        reason = (f"SGLang does not start with --scheduler-recv-interval {eng.recv_interval} and attention DP "
                  f"(SchedulerRecvSkipper asserts not enable_dp_attention)")
        return SimResult(plan, eng, mem, False, reason, step_cost=sc)
    # a prompt that does not fit max_model_len (or, unchunked, the step's token budget) is refused, as the
    # engines do; outputs stop at max_model_len
    valid = tr.prompt_tokens < eng.max_model_len
    if not eng.chunked_prefill:
        valid &= tr.prompt_tokens <= eng.max_batched_tokens
    n = int(valid.sum())
    # vLLM keeps blocks per virtual engine: the pool is shared out over the pp schedulers
    nblocks = mem.kv_blocks // plan.pp
    watermark = int(eng.watermark_fraction * nblocks)
    prompt = np.ascontiguousarray(tr.prompt_tokens[valid], dtype=np.int64)
    output = np.minimum(np.maximum(tr.output_tokens[valid], 1), eng.max_model_len - prompt).astype(np.int64)
    arrival = np.ascontiguousarray(tr.arrival_s[valid], dtype=np.float64)
    conc = workload.concurrency if workload.mode == "closed" else 0
    ranks = plan.dp * plan.adp           # each attention-DP rank schedules its own batch
    sub = tr if valid.all() else tr.take(np.flatnonzero(valid))     # the served requests, prefix ids with them
    ne = ranks * plan.pp
    prefix = F.request_prefix(sub, eng.prefix_caching, eng.block_size)
    spec_k, accept = F.spec_inputs(eng.speculative)
    draft = F.draft_cost(model, gpu, plan, cluster, eng).cost if spec_k else sc.cost
    feat: dict = {}
    sched = make_record(
        SCHED, ranks=ranks, pp=plan.pp, routing=ROUTES[eng.routing], max_seqs=eng.max_num_seqs,
        budget_tokens=eng.max_batched_tokens, chunked=eng.chunked_prefill, block_tokens=eng.block_size,
        kv_blocks=nblocks, watermark_blocks=watermark, prefill_first=eng.profile.prefill_first(eng.chunked_prefill),
        reserve_full=eng.profile.scheduler.reserve_full_sequence, closed_concurrency=0,
        frontend_token_s=eng.profile.host.frontend_token_us * 1e-6,
        tdp_w=gpu.tdp_w,
        idle_w=gpu.idle_w, gpus_per_engine=plan.tp * plan.pp, adp_ranks=plan.adp,
        adp_routing=ADP_ROUTES[eng.profile.layouts.adp_routing], adp_lockstep=1,
        adp_balance_steps=eng.profile.scheduler.adp_balance_steps, draft_tokens=spec_k, seed=F.SPEC_SEED,
        adp_pad_tokens=eng.profile.adp_pad_tokens(),
        engine_base=0, first_token_generated=1, **admission_fields(eng.profile.scheduler), **batch_wait_fields(eng),
        **recv_fields(eng, plan.adp))

    def run(arr, prm, out, closed, delay):
        """One pass of the event loop; per-request times and per-engine statistics."""
        m = prm.size
        req = np.zeros(m, REQUEST)
        req["arrival_s"], req["prompt_tokens"], req["output_tokens"], req["client_delay_s"] = arr, prm, out, delay
        for name, col in prefix.columns.items():
            req[name] = col[:m]
        st = np.zeros(ne, ENGINE)
        cfg = sched.copy()
        cfg["closed_concurrency"] = closed
        cache = F.new_engine_cache(prefix, ne, nblocks)
        end = SK.simulate_kernel(req, cfg, sc.cost, st, cache, prefix.ids, accept, draft)
        if m == n:
            feat.update(cache=cache, hit_tokens=np.ascontiguousarray(req["hit_tokens"]))
        cols = ("sent_s", "first_token_s", "finish_s", "scheduled_s", "preemptions")
        return (*(np.ascontiguousarray(req[c]) for c in cols), st, end)

    if conc and eng.profile.scheduler.closed_loop == "lockstep":
        t_arr, t_first, t_fin, t_sched, n_pre, estats, t_end = run(arrival, prompt, output, conc, np.zeros(n))
    elif conc:
        batch = max(1, min(conc, eng.max_num_seqs))
        life = _lifetime_s(sc, prompt, output, batch)
        hold = _balance_window_s(sc, eng, plan, prompt, output, batch)
        t_arr, t_first, t_fin, t_sched, n_pre, estats, t_end = run(arrival, prompt, output, conc,
                                                                   client_delays_s(n, conc, life, jitter_s=hold))
        k = min(conc, n)
        # the first wave, sent at once: its own lock-step pass replaces the staggered starts
        w = run(np.zeros(k), prompt[:k].copy(), output[:k].copy(), 0, np.zeros(k))
        for dst, src in zip((t_arr, t_first, t_fin, t_sched, n_pre), w[:5]):
            dst[:k] = src
    else:
        t_arr, t_first, t_fin, t_sched, n_pre, estats, t_end = run(arrival, prompt, output, 0, np.zeros(n))
    times = RequestTimes(t_arr, t_first, t_fin, t_sched, n_pre, output, prompt, eng.profile.host.frontend_ms * 1e-3)
    if not times.ok.any():                # never null metrics: the plan is reported with why nothing completed
        why = no_completion_reason(tr.prompt_tokens, eng, prompt, output, nblocks - watermark,
                                   eng.profile.scheduler.reserve_full_sequence)
        return SimResult(plan, eng, mem, False, why, step_cost=sc)
    t0 = float(t_arr[:n].min()) if n else 0.0
    makespan = max(float(t_end) - t0, 1e-9)
    energy = float(estats["dynamic_j"].sum()) + gpu.idle_w * plan.num_gpus * makespan
    metrics = dataclasses.replace(
        compute_metrics(times, estats, makespan, energy, nblocks, slo), requests_refused_too_long=int((~valid).sum()),
        prefix_cache=F.prefix_metrics(sub, eng.prefix_caching, feat["hit_tokens"], times.ok, feat["cache"]),
        speculative=F.spec_metrics(eng.speculative, int(estats["verify_steps"].sum()),
                                   int(estats["verified_tokens"].sum())))
    return SimResult(plan, eng, mem, True, "", times, estats, makespan, energy, metrics, sc)


def no_completion_reason(asked_prompts: np.ndarray, eng: ResolvedEngine, prompt: np.ndarray, output: np.ndarray,
                         usable_blocks: int, reserve_full: bool) -> str:
    """One line saying why no request of a simulation completed: every prompt refused (longer than
    max_model_len, or than the token budget without chunking), or no request fitting the KV cache."""
    if prompt.size == 0:
        if asked_prompts.size == 0:
            return "no request completed: the workload has no requests"
        longest = int(asked_prompts.max())
        if longest >= eng.max_model_len:
            return (f"no request completed: every prompt (the longest {longest} tokens) is refused, max_model_len is "
                    f"{eng.max_model_len}")
        return (f"no request completed: every prompt (the longest {longest} tokens) exceeds the token budget of "
                f"{eng.max_batched_tokens} without chunked prefill")
    seq = prompt + output if reserve_full else prompt + 1
    need = int(((seq.min() + eng.block_size - 1) // eng.block_size))   # KV blocks of the smallest request
    what = "prompt + output" if reserve_full else "prompt"
    return (f"no request completed: the smallest request needs {need} KV blocks of {eng.block_size} tokens "
            f"({what}), an engine's cache holds {usable_blocks}")


def _queue_growth_s(times: RequestTimes) -> float:
    ok = times.ok
    q = (times.scheduled_s - times.arrival_s)[ok]
    n = q.size
    if n < 6:
        return 0.0
    order = np.argsort(times.arrival_s[ok], kind="stable")
    q = q[order]
    third = n // 3
    return float(q[-third:].mean() - q[:third].mean())


def compute_metrics(times: RequestTimes, estats: np.ndarray, makespan_s: float, energy_j: float,
                    nblocks: int, slo: Slo | None) -> M.Metrics:
    """Aggregates a serving benchmark reports, plus SLO attainment and energy."""
    ok = times.ok
    out_tok = times.output_tokens[ok]
    ttft, tpot, e2e = times.ttft_s, times.tpot_s, times.e2e_s
    decode_span = (times.finish_s - times.first_token_s)[ok]
    gaps = np.maximum(out_tok - 1, 0).sum()
    # token-weighted mean time per output token: all inter-token gaps over their count (vLLM's ITL mean)
    tpot_tw = float(decode_span.sum() / gaps) if gaps else None
    total_out = int(out_tok.sum())
    total_in = int(times.prompt_tokens[ok].sum())
    slo_result = None
    if slo is not None and (slo.ttft_s or slo.tpot_s):
        n_ok = int(ok.sum())
        good = np.ones(n_ok, bool)
        if slo.ttft_s:
            good &= ttft <= slo.ttft_s
        if slo.tpot_s:
            good &= times.tpot_per_request_s <= slo.tpot_s
        p = slo.percentile
        ttft_p = float(np.percentile(ttft, p)) if ttft.size else 0.0
        tpot_p = float(np.percentile(tpot, p)) if tpot.size else 0.0
        slo_result = M.SloResult(
            slo.ttft_s * 1e3 if slo.ttft_s else None, slo.tpot_s * 1e3 if slo.tpot_s else None, p, ttft_p * 1e3,
            tpot_p * 1e3, bool((not slo.ttft_s or ttft_p <= slo.ttft_s) and (not slo.tpot_s or tpot_p <= slo.tpot_s)),
            float(good.mean()) if n_ok else 0.0, float(good.sum()) / makespan_s)
    tpot_ms = M.Distribution.of(tpot, 1e3)
    latency = M.Latency(
        M.Distribution.of(ttft, 1e3),
        M.TokenGaps(tpot_tw * 1e3 if tpot_tw is not None else None, tpot_ms.p50, tpot_ms.p90, tpot_ms.p99,
                    float(tpot.mean()) * 1e3 if tpot.size else None),
        M.Distribution.of(e2e, 1.0), M.Distribution.of(times.queue_s, 1e3))
    n_done = int(ok.sum())
    return M.Metrics(
        requests=int(ok.size), completed=n_done, rejected=int((~ok).sum()), latency=latency,
        throughput=M.Throughput(total_out / makespan_s, (total_out + total_in) / makespan_s, n_done / makespan_s),
        makespan_s=makespan_s,
        # mean queueing delay of the last third of requests (by arrival) minus the first third's:
        # near zero when the engine keeps up, growing with the trace when it is overloaded
        queue_growth_ms=_queue_growth_s(times) * 1e3,
        memory=M.KvCacheUse(
            int(nblocks),
            # block-seconds held over (blocks x makespan), mean over engines
            float(estats["kv_block_s"].sum() / max(nblocks, 1) / makespan_s / estats.shape[0]),
            float(estats["kv_peak_blocks"].max() / max(nblocks, 1)), int(estats["preemptions"].sum())),
        steps=int(estats["steps"].sum()),
        busy_fraction=float(estats["busy_s"].sum() / makespan_s / estats.shape[0]),
        # joules over output tokens, requests and the makespan
        energy=M.Energy(energy_j, energy_j / total_out if total_out else None, energy_j / max(n_done, 1),
                        energy_j / makespan_s),
        slo=slo_result)
