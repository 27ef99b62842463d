"""A 10M-row trace still simulates: write one (APEX JSON lines, chat-like lengths), then time
`apex-plan simulate` on it under /usr/bin/time -v and report wall time and peak memory.

Usage: python scripts/bench_big_trace.py [--rows 10000000] [--rate 40] [--keep FILE]
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def write_trace(path: Path, rows: int, rate_per_s: float, seed: int = 0) -> None:
    """Poisson arrivals at `rate_per_s`; prompt and output lengths lognormal like the chat preset."""
    rng = np.random.default_rng(seed)
    t_ns = np.cumsum(rng.exponential(1e9 / rate_per_s, rows)).astype(np.int64)
    t_ns -= t_ns[0]
    prompt = np.clip(rng.lognormal(3.6, 1.1, rows), 12, 1151).astype(np.int64)
    output = np.clip(rng.lognormal(3.5, 1.1, rows), 1, 591).astype(np.int64)
    chunk = 1_000_000
    with path.open("w") as f:
        for s in range(0, rows, chunk):
            f.writelines(f'{{"StartTimeOffset": {t}, "ContextTokens": {p}, "GeneratedTokens": {o}}}\n'
                         for t, p, o in zip(t_ns[s:s + chunk].tolist(), prompt[s:s + chunk].tolist(),
                                            output[s:s + chunk].tolist()))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=10_000_000)
    ap.add_argument("--rate", type=float, default=40.0, help="arrival rate of the written trace, requests/s")
    ap.add_argument("--keep", type=Path, help="write the trace here and keep it (default: a temporary file)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        path = args.keep or Path(tmp) / "big.jsonl"
        t0 = time.perf_counter()
        if not path.exists():
            write_trace(path, args.rows, args.rate)
        print(f"trace: {args.rows:,} rows, {path.stat().st_size / 2**30:.2f} GiB, written in "
              f"{time.perf_counter() - t0:.0f} s")
        cmd = ["/usr/bin/time", "-v", sys.executable, "-m", "apex_plan", "simulate", "--model", "llama-3.1-8b",
               "--gpu", "h100-sxm-80gb", "--gpus", "8", "--plan", "dp=8,tp=1", "--max-model-len", "8192",
               "--trace", str(path), "--format", "json", "--output", str(Path(tmp) / "out.json")]
        print("$", " ".join(cmd))
        p = subprocess.run(cmd, capture_output=True, text=True)
        wall = re.search(r"Elapsed \(wall clock\) time.*: (\S+)", p.stderr)
        user = re.search(r"User time \(seconds\): (\S+)", p.stderr)
        system = re.search(r"System time \(seconds\): (\S+)", p.stderr)
        rss = re.search(r"Maximum resident set size \(kbytes\): (\d+)", p.stderr)
        if not (wall and user and system and rss):
            print(p.stderr[-2000:])
            return
        print(f"exit {p.returncode}; wall {wall.group(1)}; CPU {float(user.group(1)) + float(system.group(1)):.0f} s "
              f"(user {user.group(1)}, system {system.group(1)}); peak RSS {int(rss.group(1)) / 2**20:.2f} GiB")
        if p.returncode == 0:
            import json
            m = json.loads((Path(tmp) / "out.json").read_text())["metrics"]
            print("completed", m.get("completed"), "of", m.get("requests"))


if __name__ == "__main__":
    main()
