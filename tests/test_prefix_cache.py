"""The numba prefix cache against a plain-Python model of the same rules (dict + LRU order)."""

from __future__ import annotations

from collections import OrderedDict

import numpy as np

from apex_plan.simulate import prefix_cache as P


class Model:
    """Reference: per engine, id -> holders, and the LRU order of units nobody holds."""

    def __init__(self, engines):
        self.ref = [dict() for _ in range(engines)]
        self.lru = [OrderedDict() for _ in range(engines)]

    def lookup(self, e, ids):
        h = 0
        while h < len(ids) and ids[h] in self.ref[e]:
            h += 1
        return h

    def hold(self, e, hid):
        if self.ref[e].get(hid, 0) == 0:
            self.lru[e].pop(hid, None)
        self.ref[e][hid] = self.ref[e].get(hid, 0) + 1

    def release(self, e, ids):
        for hid in reversed(ids):
            self.ref[e][hid] -= 1
            if self.ref[e][hid] == 0:
                self.lru[e][hid] = True

    def evict(self, e, n):
        for _ in range(n):
            hid, _ = self.lru[e].popitem(last=False)
            del self.ref[e][hid]


def _lru_ids(c, e):
    out, s = [], c.eng[e, P.E_LRU_HEAD]
    while s != -1:
        out.append(int(c.slot[s, P.SLOT_ID]))
        s = c.slot[s, P.SLOT_NEXT]
    return out


def test_cache_follows_the_reference_model():
    rng = np.random.default_rng(1)
    engines, ub = 2, 4
    c = P.new_cache(engines, 40_000, ub, 64)
    ref = Model(engines)
    held: list[tuple[int, np.ndarray]] = []          # (engine, ids held)
    for step in range(3000):
        e = int(rng.integers(engines))
        op = rng.random()
        if op < 0.5:
            # a request: a shared stem (few choices) then ids of its own; hit, then register the rest
            stem = [int(rng.integers(3)) * 100 + j for j in range(int(rng.integers(0, 6)))]
            ids = np.array(stem + [10_000 + step * 10 + j for j in range(int(rng.integers(1, 4)))], np.int64)
            h, unref = P.lookup(c, e, ids, 0, ids.size)
            assert h == ref.lookup(e, list(ids))
            assert unref == sum(ref.ref[e][i] == 0 for i in ids[:h])
            P.acquire(c, e, ids, 0, h)
            for i in ids[:h]:
                ref.hold(e, int(i))
            n, _ = P.register(c, e, ids, 0, h, ids.size)
            assert n == ids.size
            for i in ids[h:]:
                ref.hold(e, int(i))
            held.append((e, ids))
        elif op < 0.85 and held:
            e, ids = held.pop(int(rng.integers(len(held))))
            freed = P.release(c, e, ids, 0, ids.size)
            before = sum(v == 0 for v in ref.ref[e].values())
            ref.release(e, list(ids))
            assert freed == ub * (sum(v == 0 for v in ref.ref[e].values()) - before)
        else:
            k = int(rng.integers(0, 4))
            k = min(k, len(ref.lru[e]))
            free_e = 10 ** 6
            P.make_room(c, e, free_e - c.eng[e, P.E_EVICTABLE] + k * ub, free_e)
            ref.evict(e, k)
        for e2 in range(engines):
            assert _lru_ids(c, e2) == list(ref.lru[e2])
            assert c.eng[e2, P.E_EVICTABLE] == ub * len(ref.lru[e2])
            for hid, n in ref.ref[e2].items():
                s = P.find(c, hid, e2)
                assert s >= 0 and c.slot[s, P.SLOT_REF] == n
    in_table = int((c.tab[:, P.TAB_ENG] >= 0).sum())
    free_slots, s = 0, c.meta[P.M_FREE]
    while s != -1:
        free_slots, s = free_slots + 1, c.slot[s, P.SLOT_NEXT]
    assert in_table == sum(len(r) for r in ref.ref) == c.slot.shape[0] - free_slots


def test_register_shares_a_cached_unit_and_frees_the_copy():
    c = P.new_cache(1, 100, 2, 32)
    a = np.array([7, 8, 9], np.int64)
    assert P.register(c, 0, a, 0, 0, 3) == (3, 0)            # new units: the request's copies move in
    assert P.register(c, 0, a, 0, 0, 2) == (2, 4)            # held already: two duplicate units freed
    assert P.release(c, 0, a, 0, 3) == 2                    # unit 9 now unreferenced; 7, 8 still held
    assert P.register(c, 0, a, 0, 2, 3) == (3, 0)            # evictable unit taken back: no change in free
    assert c.eng[0, P.E_EVICTABLE] == 0


def test_best_match_picks_the_longest_prefix():
    c = P.new_cache(3, 100, 1, 16)
    P.register(c, 1, np.array([1, 2], np.int64), 0, 0, 2)
    P.register(c, 2, np.array([1, 2, 3], np.int64), 0, 0, 3)
    ids = np.array([1, 2, 3, 4], np.int64)
    assert P.best_match(c, ids, 0, 4, 0, 3) == (2, 3)
    assert P.best_match(c, np.array([5], np.int64), 0, 1, 0, 3) == (0, 0)
