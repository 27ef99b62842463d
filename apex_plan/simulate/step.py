"""Cost one scheduled step of the event loops (numba loop helpers): its StepShape from the scheduled
entries (`estimate.kernels.add_sequence`, the one aggregation), its seconds (`estimate.kernels
.step_time`), draft passes under speculation, the replica's host thread, and the engine's busy time,
KV use and dynamic energy."""

from __future__ import annotations

from apex_plan.estimate.kernels import add_sequence, empty_shape, step_time
from apex_plan.jit import kernel


@kernel(cache=True, inline="always")   # a loop helper: called, or inlined (jit.kernel, APEX_PLAN_JIT_INLINE)
def _step_shapes(e, ns, req, slots, cfg, win, topk, win2):
    """StepShape of engine e's scheduled step, and of its draft passes (one token per decoding
    sequence) under speculation: a decoding sequence's entry then verifies k drafts (k + 1 query
    tokens, all sampled; the context read once). `win`, `topk`, `win2`: the model's window, top-k and
    second-window caps (COST.window_tokens, COST.topk_tokens, COST.window2_tokens; 0: none)."""
    k = cfg.draft_tokens
    sh = empty_shape(0)
    dsh = empty_shape(0)
    for j in range(ns):
        q = req[slots[e, j].req]
        c = slots[e, j].tokens
        seq = q.prompt_tokens + q.generated
        k0 = q.computed
        dec = q.generated > 0 and seq - k0 == 1
        if dec and k > 0:
            sh = add_sequence(sh, win, topk, win2, k0, 1 + k, 1, 1 + k, 1)   # every verified position is sampled
            dsh = add_sequence(dsh, win, topk, win2, k0, 1, 1, 1, 1)
        else:
            sh = add_sequence(sh, win, topk, win2, k0, c, 1 if dec else 0, 1 if k0 + c == seq else 0, 1)   # int64 flags, as BATCH rows
    return sh, dsh


@kernel(cache=True, inline="always")   # a loop helper: called, or inlined (jit.kernel, APEX_PLAN_JIT_INLINE)
def _cost_step(e, ns, now, req, eng, slots, cfg, cost, draft):
    """Aggregate and cost engine e's scheduled step, start it at `now` (or when the replica's host
    thread is free) and account busy time, KV use and dynamic energy; with speculation, after k
    passes of the draft model."""
    p = cost.params[0]
    sh, dsh = _step_shapes(e, ns, req, slots, cfg, p.window_tokens, p.topk_tokens, p.window2_tokens)
    dt, br = step_time(cost, sh)
    if dsh.tokens > 0:
        dt += cfg.draft_tokens * _draft_pass_s(draft, dsh)
    _start_step(e, _host_start(e, now, eng, cfg), dt, br, sh, eng, cfg, cost)


@kernel(cache=True, inline="always")   # a loop helper: called, or inlined (jit.kernel, APEX_PLAN_JIT_INLINE)
def _host_start(e, now, eng, cfg):
    """When engine e's step can start: the scheduler part of a step runs on the replica's single
    engine thread; virtual engines of one replica (pipeline parallelism) queue for it."""
    host = eng[(e // cfg.pp) * cfg.pp]
    return now if now > host.host_free_s else host.host_free_s


@kernel(cache=True, inline="always")   # a loop helper: called, or inlined (jit.kernel, APEX_PLAN_JIT_INLINE)
def _start_step(e, start, dt, br, sh, eng, cfg, cost):
    """Start engine e's step of `dt` seconds at `start` and account busy time, KV use and energy."""
    p = cost.params[0]
    host = eng[(e // cfg.pp) * cfg.pp]
    host.host_free_s = start + br.scheduler
    en = eng[e]
    en.busy_until_s = start + dt
    used = cfg.kv_blocks - en.free_blocks
    en.busy_s += dt
    en.steps += 1
    en.kv_block_s += used * dt
    if used > en.kv_peak_blocks:
        en.kv_peak_blocks = used
    en.tokens += sh.tokens
    # dynamic power: (TDP - idle) x utilisation, utilisation = the busier of compute and memory
    busy_gpu = dt / p.pp                      # each stage works 1/pp of the step
    u = max(br.flops / (p.gemm_peak_flops_per_s * busy_gpu), br.bytes / (p.hbm_bytes_per_s * busy_gpu))
    if u > 1.0:
        u = 1.0
    en.dynamic_j += (cfg.tdp_w - cfg.idle_w) * u * busy_gpu * cfg.gpus_per_engine


@kernel(cache=True, refcounts=False)   # called from the event loops, which own every array
def _draft_pass_s(draft, sh):
    """Seconds of one draft pass (a call, not inlined: the event loop stays small without drafts)."""
    return step_time(draft, sh)[0]
