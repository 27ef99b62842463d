"""Numba event loop: iteration-level (continuous) batching of a trace on vLLM-like engines.

One engine per data-parallel replica and pipeline virtual engine (vLLM runs `pp` schedulers per
replica so that `pp` batches are in flight). Each engine repeats: schedule a step (FCFS admission,
`max_num_seqs`, token budget, chunked prefill on/off, KV blocks with a 1% watermark, preemption by
recompute), cost it with `apex_plan.estimate.kernels.step_time`, and advance time. Arrivals are
routed round-robin (or to the least-loaded replica) and, inside a replica, to the virtual engine
with the fewest unfinished requests, as vLLM's `add_request` does.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from numba import njit

import apex_plan.estimate.kernels as _estimate_kernels


def _drop_stale_cache() -> None:
    """numba's on-disk cache of this module is keyed by this file alone, not by the step-cost kernel
    it inlines from apex_plan/estimate/kernels.py: drop the cached entries older than that file."""
    dep_mtime = Path(_estimate_kernels.__file__).stat().st_mtime
    for index in (Path(__file__).parent / "__pycache__").glob(f"{Path(__file__).stem}.*.nbi"):
        try:
            if index.stat().st_mtime < dep_mtime:
                for f in index.parent.glob(index.name.rsplit(".", 2)[0] + ".*.nb[ic]"):
                    f.unlink(missing_ok=True)
        except OSError:
            pass   # a read-only install keeps its cache; numba then recompiles in memory


_drop_stale_cache()

from apex_plan.estimate.kernels import B_BYTES, B_FLOPS, B_N, B_SCHED, L_WINDOW, S_N, padded_pairs, q_tiles, step_time  # noqa: E402

INF = np.inf

# per-engine statistics columns
E_BUSY_S = 0       # time spent stepping
E_STEPS = 1        # steps run
E_DYN_J = 2        # dynamic energy above idle, joules, all GPUs of the engine
E_KV_INT = 3       # integral of KV blocks in use over time, block*s
E_KV_PEAK = 4      # most KV blocks in use
E_PREEMPT = 5      # preemptions
E_TOKENS = 6       # tokens processed (prefill + decode)
E_NCOL = 7

# energy parameter vector
P_TDP_W = 0
P_IDLE_W = 1
P_PEAK_FLOPS = 2
P_PEAK_BW = 3
P_GPUS = 4          # GPUs of one replica (all stages)
P_PP = 5


@njit(cache=True, inline="always")   # inlined: no per-step call and array refcount cost
def _blocks_for(tokens, block):
    return (tokens + block - 1) // block


@njit(cache=True, inline="always")   # inlined: no per-step call and array refcount cost
def _admit_waiting(e, chunked, left, ns, now, head, tail, nxt, prompt, output, gen, computed, blocks, free, running,
                   nrun, max_seqs, block, nblocks, watermark, reserve_full, t_sched, t_first, t_fin, sched_req,
                   sched_tok):
    """FCFS admission of waiting requests of engine e into the step being built.

    A request needs KV blocks for its sequence so far (for prompt + every output token when
    `reserve_full`, as TRT-LLM's GUARANTEED_NO_EVICT), leaving the watermark free; without chunking
    its whole prompt must fit the remaining token budget, with chunking it takes what is left.
    A request that could never fit the cache is refused (t_fin = -1). Returns the budget left,
    the number of scheduled entries, and how many requests were refused.
    """
    refused = 0
    while head[e] != -1 and nrun[e] < max_seqs and left > 0:
        r = head[e]
        seq = prompt[r] + gen[r]
        need = _blocks_for(prompt[r] + output[r] if reserve_full else seq, block)
        ntok = seq - computed[r]
        if need > nblocks - watermark:
            pass
        elif free[e] - need < watermark or (not chunked and ntok > left):
            break
        head[e] = nxt[r]
        if head[e] == -1:
            tail[e] = -1
        if need > nblocks - watermark:
            t_fin[r] = -1.0
            t_first[r] = -1.0
            refused += 1
            continue
        free[e] -= need
        blocks[r] = need
        running[e, nrun[e]] = r
        nrun[e] += 1
        if t_sched[r] < 0:
            t_sched[r] = now
        if ntok > left:
            ntok = left
        sched_req[e, ns] = r
        sched_tok[e, ns] = ntok
        left -= ntok
        ns += 1
    return left, ns, refused


@njit(cache=True, inline="always")   # inlined: no per-step call and array refcount cost
def _schedule_running(e, only_prefill, left, ns, prompt, gen, computed, blocks, free, running, nrun, head, tail, nxt,
                      block, n_preempt, estats, sched_req, sched_tok):
    """Schedule engine e's running requests in order (only those still in prefill when
    `only_prefill`), growing their KV blocks; when the pool runs dry, preempt from the back of the
    running list by recompute (blocks freed, back to the front of the queue). Returns the budget
    left, the number of scheduled entries, and whether anything was preempted."""
    preempted = False
    i = 0
    while i < nrun[e]:
        r = running[e, i]
        seq = prompt[r] + gen[r]
        rem = seq - computed[r]
        if only_prefill and gen[r] > 0 and rem == 1:
            i += 1
            continue
        ntok = rem if rem < left else left
        if ntok <= 0:
            i += 1
            continue
        need = _blocks_for(seq, block) - blocks[r]
        self_preempted = False
        while need > free[e]:
            victim = running[e, nrun[e] - 1]
            free[e] += blocks[victim]
            blocks[victim] = 0
            computed[victim] = 0
            nrun[e] -= 1
            n_preempt[victim] += 1
            estats[e, E_PREEMPT] += 1
            preempted = True
            nxt[victim] = head[e]
            head[e] = victim
            if tail[e] == -1:
                tail[e] = victim
            if victim == r:
                self_preempted = True
                break
        if self_preempted:
            break
        if need > 0:
            free[e] -= need
            blocks[r] += need
        sched_req[e, ns] = r
        sched_tok[e, ns] = ntok
        left -= ntok
        ns += 1
        i += 1
    return left, ns, preempted


@njit(cache=True, inline="always")   # inlined: no per-step call and array refcount cost
def _window_pairs(k0, c, win):
    """Query x key pairs of a causal chunk of c tokens after k0 cached ones when each query sees at
    most `win` keys: sum over query positions x = k0+1 .. k0+c of min(x, win)."""
    a = k0 + 1.0
    b = k0 + c + 0.0
    if b <= win:
        return (a + b) * c * 0.5
    if a >= win:
        return c * win
    return (a + win) * (win - a + 1.0) * 0.5 + (b - win) * win


@njit(cache=True)
def simulate_kernel(arrival, prompt, output, closed_conc, dp, pp, least_loaded, max_seqs, budget, chunked,
                    block, nblocks, watermark, tables, scal, epar,
                    t_arr, t_first, t_fin, t_sched, n_preempt, estats, prefill_first, reserve_full,
                    client_delay):
    """Replay all requests; fill per-request times (seconds) and per-engine statistics.

    closed_conc > 0 runs closed loop: that many requests in flight, each finished request replaced by
    the next after that request's `client_delay` (arrival times then come from finishes, not from
    `arrival`). `prefill_first`: waiting prompts run in a prefill-only step ahead of the decodes
    (otherwise prefill chunks join the decode steps); `reserve_full`: admission reserves KV for the whole request. Requests that can
    never fit the KV cache are marked with t_fin = -1. Returns the time the last request finished.
    """
    n = prompt.shape[0]
    ne = dp * pp
    computed = np.zeros(n, np.int64)
    gen = np.zeros(n, np.int64)
    blocks = np.zeros(n, np.int64)
    nxt = np.full(n, -1, np.int64)
    head = np.full(ne, -1, np.int64)
    tail = np.full(ne, -1, np.int64)
    running = np.full((ne, max_seqs), -1, np.int64)
    nrun = np.zeros(ne, np.int64)
    free = np.full(ne, nblocks, np.int64)
    unfinished = np.zeros(ne, np.int64)
    busy_until = np.full(ne, INF)
    host_free = np.zeros(dp)          # the replica's scheduler thread is free from this time on
    sched_req = np.full((ne, max_seqs), -1, np.int64)
    sched_tok = np.zeros((ne, max_seqs), np.int64)
    nsched = np.zeros(ne, np.int64)
    out = np.zeros(B_N)
    todo = np.zeros(ne, np.int64)       # engines to schedule at the current event
    for i in range(n):
        t_first[i] = -1.0
        t_fin[i] = -1.0
        t_sched[i] = -1.0
        n_preempt[i] = 0
        if closed_conc > 0:
            t_arr[i] = client_delay[i] if i < closed_conc else INF
        else:
            t_arr[i] = arrival[i]
    next_req = 0
    next_release = closed_conc if closed_conc > 0 else n
    done = 0
    rr = 0
    t_end = 0.0

    while done < n:
        # earliest engine event
        e_min = -1
        t_e = INF
        for e in range(ne):
            if busy_until[e] < t_e:
                t_e = busy_until[e]
                e_min = e
        t_a = t_arr[next_req] if next_req < n else INF
        if t_a == INF and t_e == INF:
            break  # nothing can happen (should not occur)
        if t_a <= t_e:
            # ---- arrival: route to a replica, then to its least-loaded virtual engine -----------
            r = next_req
            next_req += 1
            if least_loaded:
                best = 0
                best_load = 1 << 60
                for rep in range(dp):
                    load = 0
                    for v in range(pp):
                        load += unfinished[rep * pp + v]
                    if load < best_load:
                        best_load = load
                        best = rep
                rep = best
            else:
                rep = rr % dp
                rr += 1
            e = rep * pp
            for v in range(1, pp):
                if unfinished[rep * pp + v] < unfinished[e]:
                    e = rep * pp + v
            nxt[r] = -1
            if tail[e] == -1:
                head[e] = r
            else:
                nxt[tail[e]] = r
            tail[e] = r
            unfinished[e] += 1
            if next_req < n and t_arr[next_req] <= t_a:
                continue   # queue every request arriving at this instant before anything is scheduled
            now = t_a
            n_todo = 0
            for e2 in range(ne):
                if busy_until[e2] == INF and head[e2] != -1:
                    todo[n_todo] = e2
                    n_todo += 1
            if n_todo == 0:
                continue
        else:
            # ---- a step ends: apply its tokens ----------------------------------------------------
            ev = e_min
            now = t_e
            for j in range(nsched[ev]):
                r = sched_req[ev, j]
                computed[r] += sched_tok[ev, j]
                if computed[r] == prompt[r] + gen[r]:
                    gen[r] += 1
                    if gen[r] == 1:
                        t_first[r] = now
                    if gen[r] >= output[r]:
                        t_fin[r] = now
                        if now > t_end:
                            t_end = now
                        done += 1
                        unfinished[ev] -= 1
                        free[ev] += blocks[r]
                        blocks[r] = 0
                        # drop from the running list, keeping order
                        k = 0
                        for q in range(nrun[ev]):
                            if running[ev, q] != r:
                                running[ev, k] = running[ev, q]
                                k += 1
                        nrun[ev] = k
                        if closed_conc > 0 and next_release < n:
                            # the client sends the next request once this one is done (after its own
                            # dispatch delay); arrivals stay in release order
                            t_next = now + client_delay[next_release]
                            if next_release > 0 and t_next < t_arr[next_release - 1]:
                                t_next = t_arr[next_release - 1]
                            t_arr[next_release] = t_next
                            next_release += 1
            nsched[ev] = 0
            busy_until[ev] = INF
            todo[0] = ev
            n_todo = 1

        # ---- schedule the next step of each engine in `todo` at time `now` ----------------------
        for ti in range(n_todo):
            e = todo[ti]
            left = budget
            ns = 0
            preempted_now = False
            # running requests first (with prefill priority, as vLLM 0.6 unchunked and SGLang, only the prompts
            # in progress), then waiting requests, FCFS, in the budget left (chunked: cut to fit)
            if chunked or not prefill_first:
                left, ns, preempted_now = _schedule_running(e, prefill_first, left, ns, prompt, gen, computed, blocks,
                                                            free, running, nrun, head, tail, nxt, block, n_preempt,
                                                            estats, sched_req, sched_tok)
            if not preempted_now:
                left, ns, refused = _admit_waiting(e, chunked, left, ns, now, head, tail, nxt, prompt, output, gen,
                                                   computed, blocks, free, running, nrun, max_seqs, block, nblocks,
                                                   watermark, reserve_full, t_sched, t_first, t_fin, sched_req,
                                                   sched_tok)
                done += refused
                unfinished[e] -= refused
            if prefill_first and ns == 0:
                # no prompt to prefill: the running decodes get the step
                left, ns, preempted_now = _schedule_running(e, False, left, ns, prompt, gen, computed, blocks, free,
                                                            running, nrun, head, tail, nxt, block, n_preempt, estats,
                                                            sched_req, sched_tok)
            nsched[e] = ns
            if ns == 0:
                continue
            # ---- cost the step ----------------------------------------------------------------------
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
            win = scal[S_N + L_WINDOW]     # tokens a sliding / chunked / sparse layer attends to (0: none)
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
                    w = padded_pairs(c, k0)               # the same over whole query tiles
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
            # the scheduler part of a step runs on the replica's single engine thread: virtual engines of
            # one replica (pipeline parallelism) queue for it; their GPU work overlaps
            rep = e // pp
            start = now if now > host_free[rep] else host_free[rep]
            host_free[rep] = start + out[B_SCHED]
            busy_until[e] = start + dt
            used = nblocks - free[e]
            estats[e, E_BUSY_S] += dt
            estats[e, E_STEPS] += 1
            estats[e, E_KV_INT] += used * dt
            if used > estats[e, E_KV_PEAK]:
                estats[e, E_KV_PEAK] = used
            estats[e, E_TOKENS] += tokens
            # dynamic power: (TDP - idle) x utilisation, utilisation = the busier of compute and memory
            busy_gpu = dt / epar[P_PP]                      # each stage works 1/pp of the step
            u = max(out[B_FLOPS] / (epar[P_PEAK_FLOPS] * busy_gpu), out[B_BYTES] / (epar[P_PEAK_BW] * busy_gpu))
            if u > 1.0:
                u = 1.0
            estats[e, E_DYN_J] += (epar[P_TDP_W] - epar[P_IDLE_W]) * u * busy_gpu * epar[P_GPUS]
    return t_end
