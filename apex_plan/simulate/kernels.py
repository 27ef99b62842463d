"""Numba event loop: iteration-level (continuous) batching of a trace on vLLM-like engines.

One engine per data-parallel replica and pipeline virtual engine (vLLM runs `pp` schedulers per
replica so that `pp` batches are in flight). Each engine repeats: schedule a step (FCFS admission,
`max_num_seqs`, token budget, chunked prefill on/off, KV blocks with a 1% watermark, preemption by
recompute), aggregate it (`estimate.kernels.add_sequence`, the same aggregation every analytic
caller uses), cost it with `estimate.kernels.step_time`, and advance time. Arrivals are routed
round-robin, to the least-loaded replica, by session or by longest cached prefix, and inside a
replica to the virtual engine with the fewest unfinished requests, as vLLM's `add_request` does.

Prefix caching (`simulate.prefix_cache`): an admitted request holds the leading units of its
prompt that its engine has cached (they skip prefill; attention still reads them as context) and
the units it computes are cached as they are scheduled; unreferenced units are free memory,
evicted least recently freed first. Speculative decoding (SCHED.draft_tokens = k): a decoding
sequence's step verifies k drafts over k + 1 query tokens (KV slots for the drafts), after k draft
passes; it emits the target's token plus the drafts accepted in order, each with its conditional
rate (`accept`). Admission and step scheduling are in `simulate.scheduler`, routing arrivals to
replicas in `simulate.routing`, costing a scheduled step in `simulate.step`; this module ends
steps, steps lock-step attention-DP replicas and runs the loop.

Interface (`apex_plan.abi`): `simulate_kernel(req, sched, cost, eng)`: a REQUEST row per request,
a SCHED record, the replica's CostTables, an ENGINE row per scheduler. State lives in record
arrays (one reference each), not in tuples of arrays, which numba reference-counts per member at
every inlined call (2x slower on the chat trace).
"""

from __future__ import annotations

import numpy as np

from apex_plan.abi import SLOT
from apex_plan.estimate.kernels import rank_step_time
from apex_plan.jit import kernel
from apex_plan.simulate.prefix_cache import release
from apex_plan.simulate.routing import _route
from apex_plan.simulate.scheduler import _schedule
from apex_plan.simulate.step import _cost_step, _draft_pass_s, _host_start, _start_step, _step_shapes

INF = np.inf


@kernel(cache=True, inline="always")   # a loop helper: called, or inlined (jit.kernel, APEX_PLAN_JIT_INLINE)
def release_next(now, next_release, req, cfg):
    """Closed loop: a finished request lets its client send the next one after that request's own
    dispatch delay, arrivals staying in release order. Returns the next request to release."""
    if cfg.closed_concurrency > 0 and next_release < req.shape[0]:
        t_next = now + req[next_release].client_delay_s
        if next_release > 0 and t_next < req[next_release - 1].sent_s:
            t_next = req[next_release - 1].sent_s
        req[next_release].sent_s = t_next
        next_release += 1
    return next_release


@kernel(cache=True, inline="always")   # a loop helper: called, or inlined (jit.kernel, APEX_PLAN_JIT_INLINE)
def frontend_ready(q, fe_free, cfg):
    """When request q leaves the API server's serial front end and reaches the engine (seconds; INF until sent):
    the front end takes requests one at a time in send order (vLLM's OpenAI server tokenises on a single-thread
    executor, serving_engine.py `ThreadPoolExecutor(max_workers=1)`; SGLang's TokenizerManager is one process),
    each for a time per prompt token (tokenisation), starting when it is sent or when the one before it leaves."""
    if q.sent_s == INF:
        return INF
    start = q.sent_s if q.sent_s > fe_free else fe_free
    return start + cfg.frontend_token_s * q.prompt_tokens   # seconds: tokenise the prompt


