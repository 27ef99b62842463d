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
from apex_plan.abi import ROUTE_LEAST_LOADED
from apex_plan.simulate.kernels import (_blocks_for, _cost_step, _end_step, _init, _route, _schedule, lockstep_member,
                                        lockstep_step)
from apex_plan.simulate.prefix_cache import PrefixCache

INF = np.inf


@kernel(cache=True, inline="always")
def _release(now, next_release, req, cfg):
    """Closed loop: a finished request lets the client send the next one (after its dispatch delay)."""
    if cfg.closed_concurrency > 0 and next_release < req.shape[0]:
        t_next = now + req[next_release].client_delay_s
        if next_release > 0 and t_next < req[next_release - 1].sent_s:
            t_next = req[next_release - 1].sent_s
        req[next_release].sent_s = t_next
        next_release += 1
    return next_release


@kernel(cache=True, inline="always")
def _route_decode(r, rr, base, eng, xe, cfg):
    """Queue prefilled request r at a decode engine (ranks from engine `base`: round robin or the
    least loaded, then its virtual engine with the fewest unfinished), for admission. Returns the
    engine and the round-robin counter."""
    ranks, pp = cfg.ranks, cfg.pp
    rank = rr % ranks
    if cfg.routing == ROUTE_LEAST_LOADED:
        best = 1 << 60
        for k in range(ranks):
            load = 0
            for v in range(pp):
                load += eng[base + k * pp + v].unfinished
            if load < best:
                best = load
                rank = k
    e = base + rank * pp
    for v in range(1, pp):
        if eng[base + rank * pp + v].unfinished < eng[e].unfinished:
            e = base + rank * pp + v
    eng[e].unfinished += 1
    return e, rr + 1


@kernel(cache=True, inline="always")
def _end_prefill(ev, now, req_p, eng, slots, x, xe, base_d, rr_d, cfg_d, dreq, cfg_p):
    """Apply the tokens of prefill engine ev's step: a completed prompt keeps its blocks (held) and
    joins a decode engine's admission queue; a one-token request finishes here. Returns the
    requests finished, the decode round-robin counter, and the first decode engine to wake (-1)."""
    en = eng[ev]
    finished = 0
    wake = -1
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
        d = dreq[r]
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
        e, rr_d = _route_decode(r, rr_d, base_d, eng, xe, cfg_d)
        d.next = -1
        if xe[e].pend_tail == -1:
            xe[e].pend_head = r
        else:
            dreq[xe[e].pend_tail].next = r
        xe[e].pend_tail = r
        if eng[e].busy_until_s == INF:
            wake = e
    en.scheduled = 0
    en.busy_until_s = INF
    return finished, rr_d, wake


@kernel(cache=True, inline="always")
def _end_decode(ev, now, req_d, eng, slots, cfg_d, next_release, cache, ids, accept, x):
    """Apply decode engine ev's finished step: the client's first token comes with a request's first
    decode step. Returns the requests finished and the next request to release."""
    ns = eng[ev].scheduled
    finished, next_release = _end_step(ev, now, req_d, eng, slots, cfg_d, next_release, cache, ids, accept)
    for j in range(ns):
        r = slots[ev, j].req
        q = req_d[r]
        if q.first_token_s < 0 and q.generated >= 2:
            q.first_token_s = now            # the client's first token comes with the first decode step
        if q.finish_s == now and q.generated >= q.output_tokens:
            x[r].decoded += 1
    return finished, next_release


@kernel(cache=True, inline="always")
def _admit_transfers(e, now, req, eng, x, xe, cfg_d, cfg_p, base_d, link_bw, link_lat):
    """Decode engine e takes prefilled requests while it has a batch slot and KV blocks for them
    (reserving them) and starts their transfers. Returns the requests refused (never fit)."""
    refused = 0
    en = eng[e]
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
        bw = link_bw[prank, drank]
        start = max(now, xe[prank_e].link_free_s, xe[drank_e].link_free_s)
        xe[prank_e].link_free_s = start + xr.send_bytes / bw      # the prefill rank's links carry its share
        xe[drank_e].link_free_s = start + xr.recv_bytes / bw      # the decode rank's links carry theirs
        xr.transfer_start_s = start
        ready = start + link_lat[prank, drank] + max(xr.send_bytes, xr.recv_bytes) / bw
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


