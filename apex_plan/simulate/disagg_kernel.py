"""Numba event loop of a disaggregated deployment: prefill engines, KV transfers, decode engines.

Engines 0 .. NP-1 are the prefill instances' (attention rank x pipeline virtual engine), NP .. the
decode instances'. Each engine schedules and costs its steps exactly as the aggregated loop
(`apex_plan.simulate.kernels`: FCFS, max_num_seqs, token budget, chunked or whole prompts, KV blocks
with the watermark, preemption by recompute), with its own role's step-cost tables. A request:

1. arrives, is routed to a prefill rank (round-robin, or the one with fewest unfinished requests)
   and prefilled there; the step that completes its prompt also samples its first token;
2. waits in the chosen decode rank's queue until that rank has a batch slot and KV blocks for its
   prompt + 1 (or its whole sequence where the engine reserves it); its prefill blocks stay held
   meanwhile, so a full decode pool backs up into the prefill pool (and stops its admissions);
3. moves its KV over the link between the two ranks: it starts when both ranks' links are free
   (transfers from one prefill rank, and into one decode rank, queue for their NICs), takes the
   link latency plus the busiest link's bytes over its bandwidth, and is delivered in order; the
   prefill blocks are freed when it lands;
4. joins the decode rank's running batch with its prompt computed; the end of its first decode
   step is its first token as the client sees it; it finishes when all its output is generated.
One-token outputs finish at the prefill rank (nothing to transfer).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from numba import njit

import apex_plan.estimate.kernels as _estimate_kernels
import apex_plan.simulate.kernels as _sim_kernels


def _drop_stale_cache() -> None:
    """numba caches this module keyed by this file alone, not by the kernels it inlines
    (apex_plan/estimate/kernels.py, apex_plan/simulate/kernels.py): drop entries older than those."""
    dep_mtime = max(Path(m.__file__).stat().st_mtime for m in (_estimate_kernels, _sim_kernels))
    for index in (Path(__file__).parent / "__pycache__").glob(f"{Path(__file__).stem}.*.nbi"):
        try:
            if index.stat().st_mtime < dep_mtime:
                for f in index.parent.glob(index.name.rsplit(".", 2)[0] + ".*.nb[ic]"):
                    f.unlink(missing_ok=True)
        except OSError:
            pass   # a read-only install keeps its cache; numba then recompiles in memory


_drop_stale_cache()

from apex_plan.estimate.kernels import B_BYTES, B_FLOPS, B_N, B_SCHED, L_WINDOW, S_N, padded_pairs, q_tiles, step_time  # noqa: E402
from apex_plan.simulate.kernels import (  # noqa: E402
    E_BUSY_S, E_DYN_J, E_KV_INT, E_KV_PEAK, E_STEPS, E_TOKENS, P_GPUS, P_IDLE_W, P_PEAK_BW, P_PEAK_FLOPS, P_PP, P_TDP_W,
    _admit_waiting, _blocks_for, _schedule_running, _window_pairs,
)

INF = np.inf

# role configuration vector (int64), one per role
C_BASE = 0          # first engine index of the role
C_RANKS = 1         # attention ranks of the role (instances x attention-DP ranks)
C_PP = 2            # pipeline virtual engines per rank
C_MAX_SEQS = 3
C_BUDGET = 4
C_CHUNKED = 5
C_BLOCK = 6
C_NBLOCKS = 7       # KV blocks per engine
C_WATERMARK = 8
C_PF_FIRST = 9
C_RESERVE = 10
C_LEAST_LOADED = 11
C_N = 12

# request visits (conservation): columns of `visits`
V_PREFILLED = 0
V_TRANSFERRED = 1
V_DECODED = 2


@njit(cache=True, inline="always")
def _route(cfg, unfinished, rr):
    """Engine for a new request of this role: the rank by round-robin (counter rr) or fewest
    unfinished requests, then its virtual engine with the fewest."""
    ranks = cfg[C_RANKS]
    pp = cfg[C_PP]
    base = cfg[C_BASE]
    if cfg[C_LEAST_LOADED] == 1:
        rank = 0
        best = 1 << 60
        for k in range(ranks):
            load = 0
            for v in range(pp):
                load += unfinished[base + k * pp + v]
            if load < best:
                best = load
                rank = k
    else:
        rank = rr % ranks
    e = base + rank * pp
    for v in range(1, pp):
        if unfinished[base + rank * pp + v] < unfinished[e]:
            e = base + rank * pp + v
    return e


@njit(cache=True, inline="always")
def _step_seconds(e, ns, sched_req, sched_tok, prompt, gen, computed, tables, scal, out):
    """Seconds of engine e's scheduled step (the aggregated loop's batch aggregates), and its tokens."""
    tokens = 0
    n_dec = 0
    n_pf = 0
    n_logits = 0
    pf_work = 0.0
    pf_pad = 0.0
    pf_pad_prefix = 0.0
    pf_tiles = 0.0
    dec_ctx = 0.0
    pf_ctx = 0.0
    win = scal[S_N + L_WINDOW]
    pf_work_w = 0.0
    dec_ctx_w = 0.0
    pf_ctx_w = 0.0
    for j in range(ns):
        r = sched_req[e, j]
        c = sched_tok[e, j]
        seq = prompt[r] + gen[r]
        tokens += c
        if gen[r] > 0 and seq - computed[r] == 1:
            n_dec += 1
            dec_ctx += seq
            if win > 0.0:
                dec_ctx_w += min(seq, win)
        else:
            n_pf += 1
            k0 = computed[r]
            pf_work += c * (k0 + (c + 1) * 0.5)   # causal query x key pairs of this chunk
            w = padded_pairs(c, k0)
            pf_pad += w
            if k0 > 0:
                pf_pad_prefix += w
            pf_tiles += q_tiles(c)
            pf_ctx += k0 + c
            if win > 0.0:
                pf_work_w += _window_pairs(k0, c, win)
                pf_ctx_w += min(k0 + c, win + c)
        if computed[r] + c == seq:
            n_logits += 1
    if win <= 0.0:
        pf_work_w, dec_ctx_w, pf_ctx_w = pf_work, dec_ctx, pf_ctx
    dt = step_time(tables, scal, tokens, n_dec, n_pf, pf_work, dec_ctx, pf_ctx, n_logits, 0, out, pf_pad,
                   pf_pad_prefix, pf_tiles, pf_work_w, dec_ctx_w, pf_ctx_w)
    return dt, tokens


@njit(cache=True, inline="always")
def _drop_running(e, r, running, nrun):
    """Remove request r from engine e's running list, keeping the order."""
    k = 0
    for q in range(nrun[e]):
        if running[e, q] != r:
            running[e, k] = running[e, q]
            k += 1
    nrun[e] = k


