"""Cold and warm start: numba compiling every kernel (empty cache) against loading its cache.

Copies this checkout's tracked files (no numba cache) to a temporary folder, beside a link named
`shared` to ../shared (the tests and the runner find the bench files there), and runs, as processes
in that copy, each command twice: cold (empty cache: every kernel compiled and cached), then warm
(the cache loaded). It prints wall and CPU seconds (CPU, user + system of the process and its
children, is the figure to compare on a shared machine). What it runs:

* by default: `apex-plan simulate` of the chat trace (as `scripts/bench_simulate.py`) and of a
  disaggregated DeepSeek-V3 row (the two event loops: `simulate_kernel`, `disagg_kernel`);
* `--kernels`: in one process from cold, the aggregated and the disaggregated run, then each kernel's
  compile time (numba's compile events; a kernel's time includes the callees it compiled first) and
  the specialisations each compiled (numba's `.signatures`), and the total;
* `--silicon`: the silicon runner over both shared files (`--jobs`, default 2), cold then warm;
* `--tests`: the full test suite (`python -m pytest -q -x`), cold then warm.

Usage: python scripts/bench_kernel_cache.py [--kernels] [--silicon] [--tests] [--jobs N] [--root CHECKOUT]
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CHAT = "bench/vllm-h100/traces/llama-3.1-70b.lmsys_05.dp1tp8.jsonl"     # under ../shared
AGG = ["simulate", "--model", "llama-3.1-70b", "--gpu", "h100-sxm-80gb", "--gpus", "8", "--plan", "dp=1,tp=8,pp=1",
       "--weight-dtype", "bf16", "--kv-dtype", "bf16", "--engine", "vllm", "--format", "json"]
DISAGG = ["simulate", "--model", "deepseek-v3", "--gpu", "h200-sxm-141gb", "--gpus", "16", "--engine", "sglang",
          "--weight-dtype", "fp8", "--prefill-plan", "tp=8,pp=1", "--prefill-replicas", "1",
          "--decode-plan", "tp=1,pp=1,ep=8,adp=8", "--decode-replicas", "1", "--prompt-tokens", "8192",
          "--output-tokens", "1024", "--concurrency", "128", "--decode-max-num-seqs", "16", "--format", "json"]
SILICON = ("bench/silicon/calibration.csv", "bench/silicon/calibration-h200-b200.csv")   # under ../shared


def agg_argv(shared: Path) -> list[str]:
    """The chat-trace simulate (a synthetic chat workload of the same size without ../shared)."""
    trace = shared / CHAT
    return AGG + (["--trace", str(trace)] if trace.is_file() else
                  ["--workload", "chat", "--rate", "0.5", "--num-requests", "1024"])


def copy_checkout(root: Path, dst: Path) -> None:
    """The tracked files of `root` (as they are in its work tree) without any numba cache, and a
    `shared` link beside them to root's ../shared."""
    files = subprocess.run(["git", "ls-files"], cwd=root, capture_output=True, text=True, check=True).stdout.split()
    for rel in files:
        src = root / rel
        if src.is_file() and "__pycache__" not in rel:
            (dst / "checkout" / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dst / "checkout" / rel)
    if (root.parent / "shared").exists():
        (dst / "shared").symlink_to((root.parent / "shared").resolve())


def timed(label: str, cmd: list[str], cwd: Path) -> None:
    """Run `cmd` in `cwd` (PYTHONPATH: that checkout) and print its wall and CPU seconds."""
    env = dict(os.environ, PYTHONPATH=str(cwd))
    env.pop("NUMBA_CACHE_DIR", None)                 # the copy's in-tree cache, nothing else
    t0 = time.perf_counter()
    c0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    p = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, env=env)
    c1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (c1.ru_utime - c0.ru_utime) + (c1.ru_stime - c0.ru_stime)     # user + system, children included
    if p.returncode:
        raise SystemExit(f"{label}: exit {p.returncode}\n{(p.stderr or p.stdout)[-2000:]}")
    print(f"{label:44s} wall {time.perf_counter() - t0:7.1f} s  cpu {cpu:7.1f} s", flush=True)
    if "--child-kernels" in cmd:
        print(p.stdout, end="")


