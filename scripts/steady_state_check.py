#!/usr/bin/env python3
"""Goodput per replica must not depend on the trace length: run `apex-plan search` with the default
request count and with --num-requests 16000 and print every plan's goodput per replica side by side
(the issue's three cases; pass --case to run one). A plan passes when the two agree within 10%.
Also printed: the same with --seed 1 (another draw of the preset, i.e. the sampling spread), and
the recommended deployment replayed by `apex-plan simulate` at its capacity on a fresh
16000-request trace (plain simulation from an empty engine, no steady-state machinery).

usage: python scripts/steady_state_check.py [--case llama|deepseek|qwen] [--tolerance 0.10]
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time

COMMON = ["--workload", "chat", "--objective", "throughput", "--ttft-slo", "1s", "--tpot-slo", "50ms",
          "--no-bound-pruning", "--all", "--format", "json"]
CASES = {
    "llama": ["--model", "llama-3.1-70b", "--gpu", "h100-sxm-80gb", "--gpus", "8"],
    "deepseek": ["--model", "deepseek-v3", "--gpu", "h100-sxm-80gb", "--gpus", "64"],
    "qwen": ["--model", "qwen3-235b-a22b", "--gpu", "h200-sxm-141gb", "--gpus", "16"],
}


def run(args: list[str]) -> tuple[dict, float]:
    t = time.perf_counter()
    p = subprocess.run([sys.executable, "-m", "apex_plan", "search", *args], capture_output=True, text=True)
    if p.returncode not in (0, 1):
        sys.exit(f"search failed ({p.returncode}): {p.stderr.strip()}")
    return json.loads(p.stdout), time.perf_counter() - t


def replay(name: str, doc: dict) -> None:
    """Simulate the recommended homogeneous deployment at its capacity on 16000 fresh requests."""
    if not doc["deployments"] or len(doc["deployments"][0]["replicas"]) != 1:
        return
    dep = doc["deployments"][0]
    rep = dep["replicas"][0]
    plan = next(p for p in doc["plans"] if p["key"] == rep["plan"])
    pl = plan["plan"]
    args = CASES[name] + ["--plan", f"dp={rep['count']},tp={pl['tp']},pp={pl['pp']},ep={pl['ep']}",
                          "--workload", "chat", "--rate", f"{dep['goodput_rps']:.4f}", "--num-requests", "16000",
                          "--max-model-len", str(plan["engine"]["max_model_len"]), "--ttft-slo", "1s", "--tpot-slo",
                          "50ms", "--format", "json"]
    p = subprocess.run([sys.executable, "-m", "apex_plan", "simulate", *args], capture_output=True, text=True)
    if p.returncode:
        print(f"  simulate failed: {p.stderr.strip()}")
        return
    s = json.loads(p.stdout)["metrics"]["slo"]
    print(f"  apex-plan simulate {' '.join(args[6:14])}: p90 TTFT {s['ttft_at_percentile_ms']:.0f} ms, "
          f"p90 TPOT {s['tpot_at_percentile_ms']:.1f} ms, SLO {'met' if s['met'] else 'MISSED'}")


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--case", choices=sorted(CASES), action="append")
    ap.add_argument("--tolerance", type=float, default=0.10)
    a = ap.parse_args()
    bad = 0
    for name in a.case or list(CASES):
        base, t1 = run(CASES[name] + COMMON)
        long, t2 = run(CASES[name] + COMMON + ["--num-requests", "16000"])
        other, _ = run(CASES[name] + COMMON + ["--seed", "1"])
        g3 = {p["key"]: p["goodput_rps_per_replica"] for p in other["plans"] if p["status"] == "ok"}
        g1 = {p["key"]: p["goodput_rps_per_replica"] for p in base["plans"] if p["status"] == "ok"}
        g2 = {p["key"]: p["goodput_rps_per_replica"] for p in long["plans"] if p["status"] == "ok"}
        print(f"{name}: {' '.join(CASES[name])} ({t1:.1f} s / {t2:.1f} s)")
        print(f"  {'plan':28} {'default':>9} {'16000':>9}  diff    {'seed 1':>9}  diff")
        for key in sorted(set(g1) | set(g2), key=lambda k: -(g1.get(k) or g2.get(k) or 0)):
            x, y = g1.get(key), g2.get(key)
            if x is None or y is None:
                bad += 1
                print(f"  {key:28} {x or '-':>9} {y or '-':>9}  meets the SLO in one run only  FAIL")
                continue
            d = (y - x) / x
            ok = abs(d) <= a.tolerance
            bad += not ok
            z = g3.get(key)
            zs = f"{z:9.2f}  {100 * (z - x) / x:+5.1f}%" if z else f"{'-':>9}"
            print(f"  {key:28} {x:9.2f} {y:9.2f}  {100 * d:+5.1f}%  {zs}{'' if ok else '  FAIL'}")
        print(f"  recommendation (default): {base['recommendation']}")
        replay(name, base)
    print("all plans within tolerance" if not bad else f"{bad} plan(s) outside tolerance")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
