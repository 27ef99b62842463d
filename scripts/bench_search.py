#!/usr/bin/env python3
"""Speed and ranking of `apex-plan search`.

1. Speed, each as a fresh process (`python -m apex_plan search ...`, numba cache warm from a first run;
   wall time and CPU time of the process):
   * llama-3.1-70b on 8 x h100-sxm-80gb with the trace llama-3.1-70b.lmsys_05.dp1tp8; target <= 1.5 s,
   * deepseek-v3 on 1024 x h100-sxm-80gb (8 per node), chat preset at 10 req/s; target <= 20 s,
   * a 1,000,000-request trace (plain CSV written to a temporary folder: lognormal chat-like lengths,
     Poisson arrivals at 20 req/s) for llama-3.1-70b on 8 x h100; target <= 60 s. Steady-state runs
     draw from the trace (see apex_plan/search/steady.py), so its length costs only the reading;
     the draw's sampling error is printed.
2. Ranking: for each bench group (model, workload, rate) of the calibration and holdout CSVs, run
   the search with --objective latency on the group's trace and report, among the deployments
   that were actually measured (dp1tp8, dp1tp4, dp1tp2, dp2tp4, dp4tp2), the one ranked first,
   next to the measured fastest by mean TTFT and by mean TPOT (calibration groups only).

3. Disaggregated serving (`--serving both`): DeepSeek-V3 fp8 with SGLang on 32 x H200 (4 nodes of 8) and on
   4 x 8 x H100, 1K/1K and 8K/1K prompts/outputs, each at a rate that needs most of the cluster (DISAGG_CASES);
   target <= 20 s each on 2 cores. Prints the ranked deployments (aggregated and disaggregated), each
   disaggregated one's pools and its TTFT by phase, and the search's wall and CPU time.

usage: python scripts/bench_search.py [--skip-ranking] [--skip-speed] [--disagg-only]
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from apex_plan.hardware.load import load_gpu, make_cluster
from apex_plan.model.load import load_model
from apex_plan.plan.spec import EngineConfig
from apex_plan.search.pipeline import SearchInputs, run_search
from apex_plan.workload.spec import Slo
from apex_plan.workload.trace import read_trace

BENCH = Path(__file__).resolve().parents[1].parent / "shared" / "bench" / "vllm-h100"


def timed_process(args: list[str], repeat: int = 2) -> tuple[float, float, dict]:
    """Best wall and CPU seconds of `apex-plan search ARGS --format json` as a process, and its output."""
    best_wall, best_cpu, doc = float("inf"), float("inf"), {}
    for _ in range(repeat):
        t0, c0 = time.perf_counter(), os.times()
        p = subprocess.run([sys.executable, "-m", "apex_plan", "search", *args, "--format", "json"],
                           capture_output=True, text=True)
        wall, c1 = time.perf_counter() - t0, os.times()
        if p.returncode not in (0, 1):
            sys.exit(f"search failed: {p.stderr.strip()}")
        best_wall = min(best_wall, wall)
        best_cpu = min(best_cpu, (c1.children_user - c0.children_user) + (c1.children_system - c0.children_system))
        doc = json.loads(p.stdout)
    return best_wall, best_cpu, doc


def _report(label: str, target_s: float, wall: float, cpu: float, doc: dict) -> None:
    s = doc["statistics"]
    print(f"{label}: {wall:.2f} s wall, {cpu:.2f} s CPU (target <= {target_s:g} s; {s['candidates']} plans, "
          f"{s['pruned_by_bound']} pruned by bound, {s['simulated']} simulated, {s['simulations']} simulations)")
    print(f"  {doc['recommendation']}")


def _million_trace(folder: Path, rows: int = 1_000_000) -> Path:
    rng = np.random.default_rng(0)
    t = np.cumsum(rng.exponential(1 / 20.0, rows))
    prompt = np.clip(rng.lognormal(np.log(200), 1.0, rows), 1, 8000).astype(np.int64)
    output = np.clip(rng.lognormal(np.log(120), 0.9, rows), 1, 2000).astype(np.int64)
    path = folder / "million.csv"
    with path.open("w") as f:
        f.write("arrival_s,prompt_tokens,output_tokens\n")
        f.writelines(f"{a:.6f},{p},{o}\n" for a, p, o in zip(t, prompt, output))
    return path


def speed() -> None:
    lmsys = BENCH / "traces" / "llama-3.1-70b.lmsys_05.dp1tp8.jsonl"
    llama = ["--model", "llama-3.1-70b", "--gpu", "h100-sxm-80gb", "--gpus", "8", "--ttft-slo", "500ms",
             "--tpot-slo", "50ms"]
    if lmsys.exists():
        args, label = llama + ["--trace", str(lmsys)], f"llama-3.1-70b, 8 x H100, {lmsys.name}"
    else:
        args, label = llama + ["--workload", "chat", "--rate", "0.5"], "llama-3.1-70b, 8 x H100, chat (../shared absent)"
    timed_process(args, repeat=1)                                   # warm the numba cache
    _report(label, 1.5, *timed_process(args))
    ds = ["--model", "deepseek-v3", "--gpu", "h100-sxm-80gb", "--gpus", "1024", "--workload", "chat", "--rate", "10",
          "--ttft-slo", "1s", "--tpot-slo", "100ms"]
    _report("deepseek-v3, 1024 x H100 (8 per node), chat at 10 req/s", 20, *timed_process(ds, repeat=1))
    with tempfile.TemporaryDirectory() as tmp:
        path = _million_trace(Path(tmp))
        big = ["--model", "llama-3.1-70b", "--gpu", "h100-sxm-80gb", "--gpus", "8", "--trace", str(path),
               "--ttft-slo", "1s", "--tpot-slo", "100ms"]
        wall, cpu, doc = timed_process(big, repeat=1)
        _report("1,000,000-request trace, llama-3.1-70b, 8 x H100, at the trace's 20 req/s", 60, wall, cpu, doc)
        smp = doc["statistics"]["sampling"]
        print(f"  each run drew {smp['requests_drawn']} of the {smp['mix_requests']} requests: mean request size "
              f"{smp['work_bias_pct']:+.2f}% off the trace's, sampling error +-{smp['work_stderr_pct']:.2f}% (1 sigma)")


MEASURED = {("tp8-pp1", 1): "dp1tp8", ("tp4-pp1", 1): "dp1tp4", ("tp2-pp1", 1): "dp1tp2",
            ("tp4-pp1", 2): "dp2tp4", ("tp2-pp1", 4): "dp4tp2"}


def ranking() -> None:
    if not BENCH.exists():
        print("ranking: ../shared/bench absent, skipped")
        return
    groups: dict[tuple, list[dict]] = {}
    for name in ("calibration.csv", "holdout-inputs.csv"):
        for row in csv.DictReader(open(BENCH / name)):
            groups.setdefault((row["model"], row["workload"], row["rate_per_s"]), []).append(row)
    hits = {"ttft": [0, 0], "tpot": [0, 0]}
    for (model, wl, rate), rows in sorted(groups.items()):
        ref = next((r for r in rows if r["dp"] == "1" and r["tp"] == "8"), rows[0])
        tr = read_trace(BENCH / ref["trace"])
        inp = SearchInputs(load_model(model), make_cluster(load_gpu("h100-sxm-80gb"), 8), tr, float(rate),
                           Slo(10.0, 1.0, 90.0), (ref["weight_dtype"],), (ref["kv_dtype"],),
                           (EngineConfig(gpu_memory_utilization=float(ref["gpu_memory_utilization"])),),
                           "latency", False, 40)
        res = run_search(inp)
        order = []
        for d in res.deployments:
            (key, n), = d.deployment.replicas
            tag = MEASURED.get((key.split(" ")[0], n))
            if tag and tag not in order:
                order.append(tag)
        line = f"{model:20} {wl:14} {rate:5}  search's latency order of measured plans: {' > '.join(order)}"
        meas = {f"dp{r['dp']}tp{r['tp']}": r for r in rows if r.get("ttft_mean_s")}
        if meas and order:
            top = next(t for t in order if t in meas)
            for metric in ("ttft", "tpot"):
                best = min(meas, key=lambda k: float(meas[k][f"{metric}_mean_s"]))
                ok = float(meas[top][f"{metric}_mean_s"]) <= 1.05 * float(meas[best][f"{metric}_mean_s"])
                hits[metric][0] += ok
                hits[metric][1] += 1
                line += f"\n    measured fastest by mean {metric.upper()}: {best}; search's first: {top} ({'within 5%' if ok else 'MISS'})"
        print(line)
    for metric, (h, n) in hits.items():
        if n:
            print(f"calibration groups where search's first plan is measured within 5% of the fastest by {metric.upper()}: {h}/{n}")


# (GPU, label, prompt/output tokens, rate req/s): the rates were picked so that the best deployment takes
# most of the cluster's GPUs at TTFT 2 s / TPOT 50 ms (p90)
DISAGG_CASES = (("h200-sxm-141gb", "32 x H200", 1024, 1024, 15.0), ("h200-sxm-141gb", "32 x H200", 8192, 1024, 3.5),
                ("h100-sxm-80gb", "4 x 8 x H100", 1024, 1024, 5.0), ("h100-sxm-80gb", "4 x 8 x H100", 8192, 1024, 2.5))


def disagg() -> None:
    for i, (gpu, label, isl, osl, rate) in enumerate(DISAGG_CASES):
        args = ["--model", "deepseek-v3", "--gpu", gpu, "--gpus", "32", "--gpus-per-node", "8", "--weight-dtype", "fp8",
                "--kv-dtype", "fp8", "--engine", "sglang", "--prompt-tokens", str(isl), "--output-tokens", str(osl),
                "--rate", f"{rate:g}", "--ttft-slo", "2s", "--tpot-slo", "50ms", "--serving", "both"]
        if i == 0:
            timed_process(args, repeat=1)                           # warm the numba cache
        wall, cpu, doc = timed_process(args, repeat=1)
        d_wall, d_cpu, _ = timed_process(args[:-1] + ["disagg"], repeat=1)     # the disaggregated part alone
        ds = doc["statistics"].get("disaggregated", {})
        print(f"deepseek-v3 fp8, {label}, {isl}/{osl} at {rate:g} req/s, --serving both: {wall:.2f} s wall, "
              f"{cpu:.2f} s CPU (target <= 20 s; aggregated: {doc['statistics']['simulations']} simulations; "
              f"disaggregated: {ds.get('prefill_kept')} prefill and {ds.get('decode_kept')} decode plans kept, "
              f"{ds.get('pool_sizings')} sizings, {ds.get('simulations')} simulations; --serving disagg alone: "
              f"{d_wall:.2f} s wall, {d_cpu:.2f} s CPU)")
        for d in doc["deployments"]:
            m = d["metrics"]
            reps = " + ".join(f"{r['count']} x {r['plan']}" for r in d["replicas"])
            print(f"  #{d['rank']} {d['serving']:6} {reps} on {d['gpus']} GPUs: capacity {d['goodput_rps']:.3g} req/s, "
                  f"p90 TTFT {m['ttft_ms']['p90']:.0f} ms, p90 TPOT {m['tpot_ms']['p90']:.1f} ms")
            if d["disagg"]:
                ph = d["disagg"]["ttft_phases"]
                print("      TTFT by phase, mean / p90 ms: " + ", ".join(
                    f"{k[:-3].replace('_', ' ')} {ph[k]['mean']:.0f}/{ph[k]['p90']:.0f}" for k in
                    ("prefill_queue_ms", "prefill_ms", "decode_admission_wait_ms", "kv_transfer_ms", "first_decode_step_ms"))
                    + f", frontend {ph['frontend_ms']:.0f}")
        for bad in (doc.get("disaggregated") or {}).get("infeasible", []):
            print(f"  not viable: {bad['pools']}: {bad['reason']}")
        if not doc["deployments"]:
            print(f"  {doc['recommendation']}")


def main() -> int:
    ap = argparse.ArgumentParser(description="Speed and ranking of `apex-plan search` (see the module docstring).")
    ap.add_argument("--skip-ranking", action="store_true")
    ap.add_argument("--skip-speed", action="store_true")
    ap.add_argument("--disagg-only", action="store_true")
    a = ap.parse_args()
    # the machine is often shared: its load says how far wall seconds stretch past CPU seconds
    print(f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs at the start")
    if not a.skip_speed and not a.disagg_only:
        speed()
    if not a.skip_ranking and not a.disagg_only:
        ranking()
    disagg()
    print(f"load average {os.getloadavg()[0]:.1f} at the end")
    return 0


if __name__ == "__main__":
    sys.exit(main())
