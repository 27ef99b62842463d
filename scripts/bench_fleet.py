#!/usr/bin/env python3
"""Speed of `apex-plan search` on a fleet of two node groups with three power caps, against the
same search on one group (target: at most 3x), and the figures of the mixed-fleet and energy
examples of the README.

Each search runs as a fresh process (`python -m apex_plan search ... --format json`, numba cache
warm from a first run); the best of `--repeat` CPU times of the process is reported (wall time
too: on a shared machine CPU time is the steadier figure).

1. one group: llama-3.1-70b on 8 x h100-sxm-80gb (one node), chat preset at --rate req/s;
2. two groups: the same H100 node plus a node of 8 x h200-sxm-141gb, with --power-cap 500W,600W,700W
   (6 variants of every plan before de-duplication of variants a cap leaves at the same clock);
3. the ratio of 2 over 1 (the issue's budget: <= 3x).

usage: python scripts/bench_fleet.py [--rate 2] [--repeat 2] [--objective gpus]
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FLEET = """name: bench-h100-h200
groups:
  - name: h100
    gpu: h100-sxm-80gb
    nodes: 1
    gpus_per_node: 8
    price_per_gpu_hour: 2.5
  - name: h200
    gpu: h200-sxm-141gb
    nodes: 1
    gpus_per_node: 8
    price_per_gpu_hour: 3.5
"""


def timed(args: list[str], repeat: int) -> tuple[float, float, dict]:
    """Best wall and CPU seconds of `apex-plan search ARGS --format json` as a process, and its output."""
    best_wall, best_cpu, doc = float("inf"), float("inf"), {}
    for _ in range(repeat):
        t0, c0 = time.perf_counter(), os.times()
        p = subprocess.run([sys.executable, "-m", "apex_plan", "search", *args, "--format", "json"],
                           capture_output=True, text=True, cwd=ROOT)
        wall, c1 = time.perf_counter() - t0, os.times()
        if p.returncode not in (0, 1):
            sys.exit(f"search failed: {p.stderr.strip()}")
        best_wall = min(best_wall, wall)
        best_cpu = min(best_cpu, (c1.children_user - c0.children_user) + (c1.children_system - c0.children_system))
        doc = json.loads(p.stdout)
    return best_wall, best_cpu, doc


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rate", type=float, default=2.0)
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--objective", default="gpus")
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        fleet = Path(tmp) / "fleet.yaml"
        fleet.write_text(FLEET)
        common = ["--model", "llama-3.1-70b", "--workload", "chat", "--rate", str(a.rate), "--ttft-slo", "500ms",
                  "--tpot-slo", "50ms", "--objective", a.objective]
        one = common + ["--gpu", "h100-sxm-80gb", "--gpus", "8", "--prices", str(ROOT / "examples" / "prices.yaml")]
        two = common + ["--cluster", str(fleet), "--power-cap", "500W,600W,700W"]
        timed(one, 1)                        # warm the numba cache
        rows = []
        for label, args in (("one group (8 x H100)", one), ("two groups x three caps", two)):
            wall, cpu, doc = timed(args, a.repeat)
            s = doc["statistics"]
            rows.append((label, wall, cpu, s["candidates"], s.get("same_clock_duplicates", 0), s["simulated"],
                         s["simulations"], doc["recommendation"]))
        for label, wall, cpu, cand, dup, sim, runs, rec in rows:
            print(f"{label}: {cpu:.2f} s CPU, {wall:.2f} s wall; {cand} plan variants, {dup} same-clock duplicates, "
                  f"{sim} simulated ({runs} runs)")
            print(f"  {rec}")
        ratio = rows[1][2] / rows[0][2]
        print(f"two groups x three caps / one group: {ratio:.2f}x CPU (budget 3x), {rows[1][1] / rows[0][1]:.2f}x wall")
        sys.exit(0 if ratio <= 3.0 else 1)


if __name__ == "__main__":
    main()
