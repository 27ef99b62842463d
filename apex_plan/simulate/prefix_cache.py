"""Block-level prefix cache of every engine, as numpy arrays the event loop updates in numba.

A cached unit is one block of the trace's block ids (`hash_block_tokens` tokens, a whole number
of the engine's KV blocks). Per engine, as vLLM V1 (vllm/v1/core/block_pool.py, kv_cache_manager.py)
and SGLang (sglang/srt/mem_cache/radix_cache.py) keep it:

* a unit is looked up by (block id, engine) in one open-addressing table (linear probing,
  backward-shift deletion) and counts the running requests that hold it (`ref`);
* a lookup hits the longest run of leading units present; a hit unit is shared, not copied;
* a unit nobody holds stays cached but counts as free memory: it sits in the engine's LRU list
  and is evicted, oldest first, only when an allocation finds no empty block (vLLM V1's free
  block queue pops its least recently freed block; SGLang evicts radix leaves by last access);
* a finished or preempted request gives its units back last block first, so a sequence's tail
  is evicted before its head (vLLM V1 KVCacheManager.free: "free blocks in reverse order");
* a unit a request computes is added once its tokens are scheduled (vLLM V1 caches full blocks
  in allocate_slots); when the same id is already cached the request shares it and frees its
  own copy (SGLang's cache_unfinished_req frees the duplicate KV indices).

Memory: the engine's `free` counter counts empty blocks plus evictable units; `evictable[e]`
is the part held by unreferenced units. Hit, query and eviction counts go to `stats`.
"""

from __future__ import annotations

from collections import namedtuple

import numpy as np
from numba import njit

PrefixCache = namedtuple("PrefixCache", (
    "tab_id tab_eng tab_slot "                 # table: block id and engine per position (-1: empty), its slot
    "slot_id slot_eng slot_ref slot_prev slot_next "   # per slot: key, holders, LRU links (-1: none)
    "free_slots meta "                         # stack of unused slots; [n_free, mask, unit_blocks, unit_tokens]
    "lru_head lru_tail evictable stats"))      # per engine: LRU ends, evictable blocks, [hit_tok, query_tok, evicted]

M_NFREE, M_MASK, M_UNIT_BLOCKS, M_UNIT_TOKENS = 0, 1, 2, 3
C_HIT_TOKENS, C_QUERY_TOKENS, C_EVICTED, C_NCOL = 0, 1, 2, 3
_MIX1 = 0x5851F42D4C957F2D      # odd 64-bit multipliers (PCG / splitmix constants) for the table position
_MIX2 = 0x14057B7EF767814F


