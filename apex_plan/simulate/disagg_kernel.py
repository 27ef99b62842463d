"""Numba event loop of a disaggregated deployment: prefill engines, KV transfers, decode engines.

Engines 0 .. NP-1 are the prefill instances' (attention rank x pipeline virtual engine), the
decode instances' follow. Each engine schedules and costs its steps with the aggregated loop's own
helpers (`apex_plan.simulate.kernels`: FCFS, max_num_seqs, token budget, chunked or whole prompts,
KV blocks with the watermark, preemption by recompute), under its role's SCHED record and step
costs. Each request has a REQUEST row per role (prefill: output 1 token, its first; decode: the
rest) and an XFER row. A request:

1. arrives, is routed to a prefill rank (round-robin, or the one with fewest unfinished requests)
   and prefilled there; the step that completes its prompt also samples its first token;
2. waits in the chosen decode rank's queue until that rank has a batch slot and KV blocks for its
   prompt + 1 (or its whole sequence where the engine reserves it); its prefill blocks stay held
   meanwhile, so a full decode pool backs up into the prefill pool (and stops its admissions);
3. moves its KV over the link between the two ranks: it starts when both ranks' links are free
   (transfers from one prefill rank, and into one decode rank, queue for their NICs), takes the
   link latency plus the busiest link's bytes over its bandwidth, and is delivered in order; the
   prefill blocks are freed when it lands;
4. joins the decode rank's running batch with its prompt computed and one token generated; the
   end of its first decode step is its first token as the client sees it; it finishes when all its
   output is generated. One-token outputs finish at the prefill rank (nothing to transfer).
"""

from __future__ import annotations

import numpy as np

from apex_plan.abi import SLOT
from apex_plan.jit import kernel
from apex_plan.simulate.kernels import (_init, count_finished, earliest_engine, end_replica_step, frontend_ready,
                                        lockstep_member, lockstep_ranks, peer_ending, release_next, step_engine)
from apex_plan.simulate.prefix_cache import PrefixCache
from apex_plan.simulate.routing import _route, pick_rank
from apex_plan.simulate.scheduler import _blocks_for

INF = np.inf


@kernel(cache=True, inline="always")
def _route_decode(r, rr, req, eng, cfg):
    """Queue prefilled request r at a decode engine (ranks from SCHED.engine_base, chosen by
    `routing.pick_rank`; then its virtual engine with the fewest unfinished), for admission. Returns
    the engine and the round-robin counter."""
    pp, base = cfg.pp, cfg.engine_base
    rank, rr = pick_rank(rr, eng, cfg, base, req[r].bootstrap_room)
    e = base + rank * pp
    for v in range(1, pp):
        if eng[base + rank * pp + v].unfinished < eng[e].unfinished:
            e = base + rank * pp + v
    eng[e].unfinished += 1
    return e, rr


@kernel(cache=True, inline="always")
def _end_prefill(ev, now, req_p, req_d, eng, slots, x, xe, rr_d, cfg_d):
    """Apply the tokens of prefill engine ev's step: a completed prompt keeps its blocks (held) and
    joins a decode engine's admission queue; a one-token request finishes here. Returns the
    requests finished and the decode round-robin counter."""
    en = eng[ev]
    finished = 0
    for j in range(en.scheduled):
        r = slots[ev, j].req
        q = req_p[r]
        q.computed += slots[ev, j].tokens
        if q.computed != q.prompt_tokens:
            continue
        q.generated = 1
        xr = x[r]
        xr.prefill_done_s = now
        xr.prefilled += 1
        en.unfinished -= 1
        k = 0
        for i in range(en.running):              # drop from the running list, keeping order
            if slots[ev, i].running != r:
                slots[ev, k].running = slots[ev, i].running
                k += 1
        en.running = k
        d = req_d[r]
        if d.output_tokens <= 1:
            en.free_blocks += q.kv_blocks
            q.kv_blocks = 0
            d.first_token_s = now
            d.finish_s = now
            finished += 1
            continue
        xr.held_blocks = q.kv_blocks
        xr.prefill_engine = ev
        q.kv_blocks = 0
        e, rr_d = _route_decode(r, rr_d, req_d, eng, cfg_d)
        d.next = -1
        if xe[e].pend_tail == -1:
            xe[e].pend_head = r
        else:
            req_d[xe[e].pend_tail].next = r
        xe[e].pend_tail = r
    en.scheduled = 0
    en.busy_until_s = INF
    return finished, rr_d


