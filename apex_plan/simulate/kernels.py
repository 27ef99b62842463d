"""Numba event loop: iteration-level (continuous) batching of a trace on vLLM-like engines.

One engine per data-parallel replica and pipeline virtual engine (vLLM runs `pp` schedulers per
replica so that `pp` batches are in flight). Each engine repeats: schedule a step (FCFS admission,
`max_num_seqs`, token budget, chunked prefill on/off, KV blocks with a 1% watermark, preemption by
recompute), aggregate it (`estimate.kernels.add_sequence`, the same aggregation every analytic
caller uses), cost it with `estimate.kernels.step_time`, and advance time. Arrivals are routed
round-robin (or to the least-loaded replica) and, inside a replica, to the virtual engine with the
fewest unfinished requests, as vLLM's `add_request` does.

Interface (`apex_plan.abi`): `simulate_kernel(req, sched, cost, eng)`: a REQUEST row per request,
a SCHED record, the replica's CostTables, an ENGINE row per scheduler. State lives in record
arrays (one reference each), not in tuples of arrays, which numba reference-counts per member at
every inlined call (2x slower on the chat trace).
"""

from __future__ import annotations

import numpy as np

from apex_plan.abi import SLOT
from apex_plan.estimate.kernels import add_sequence, empty_shape, step_time
from apex_plan.jit import kernel

INF = np.inf


@kernel(cache=True, inline="always")   # inlined: no per-step call and array refcount cost
def _blocks_for(tokens, block):
    return (tokens + block - 1) // block


@kernel(cache=True, inline="always")   # inlined: no per-step call and array refcount cost
def _admit_waiting(e, left, ns, now, req, eng, slots, cfg):
    """FCFS admission of waiting requests of engine e into the step being built.

    A request needs KV blocks for its sequence so far (for prompt + every output token when
    `reserve_full`, as TRT-LLM's GUARANTEED_NO_EVICT), leaving the watermark free; without chunking
    its whole prompt must fit the remaining token budget, with chunking it takes what is left.
    A request that could never fit the cache is refused (finish -1). Returns the budget left,
    the number of scheduled entries, and how many requests were refused.
    """
    refused = 0
    en = eng[e]
    nblocks, watermark = cfg.kv_blocks, cfg.watermark_blocks
    while en.head != -1 and en.running < cfg.max_seqs and left > 0:
        r = en.head
        q = req[r]
        seq = q.prompt_tokens + q.generated
        need = _blocks_for(q.prompt_tokens + q.output_tokens if cfg.reserve_full else seq, cfg.block_tokens)
        ntok = seq - q.computed
        if need > nblocks - watermark:
            pass
        elif en.free_blocks - need < watermark or (not cfg.chunked and ntok > left):
            break
        en.head = q.next
        if en.head == -1:
            en.tail = -1
        if need > nblocks - watermark:
            q.finish_s = -1.0
            q.first_token_s = -1.0
            refused += 1
            continue
        en.free_blocks -= need
        q.kv_blocks = need
        slots[e, en.running].running = r
        en.running += 1
        if q.scheduled_s < 0:
            q.scheduled_s = now
        if ntok > left:
            ntok = left
        slots[e, ns].req = r
        slots[e, ns].tokens = ntok
        left -= ntok
        ns += 1
    return left, ns, refused


@kernel(cache=True, inline="always")   # inlined: no per-step call and array refcount cost
def _schedule_running(e, only_prefill, left, ns, req, eng, slots, cfg):
    """Schedule engine e's running requests in order (only those still in prefill when
    `only_prefill`), growing their KV blocks; when the pool runs dry, preempt from the back of the
    running list by recompute (blocks freed, back to the front of the queue). Returns the budget
    left, the number of scheduled entries, and whether anything was preempted."""
    preempted = False
    en = eng[e]
    i = 0
    while i < en.running:
        r = slots[e, i].running
        q = req[r]
        seq = q.prompt_tokens + q.generated
        rem = seq - q.computed
        if only_prefill and q.generated > 0 and rem == 1:
            i += 1
            continue
        ntok = rem if rem < left else left
        if ntok <= 0:
            i += 1
            continue
        need = _blocks_for(seq, cfg.block_tokens) - q.kv_blocks
        self_preempted = False
        while need > en.free_blocks:
            victim = slots[e, en.running - 1].running
            v = req[victim]
            en.free_blocks += v.kv_blocks
            v.kv_blocks = 0
            v.computed = 0
            en.running -= 1
            v.preemptions += 1
            en.preemptions += 1
            preempted = True
            v.next = en.head
            en.head = victim
            if en.tail == -1:
                en.tail = victim
            if victim == r:
                self_preempted = True
                break
        if self_preempted:
            break
        if need > 0:
            en.free_blocks -= need
            q.kv_blocks += need
        slots[e, ns].req = r
        slots[e, ns].tokens = ntok
        left -= ntok
        ns += 1
        i += 1
    return left, ns, preempted


