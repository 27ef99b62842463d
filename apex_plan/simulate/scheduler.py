"""Numba scheduling of one engine's next step (vLLM's scheduler as `simulate.kernels` runs it):
FCFS admission of waiting requests into the token budget and KV blocks (prefix-cache hits shared,
cached units evicted when short of blocks, preemption by recompute), the running requests' decode
and chunked-prefill tokens, and TRT-LLM's attention-DP balance hold. Inlined into the event loops
(`simulate.kernels`, `simulate.disagg_kernel`)."""

from __future__ import annotations

import numpy as np

from apex_plan.jit import kernel
from apex_plan.simulate.prefix_cache import (C_HIT_TOKENS, C_QUERY_TOKENS, E_EVICTABLE, M_UNIT_BLOCKS, M_UNIT_TOKENS,
                                             SLOT_REF, acquire, find, make_room, register, release)

INF = np.inf


def admission_fields(policy=None) -> dict:
    """SCHED fields of SGLang's future-token admission (srt/managers/schedule_policy.py PrefillAdder, ratios from
    srt/managers/scheduler.py and global_config.py) for an engine's `SchedulerPolicy`; all off for None or an
    engine without it (`new_token_ratio` 0)."""
    init = policy.new_token_ratio if policy is not None else 0.0
    if init <= 0.0:
        return dict(admit_ratio_init=0.0, admit_ratio_min=0.0, admit_ratio_decay=0.0, admit_clip_tokens=0,
                    admit_retract_steps=0)
    floor = min(init * policy.new_token_ratio_min_factor, 1.0)       # min_new_token_ratio
    return dict(admit_ratio_init=init, admit_ratio_min=floor,
                # new_token_ratio_decay: from the start value to the floor in decay_steps decode steps
                admit_ratio_decay=(init - floor) / max(policy.new_token_ratio_decay_steps, 1),
                admit_clip_tokens=policy.clip_new_tokens, admit_retract_steps=policy.retract_decode_steps)


def batch_wait_fields(engine=None) -> dict:
    """SCHED fields of TRT-LLM's batch waiting (llm_args.py batch_wait_timeout_iters / batch_wait_max_tokens_ratio,
    both 0 by default: off) for a ResolvedEngine; off for None."""
    if engine is None:
        return dict(batch_wait_iters=0, batch_wait_ratio=0.0)
    return dict(batch_wait_iters=int(engine.batch_wait_iters), batch_wait_ratio=float(engine.batch_wait_tokens_ratio))


# SGLang's receive counter (srt/managers/scheduler_recv_skipper.py, 0.5.3-0.5.9): each loop adds the weight of the
# last batch's forward mode, DECODE / TARGET_VERIFY / none 1 (SGLANG_SCHEDULER_RECV_SKIPPER_WEIGHT_DECODE etc.),
# any other mode (EXTEND, MIXED) SGLANG_SCHEDULER_RECV_SKIPPER_WEIGHT_DEFAULT 1000 (srt/environ.py)
RECV_WEIGHT_DECODE = 1
RECV_WEIGHT_EXTEND = 1000


def recv_fields(engine=None, adp: int = 1) -> dict:
    """SCHED fields of SGLang's receive interval (--scheduler-recv-interval) for a ResolvedEngine: 1 (every step)
    for None, and with attention DP, where 0.5.x refuses any other value (SchedulerRecvSkipper asserts
    not enable_dp_attention; simulate.run refuses an interval asked for there)."""
    n = int(engine.recv_interval) if engine is not None else 1
    return dict(recv_interval=n if adp <= 1 else 1)


@kernel(cache=True, inline="always")   # a loop helper: called, or inlined (jit.kernel, APEX_PLAN_JIT_INLINE)
def _receive(e, req, eng, cfg):
    """SGLang's receive interval (scheduler.py recv_requests with its SchedulerRecvSkipper): before building a
    step the counter grows by the last step's weight (1 decode-only, RECV_WEIGHT_EXTEND with prompt tokens); when
    it reaches SCHED.recv_interval it restarts and the requests that arrived (engine e's inbox) join the waiting
    queue. An engine with nothing to run spins its loop (microseconds a turn) and takes them at once."""
    en = eng[e]
    if cfg.recv_interval <= 1:
        return
    idle = en.last_step < 0 or (en.running == 0 and en.head == -1)
    if not idle:
        en.recv_count += RECV_WEIGHT_DECODE if en.last_step == 0 else RECV_WEIGHT_EXTEND
        if en.recv_count < cfg.recv_interval:
            return
    en.recv_count = 0
    if en.inbox_head == -1:
        return
    if en.tail == -1:                              # the inbox, in arrival order, after the waiting queue
        en.head = en.inbox_head
    else:
        req[en.tail].next = en.inbox_head
    en.tail = en.inbox_tail
    en.inbox_head = -1
    en.inbox_tail = -1