def new_cache(engines: int, kv_blocks: int, unit_blocks: int, unit_tokens: int) -> PrefixCache:
    """An empty cache for `engines` engines of `kv_blocks` blocks each; a unit is `unit_blocks`
    KV blocks of `unit_tokens` tokens. Slots: as many units as the pools can hold, plus one each."""
    slots = max(1, engines * (kv_blocks // max(unit_blocks, 1) + 1))
    size = 1 << max(4, int(2 * slots - 1).bit_length())        # load factor <= 1/2
    return PrefixCache(np.full(size, -1, np.int64), np.full(size, -1, np.int64), np.full(size, -1, np.int64),
                       np.full(slots, -1, np.int64), np.full(slots, -1, np.int64), np.zeros(slots, np.int64),
                       np.full(slots, -1, np.int64), np.full(slots, -1, np.int64),
                       np.arange(slots - 1, -1, -1, dtype=np.int64),
                       np.array([slots, size - 1, unit_blocks, unit_tokens], np.int64),
                       np.full(engines, -1, np.int64), np.full(engines, -1, np.int64), np.zeros(engines, np.int64),
                       np.zeros((engines, C_NCOL), np.int64))


def empty_cache(engines: int) -> PrefixCache:
    """A cache that holds nothing (prefix caching off): every lookup misses, nothing is added."""
    c = new_cache(engines, 0, 1, 1)
    c.meta[M_UNIT_TOKENS] = 0
    return c


@njit(cache=True, inline="always")
def _home(c, hid, e):
    x = hid * _MIX1 + e * _MIX2
    x ^= x >> 29
    return x & c.meta[M_MASK]


@njit(cache=True, inline="always")
def _position(c, hid, e):
    """Table position of (hid, e), or -1."""
    i = _home(c, hid, e)
    mask = c.meta[M_MASK]
    while c.tab_eng[i] != -1:
        if c.tab_id[i] == hid and c.tab_eng[i] == e:
            return i
        i = (i + 1) & mask
    return -1


@njit(cache=True, inline="always")
def find(c, hid, e):
    """Slot of unit `hid` in engine e's cache, or -1."""
    i = _position(c, hid, e)
    return -1 if i < 0 else c.tab_slot[i]


@njit(cache=True)
def _table_delete(c, i):
    """Remove table position i, shifting later entries of its probe run back (no tombstones)."""
    mask = c.meta[M_MASK]
    j = i
    while True:
        j = (j + 1) & mask
        if c.tab_eng[j] == -1:
            break
        k = _home(c, c.tab_id[j], c.tab_eng[j])
        stays = (i < k <= j) if i <= j else (i < k or k <= j)   # k cyclically in (i, j]: entry j may stay
        if not stays:
            c.tab_id[i] = c.tab_id[j]
            c.tab_eng[i] = c.tab_eng[j]
            c.tab_slot[i] = c.tab_slot[j]
            i = j
    c.tab_eng[i] = -1
    c.tab_id[i] = -1
    c.tab_slot[i] = -1


@njit(cache=True)
def _insert(c, hid, e):
    """A new unreferenced, unlisted slot for (hid, e); -1 when every slot is taken."""
    if c.meta[M_NFREE] == 0:
        return -1
    c.meta[M_NFREE] -= 1
    s = c.free_slots[c.meta[M_NFREE]]
    c.slot_id[s] = hid
    c.slot_eng[s] = e
    c.slot_ref[s] = 0
    c.slot_prev[s] = -1
    c.slot_next[s] = -1
    i = _home(c, hid, e)
    mask = c.meta[M_MASK]
    while c.tab_eng[i] != -1:
        i = (i + 1) & mask
    c.tab_id[i] = hid
    c.tab_eng[i] = e
    c.tab_slot[i] = s
    return s


@njit(cache=True, inline="always")
def _unlink(c, s, e):
    p, q = c.slot_prev[s], c.slot_next[s]
    if p == -1:
        c.lru_head[e] = q
    else:
        c.slot_next[p] = q
    if q == -1:
        c.lru_tail[e] = p
    else:
        c.slot_prev[q] = p
    c.slot_prev[s] = -1
    c.slot_next[s] = -1


@njit(cache=True, inline="always")
def _append(c, s, e):
    t = c.lru_tail[e]
    c.slot_prev[s] = t
    c.slot_next[s] = -1
    if t == -1:
        c.lru_head[e] = s
    else:
        c.slot_next[t] = s
    c.lru_tail[e] = s


@njit(cache=True)
def lookup(c, e, ids, start, limit):
    """Leading units of ids[start:start + limit] cached in engine e: (count, how many of them
    nobody holds, i.e. blocks a hit takes out of the free pool / unit_blocks)."""
    h = 0
    unref = 0
    while h < limit:
        s = find(c, ids[start + h], e)
        if s < 0:
            break
        if c.slot_ref[s] == 0:
            unref += 1
        h += 1
    return h, unref


@njit(cache=True)
def acquire(c, e, ids, start, h):
    """Hold the first h units of a request (a hit found by `lookup`)."""
    ub = c.meta[M_UNIT_BLOCKS]
    for j in range(h):
        s = find(c, ids[start + j], e)
        if c.slot_ref[s] == 0:
            _unlink(c, s, e)
            c.evictable[e] -= ub
        c.slot_ref[s] += 1


@njit(cache=True)
def release(c, e, ids, start, nref):
    """Let go of a request's first nref units, last first; returns the blocks this frees (units
    nobody holds any more, now evictable)."""
    ub = c.meta[M_UNIT_BLOCKS]
    freed = 0
    for j in range(nref - 1, -1, -1):
        s = find(c, ids[start + j], e)
        c.slot_ref[s] -= 1
        if c.slot_ref[s] == 0:
            _append(c, s, e)
            c.evictable[e] += ub
            freed += ub
    return freed


@njit(cache=True)
def make_room(c, e, need, free_e):
    """Evict engine e's least recently freed units until `need` empty blocks exist (free_e counts
    empty plus evictable blocks; the caller has checked free_e >= need)."""
    while free_e - c.evictable[e] < need and c.lru_head[e] != -1:
        s = c.lru_head[e]
        _unlink(c, s, e)
        _table_delete(c, _position(c, c.slot_id[s], e))
        c.free_slots[c.meta[M_NFREE]] = s
        c.meta[M_NFREE] += 1
        c.evictable[e] -= c.meta[M_UNIT_BLOCKS]
        c.stats[e, C_EVICTED] += 1


@njit(cache=True)
def register(c, e, ids, start, nref, upto):
    """Add a request's computed units nref .. upto-1 to engine e's cache, held by the request.
    Returns (units now held, change of the free counter): the request's own copy of a unit moves
    into the cache, or is freed when the unit is cached already."""
    ub = c.meta[M_UNIT_BLOCKS]
    dfree = 0
    j = nref
    while j < upto:
        s = find(c, ids[start + j], e)
        if s >= 0:
            if c.slot_ref[s] == 0:           # evictable copy taken back: its blocks leave the free count
                _unlink(c, s, e)
                c.evictable[e] -= ub
            else:                            # someone holds it: our duplicate copy is freed
                dfree += ub
        else:
            s = _insert(c, ids[start + j], e)
            if s < 0:
                break
        c.slot_ref[s] += 1
        j += 1
    return j, dfree


@njit(cache=True)
def best_match(c, ids, start, limit, first, count):
    """Engine among first .. first+count-1 whose cache holds the longest leading run of the ids
    (the first such engine), and that run's length in units."""
    best = first
    best_h = -1
    for e in range(first, first + count):
        h, _ = lookup(c, e, ids, start, limit)
        if h > best_h:
            best_h = h
            best = e
    return best, best_h