@kernel(cache=True, inline="always")   # inlined: no per-step call and array refcount cost
def _route(r, rr, req, eng, cfg):
    """Queue arriving request r: a replica (round robin or least loaded), then its virtual engine
    with the fewest unfinished requests. Returns the round-robin counter."""
    dp, pp = cfg.ranks, cfg.pp
    if cfg.least_loaded:
        best = 0
        best_load = 1 << 60
        for rep in range(dp):
            load = 0
            for v in range(pp):
                load += eng[rep * pp + v].unfinished
            if load < best_load:
                best_load = load
                best = rep
        rep = best
    else:
        rep = rr % dp
        rr += 1
    e = rep * pp
    for v in range(1, pp):
        if eng[rep * pp + v].unfinished < eng[e].unfinished:
            e = rep * pp + v
    en = eng[e]
    req[r].next = -1
    if en.tail == -1:
        en.head = r
    else:
        req[en.tail].next = r
    en.tail = r
    en.unfinished += 1
    return rr


@kernel(cache=True, inline="always")   # inlined: no per-step call and array refcount cost
def _end_step(ev, now, req, eng, slots, cfg, next_release):
    """Apply the tokens of engine ev's finished step at time `now`: first tokens, finishes (KV
    freed; in a closed loop, the next request released after its client delay). Returns the
    requests finished and the next request to release."""
    n = req.shape[0]
    en = eng[ev]
    finished = 0
    for j in range(en.scheduled):
        r = slots[ev, j].req
        q = req[r]
        q.computed += slots[ev, j].tokens
        if q.computed == q.prompt_tokens + q.generated:
            q.generated += 1
            if q.generated == 1:
                q.first_token_s = now
            if q.generated >= q.output_tokens:
                q.finish_s = now
                finished += 1
                en.unfinished -= 1
                en.free_blocks += q.kv_blocks
                q.kv_blocks = 0
                # drop from the running list, keeping order
                k = 0
                for i in range(en.running):
                    if slots[ev, i].running != r:
                        slots[ev, k].running = slots[ev, i].running
                        k += 1
                en.running = k
                if cfg.closed_concurrency > 0 and next_release < n:
                    # the client sends the next request once this one is done (after its own
                    # dispatch delay); arrivals stay in release order
                    t_next = now + req[next_release].client_delay_s
                    if next_release > 0 and t_next < req[next_release - 1].sent_s:
                        t_next = req[next_release - 1].sent_s
                    req[next_release].sent_s = t_next
                    next_release += 1
    en.scheduled = 0
    en.busy_until_s = INF
    return finished, next_release