@kernel(cache=True)
def disagg_kernel(req_p, req_d, x, sched_p, sched_d, cost_p, cost_d, eng, xe, base_d, link_bw, link_lat):
    """Replay all requests through prefill engines, transfers and decode engines (module docstring).
    req_p / req_d: REQUEST rows per role (req_p output 1 token; req_d the whole output, arrivals and
    closed-loop client delays), x: XFER rows, eng / xe: ENGINE and XENGINE rows of every engine
    (prefill from 0, decode from `base_d`), link_bw / link_lat: bytes/s and seconds between
    (prefill rank, decode rank). Fills the times (-1 where a phase did not happen) and visit counts;
    returns the time the last request finished."""
    cfg_p, cfg_d = sched_p[0], sched_d[0]
    n = req_d.shape[0]
    ne = eng.shape[0]
    # disaggregated pools run without prefix caching or speculation: an empty cache (unit 0 tokens)
    cache = PrefixCache(np.full((16, 3), -1, np.int64), np.full((1, 5), -1, np.int64),
                        np.array([-1, 15, 1, 0], np.int64), np.zeros((ne, 6), np.int64))
    ids = np.zeros(1, np.int64)
    sess_rep = np.full(1, -1, np.int64)
    accept = np.zeros(1)
    _init(req_p, eng, cfg_p)
    _init(req_d, eng, cfg_d)
    for e in range(base_d):
        eng[e].free_blocks = cfg_p.kv_blocks
    for i in range(n):
        xr = x[i]
        xr.prefill_done_s = -1.0
        xr.admit_s = -1.0
        xr.transfer_start_s = -1.0
        xr.transfer_end_s = -1.0
        xr.prefilled = 0
        xr.transferred = 0
        xr.decoded = 0
        xr.held_blocks = 0
        xr.prefill_engine = -1
    for e in range(ne):
        xe[e].pend_head = -1
        xe[e].pend_tail = -1
        xe[e].xfer_head = -1
        xe[e].xfer_tail = -1
        xe[e].in_transfer = 0
        xe[e].link_free_s = 0.0
    slots = np.zeros((ne, max(cfg_p.max_seqs, cfg_d.max_seqs)), SLOT)
    todo = np.zeros(ne + 2, np.int64)
    next_req = 0
    next_release = cfg_d.closed_concurrency if cfg_d.closed_concurrency > 0 else n
    done = 0
    rr_p = 0
    rr_d = 0
    t_end = 0.0
    while done < n:
        e_min = -1
        t_e = INF
        for e in range(ne):
            if eng[e].busy_until_s < t_e:
                t_e = eng[e].busy_until_s
                e_min = e
        x_min = -1
        t_x = INF
        for e in range(base_d, ne):
            h = xe[e].xfer_head
            if h != -1 and x[h].transfer_end_s < t_x:
                t_x = x[h].transfer_end_s
                x_min = e
        t_a = req_d[next_req].sent_s if next_req < n else INF
        if t_a == INF and t_e == INF and t_x == INF:
            break
        n_todo = 0
        if t_a <= t_e and t_a <= t_x:
            # ---- arrival: to a prefill engine's waiting queue -------------------------------------
            req_p[next_req].sent_s = t_a
            rr_p = _route(next_req, rr_p, req_p, eng, cfg_p, cache, ids, sess_rep)
            next_req += 1
            if next_req < n and req_d[next_req].sent_s <= t_a:
                continue   # queue every request arriving at this instant first
            now = t_a
            for e2 in range(base_d):
                if eng[e2].busy_until_s == INF and eng[e2].head != -1:
                    todo[n_todo] = e2
                    n_todo += 1
        elif t_x <= t_e:
            # ---- a transfer lands: the request joins the decode batch, its prefill blocks are freed
            now = t_x
            e = x_min
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
            if eng[e].busy_until_s == INF:
                todo[n_todo] = e
                n_todo += 1
            if eng[pe].busy_until_s == INF and eng[pe].head != -1:
                todo[n_todo] = pe
                n_todo += 1
        elif e_min < base_d:
            # ---- a prefill step ends (every rank of a lock-step attention-DP instance at once) -------
            now = t_e
            finished, rr_d, wake = _end_prefill(e_min, now, req_p, eng, slots, x, xe, base_d, rr_d, cfg_d, req_d,
                                                cfg_p)
            if cfg_p.adp_lockstep and cfg_p.adp_ranks > 1:
                for k in range(cfg_p.adp_ranks):
                    e2 = lockstep_member(e_min, 0, k, cfg_p)
                    if e2 != e_min and eng[e2].busy_until_s == now:
                        f2, rr_d, _ = _end_prefill(e2, now, req_p, eng, slots, x, xe, base_d, rr_d, cfg_d, req_d, cfg_p)
                        finished += f2
            for f in range(finished):
                next_release = _release(now, next_release, req_d, cfg_d)
            done += finished
            if finished and now > t_end:
                t_end = now
            todo[0] = e_min
            n_todo = 1
            # every idle decode engine with requests to admit (at most one per step end is typical)
            for e2 in range(base_d, ne):
                if eng[e2].busy_until_s == INF and xe[e2].pend_head != -1 and n_todo < todo.shape[0]:
                    todo[n_todo] = e2
                    n_todo += 1
        else:
            # ---- a decode step ends (every rank of a lock-step attention-DP instance at once) -------
            now = t_e
            finished, next_release = _end_decode(e_min, now, req_d, eng, slots, cfg_d, next_release, cache, ids,
                                                 accept, x)
            if cfg_d.adp_lockstep and cfg_d.adp_ranks > 1:
                for k in range(cfg_d.adp_ranks):
                    e2 = lockstep_member(e_min, base_d, k, cfg_d)
                    if e2 != e_min and eng[e2].busy_until_s == now:
                        f2, next_release = _end_decode(e2, now, req_d, eng, slots, cfg_d, next_release, cache, ids,
                                                       accept, x)
                        finished += f2
            if finished > 0:
                done += finished
                if now > t_end:
                    t_end = now
            todo[0] = e_min
            n_todo = 1

        # ---- schedule and cost the next step of each engine in `todo` at time `now` -------------
        for ti in range(n_todo):
            e = todo[ti]
            if eng[e].busy_until_s != INF:
                continue
            if e >= base_d and cfg_d.adp_lockstep and cfg_d.adp_ranks > 1:
                for k in range(cfg_d.adp_ranks):        # every rank takes what it can, then they step together
                    e2 = lockstep_member(e, base_d, k, cfg_d)
                    refused = _admit_transfers(e2, now, req_d, eng, x, xe, cfg_d, cfg_p, base_d, link_bw, link_lat)
                    done += refused
                    eng[e2].unfinished -= refused
                done += lockstep_step(e, base_d, now, req_d, eng, slots, cfg_d, cost_d, cost_d, cache, ids)
            elif e < base_d and cfg_p.adp_lockstep and cfg_p.adp_ranks > 1:
                done += lockstep_step(e, 0, now, req_p, eng, slots, cfg_p, cost_p, cost_p, cache, ids)
            elif e >= base_d:
                refused = _admit_transfers(e, now, req_d, eng, x, xe, cfg_d, cfg_p, base_d, link_bw, link_lat)
                done += refused
                eng[e].unfinished -= refused
                ns, refused = _schedule(e, now, req_d, eng, slots, cfg_d, cache, ids)
                done += refused
                eng[e].unfinished -= refused
                if ns > 0:
                    _cost_step(e, ns, now, req_d, eng, slots, cfg_d, cost_d, cost_d)
            else:
                ns, refused = _schedule(e, now, req_p, eng, slots, cfg_p, cache, ids)
                done += refused
                eng[e].unfinished -= refused
                if ns > 0:
                    _cost_step(e, ns, now, req_p, eng, slots, cfg_p, cost_p, cost_p)
    return t_end
