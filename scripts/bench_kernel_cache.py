"""Cold and warm start of `apex-plan simulate`: numba compiling every kernel vs loading its cache.

Copies the package (without any __pycache__) to a temporary folder, runs the chat-trace simulate
of `scripts/bench_simulate.py` there twice as a process (first: empty numba cache, every kernel
compiled and cached; second: the cache loaded), and prints the wall and CPU seconds of each (CPU: less noisy on a shared machine).
Usage: python scripts/bench_kernel_cache.py [--root CHECKOUT]   (default: this checkout)
"""

from __future__ import annotations

import argparse
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TRACE = ROOT.parent / "shared" / "bench" / "vllm-h100" / "traces" / "llama-3.1-70b.lmsys_05.dp1tp8.jsonl"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--root", type=Path, default=ROOT)
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        dst = Path(tmp) / "checkout"
        ignore = shutil.ignore_patterns("__pycache__", "*.nbi", "*.nbc")
        for part in ("apex_plan", "models", "hardware_profiles", "engine_profiles"):
            shutil.copytree(args.root / part, dst / part, ignore=ignore)
        trace = TRACE if TRACE.is_file() else None
        cmd = [sys.executable, "-m", "apex_plan", "simulate", "--model", "llama-3.1-70b", "--gpu", "h100-sxm-80gb",
               "--gpus", "8", "--plan", "dp=1,tp=8,pp=1", "--weight-dtype", "bf16", "--kv-dtype", "bf16",
               "--engine", "vllm", "--format", "json"]
        cmd += ["--trace", str(trace)] if trace else ["--workload", "chat", "--rate", "0.5", "--num-requests", "1024"]
        for label in ("cold (compile + write cache)", "warm (load cache)"):
            t0 = time.perf_counter()
            c0 = resource.getrusage(resource.RUSAGE_CHILDREN)
            p = subprocess.run(cmd, cwd=dst, capture_output=True)
            if p.returncode:
                raise SystemExit(p.stderr.decode().strip())
            c1 = resource.getrusage(resource.RUSAGE_CHILDREN)
            cpu = (c1.ru_utime - c0.ru_utime) + (c1.ru_stime - c0.ru_stime)
            print(f"{label:32s} wall {time.perf_counter() - t0:6.2f} s  cpu {cpu:6.2f} s   ({args.root})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