@kernel(cache=True, inline="always")   # a loop helper: called, or inlined (jit.kernel, APEX_PLAN_JIT_INLINE)
def _step_kind(e, ns, req, slots):
    """engine e's step just built: -1 empty, 0 decode-only (every entry one token of a sequence that has
    generated), 1 with prompt tokens."""
    if ns == 0:
        return -1
    for j in range(ns):
        q = req[slots[e, j].req]
        if not (q.generated > 0 and q.prompt_tokens + q.generated - q.computed == 1):
            return 1
    return 0


@kernel(cache=True, inline="always")   # a loop helper: called, or inlined (jit.kernel, APEX_PLAN_JIT_INLINE)
def _blocks_for(tokens, block):
    return (tokens + block - 1) // block


@kernel(cache=True, inline="always")   # a loop helper: called, or inlined (jit.kernel, APEX_PLAN_JIT_INLINE)
def _running_reserve_tokens(e, req, eng, slots, cfg):
    """KV tokens SGLang's PrefillAdder holds back for engine e's running requests: each one's remaining output
    (at most admit_clip_tokens) times the engine's new_token_ratio (0 when the engine reserves nothing)."""
    if cfg.admit_ratio_init <= 0.0:
        return 0.0
    out = 0.0
    for i in range(eng[e].running):
        q = req[slots[e, i].running]
        rest = q.output_tokens - q.generated
        out += min(rest, cfg.admit_clip_tokens) if rest > 0 else 0
    return out * eng[e].new_token_ratio


@kernel(cache=True, inline="always")   # a loop helper: called, or inlined (jit.kernel, APEX_PLAN_JIT_INLINE)
def _retract_ratio(e, req, eng, slots, cfg):
    """SGLang's new_token_ratio after a preemption (schedule_batch.py retract_decode): the running requests'
    decoded tokens plus admit_retract_steps each, over their output tokens, at most 1."""
    done, total = 0.0, 1.0
    for i in range(eng[e].running):
        q = req[slots[e, i].running]
        done += q.generated + cfg.admit_retract_steps
        total += q.output_tokens
    return min(1.0, done / total)