@kernel(cache=True, inline="always")   # inlined: no per-step call and array refcount cost
def _balance_holds(e, eng, cfg):
    """Attention-DP balance (TRT-LLM py_executor `_balance_adp_requests`): while generations run on
    every rank of the replica, new contexts wait until every rank has one, or until the replica has
    stepped `adp_balance_steps` times since the last release. True when engine e's contexts wait."""
    if cfg.adp_balance_steps <= 0 or cfg.adp_ranks <= 1 or eng[e].head == -1:
        return False
    pp, a = cfg.pp, cfg.adp_ranks
    rank, v = e // pp, e % pp
    first = (rank // a) * a                        # the replica's first rank
    lead = eng[first * pp]
    lead.balance_steps += 1.0 / a                  # one replica iteration per step of each of its ranks
    all_ctx, all_gen = True, True
    for k in range(first, first + a):
        en = eng[k * pp + v]
        all_ctx = all_ctx and en.head != -1
        all_gen = all_gen and en.running > 0
    if all_ctx or not all_gen:
        if all_ctx:
            lead.balance_steps = 0.0
        return False
    if lead.balance_steps >= cfg.adp_balance_steps:  # timeout: every rank's waiting contexts go in
        lead.balance_steps = 0.0
        for k in range(first, first + a):
            eng[k * pp + v].balance_open = 1
    if eng[e].balance_open:
        eng[e].balance_open = 0
        return False
    return True


@kernel(cache=True, inline="always")   # inlined: no per-step call and array refcount cost
def _schedule(e, now, req, eng, slots, cfg):
    """Build engine e's next step at `now`: running requests first (with prefill priority, as vLLM
    0.6 unchunked and SGLang, only the prompts in progress), then waiting ones, FCFS, in the budget
    left (chunked: cut to fit). Returns the entries scheduled and the requests refused."""
    left = cfg.budget_tokens
    ns = 0
    refused = 0
    preempted_now = False
    if cfg.chunked or not cfg.prefill_first:
        left, ns, preempted_now = _schedule_running(e, cfg.prefill_first, left, ns, req, eng, slots, cfg)
    if not preempted_now and not _balance_holds(e, eng, cfg):
        left, ns, refused = _admit_waiting(e, left, ns, now, req, eng, slots, cfg)
    if cfg.prefill_first and ns == 0:
        # no prompt to prefill: the running decodes get the step
        left, ns, preempted_now = _schedule_running(e, False, left, ns, req, eng, slots, cfg)
    eng[e].scheduled = ns
    return ns, refused


@kernel(cache=True, inline="always")   # inlined: no per-step call and array refcount cost
def _cost_step(e, ns, now, req, eng, slots, cfg, cost):
    """Aggregate and cost engine e's scheduled step, start it at `now` (or when the replica's host
    thread is free) and account busy time, KV use and dynamic energy."""
    p = cost.params[0]
    win = p.window_tokens          # tokens a sliding / chunked / sparse layer attends to (0: none)
    sh = empty_shape(0)
    for j in range(ns):
        q = req[slots[e, j].req]
        c = slots[e, j].tokens
        seq = q.prompt_tokens + q.generated
        k0 = q.computed
        sh = add_sequence(sh, win, k0, c, q.generated > 0 and seq - k0 == 1, k0 + c == seq, 1)
    dt, br = step_time(cost, sh)
    # the scheduler part of a step runs on the replica's single engine thread: virtual engines of
    # one replica (pipeline parallelism) queue for it; their GPU work overlaps
    host = eng[(e // cfg.pp) * cfg.pp]
    start = now if now > host.host_free_s else host.host_free_s
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


@kernel(cache=True)
def _init(req, eng, cfg):
    """Clear every result and state field; in a closed loop only the first `closed_concurrency`
    requests are sent (after their client delays), the rest wait for finishes."""
    closed = cfg.closed_concurrency
    for i in range(req.shape[0]):
        q = req[i]
        q.first_token_s = -1.0
        q.finish_s = -1.0
        q.scheduled_s = -1.0
        q.preemptions = 0
        q.computed = 0
        q.generated = 0
        q.kv_blocks = 0
        q.next = -1
        if closed > 0:
            q.sent_s = q.client_delay_s if i < closed else INF
        else:
            q.sent_s = q.arrival_s
    for e in range(eng.shape[0]):
        en = eng[e]
        en.busy_s = 0.0
        en.steps = 0
        en.dynamic_j = 0.0
        en.kv_block_s = 0.0
        en.kv_peak_blocks = 0
        en.preemptions = 0
        en.tokens = 0
        en.head = -1
        en.tail = -1
        en.running = 0
        en.free_blocks = cfg.kv_blocks
        en.unfinished = 0
        en.busy_until_s = INF
        en.scheduled = 0
        en.host_free_s = 0.0
        en.balance_steps = 0.0
        en.balance_open = 0


@kernel(cache=True)
def simulate_kernel(req, sched, cost, eng):
    """Replay all requests (REQUEST rows) under `sched` (a SCHED record array) on `cost`
    (CostTables); fill the requests' times (seconds) and the engines' statistics (ENGINE rows, one
    per scheduler: sched.ranks x sched.pp).

    sched.closed_concurrency > 0 runs closed loop: that many requests in flight, each finished
    request replaced by the next after that request's client delay (send times then come from
    finishes, not from arrival_s). Requests that can never fit the KV cache are marked with
    finish -1. Returns the time the last request finished.
    """
    cfg = sched[0]
    n = req.shape[0]
    ne = eng.shape[0]
    _init(req, eng, cfg)
    slots = np.zeros((ne, cfg.max_seqs), SLOT)   # read only below each engine's counts
    todo = np.zeros(ne, np.int64)       # engines to schedule at the current event
    next_req = 0
    next_release = cfg.closed_concurrency if cfg.closed_concurrency > 0 else n
    done = 0
    rr = 0
    t_end = 0.0
    while done < n:
        # earliest engine event
        e_min = -1
        t_e = INF
        for e in range(ne):
            if eng[e].busy_until_s < t_e:
                t_e = eng[e].busy_until_s
                e_min = e
        t_a = req[next_req].sent_s if next_req < n else INF
        if t_a == INF and t_e == INF:
            break  # nothing can happen (should not occur)
        if t_a <= t_e:
            # ---- arrival: route to a replica, then to its least-loaded virtual engine -----------
            rr = _route(next_req, rr, req, eng, cfg)
            next_req += 1
            if next_req < n and req[next_req].sent_s <= t_a:
                continue   # queue every request arriving at this instant before anything is scheduled
            now = t_a
            n_todo = 0
            for e2 in range(ne):
                if eng[e2].busy_until_s == INF and eng[e2].head != -1:
                    todo[n_todo] = e2
                    n_todo += 1
            if n_todo == 0:
                continue
        else:
            # ---- a step ends: apply its tokens ----------------------------------------------------
            now = t_e
            finished, next_release = _end_step(e_min, now, req, eng, slots, cfg, next_release)
            if finished > 0:
                done += finished
                if now > t_end:
                    t_end = now
            todo[0] = e_min
            n_todo = 1
        # ---- schedule and cost the next step of each engine in `todo` at time `now` -------------
        for ti in range(n_todo):
            e = todo[ti]
            ns, refused = _schedule(e, now, req, eng, slots, cfg)
            done += refused
            eng[e].unfinished -= refused
            if ns > 0:
                _cost_step(e, ns, now, req, eng, slots, cfg, cost)
    return t_end
