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

Memory: the engine's `free` counter counts empty blocks plus evictable units; eng[e, E_EVICTABLE]
is the part held by unreferenced units. Hit, query and eviction counts go to eng[e, C_*].
"""

from __future__ import annotations

from collections import namedtuple

import numpy as np

from apex_plan.jit import kernel

PrefixCache = namedtuple("PrefixCache", "tab slot meta eng")   # four int64 arrays (few for numba to refcount)
# tab[T, TAB_*]: open-addressing table positions (eng -1: empty); slot[S, SLOT_*]: cached units, unused ones
# chained through SLOT_NEXT from meta[M_FREE]; meta: [M_FREE, M_MASK, M_UNIT_BLOCKS, M_UNIT_TOKENS];
# eng[E, E_*]: per engine LRU ends of its unreferenced units, their blocks, and counters
TAB_ID, TAB_ENG, TAB_SLOT = 0, 1, 2
SLOT_ID, SLOT_ENG, SLOT_REF, SLOT_PREV, SLOT_NEXT = 0, 1, 2, 3, 4
M_FREE, M_MASK, M_UNIT_BLOCKS, M_UNIT_TOKENS = 0, 1, 2, 3
E_LRU_HEAD, E_LRU_TAIL, E_EVICTABLE, C_HIT_TOKENS, C_QUERY_TOKENS, C_EVICTED = 0, 1, 2, 3, 4, 5
_MIX1 = 0x5851F42D4C957F2D      # odd 64-bit multipliers (PCG / splitmix constants) for the table position
_MIX2 = 0x14057B7EF767814F


def new_cache(engines: int, kv_blocks: int, unit_blocks: int, unit_tokens: int) -> PrefixCache:
    """An empty cache for `engines` engines of `kv_blocks` blocks each; a unit is `unit_blocks`
    KV blocks of `unit_tokens` tokens. Slots: as many units as the pools can hold, plus one each."""
    slots = max(1, engines * (kv_blocks // max(unit_blocks, 1) + 1))
    size = 1 << max(4, int(2 * slots - 1).bit_length())        # load factor <= 1/2
    tab = np.full((size, 3), -1, np.int64)
    slot = np.full((slots, 5), -1, np.int64)
    slot[:, SLOT_REF] = 0
    slot[:-1, SLOT_NEXT] = np.arange(1, slots)                  # the free list: 0, 1, 2, ...
    eng = np.zeros((engines, 6), np.int64)
    eng[:, E_LRU_HEAD] = -1
    eng[:, E_LRU_TAIL] = -1
    return PrefixCache(tab, slot, np.array([0, size - 1, unit_blocks, unit_tokens], np.int64), eng)


def empty_cache(engines: int) -> PrefixCache:
    """A cache that holds nothing (prefix caching off): every lookup misses, nothing is added."""
    c = new_cache(engines, 0, 1, 1)
    c.meta[M_UNIT_TOKENS] = 0
    return c


@kernel(cache=True, inline="always")
def _home(c, hid, e):
    x = hid * _MIX1 + e * _MIX2
    x ^= x >> 29
    return x & c.meta[M_MASK]


@kernel(cache=True, inline="always")
def _position(c, hid, e):
    """Table position of (hid, e), or -1."""
    i = _home(c, hid, e)
    mask = c.meta[M_MASK]
    while c.tab[i, TAB_ENG] != -1:
        if c.tab[i, TAB_ID] == hid and c.tab[i, TAB_ENG] == e:
            return i
        i = (i + 1) & mask
    return -1


@kernel(cache=True, inline="always")
def find(c, hid, e):
    """Slot of unit `hid` in engine e's cache, or -1."""
    i = _position(c, hid, e)
    return -1 if i < 0 else c.tab[i, TAB_SLOT]


@kernel(cache=True)
def _table_delete(c, i):
    """Remove table position i, shifting later entries of its probe run back (no tombstones)."""
    mask = c.meta[M_MASK]
    j = i
    while True:
        j = (j + 1) & mask
        if c.tab[j, TAB_ENG] == -1:
            break
        k = _home(c, c.tab[j, TAB_ID], c.tab[j, TAB_ENG])
        stays = (i < k <= j) if i <= j else (i < k or k <= j)   # k cyclically in (i, j]: entry j may stay
        if not stays:
            c.tab[i, TAB_ID] = c.tab[j, TAB_ID]
            c.tab[i, TAB_ENG] = c.tab[j, TAB_ENG]
            c.tab[i, TAB_SLOT] = c.tab[j, TAB_SLOT]
            i = j
    c.tab[i, TAB_ENG] = -1
    c.tab[i, TAB_ID] = -1
    c.tab[i, TAB_SLOT] = -1