@kernel(cache=True, inline="always")   # a loop helper: called, or inlined (jit.kernel, APEX_PLAN_JIT_INLINE)
def _end_step(ev, now, req, eng, slots, cfg, next_release, cache, ids, accept):
    """Apply the tokens of engine ev's finished step at time `now`: first tokens, accepted drafts,
    finishes (KV freed, cached units given back; in a closed loop, the next request released after
    its client delay). Returns the requests finished and the next request to release."""
    en = eng[ev]
    finished = 0
    for j in range(en.scheduled):
        r = slots[ev, j].req
        q = req[r]
        verify = cfg.draft_tokens > 0 and q.generated > 0 and q.prompt_tokens + q.generated - q.computed == 1
        q.computed += slots[ev, j].tokens
        if q.computed == q.prompt_tokens + q.generated:
            if verify:
                # drafts accepted in order, each with its conditional rate, up to the first rejection
                a = 0
                while a < cfg.draft_tokens and np.random.random() < accept[a]:
                    a += 1
                a = min(a, q.output_tokens - q.generated - 1)
                q.generated += a
                q.computed += a
                en.verify_steps += 1
                en.verified_tokens += a + 1
            q.generated += 1
            if q.generated == cfg.first_token_generated:
                q.first_token_s = now          # the client's first token (SCHED.first_token_generated)
            if q.generated >= q.output_tokens:
                q.finish_s = now
                q.finishes += 1
                finished += 1
                en.unfinished -= 1
                en.free_blocks += q.kv_blocks
                q.kv_blocks = 0
                if q.cached_units > 0:
                    en.free_blocks += release(cache, ev, ids, q.hash_start, q.cached_units)
                    q.cached_units = 0
                # drop from the running list, keeping order
                k = 0
                for i in range(en.running):
                    if slots[ev, i].running != r:
                        slots[ev, k].running = slots[ev, i].running
                        k += 1
                en.running = k
                next_release = release_next(now, next_release, req, cfg)
    en.scheduled = 0
    en.busy_until_s = INF
    return finished, next_release


