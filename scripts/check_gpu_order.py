#!/usr/bin/env python3
"""Does a GPU that matches or beats another on every datasheet figure ever come out slower end to end?

`tests/test_gpu_physics.py` holds each profile's achievable FLOP/s, bytes/s and link bytes/s in datasheet
order (bf16 peak, HBM and NVLink bandwidth all >= the other's). This script checks the whole prediction:
the same `apex-plan simulate` run (model, engine, plan, closed loop) on each GPU of an ordered pair, in process,
and prints per (pair, engine, model) the median and worst ratio stronger / weaker of TPOT and of TTFT without
the engine's per-request front end (`host.frontend_ms`, fitted per GPU where measured runs exist, a host and
benchmark-harness constant rather than GPU physics: it is printed apart). The loads are small enough (at most
64 requests) that memory binds on neither GPU. A ratio above 1 + --tolerance is a finding: the stronger GPU
predicted slower. Each run goes through the shared silicon runner's in-process CLI call (`run_cli`).

    python scripts/check_gpu_order.py [--tolerance 0.02] [--jobs 2]
"""
from __future__ import annotations

import argparse
import collections
import json
import statistics
import sys
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT.parent / "shared" / "bench"))   # run_silicon.run_cli

PAIRS = [("b300-sxm-288gb", "b200-sxm-180gb"), ("gb200-nvl72", "b200-sxm-180gb"), ("gb300-nvl72", "b300-sxm-288gb"),
         ("gb300-nvl72", "gb200-nvl72"), ("h200-sxm-141gb", "h100-sxm-80gb"), ("b200-sxm-180gb", "h200-sxm-141gb")]
CASES = [  # (model, weight dtype, plans): dense, MoE, MLA; checkpoints in each GPU generation's formats
    ("llama-3.1-70b", "fp8", ["tp=4", "tp=8"]),
    ("qwen3-235b-a22b", "fp8", ["tp=8", "tp=8,ep=8", "tp=1,ep=8,adp=8"]),
    ("deepseek-r1", "fp8", ["tp=8", "tp=8,ep=8", "tp=1,ep=8,adp=8"]),
    ("gpt-oss-120b", "fp4", ["tp=2", "tp=8,ep=8"]),
]
ENGINES = ["vllm@0.19.0", "sglang@0.5.9", "trtllm@1.2.0"]
LOADS = [(1024, 1024, 4), (1024, 1024, 64), (8192, 1024, 16)]      # prompt, output tokens, concurrency


def _frontend_ms(engine: str, gpu: str) -> float:
    from apex_plan.engine.load import resolve_engine_profile
    return resolve_engine_profile(engine).on_gpu(gpu).host.frontend_ms


def _run(args):
    """One simulate run: (TTFT - front end, TPOT) in ms, or None when it does not run."""
    from run_silicon import run_cli
    model, wd, plan, engine, gpu, isl, osl, c = args
    argv = ["simulate", "--model", model, "--gpu", gpu, "--gpus", "8", "--plan", plan, "--weight-dtype", wd,
            "--engine", engine, "--prompt-tokens", str(isl), "--output-tokens", str(osl), "--concurrency", str(c),
            "--format", "json"]
    code, out, _ = run_cli(argv, None)
    if code != 0:
        return args, None
    m = json.loads(out)["metrics"]
    return args, (m["ttft_ms"]["mean"] - _frontend_ms(engine, gpu), m["tpot_ms"]["mean"])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tolerance", type=float, default=0.02, help="ratio above 1 + this is reported (default 0.02)")
    ap.add_argument("--jobs", type=int, default=2)
    a = ap.parse_args(argv)
    gpus = sorted({g for p in PAIRS for g in p})
    jobs = [(m, wd, plan, e, g, isl, osl, c) for m, wd, plans in CASES for plan in plans for e in ENGINES
            for g in gpus for isl, osl, c in LOADS]
    with ProcessPoolExecutor(a.jobs) as ex:
        res = dict(ex.map(_run, jobs, chunksize=4))
    rows, bad = collections.defaultdict(lambda: ([], [])), []
    for strong, weak in PAIRS:
        for (m, wd, plan, e, g, isl, osl, c), r in res.items():
            if g != weak or r is None:
                continue
            s = res.get((m, wd, plan, e, strong, isl, osl, c))
            if s is None:
                continue
            key = (f"{strong} >= {weak}", e.split("@")[0], m)
            tt, tp = s[0] / r[0], s[1] / r[1]
            rows[key][0].append(tt)
            rows[key][1].append(tp)
            if max(tt, tp) > 1 + a.tolerance:
                bad.append((key, plan, f"{isl}/{osl} c{c}", tt, tp))
    print(f"{'pair / engine / model':72s} {'runs':>4s}  TTFT-front end ratio med [max]   TPOT ratio med [max]")
    for key in sorted(rows):
        tt, tp = rows[key]
        print(f"{' / '.join(key):72s} {len(tt):4d}  {statistics.median(tt):6.3f} [{max(tt):6.3f}]"
              f"                {statistics.median(tp):6.3f} [{max(tp):6.3f}]")
    fronts = sorted({(g, e.split('@')[0], _frontend_ms(e, g)) for g in gpus for e in ENGINES})
    print("\nfront end per request (host.frontend_ms; host_by_gpu where fitted, else the engine default):")
    for g, e, f in fronts:
        print(f"  {g:18s} {e:7s} {f:6.1f} ms")
    print(f"\nstronger GPU predicted slower by more than {a.tolerance:.0%}: {len(bad)} of "
          f"{sum(len(v[0]) for v in rows.values())} runs")
    for key, plan, load, tt, tp in sorted(bad, key=lambda b: -max(b[3], b[4])):
        print(f"  {' / '.join(key)} {plan} {load}: TTFT-fe x{tt:.3f} TPOT x{tp:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