@njit(cache=True, inline="always")
def _release(closed_conc, next_release, n, now, client_delay, t_arr):
    """Closed loop: a finished request lets the client send the next one (after its dispatch delay)."""
    if closed_conc > 0 and next_release < n:
        t_next = now + client_delay[next_release]
        if next_release > 0 and t_next < t_arr[next_release - 1]:
            t_next = t_arr[next_release - 1]
        t_arr[next_release] = t_next
        next_release += 1
    return next_release


@njit(cache=True)
def disagg_kernel(arrival, prompt, output, closed_conc, client_delay, cfg_p, cfg_d, tables_p, scal_p, epar_p,
                  tables_d, scal_d, epar_d, send_b, recv_b, link_bw, link_lat,
                  t_arr, t_first, t_fin, t_sched, t_pf, t_admit, t_xs, t_xe, n_preempt, visits, estats):
    """Replay all requests through prefill engines, transfers and decode engines (see the module
    docstring); fill the per-request times (seconds; -1 where a phase did not happen), visit counts
    and per-engine statistics. Returns the time the last request finished."""
    n = prompt.shape[0]
    base_d = cfg_d[C_BASE]
    ne = base_d + cfg_d[C_RANKS] * cfg_d[C_PP]
    nrank_p = cfg_p[C_RANKS]
    maxs = max(cfg_p[C_MAX_SEQS], cfg_d[C_MAX_SEQS])
    ones = np.ones(n, np.int64)            # a prefill engine's requests end with their first token
    computed = np.zeros(n, np.int64)
    gen = np.zeros(n, np.int64)
    blocks = np.zeros(n, np.int64)
    pblocks = np.zeros(n, np.int64)        # prefill blocks held until the transfer lands
    peng = np.full(n, -1, np.int64)        # prefill engine of each request
    nxt = np.full(n, -1, np.int64)
    xready = np.zeros(n)
    head = np.full(ne, -1, np.int64)
    tail = np.full(ne, -1, np.int64)
    phead = np.full(ne, -1, np.int64)      # decode engines: prefilled requests waiting for admission
    ptail = np.full(ne, -1, np.int64)
    xhead = np.full(ne, -1, np.int64)      # decode engines: transfers in flight, in delivery order
    xtail = np.full(ne, -1, np.int64)
    nxfer = np.zeros(ne, np.int64)
    running = np.full((ne, maxs), -1, np.int64)
    nrun = np.zeros(ne, np.int64)
    free = np.empty(ne, np.int64)
    for e in range(ne):
        free[e] = cfg_p[C_NBLOCKS] if e < base_d else cfg_d[C_NBLOCKS]
    unfinished = np.zeros(ne, np.int64)
    busy_until = np.full(ne, INF)
    host_free = np.zeros(nrank_p + cfg_d[C_RANKS])
    send_free = np.zeros(nrank_p)
    recv_free = np.zeros(cfg_d[C_RANKS])
    sched_req = np.full((ne, maxs), -1, np.int64)
    sched_tok = np.zeros((ne, maxs), np.int64)
    nsched = np.zeros(ne, np.int64)
    out = np.zeros(B_N)
    todo = np.zeros(ne, np.int64)
    marked = np.zeros(ne, np.bool_)
    for i in range(n):
        t_first[i] = -1.0
        t_fin[i] = -1.0
        t_sched[i] = -1.0
        t_pf[i] = -1.0
        t_admit[i] = -1.0
        t_xs[i] = -1.0
        t_xe[i] = -1.0
        n_preempt[i] = 0
        t_arr[i] = (client_delay[i] if i < closed_conc else INF) if closed_conc > 0 else arrival[i]
    next_req = 0
    next_release = closed_conc if closed_conc > 0 else n
    done = 0
    rr_p = 0
    rr_d = 0
    t_end = 0.0

    while done < n:
        e_min = -1
        t_e = INF
        for e in range(ne):
            if busy_until[e] < t_e:
                t_e = busy_until[e]
                e_min = e
        x_min = -1
        t_x = INF
        for e in range(base_d, ne):
            if xhead[e] != -1 and xready[xhead[e]] < t_x:
                t_x = xready[xhead[e]]
                x_min = e
        t_a = t_arr[next_req] if next_req < n else INF
        if t_a == INF and t_e == INF and t_x == INF:
            break
        n_todo = 0
        if t_a <= t_e and t_a <= t_x:
            # ---- arrival: to a prefill engine's waiting queue -------------------------------------
            r = next_req
            next_req += 1
            e = _route(cfg_p, unfinished, rr_p)
            rr_p += 1
            nxt[r] = -1
            if tail[e] == -1:
                head[e] = r
            else:
                nxt[tail[e]] = r
            tail[e] = r
            unfinished[e] += 1
            if next_req < n and t_arr[next_req] <= t_a:
                continue   # queue every request arriving at this instant first
            now = t_a
            for e2 in range(base_d):
                if busy_until[e2] == INF and head[e2] != -1:
                    todo[n_todo] = e2
                    n_todo += 1
        elif t_x <= t_e:
            # ---- a transfer lands: the request joins the decode batch, its prefill blocks are freed
            now = t_x
            e = x_min
            r = xhead[e]
            xhead[e] = nxt[r]
            if xhead[e] == -1:
                xtail[e] = -1
            nxfer[e] -= 1
            t_xe[r] = now
            computed[r] = prompt[r]
            gen[r] = 1
            running[e, nrun[e]] = r
            nrun[e] += 1
            visits[r, V_TRANSFERRED] += 1
            pe = peng[r]
            free[pe] += pblocks[r]
            pblocks[r] = 0
            if busy_until[e] == INF:
                todo[n_todo] = e
                n_todo += 1
            if busy_until[pe] == INF and head[pe] != -1:
                todo[n_todo] = pe
                n_todo += 1
        else:
            # ---- a step ends: apply its tokens -----------------------------------------------------
            ev = e_min
            now = t_e
            todo[0] = ev
            n_todo = 1
            marked[ev] = True
            for j in range(nsched[ev]):
                r = sched_req[ev, j]
                computed[r] += sched_tok[ev, j]
                if computed[r] != prompt[r] + gen[r]:
                    continue
                gen[r] += 1
                if ev < base_d:
                    # prompt done (first token sampled): hold its blocks, queue it at a decode engine
                    t_pf[r] = now
                    visits[r, V_PREFILLED] += 1
                    _drop_running(ev, r, running, nrun)
                    unfinished[ev] -= 1
                    if output[r] <= 1:
                        t_first[r] = now
                        t_fin[r] = now
                        t_end = max(t_end, now)
                        done += 1
                        free[ev] += blocks[r]
                        blocks[r] = 0
                        next_release = _release(closed_conc, next_release, n, now, client_delay, t_arr)
                        continue
                    pblocks[r] = blocks[r]
                    blocks[r] = 0
                    peng[r] = ev
                    d = _route(cfg_d, unfinished, rr_d)
                    rr_d += 1
                    nxt[r] = -1
                    if ptail[d] == -1:
                        phead[d] = r
                    else:
                        nxt[ptail[d]] = r
                    ptail[d] = r
                    unfinished[d] += 1
                    if busy_until[d] == INF and not marked[d]:
                        marked[d] = True
                        todo[n_todo] = d
                        n_todo += 1
                else:
                    if t_first[r] < 0:
                        t_first[r] = now
                    if gen[r] >= output[r]:
                        t_fin[r] = now
                        t_end = max(t_end, now)
                        done += 1
                        visits[r, V_DECODED] += 1
                        unfinished[ev] -= 1
                        free[ev] += blocks[r]
                        blocks[r] = 0
                        _drop_running(ev, r, running, nrun)
                        next_release = _release(closed_conc, next_release, n, now, client_delay, t_arr)
            nsched[ev] = 0
            busy_until[ev] = INF
            for ti in range(n_todo):
                marked[todo[ti]] = False

        # ---- schedule the next step of each engine in `todo` at time `now` ----------------------
        for ti in range(n_todo):
            e = todo[ti]
            if busy_until[e] != INF:
                continue
            dec = e >= base_d
            cfg = cfg_d if dec else cfg_p
            max_seqs = cfg[C_MAX_SEQS]
            block = cfg[C_BLOCK]
            nblocks = cfg[C_NBLOCKS]
            watermark = cfg[C_WATERMARK]
            reserve = cfg[C_RESERVE] == 1
            if dec:
                # admit prefilled requests: a batch slot and KV blocks, then start their transfers
                drank = (e - base_d) // cfg[C_PP]
                while phead[e] != -1 and nrun[e] + nxfer[e] < max_seqs:
                    r = phead[e]
                    need = _blocks_for(prompt[r] + output[r] if reserve else prompt[r] + 1, block)
                    if need <= nblocks - watermark and free[e] - need < watermark:
                        break
                    phead[e] = nxt[r]
                    if phead[e] == -1:
                        ptail[e] = -1
                    pe = peng[r]
                    if need > nblocks - watermark:       # can never fit this decode engine: refused
                        t_fin[r] = -1.0
                        t_first[r] = -1.0
                        done += 1
                        unfinished[e] -= 1
                        free[pe] += pblocks[r]
                        pblocks[r] = 0
                        continue
                    free[e] -= need
                    blocks[r] = need
                    t_admit[r] = now
                    prank = pe // cfg_p[C_PP]
                    bw = link_bw[prank, drank]
                    start = max(now, send_free[prank], recv_free[drank])
                    send_free[prank] = start + send_b[r] / bw          # the prefill rank's links carry its share
                    recv_free[drank] = start + recv_b[r] / bw          # the decode rank's links carry theirs
                    t_xs[r] = start
                    ready = start + link_lat[prank, drank] + max(send_b[r], recv_b[r]) / bw
                    if xtail[e] != -1 and xready[xtail[e]] > ready:
                        ready = xready[xtail[e]]                        # delivered in order
                    xready[r] = ready
                    nxt[r] = -1
                    if xtail[e] == -1:
                        xhead[e] = r
                    else:
                        nxt[xtail[e]] = r
                    xtail[e] = r
                    nxfer[e] += 1
            chunked = cfg[C_CHUNKED] == 1
            pf_first = cfg[C_PF_FIRST] == 1
            outs = output if dec else ones
            left = cfg[C_BUDGET]
            ns = 0
            preempted_now = False
            if chunked or not pf_first:
                left, ns, preempted_now = _schedule_running(e, pf_first, left, ns, prompt, gen, computed, blocks, free,
                                                            running, nrun, head, tail, nxt, block, n_preempt, estats,
                                                            sched_req, sched_tok)
            if not preempted_now:
                left, ns, refused = _admit_waiting(e, chunked, left, ns, now, head, tail, nxt, prompt, outs, gen,
                                                   computed, blocks, free, running, nrun, max_seqs, block, nblocks,
                                                   watermark, reserve, t_sched, t_first, t_fin, sched_req, sched_tok)
                done += refused
                unfinished[e] -= refused
            if pf_first and ns == 0:
                left, ns, preempted_now = _schedule_running(e, False, left, ns, prompt, gen, computed, blocks, free,
                                                            running, nrun, head, tail, nxt, block, n_preempt, estats,
                                                            sched_req, sched_tok)
            nsched[e] = ns
            if ns == 0:
                continue
            if dec:
                dt, tokens = _step_seconds(e, ns, sched_req, sched_tok, prompt, gen, computed, tables_d, scal_d, out)
                epar = epar_d
                hrank = nrank_p + (e - base_d) // cfg_d[C_PP]
            else:
                dt, tokens = _step_seconds(e, ns, sched_req, sched_tok, prompt, gen, computed, tables_p, scal_p, out)
                epar = epar_p
                hrank = e // cfg_p[C_PP]
            # one scheduler thread per rank: its virtual engines queue for it, their GPU work overlaps
            start = now if now > host_free[hrank] else host_free[hrank]
            host_free[hrank] = start + out[B_SCHED]
            busy_until[e] = start + dt
            used = nblocks - free[e]
            estats[e, E_BUSY_S] += dt
            estats[e, E_STEPS] += 1
            estats[e, E_KV_INT] += used * dt
            if used > estats[e, E_KV_PEAK]:
                estats[e, E_KV_PEAK] = used
            estats[e, E_TOKENS] += tokens
            # dynamic power: (TDP - idle) x utilisation, utilisation = the busier of compute and memory
            busy_gpu = dt / epar[P_PP]
            u = max(out[B_FLOPS] / (epar[P_PEAK_FLOPS] * busy_gpu), out[B_BYTES] / (epar[P_PEAK_BW] * busy_gpu))
            if u > 1.0:
                u = 1.0
            estats[e, E_DYN_J] += (epar[P_TDP_W] - epar[P_IDLE_W]) * u * busy_gpu * epar[P_GPUS]
    return t_end