def child_kernels(shared: Path) -> None:
    """In this process, from whatever cache there is: the two simulate runs, then each kernel's
    compile seconds (CPU) and specialisations."""
    import contextlib
    import gc
    import io

    from numba.core import event
    from numba.core.registry import CPUDispatcher

    spent: dict[str, float] = {}

    class Timer(event.Listener):
        """CPU seconds of each top-level compile (callees compiled inside it are counted in it)."""
        depth = 0

        def on_start(self, ev):
            self.depth += 1
            if self.depth == 1:
                self.t0 = time.process_time()

        def on_end(self, ev):
            self.depth -= 1
            if self.depth == 0:
                f = ev.data["dispatcher"].py_func
                name = f"{f.__module__}.{f.__name__}"
                spent[name] = spent.get(name, 0.0) + time.process_time() - self.t0

    event.register("numba:compile", Timer())
    from apex_plan import cli
    for argv in (agg_argv(shared), DISAGG):
        sys.argv = ["apex-plan"] + argv
        c0 = time.process_time()
        with contextlib.redirect_stdout(io.StringIO()), contextlib.suppress(SystemExit):
            cli.main()
        print(f"  {'disaggregated' if '--prefill-plan' in argv else 'aggregated'} run: {time.process_time() - c0:.1f} s CPU")
    for name, s in sorted(spent.items(), key=lambda kv: -kv[1]):
        print(f"  compile {s:6.1f} s CPU  {name}")
    kernels = [d for d in gc.get_objects() if isinstance(d, CPUDispatcher)
               and d.py_func.__module__.startswith("apex_plan") and d.signatures]
    multi = [d for d in kernels if len(d.signatures) > 1]
    for d in multi:
        print(f"  {len(d.signatures)} specialisations: {d.py_func.__module__}.{d.py_func.__name__}")
    print(f"  kernels compiled or loaded: {len(kernels)}, specialisations: {sum(len(d.signatures) for d in kernels)}"
          f" ({len(multi)} kernels with more than one), compile total {sum(spent.values()):.1f} s CPU")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--root", type=Path, default=ROOT)
    ap.add_argument("--kernels", action="store_true", help="per-kernel compile time and specialisations")
    ap.add_argument("--silicon", action="store_true", help="the silicon runner over both shared files")
    ap.add_argument("--tests", action="store_true", help="the full test suite")
    ap.add_argument("--jobs", type=int, default=2, help="silicon runner workers")
    ap.add_argument("--child-kernels", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child_kernels:
        child_kernels(Path.cwd().parent / "shared")
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        copy_checkout(args.root.resolve(), Path(tmp))
        dst, shared = Path(tmp) / "checkout", Path(tmp) / "shared"
        py = [sys.executable]
        runs = []
        if args.kernels:
            runs.append(("kernels", [py + ["scripts/bench_kernel_cache.py", "--child-kernels"]]))
        if args.silicon:
            runner = str(shared / "bench" / "run_silicon.py")
            runs.append(("silicon runner, both files", [py + [runner, str(shared / f), "--quiet", "--jobs", str(args.jobs)]
                                                        for f in SILICON]))
        if args.tests:
            runs.append(("test suite", [py + ["-m", "pytest", "-q", "-x", "-p", "no:cacheprovider"]]))
        if not runs:
            runs = [("simulate chat trace", [py + ["-m", "apex_plan"] + agg_argv(shared)]),
                    ("simulate disaggregated row", [py + ["-m", "apex_plan"] + DISAGG])]
        print(f"{args.root} (copied to {dst})")
        for state in ("cold (compile + write cache)", "warm (load cache)"):
            for label, cmds in runs:
                for i, cmd in enumerate(cmds):
                    timed(f"{label}{f' [{i + 1}]' if len(cmds) > 1 else ''}, {state}", cmd, dst)
            if args.kernels:
                break                      # the per-kernel table is a cold figure
    return 0


if __name__ == "__main__":
    sys.exit(main())
