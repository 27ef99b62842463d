"""Numba routing of an arriving request to a replica (round robin, least loaded, session affinity,
longest cached prefix as SGLang's router), inside an attention-DP replica to one of its ranks as the
engine does it (the profile's `layouts.adp_routing`: SGLang's DataParallelController in turn, TRT-LLM's
and vLLM's DP load balancer to the least loaded rank), and, inside a rank, to the virtual engine with
the fewest unfinished requests. Inlined into the event loops (`simulate.kernels`, `simulate.disagg_kernel`)."""

from __future__ import annotations

from apex_plan.abi import ROUTE_BOOTSTRAP_ROOM, ROUTE_LEAST_LOADED, ROUTE_PREFIX, ROUTE_ROUND_ROBIN, ROUTE_SESSION
from apex_plan.jit import kernel
from apex_plan.simulate.prefix_cache import M_UNIT_TOKENS, lookup

# SGLang router cache_aware policy (sgl-project/sglang rust/README.md, sglang-router defaults): replicas are
# imbalanced when (max - min) load > 32 and max > 1.0001 x min, and then the least loaded one takes the
# request; otherwise the replica caching the longest prefix does, when it covers >= 0.5 of the prompt
ROUTER_CACHE_THRESHOLD = 0.5
ROUTER_BALANCE_ABS = 32
ROUTER_BALANCE_REL = 1.0001


@kernel(cache=True, inline="always")   # a loop helper: called, or inlined (jit.kernel, APEX_PLAN_JIT_INLINE)
def _rank_load(eng, base, rank, pp):
    """Unfinished requests of one rank (its pp virtual engines; engines numbered from `base`)."""
    load = 0
    for v in range(pp):
        load += eng[base + rank * pp + v].unfinished
    return load


@kernel(cache=True, inline="always")   # a loop helper: called, or inlined (jit.kernel, APEX_PLAN_JIT_INLINE)
def pick_rank(rr, eng, cfg, base, room):
    """Rank for a new request under round-robin or least-loaded routing (SCHED.routing), and the
    round-robin counter. Without attention DP: the next rank in turn, or the one with the fewest
    unfinished requests (the first such). With it, two levels: SCHED.routing picks the replica (its
    load: its ranks' sum), then the replica hands the request to one of its ranks as its engine does
    (SCHED.adp_routing: in turn, counted on the replica's first engine; the least loaded rank; or rank
    `room` % ranks, the request's bootstrap room under SGLang's disaggregation)."""
    ranks, pp, a = cfg.ranks, cfg.pp, cfg.adp_ranks
    if a <= 1:
        if cfg.routing == ROUTE_ROUND_ROBIN:
            return rr % ranks, rr + 1
        best, best_load = 0, 1 << 60
        for k in range(ranks):
            load = _rank_load(eng, base, k, pp)
            if load < best_load:
                best_load = load
                best = k
        return best, rr
    reps = ranks // a
    g = 0
    if cfg.routing == ROUTE_ROUND_ROBIN:
        g = rr % reps
        rr += 1
    else:
        best_load = 1 << 60
        for rep in range(reps):
            load = 0
            for k in range(a):
                load += _rank_load(eng, base, rep * a + k, pp)
            if load < best_load:
                best_load = load
                g = rep
    if cfg.adp_routing == ROUTE_BOOTSTRAP_ROOM:
        return g * a + room % a, rr
    lead = eng[base + g * a * pp]
    if cfg.adp_routing == ROUTE_ROUND_ROBIN:
        k = lead.adp_next % a
        lead.adp_next += 1
        return g * a + k, rr
    best, best_load = 0, 1 << 60
    for k in range(a):
        load = _rank_load(eng, base, g * a + k, pp)
        if load < best_load:
            best_load = load
            best = k
    return g * a + best, rr


@kernel(cache=True, inline="always")   # a loop helper: called, or inlined (jit.kernel, APEX_PLAN_JIT_INLINE)
def _replica(r, rr, req, eng, cfg, cache, ids, sess_rep):
    """Replica for arriving request r (SCHED.routing) and the round-robin counter: round robin; the
    least loaded (fewest unfinished requests); session affinity (a session's turns follow its first
    turn, placed on the least loaded replica: llm-d's session-affinity scorer); or the replica
    caching the longest prefix of the prompt unless the load is imbalanced (SGLang router)."""
    dp, pp = cfg.ranks, cfg.pp
    if cfg.routing == ROUTE_ROUND_ROBIN or cfg.routing == ROUTE_LEAST_LOADED:
        return pick_rank(rr, eng, cfg, 0, req[r].bootstrap_room)
    best = 0
    best_load = 1 << 60
    worst_load = 0
    for rep in range(dp):
        load = 0
        for v in range(pp):
            load += eng[rep * pp + v].unfinished
        if load < best_load:
            best_load = load
            best = rep
        worst_load = max(worst_load, load)
    q = req[r]
    if cfg.routing == ROUTE_SESSION and q.session >= 0:
        if sess_rep[q.session] < 0:
            sess_rep[q.session] = best
        return sess_rep[q.session], rr
    ut = cache.meta[M_UNIT_TOKENS]
    if cfg.routing == ROUTE_PREFIX and ut > 0 and q.hash_count > 0 and not (
            worst_load - best_load > ROUTER_BALANCE_ABS and worst_load > ROUTER_BALANCE_REL * best_load):
        limit = min(q.hash_count, (q.prompt_tokens - 1) // ut)
        top, top_h = -1, 0
        for e in range(dp * pp):
            h, _ = lookup(cache, e, ids, q.hash_start, limit)
            if h > top_h:
                top, top_h = e // pp, h
        if top >= 0 and top_h * ut >= ROUTER_CACHE_THRESHOLD * q.prompt_tokens:
            return top, rr
    return best, rr


@kernel(cache=True, inline="always")   # a loop helper: called, or inlined (jit.kernel, APEX_PLAN_JIT_INLINE)
def _route(r, rr, req, eng, cfg, cache, ids, sess_rep):
    """Queue arriving request r on its replica's virtual engine with the fewest unfinished requests (in
    its inbox when the engine receives only every SCHED.recv_interval steps). Returns the round-robin counter."""
    pp = cfg.pp
    rep, rr = _replica(r, rr, req, eng, cfg, cache, ids, sess_rep)
    e = rep * pp
    for v in range(1, pp):
        if eng[rep * pp + v].unfinished < eng[e].unfinished:
            e = rep * pp + v
    en = eng[e]
    req[r].next = -1
    if cfg.recv_interval > 1:                     # SGLang: it waits for the scheduler's next receive (_receive)
        if en.inbox_tail == -1:
            en.inbox_head = r
        else:
            req[en.inbox_tail].next = r
        en.inbox_tail = r
    else:
        if en.tail == -1:
            en.head = r
        else:
            req[en.tail].next = r
        en.tail = r
    en.unfinished += 1
    return rr