@kernel(cache=True, inline="always")   # a loop helper: called, or inlined (jit.kernel, APEX_PLAN_JIT_INLINE)
def _admit_waiting(e, left, ns, now, req, eng, slots, cfg, cache, ids):
    """FCFS admission of waiting requests of engine e into the step being built.

    A request first finds the leading units of its sequence (within seq - 1 tokens) in the engine's
    prefix cache: those are shared, not allocated, and skip their prefill. It needs KV blocks for
    the rest of its sequence so far (for prompt + every output token when `reserve_full`, as
    TRT-LLM's GUARANTEED_NO_EVICT) plus the hit units nobody held (they leave the free count),
    leaving the watermark free; without chunking its whole uncached prompt must fit the remaining
    token budget, with chunking it takes what is left. Empty blocks go first, then cached units
    are evicted. A request that could never fit the cache is refused (finish -1). Returns the
    budget left, the number of scheduled entries, and how many requests were refused.
    """
    refused = 0
    en = eng[e]
    nblocks, watermark = cfg.kv_blocks, cfg.watermark_blocks
    ut, ub = cache.meta[M_UNIT_TOKENS], cache.meta[M_UNIT_BLOCKS]
    reserved = _running_reserve_tokens(e, req, eng, slots, cfg)   # SGLang: KV tokens promised to running outputs
    while en.head != -1 and en.running < cfg.max_seqs and left > 0:
        r = en.head
        q = req[r]
        seq = q.prompt_tokens + q.generated
        need = _blocks_for(q.prompt_tokens + q.output_tokens if cfg.reserve_full else seq, cfg.block_tokens)
        h = 0
        unref = 0
        if ut > 0:
            limit = min(q.hash_count, (seq - 1) // ut)
            while h < limit:                      # the leading cached units (inline: no call per lookup)
                slot = find(cache, ids[q.hash_start + h], e)
                if slot < 0:
                    break
                if cache.slot[slot, SLOT_REF] == 0:
                    unref += 1
                h += 1
        private = need - h * ub                   # blocks the request allocates itself
        ntok = seq - h * ut
        # SGLang add_one_req: the uncached prompt plus its output (clipped) must fit the free tokens less the
        # running requests' reservation and what this step admitted before it (tokens)
        future = min(q.output_tokens - q.generated, cfg.admit_clip_tokens) if cfg.admit_ratio_init > 0.0 else 0
        short = (cfg.admit_ratio_init > 0.0 and en.running > 0
                 and ntok + future >= en.free_blocks * cfg.block_tokens - reserved)   # an idle engine takes it
        if need > nblocks - watermark:
            pass
        elif en.free_blocks - private - unref * ub < watermark or (not cfg.chunked and ntok > left) or short:
            break
        en.head = q.next
        if en.head == -1:
            en.tail = -1
        if need > nblocks - watermark:
            q.finish_s = -1.0
            q.first_token_s = -1.0
            refused += 1
            continue
        if h > 0:
            acquire(cache, e, ids, q.hash_start, h)
            en.free_blocks -= unref * ub
        if en.free_blocks - cache.eng[e, E_EVICTABLE] < private:
            make_room(cache, e, private, en.free_blocks)
        en.free_blocks -= private
        q.kv_blocks = private
        q.cached_units = h
        q.computed = h * ut
        slots[e, en.running].running = r
        en.running += 1
        if q.scheduled_s < 0:
            q.scheduled_s = now
            q.hit_tokens = h * ut
            cache.eng[e, C_HIT_TOKENS] += h * ut
            cache.eng[e, C_QUERY_TOKENS] += q.prompt_tokens
        if ntok > left:
            ntok = left                           # a chunk: SGLang counts its output only with the last chunk
            future = 0
        reserved += ntok + future
        slots[e, ns].req = r
        slots[e, ns].tokens = ntok
        left -= ntok
        ns += 1
    return left, ns, refused


@kernel(cache=True, inline="always")   # a loop helper: called, or inlined (jit.kernel, APEX_PLAN_JIT_INLINE)
def _schedule_running(e, only_prefill, left, ns, req, eng, slots, cfg, cache, ids):
    """Schedule engine e's running requests in order (only those still in prefill when
    `only_prefill`), growing their KV blocks (a speculating decode also holds slots for its draft
    tokens); when the pool runs dry, preempt from the back of the running list by recompute (blocks
    freed, cached units given back, back to the front of the queue). Returns the budget left, the
    number of scheduled entries, and whether anything was preempted."""
    preempted = False
    en = eng[e]
    ub = cache.meta[M_UNIT_BLOCKS]
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
        # budget tokens of this entry: a speculating decode sharing the step with prompts verifies its k drafts
        # too (TRT-LLM microBatchScheduler.cpp: beam width + getNumDraftTokens(); vLLM V1 sched/scheduler.py:
        # num_tokens_with_spec - num_computed_tokens); prefill-first engines (SGLang) decode outside the budget
        cost = ntok + cfg.draft_tokens if (q.generated > 0 and rem == 1 and not cfg.prefill_first) else ntok
        if cost > left:                           # drafts do not fit beside what is scheduled: it waits (TRT-LLM;
            # vLLM V1 would trim the drafts to the budget left, a step this model does not take)
            i += 1
            continue
        held = seq + cfg.draft_tokens if (q.generated > 0 and rem == 1) else seq   # KV slots incl. drafts
        need = _blocks_for(held, cfg.block_tokens) - q.kv_blocks - q.cached_units * ub
        self_preempted = False
        while need > en.free_blocks:
            victim = slots[e, en.running - 1].running
            v = req[victim]
            en.free_blocks += v.kv_blocks
            if v.cached_units > 0:
                en.free_blocks += release(cache, e, ids, v.hash_start, v.cached_units)
                v.cached_units = 0
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
            if en.free_blocks - cache.eng[e, E_EVICTABLE] < need:
                make_room(cache, e, need, en.free_blocks)
            en.free_blocks -= need
            q.kv_blocks += need
        slots[e, ns].req = r
        slots[e, ns].tokens = ntok
        left -= cost
        ns += 1
        i += 1
    return left, ns, preempted


@kernel(cache=True, inline="always")   # a loop helper: called, or inlined (jit.kernel, APEX_PLAN_JIT_INLINE)
def _balance_holds(e, eng, cfg):
    """Attention-DP balance (TRT-LLM py_executor `_balance_adp_requests`): while generations run on
    every rank of the replica, new contexts wait until every rank has one, or until the replica has
    stepped `adp_balance_steps` times since the last release. True when engine e's contexts wait."""
    if cfg.adp_balance_steps <= 0 or cfg.adp_ranks <= 1 or eng[e].head == -1:
        return False
    if cfg.adp_lockstep:
        return eng[e].balance_open == 0           # decided once for the replica's step (_lockstep_balance)
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


@kernel(cache=True, inline="always")   # a loop helper: called, or inlined (jit.kernel, APEX_PLAN_JIT_INLINE)
def _batch_wait_holds(e, left, req, eng, cfg):
    """TRT-LLM batch waiting (_torch/pyexecutor/py_executor.py `_waiting_requests`, checked only without attention
    DP and when the step has both contexts and generations): the contexts wait unless the engine has already held
    them `batch_wait_iters` steps, or the step's tokens (the generations' plus the waiting prompts that fit the
    budget) reach batch_wait_ratio x budget_tokens. True when engine e's waiting contexts sit this step out."""
    en = eng[e]
    if (cfg.batch_wait_iters <= 0 and cfg.batch_wait_ratio <= 0.0) or cfg.adp_ranks > 1 or en.head == -1 \
            or en.running == 0:
        return False
    tokens = cfg.budget_tokens - left             # tokens the running generations took (1 + drafts each)
    r = en.head
    while r != -1 and tokens + req[r].prompt_tokens <= cfg.budget_tokens:
        tokens += req[r].prompt_tokens            # prompt tokens of the contexts the step would take
        r = req[r].next
    if en.batch_wait_steps >= cfg.batch_wait_iters or tokens >= cfg.batch_wait_ratio * cfg.budget_tokens:
        en.batch_wait_steps = 0
        return False
    en.batch_wait_steps += 1
    return True


@kernel(cache=True, inline="always")   # a loop helper: called, or inlined (jit.kernel, APEX_PLAN_JIT_INLINE)
def _schedule(e, now, req, eng, slots, cfg, cache, ids):
    """Build engine e's next step at `now`: the requests it receives now join the waiting queue (`_receive`);
    running requests first (with prefill priority, as vLLM
    0.6 unchunked and SGLang, only the prompts in progress), then waiting ones, FCFS, in the budget
    left (chunked: cut to fit); then cache the full units the step's entries complete. Returns the
    entries scheduled and the requests refused."""
    left = cfg.budget_tokens
    ns = 0
    refused = 0
    preempted_now = False
    _receive(e, req, eng, cfg)
    if cfg.chunked or not cfg.prefill_first:
        left, ns, preempted_now = _schedule_running(e, cfg.prefill_first, left, ns, req, eng, slots, cfg, cache, ids)
    if not preempted_now and not _balance_holds(e, eng, cfg) and not _batch_wait_holds(e, left, req, eng, cfg):
        left, ns, refused = _admit_waiting(e, left, ns, now, req, eng, slots, cfg, cache, ids)
    decoding = cfg.prefill_first and ns == 0
    if decoding:
        # no prompt to prefill: the running decodes get the step
        left, ns, preempted_now = _schedule_running(e, 0, left, ns, req, eng, slots, cfg, cache, ids)
    if cfg.admit_ratio_init > 0.0:               # SGLang's new_token_ratio (scheduler.py update_running_batch)
        en = eng[e]
        if preempted_now:                        # retracted: restart from the batch's decoded share
            en.new_token_ratio = _retract_ratio(e, req, eng, slots, cfg)
        elif ns == 0:                            # idle: back to the start value
            en.new_token_ratio = cfg.admit_ratio_init
        elif decoding or not cfg.prefill_first:  # a decode step: one decay step towards the floor
            en.new_token_ratio = max(en.new_token_ratio - cfg.admit_ratio_decay, cfg.admit_ratio_min)
    eng[e].scheduled = ns
    if cfg.recv_interval > 1:
        eng[e].last_step = _step_kind(e, ns, req, slots)
    ut = cache.meta[M_UNIT_TOKENS]
    if ut > 0:
        for j in range(ns):
            q = req[slots[e, j].req]
            upto = min((q.computed + slots[e, j].tokens) // ut, q.hash_cacheable)
            if upto > q.cached_units:
                units, dfree = register(cache, e, ids, q.hash_start, q.cached_units, upto)
                q.kv_blocks -= (units - q.cached_units) * cache.meta[M_UNIT_BLOCKS]
                eng[e].free_blocks += dfree
                q.cached_units = units
    return ns, refused