@kernel(cache=True)
def _insert(c, hid, e):
    """A new unreferenced, unlisted slot for (hid, e); -1 when every slot is taken."""
    s = c.meta[M_FREE]
    if s == -1:
        return -1
    c.meta[M_FREE] = c.slot[s, SLOT_NEXT]
    c.slot[s, SLOT_ID] = hid
    c.slot[s, SLOT_ENG] = e
    c.slot[s, SLOT_REF] = 0
    c.slot[s, SLOT_PREV] = -1
    c.slot[s, SLOT_NEXT] = -1
    i = _home(c, hid, e)
    mask = c.meta[M_MASK]
    while c.tab[i, TAB_ENG] != -1:
        i = (i + 1) & mask
    c.tab[i, TAB_ID] = hid
    c.tab[i, TAB_ENG] = e
    c.tab[i, TAB_SLOT] = s
    return s


@kernel(cache=True, inline="always")
def _unlink(c, s, e):
    p, q = c.slot[s, SLOT_PREV], c.slot[s, SLOT_NEXT]
    if p == -1:
        c.eng[e, E_LRU_HEAD] = q
    else:
        c.slot[p, SLOT_NEXT] = q
    if q == -1:
        c.eng[e, E_LRU_TAIL] = p
    else:
        c.slot[q, SLOT_PREV] = p
    c.slot[s, SLOT_PREV] = -1
    c.slot[s, SLOT_NEXT] = -1


@kernel(cache=True, inline="always")
def _append(c, s, e):
    t = c.eng[e, E_LRU_TAIL]
    c.slot[s, SLOT_PREV] = t
    c.slot[s, SLOT_NEXT] = -1
    if t == -1:
        c.eng[e, E_LRU_HEAD] = s
    else:
        c.slot[t, SLOT_NEXT] = s
    c.eng[e, E_LRU_TAIL] = s


@kernel(cache=True)
def lookup(c, e, ids, start, limit):
    """Leading units of ids[start:start + limit] cached in engine e: (count, how many of them
    nobody holds, i.e. blocks a hit takes out of the free pool / unit_blocks)."""
    h = 0
    unref = 0
    while h < limit:
        s = find(c, ids[start + h], e)
        if s < 0:
            break
        if c.slot[s, SLOT_REF] == 0:
            unref += 1
        h += 1
    return h, unref


@kernel(cache=True)
def acquire(c, e, ids, start, h):
    """Hold the first h units of a request (a hit found by `lookup`)."""
    ub = c.meta[M_UNIT_BLOCKS]
    for j in range(h):
        s = find(c, ids[start + j], e)
        if c.slot[s, SLOT_REF] == 0:
            _unlink(c, s, e)
            c.eng[e, E_EVICTABLE] -= ub
        c.slot[s, SLOT_REF] += 1


@kernel(cache=True)
def release(c, e, ids, start, nref):
    """Let go of a request's first nref units, last first; returns the blocks this frees (units
    nobody holds any more, now evictable)."""
    ub = c.meta[M_UNIT_BLOCKS]
    freed = 0
    for j in range(nref - 1, -1, -1):
        s = find(c, ids[start + j], e)
        c.slot[s, SLOT_REF] -= 1
        if c.slot[s, SLOT_REF] == 0:
            _append(c, s, e)
            c.eng[e, E_EVICTABLE] += ub
            freed += ub
    return freed


@kernel(cache=True)
def make_room(c, e, need, free_e):
    """Evict engine e's least recently freed units until `need` empty blocks exist (free_e counts
    empty plus evictable blocks; the caller has checked free_e >= need)."""
    while free_e - c.eng[e, E_EVICTABLE] < need and c.eng[e, E_LRU_HEAD] != -1:
        s = c.eng[e, E_LRU_HEAD]
        _unlink(c, s, e)
        _table_delete(c, _position(c, c.slot[s, SLOT_ID], e))
        c.slot[s, SLOT_NEXT] = c.meta[M_FREE]
        c.meta[M_FREE] = s
        c.eng[e, E_EVICTABLE] -= c.meta[M_UNIT_BLOCKS]
        c.eng[e, C_EVICTED] += 1


@kernel(cache=True)
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
            if c.slot[s, SLOT_REF] == 0:           # evictable copy taken back: its blocks leave the free count
                _unlink(c, s, e)
                c.eng[e, E_EVICTABLE] -= ub
            else:                            # someone holds it: our duplicate copy is freed
                dfree += ub
        else:
            s = _insert(c, ids[start + j], e)
            if s < 0:
                break
        c.slot[s, SLOT_REF] += 1
        j += 1
    return j, dfree


@kernel(cache=True)
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