@kernel(cache=True, inline="always")
def lockstep_member(e, k, cfg):
    """Engine of the k-th attention-DP rank of engine e's replica (same pipeline virtual engine;
    engines of this pool numbered from SCHED.engine_base)."""
    pp, a, base = cfg.pp, cfg.adp_ranks, cfg.engine_base
    local = e - base
    return base + (((local // pp) // a) * a + k) * pp + local % pp


@kernel(cache=True, inline="always")
def lockstep_ranks(cfg):
    """Ranks of a replica that step in lock-step (attention-DP with a shared MoE step), else 0."""
    return cfg.adp_ranks if cfg.adp_lockstep and cfg.adp_ranks > 1 else 0


@kernel(cache=True, inline="always")
def peer_ending(e, r, now, eng, cfg):
    """Rank r of engine e's lock-step replica when it is not e and its step ends at `now` as e's does
    (lock-step ranks end together: every step end of a replica ends each of them), else -1. Both event
    loops end a replica's step as: end e, then each `peer_ending` of r < `lockstep_ranks(cfg)`."""
    x = lockstep_member(e, r, cfg)
    return x if x != e and eng[x].busy_until_s == now else -1


@kernel(cache=True, inline="always")
def _lockstep_balance(e, eng, cfg):
    """TRT-LLM's attention-DP balance (py_executor `_balance_adp_requests`, attention_dp_config
    enable_balance with batching_wait_iters 0), decided once per lock-step replica step before its ranks
    schedule, as TRT-LLM decides it over every rank's all-gathered counts: new contexts go in on every
    rank when every rank has a context it can schedule (a waiting request and a free batch slot); else
    the iteration counter grows and they are held, until it reaches the timeout or some rank runs no
    generation, when they go in and the counter restarts."""
    if cfg.adp_balance_steps <= 0:
        return
    a = cfg.adp_ranks
    lead = eng[lockstep_member(e, 0, cfg)]
    all_ctx, all_gen = True, True
    for k in range(a):
        en = eng[lockstep_member(e, k, cfg)]
        all_ctx = all_ctx and en.head != -1 and en.running < cfg.max_seqs
        all_gen = all_gen and en.running > 0
    if all_ctx:
        let_in = True
        lead.balance_steps = 0.0
    else:
        lead.balance_steps += 1.0
        let_in = lead.balance_steps >= cfg.adp_balance_steps or not all_gen
        if let_in:
            lead.balance_steps = 0.0
    for k in range(a):
        eng[lockstep_member(e, k, cfg)].balance_open = 1 if let_in else 0


@kernel(cache=True, refcounts=False)   # called from the event loops, which own every array
def lockstep_step(e, now, req, eng, slots, cfg, cost, draft, cache, ids):
    """Schedule and cost one lock-step step of the attention-DP replica holding engine e (SGLang
    --enable-dp-attention, TRT-LLM enable_attention_dp, vLLM DP with EP): every rank builds its own
    batch, the MoE layers exchange every rank's tokens, so the ranks start together and the step
    lasts as long as the busiest rank's (`rank_step_time` with the replica's mean tokens through
    the experts, or the busiest rank's where the engine pads every rank to it: SCHED.adp_pad_tokens);
    a rank with nothing to run joins with an empty batch (the engines' dummy batches). Returns the
    requests refused."""
    a = cfg.adp_ranks
    refused = 0
    total = 0
    busiest = 0
    _lockstep_balance(e, eng, cfg)
    for r in range(a):
        x = lockstep_member(e, r, cfg)
        ns, ref = _schedule(x, now, req, eng, slots, cfg, cache, ids)
        refused += ref
        eng[x].unfinished -= ref
        own = 0
        for j in range(ns):
            q = req[slots[x, j].req]
            dec = q.generated > 0 and q.prompt_tokens + q.generated - q.computed == 1
            own += 1 + cfg.draft_tokens if (dec and cfg.draft_tokens > 0) else slots[x, j].tokens
        total += own
        busiest = max(busiest, own)
    if total == 0:
        return refused
    moe_m = total / a                             # tokens per rank through the experts (the replica's mean)
    if busiest <= cfg.adp_pad_tokens:             # every rank padded to the busiest rank's tokens (vLLM DP)
        moe_m = float(busiest)
    win, topk, win2 = cost.params[0].window_tokens, cost.params[0].topk_tokens, cost.params[0].window2_tokens
    start = now
    dt = 0.0
    for r in range(a):
        x = lockstep_member(e, r, cfg)
        start = max(start, _host_start(x, now, eng, cfg))
        sh, dsh = _step_shapes(x, eng[x].scheduled, req, slots, cfg, win, topk, win2)
        t, br = rank_step_time(cost, sh, moe_m)
        if dsh.tokens > 0:
            t += cfg.draft_tokens * _draft_pass_s(draft, dsh)
        dt = max(dt, t)
    for r in range(a):                            # every rank is busy for the busiest rank's time
        x = lockstep_member(e, r, cfg)
        sh, _ = _step_shapes(x, eng[x].scheduled, req, slots, cfg, win, topk, win2)
        _, br = rank_step_time(cost, sh, moe_m)
        _start_step(x, start, dt, br, sh, eng, cfg, cost)
    return refused


@kernel(cache=True, inline="always")
def end_replica_step(e, now, req, eng, slots, cfg, next_release, cache, ids, accept):
    """End engine e's step and, on a lock-step attention-DP replica, the step of every other rank
    (they end together). Returns the requests finished and the next request to release."""
    finished, next_release = _end_step(e, now, req, eng, slots, cfg, next_release, cache, ids, accept)
    for r in range(lockstep_ranks(cfg)):
        x = peer_ending(e, r, now, eng, cfg)
        if x >= 0:
            f, next_release = _end_step(x, now, req, eng, slots, cfg, next_release, cache, ids, accept)
            finished += f
    return finished, next_release


@kernel(cache=True, inline="always", called=True)   # one engine step per call: called, not copied (jit)
def step_engine(e, now, req, eng, slots, cfg, cost, draft, cache, ids):
    """Schedule and cost idle engine e's next step at `now` (its whole replica's on a lock-step
    attention-DP replica). Returns the requests refused (they can never fit)."""
    if lockstep_ranks(cfg) > 0:
        return lockstep_step(e, now, req, eng, slots, cfg, cost, draft, cache, ids)
    ns, refused = _schedule(e, now, req, eng, slots, cfg, cache, ids)
    eng[e].unfinished -= refused
    if ns > 0:
        _cost_step(e, ns, now, req, eng, slots, cfg, cost, draft)
    return refused


@kernel(cache=True, inline="always")
def earliest_engine(eng):
    """The engine whose step in flight ends first, and when (-1, inf: every engine idle)."""
    e_min = -1
    t_e = INF
    for e in range(eng.shape[0]):
        if eng[e].busy_until_s < t_e:
            t_e = eng[e].busy_until_s
            e_min = e
    return e_min, t_e


@kernel(cache=True, inline="always")
def count_finished(done, t_end, finished, now):
    """Step bookkeeping: requests done so far and the time the last one finished."""
    if finished > 0:
        done += finished
        if now > t_end:
            t_end = now
    return done, t_end


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
        q.cached_units = 0
        q.hit_tokens = 0
        q.finishes = 0
        q.frontend_s = 0.0
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
        en.verify_steps = 0
        en.verified_tokens = 0
        en.balance_steps = 0.0
        en.balance_open = 0
        en.new_token_ratio = cfg.admit_ratio_init
        en.batch_wait_steps = 0
        en.adp_next = 0
        en.inbox_head = -1
        en.inbox_tail = -1
        en.recv_count = 0
        en.last_step = -1


@kernel(cache=True, nogil=True)   # releases the GIL: search simulates plans on threads
def simulate_kernel(req, sched, cost, eng, cache, ids, accept, draft):
    """Replay all requests (REQUEST rows) under `sched` (a SCHED record array) on `cost`
    (CostTables); fill the requests' times (seconds) and the engines' statistics (ENGINE rows, one
    per scheduler: sched.ranks x sched.pp). `cache`: the engines' prefix cache
    (`prefix_cache.PrefixCache`, empty when caching is off), `ids` the requests' prefix block ids;
    `accept`: the conditional acceptance of each draft position, `draft` the draft model's
    CostTables (used when sched.draft_tokens > 0).

    sched.closed_concurrency > 0 runs closed loop: that many requests in flight, each finished
    request replaced by the next after that request's client delay (send times then come from
    finishes, not from arrival_s). Requests that can never fit the KV cache are marked with
    finish -1. Returns the time the last request finished.

    This function allocates the loop's working arrays; the loop itself (`_event_loop`) runs without
    reference counting (`jit.kernel(refcounts=False)`), as it owns none of its arrays.
    """
    cfg = sched[0]
    n = req.shape[0]
    ne = eng.shape[0]
    slots = np.zeros((ne, cfg.max_seqs), SLOT)   # read only below each engine's counts
    todo = np.zeros(ne, np.int64)       # engines to schedule at the current event
    n_sessions = 1
    for i in range(n):
        n_sessions = max(n_sessions, req[i].session + 1)
    sess_rep = np.full(n_sessions, -1, np.int64)   # replica of each session's first turn
    return _event_loop(req, sched, cost, eng, cache, ids, accept, draft, slots, todo, sess_rep)


@kernel(cache=True, nogil=True, refcounts=False)   # no reference counting: every array is the caller's
def _event_loop(req, sched, cost, eng, cache, ids, accept, draft, slots, todo, sess_rep):
    """The event loop of `simulate_kernel`: `slots` (SLOT rows per engine), `todo` (one int per engine)
    and `sess_rep` (-1 per session) are its working arrays. Returns the time the last request finished."""
    cfg = sched[0]
    n = req.shape[0]
    ne = eng.shape[0]
    _init(req, eng, cfg)
    np.random.seed(cfg.seed)            # the fixed draw of draft acceptances
    next_req = 0
    next_release = cfg.closed_concurrency if cfg.closed_concurrency > 0 else n
    done = 0
    rr = 0
    t_end = 0.0
    fe_free = 0.0                       # when the serial front end is free for the next request
    while done < n:
        e_min, t_e = earliest_engine(eng)
        t_a = frontend_ready(req[next_req], fe_free, cfg) if next_req < n else INF
        if t_a == INF and t_e == INF:
            break  # nothing can happen (should not occur)
        if t_a <= t_e:
            # ---- arrival: through the front end, routed to a replica, then to its least-loaded virtual engine
            req[next_req].frontend_s = t_a - req[next_req].sent_s
            fe_free = t_a
            rr = _route(next_req, rr, req, eng, cfg, cache, ids, sess_rep)
            next_req += 1
            if next_req < n and frontend_ready(req[next_req], fe_free, cfg) <= t_a:
                continue   # queue every request arriving at this instant before anything is scheduled
            now = t_a
            n_todo = 0
            for e2 in range(ne):
                if eng[e2].busy_until_s == INF and (eng[e2].head != -1 or eng[e2].inbox_head != -1):
                    todo[n_todo] = e2
                    n_todo += 1
            if n_todo == 0:
                continue
        else:
            # ---- a step ends (every rank of a lock-step replica at once): apply its tokens --------
            now = t_e
            finished, next_release = end_replica_step(e_min, now, req, eng, slots, cfg, next_release, cache, ids,
                                                      accept)
            done, t_end = count_finished(done, t_end, finished, now)
            todo[0] = e_min
            n_todo = 1
        # ---- schedule and cost the next step of each engine in `todo` at time `now` -------------
        for ti in range(n_todo):
            e = todo[ti]
            if eng[e].busy_until_s == INF:    # a lock-step replica already stepped at this event is busy
                done += step_engine(e, now, req, eng, slots, cfg, cost, draft, cache, ids)
    return t_end
