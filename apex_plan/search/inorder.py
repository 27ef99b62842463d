"""Phase 2's schedule: simulate plans on threads but take their results strictly in order, so that the
search's result is the one-at-a-time result whatever the timing or the cores.

A plan is started once every earlier plan of its layout (`same`) has its result taken or was skipped:
its goodput guess (`pipeline.goodput_guess`) comes from those, so it is the same in every schedule,
and a plan never waits for an unrelated one. At most `threads` plans run at once, each within
`lookahead` places of the next result to take. A plan the rules skip when it is reached is skipped;
one started earlier is checked again when its result would be taken, and its result is discarded if
the rules, given the results taken before it, now skip it (the rules only tighten as results come in,
so a plan skipped early would be skipped at its turn too)."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Sequence, TypeVar

T = TypeVar("T")
R = TypeVar("R")


def simulate_in_order(todo: Sequence[T], skip: Callable[[T], bool], start: Callable[[T], Callable[[], R]],
                      take: Callable[[T, R], None], same: Callable[[T, T], bool], threads: int, lookahead: int,
                      progress: Callable[[int, int], None] | None = None) -> None:
    """Run `start(item)()` for every item `skip` keeps and hand each result to `take(item, result)` in
    the order of `todo`. `start` is called on the calling thread (what it reads from earlier results
    is read there); the callable it returns runs on a worker."""
    n = len(todo)
    futures: dict = {}
    skipped: set[int] = set()
    nxt = 0

    def ready(i: int) -> bool:
        """Every earlier plan of i's layout is resolved (taken or skipped)."""
        return all(j < nxt or j in skipped for j in range(i) if same(todo[j], todo[i]))

    def fill() -> None:
        for i in range(nxt, min(n, nxt + lookahead)):
            running = sum(not f.done() for f in futures.values())
            if running >= threads and i != nxt:
                return
            if i in futures or i in skipped or not ready(i):
                continue
            if skip(todo[i]):
                skipped.add(i)
            else:
                futures[i] = pool.submit(start(todo[i]))

    with ThreadPoolExecutor(threads) as pool:
        while nxt < n:
            fill()
            if nxt in skipped:
                nxt += 1
                continue
            if progress:
                progress(nxt, n)
            fut = futures.pop(nxt)
            if skip(todo[nxt]):              # results taken since it started rule it out
                fut.cancel()
            else:
                take(todo[nxt], fut.result())
            nxt += 1