@kernel(cache=True, inline="always")
def _admit_transfers(e, now, req, eng, x, xe, cfg_d, cfg_p, link):
    """Decode engine e takes prefilled requests while it has a batch slot and KV blocks for them
    (reserving them) and starts their transfers. Returns the requests refused (never fit)."""
    refused = 0
    en = eng[e]
    base_d = cfg_d.engine_base
    drank_e = base_d + ((e - base_d) // cfg_d.pp) * cfg_d.pp      # the rank's first engine (its links)
    drank = (e - base_d) // cfg_d.pp
    while xe[e].pend_head != -1 and en.running + xe[e].in_transfer < cfg_d.max_seqs:
        r = xe[e].pend_head
        q = req[r]
        need = _blocks_for(q.prompt_tokens + q.output_tokens if cfg_d.reserve_full else q.prompt_tokens + 1,
                           cfg_d.block_tokens)
        fits = need <= cfg_d.kv_blocks - cfg_d.watermark_blocks
        if fits and en.free_blocks - need < cfg_d.watermark_blocks:
            break
        xe[e].pend_head = q.next
        if xe[e].pend_head == -1:
            xe[e].pend_tail = -1
        xr = x[r]
        pe = xr.prefill_engine
        if not fits:                                   # can never fit this decode engine: refused
            q.finish_s = -1.0
            q.first_token_s = -1.0
            refused += 1
            eng[pe].free_blocks += xr.held_blocks
            xr.held_blocks = 0
            continue
        en.free_blocks -= need
        q.kv_blocks = need
        xr.admit_s = now
        prank = pe // cfg_p.pp
        prank_e = prank * cfg_p.pp
        ln = link[prank, drank]
        bw = ln.bytes_per_s
        start = max(now, xe[prank_e].link_free_s, xe[drank_e].link_free_s)
        xe[prank_e].link_free_s = start + xr.send_bytes / bw      # the prefill rank's links carry its share
        xe[drank_e].link_free_s = start + xr.recv_bytes / bw      # the decode rank's links carry theirs
        xr.transfer_start_s = start
        ready = start + ln.latency_s + max(xr.send_bytes, xr.recv_bytes) / bw
        tail = xe[e].xfer_tail
        if tail != -1 and x[tail].transfer_end_s > ready:
            ready = x[tail].transfer_end_s                          # delivered in order
        xr.transfer_end_s = ready
        q.next = -1
        if tail == -1:
            xe[e].xfer_head = r
        else:
            req[tail].next = r
        xe[e].xfer_tail = r
        xe[e].in_transfer += 1
    return refused


@kernel(cache=True, inline="always")
def _admit_replica(e, now, req, eng, x, xe, cfg_d, cfg_p, link):
    """Decode engine e, or every rank of its lock-step attention-DP replica (each takes what it can
    before they step together), admits prefilled requests and starts their transfers. Returns the
    requests refused."""
    lock = lockstep_ranks(cfg_d)
    refused = 0
    for k in range(max(lock, 1)):
        e2 = lockstep_member(e, k, cfg_d) if lock else e
        ref = _admit_transfers(e2, now, req, eng, x, xe, cfg_d, cfg_p, link)
        eng[e2].unfinished -= ref
        refused += ref
    return refused


@kernel(cache=True, inline="always")
def _land_transfer(e, req_p, req_d, eng, slots, x, xe, todo):
    """The first transfer in flight to decode engine e lands: the request joins e's running batch
    (prompt computed, one token generated) and its prefill blocks are freed. Queues in `todo` the
    engines that may step now; returns how many."""
    r = xe[e].xfer_head
    xe[e].xfer_head = req_d[r].next
    if xe[e].xfer_head == -1:
        xe[e].xfer_tail = -1
    xe[e].in_transfer -= 1
    q = req_d[r]
    q.computed = q.prompt_tokens
    q.generated = 1
    q.scheduled_s = req_p[r].scheduled_s
    slots[e, eng[e].running].running = r
    eng[e].running += 1
    xr = x[r]
    xr.transferred += 1
    pe = xr.prefill_engine
    eng[pe].free_blocks += xr.held_blocks
    xr.held_blocks = 0
    n_todo = 0
    if eng[e].busy_until_s == INF:
        todo[n_todo] = e
        n_todo += 1
    if eng[pe].busy_until_s == INF and eng[pe].head != -1:
        todo[n_todo] = pe
        n_todo += 1
    return n_todo


@kernel(cache=True, inline="always")
def _earliest_transfer(x, xe, base_d):
    """The decode engine whose first transfer in flight lands first, and when (-1, inf: none)."""
    x_min = -1
    t_x = INF
    for e in range(base_d, xe.shape[0]):
        h = xe[e].xfer_head
        if h != -1 and x[h].transfer_end_s < t_x:
            t_x = x[h].transfer_end_s
            x_min = e
    return x_min, t_x


@kernel(cache=True, inline="always")
def _idle_with_work(eng, xe, lo, hi, admit, todo, n_todo):
    """Append to `todo` every idle engine in [lo, hi) with work queued: a waiting prompt, or (with
    `admit`, decode engines) a prefilled request to admit. Returns the new count."""
    for e in range(lo, hi):
        queued = xe[e].pend_head != -1 if admit else eng[e].head != -1
        if eng[e].busy_until_s == INF and queued and n_todo < todo.shape[0]:
            todo[n_todo] = e
            n_todo += 1
    return n_todo


@kernel(cache=True)
def _init_disagg(req_p, req_d, x, eng, xe, cfg_p, cfg_d):
    """Clear every result and state field of both roles, the transfers and the engines' queues."""
    _init(req_p, eng, cfg_p)
    _init(req_d, eng, cfg_d)
    for e in range(cfg_d.engine_base):
        eng[e].free_blocks = cfg_p.kv_blocks
    for i in range(x.shape[0]):
        xr = x[i]
        xr.prefill_done_s = -1.0
        xr.admit_s = -1.0
        xr.transfer_start_s = -1.0
        xr.transfer_end_s = -1.0
        xr.prefilled = 0
        xr.transferred = 0
        xr.held_blocks = 0
        xr.prefill_engine = -1
    for e in range(xe.shape[0]):
        xe[e].pend_head = -1
        xe[e].pend_tail = -1
        xe[e].xfer_head = -1
        xe[e].xfer_tail = -1
        xe[e].in_transfer = 0
        xe[e].link_free_s = 0.0


@kernel(cache=True)
def disagg_kernel(pre, dec, x, eng, xe, link):
    """Replay all requests through prefill engines, transfers and decode engines (module docstring).
    pre / dec: each role's `abi.Pool` (REQUEST rows: prefill output 1 token; decode the whole
    output, arrivals and closed-loop client delays; its SCHED record; its CostTables), x: XFER rows,
    eng / xe: ENGINE and XENGINE rows of every engine (prefill from 0, decode from
    dec.sched.engine_base), link: LINK rows of each (prefill rank, decode rank). Fills the times (-1
    where a phase did not happen) and visit counts; returns the time the last request finished."""
    cfg_p, cfg_d = pre.sched[0], dec.sched[0]
    ne = eng.shape[0]
    # disaggregated pools run without prefix caching or speculation: an empty cache (unit 0 tokens)
    cache = PrefixCache(np.full((16, 3), -1, np.int64), np.full((1, 5), -1, np.int64),
                        np.array([-1, 15, 1, 0], np.int64), np.zeros((ne, 6), np.int64))
    ids = np.zeros(1, np.int64)
    sess_rep = np.full(1, -1, np.int64)
    accept = np.zeros(1)
    slots = np.zeros((ne, max(cfg_p.max_seqs, cfg_d.max_seqs)), SLOT)
    todo = np.zeros(ne + 2, np.int64)
    return _disagg_loop(pre, dec, x, eng, xe, link, cache, ids, sess_rep, accept, slots, todo)


@kernel(cache=True, refcounts=False)   # no reference counting: every array is disagg_kernel's or the caller's
def _disagg_loop(pre, dec, x, eng, xe, link, cache, ids, sess_rep, accept, slots, todo):
    """The event loop of `disagg_kernel`, given its empty prefix cache and working arrays (`jit.kernel`:
    it allocates nothing). Returns the time the last request finished."""
    req_p, req_d, cost_p, cost_d = pre.req, dec.req, pre.cost, dec.cost
    cfg_p, cfg_d = pre.sched[0], dec.sched[0]
    n, ne, base_d = req_d.shape[0], eng.shape[0], cfg_d.engine_base
    _init_disagg(req_p, req_d, x, eng, xe, cfg_p, cfg_d)
    next_req, done, rr_p, rr_d, t_end = 0, 0, 0, 0, 0.0
    fe_free = 0.0                       # when the serial front end is free for the next request
    next_release = cfg_d.closed_concurrency if cfg_d.closed_concurrency > 0 else n
    while done < n:
        e_min, t_e = earliest_engine(eng)
        x_min, t_x = _earliest_transfer(x, xe, base_d)
        t_a = frontend_ready(req_d[next_req], fe_free, cfg_d) if next_req < n else INF
        if t_a == INF and t_e == INF and t_x == INF:
            break
        if t_a <= t_e and t_a <= t_x:
            # ---- arrival: to a prefill engine's waiting queue -------------------------------------
            req_d[next_req].frontend_s = t_a - req_d[next_req].sent_s
            fe_free = t_a
            req_p[next_req].sent_s = t_a
            rr_p = _route(next_req, rr_p, req_p, eng, cfg_p, cache, ids, sess_rep)
            next_req += 1
            if next_req < n and frontend_ready(req_d[next_req], fe_free, cfg_d) <= t_a:
                continue   # queue every request arriving at this instant first
            now = t_a
            n_todo = _idle_with_work(eng, xe, 0, base_d, False, todo, 0)
        elif t_x <= t_e:
            # ---- a transfer lands: the request joins the decode batch, its prefill blocks are freed
            now = t_x
            n_todo = _land_transfer(x_min, req_p, req_d, eng, slots, x, xe, todo)
        elif e_min < base_d:
            # ---- a prefill step ends (every rank of a lock-step attention-DP instance at once) -------
            now = t_e
            finished, rr_d = _end_prefill(e_min, now, req_p, req_d, eng, slots, x, xe, rr_d, cfg_d)
            for r in range(lockstep_ranks(cfg_p)):
                e2 = peer_ending(e_min, r, now, eng, cfg_p)
                if e2 >= 0:
                    f2, rr_d = _end_prefill(e2, now, req_p, req_d, eng, slots, x, xe, rr_d, cfg_d)
                    finished += f2
            for f in range(finished):
                next_release = release_next(now, next_release, req_d, cfg_d)
            done, t_end = count_finished(done, t_end, finished, now)
            todo[0] = e_min
            # every idle decode engine with requests to admit (at most one per step end is typical)
            n_todo = _idle_with_work(eng, xe, base_d, ne, True, todo, 1)
        else:
            # ---- a decode step ends (every rank of a lock-step attention-DP instance at once) -------
            now = t_e
            finished, next_release = end_replica_step(e_min, now, req_d, eng, slots, cfg_d, next_release, cache,
                                                      ids, accept)
            done, t_end = count_finished(done, t_end, finished, now)
            todo[0] = e_min
            n_todo = 1
        # ---- schedule and cost the next step of each engine in `todo` at time `now` -------------
        for ti in range(n_todo):
            e = todo[ti]
            if eng[e].busy_until_s != INF:
                continue
            if e >= base_d:
                done += _admit_replica(e, now, req_d, eng, x, xe, cfg_d, cfg_p, link)
                done += step_engine(e, now, req_d, eng, slots, cfg_d, cost_d, cost_d, cache, ids)
            else:
                done += step_engine(e, now, req_p, eng, slots, cfg_p, cost_p, cost_p, cache, ids)
    return t_end
