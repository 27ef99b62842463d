"""`kernel`: numba's njit with an on-disk cache keyed on every kernel source file.

numba keys a cached function on its own source file only, but the simulator's event loop inlines
the step-cost kernel from another file: after an edit there, the loop's cache would be stale.
Every function compiled with `kernel(cache=True)` instead carries a source stamp hashing all of
`KERNEL_FILES` (the ABI records and every module of estimate/ and simulate/ defining a numba
function), so an edit to any of them recompiles them all on the next run. The stamp is numba's own invalidation mechanism (the index's source
stamp, `numba.core.caching`), given more files; nothing is deleted by hand. Cold start (empty
cache) and warm start are measured by `scripts/bench_kernel_cache.py`.

`kernel(refcounts=False)` compiles without numba's reference counting (its `_nrt=False` flag, which
numba's own hot string helpers use: numba/cpython/unicode.py). For the event loops: every array such
a function touches is owned by its caller, and it allocates nothing (numba refuses to compile an
allocation without it). With counting on, numba increments and decrements an array's count (atomic
instructions) each time an inlined helper receives it or a tuple member is read; `perf` put 85 % of
the event loop's time in NRT_incref / NRT_decref (DeepSeek-V3 on 4 x 8 H100, 8K/1K search runs).

`kernel(inline="always")` marks a helper of the event loops, and `APEX_PLAN_JIT_INLINE` picks how it
is compiled (the results are the same bit for bit: nothing runs with fastmath):
* unset or 0 (default): numba types and lowers it once, as a function of its own without reference
  counting, marked for LLVM to inline into each caller (numba's `forceinline`, LLVM's
  `alwaysinline`: the callee's module is linked into the caller's and optimised with it). So no call
  and no argument passing per step (a call passes ~7 words per array: `step_engine` and `_schedule`
  took 60-100, and the loops ran ~2x slower when the helpers were called), while numba's own
  passes run once per helper. `kernel(inline="always", called=True)` (`step_engine`: a whole engine
  step per call) is called instead: LLVM would copy it into every call site (twice in the
  disaggregated loop), and the calls cost nothing next to a step's work (chat trace ~7.5 ms either
  way; cold 22-24 s CPU against 37.3 s when it too is inlined). A cold start compiles both event
  loops and everything they call in ~24 s CPU (9 silicon rows, 74 specialisations; ~19-26 s when
  every helper was called, ~250 s under numba inlining), and the warm chat trace of
  `scripts/bench_simulate.py` runs in ~7.5 ms (~20 ms when every helper was called, ~9 ms
  numba-inlined);
* 1: numba inlines it into every caller (numba's `inline="always"`, on its IR): the same speed, but
  numba types each inlined copy again, and copies multiply (`add_sequence` in `_step_shapes` in
  `_cost_step` in `step_engine`, twice in the disaggregated loop): a cold start costs ~250 s CPU.
  Kept to compare against. Its cache is kept apart (`__pycache__/inline/`), so switching does not
  recompile the other.
Figures: README `## Speed`, `scripts/bench_kernel_cache.py`.
"""

from __future__ import annotations

import functools
import hashlib
import os
from pathlib import Path

from numba import types
from numba.core import caching
from numba.core.registry import CPUDispatcher

PACKAGE = Path(__file__).resolve().parent
KERNEL_FOLDERS = ("estimate", "simulate")      # where numba kernels live (data flows estimate -> simulate)
INLINE = os.environ.get("APEX_PLAN_JIT_INLINE", "0") not in ("", "0")   # numba-inline the loops' helpers (docstring)


def _kernel_files() -> tuple[Path, ...]:
    """The ABI, this file, and every module of KERNEL_FOLDERS that defines a numba function: all
    the code a cached kernel may compile in (inlined or called)."""
    found = [PACKAGE / "abi.py", PACKAGE / "jit.py"]
    for folder in KERNEL_FOLDERS:
        found += [f for f in sorted((PACKAGE / folder).glob("*.py")) if "@kernel(" in (t := f.read_text())
                  or "@njit" in t]
    return tuple(found)


KERNEL_FILES = _kernel_files()


def source_stamp(files=KERNEL_FILES) -> str:
    """Hash of the contents of `files`: any edit to one of them changes it."""
    return _hash(tuple((str(f), f.stat().st_mtime_ns, f.stat().st_size) for f in map(Path, files)))


@functools.lru_cache(maxsize=None)
def _hash(stats: tuple) -> str:
    """sha256 over the files' contents (memoised on their paths, mtimes and sizes)."""
    h = hashlib.sha256()
    for path, _, _ in stats:
        h.update(Path(path).name.encode())
        h.update(Path(path).read_bytes())
    return h.hexdigest()


class _TreeStamp:
    """Locator mixin: the source stamp covers every kernel file, not just the function's own."""

    def get_source_stamp(self):
        return source_stamp()

    def get_cache_path(self):
        """numba's cache folder; its `inline` subfolder for the inlined build (APEX_PLAN_JIT_INLINE=1)."""
        return os.path.join(super().get_cache_path(), "inline") if INLINE else super().get_cache_path()


class _InTree(_TreeStamp, caching.InTreeCacheLocator):
    pass


class _UserWide(_TreeStamp, caching.UserWideCacheLocator):
    pass


class _KernelCacheImpl(caching.CompileResultCacheImpl):
    _locator_classes = [_InTree, _UserWide]   # a read-only install caches in the user's cache dir


class _KernelCache(caching.FunctionCache):
    _impl_class = _KernelCacheImpl


class _KernelDispatcher(CPUDispatcher):
    """A dispatcher that compiles one specialisation per argument type, never per constant: a kernel
    called with a literal (`f(e, 0)`, `g(x, True)`) reuses the int64 / bool one (numba would compile
    a Literal[int](0) specialisation beside the int64 one, each with all it calls)."""

    def get_call_template(self, args, kws):
        """numba's call template for a call from compiled code, for the arguments' non-literal types."""
        return super().get_call_template(tuple(types.unliteral(a) for a in args),
                                         {k: types.unliteral(v) for k, v in kws.items()})


def kernel(**options):
    """`numba.njit(**options)` (a `_KernelDispatcher`: one specialisation per argument type); with
    cache=True, cached under the stamp of all `KERNEL_FILES`; with refcounts=False, without
    reference counting; with inline="always", inlined by numba only under APEX_PLAN_JIT_INLINE=1,
    else typed once and inlined by LLVM (called, with called=True), without reference counting
    (module docstring)."""
    cache = options.pop("cache", False)
    called = options.pop("called", False)
    if not options.pop("refcounts", True):
        options["_nrt"] = False
    options["forceinline"] = False       # explicit, so a kernel does not inherit it from a force-inlined caller
    if options.get("inline") == "always" and not INLINE:
        del options["inline"]
        options["_nrt"] = False          # a helper of the loops: allocates nothing, its callers own every array
        options["forceinline"] = not called   # LLVM inlines its body into each caller (alwaysinline), numba types it once

    def wrap(fn):
        d = _KernelDispatcher(py_func=fn, locals={}, targetoptions=dict(options, nopython=True, boundscheck=None))
        if cache:
            d._cache = _KernelCache(d.py_func)   # what Dispatcher.enable_caching sets, with our locators
        return d

    return wrap
