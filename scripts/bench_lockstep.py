"""Time attention-DP (lock-step) simulations in process: every rank of a replica schedules its own batch
and the step lasts as long as the busiest rank's, so each step costs `adp` rank steps.

Cases (closed loops, the engines' profiles): DeepSeek-V3 fp8 on 8 x H200 as tp1-ep8-adp8 on TRT-LLM and
SGLang, 1K/1K at C = 256 (32 per rank), and on 16 x H100 as tp1-ep16-adp16 (2 nodes), 1K/1K at C = 128.
Each is run once to load numba's cache, then timed best of `--repeat`; the request count and the
simulated steps are printed with the seconds, so a change that alters the results shows here too.

Usage: python scripts/bench_lockstep.py [--repeat 3]
"""

from __future__ import annotations

import argparse
import time

from apex_plan.requests.simulate import SimulateRequest, run_simulate

CASES = (
    dict(model="deepseek-ai/DeepSeek-V3", gpu="h200-sxm-141gb", gpus=8, plan="tp=1,pp=1,ep=8,adp=8", weight_dtype="fp8",
         engine="trtllm", prompt_tokens=1024, output_tokens=1024, concurrency=256, max_num_seqs=32),
    dict(model="deepseek-ai/DeepSeek-V3", gpu="h200-sxm-141gb", gpus=8, plan="tp=1,pp=1,ep=8,adp=8", weight_dtype="fp8",
         engine="sglang", prompt_tokens=1024, output_tokens=1024, concurrency=256, max_num_seqs=32),
    dict(model="deepseek-ai/DeepSeek-V3", gpu="h100-sxm-80gb", gpus=16, plan="tp=1,pp=1,ep=16,adp=16",
         weight_dtype="fp8", engine="trtllm", prompt_tokens=1024, output_tokens=1024, concurrency=128, max_num_seqs=8),
)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    for case in CASES:
        req = SimulateRequest.from_mapping(dict(case))
        out = run_simulate(req)                       # warm-up: numba cache
        best = float("inf")
        for _ in range(args.repeat):
            t0 = time.perf_counter()
            out = run_simulate(req)
            best = min(best, time.perf_counter() - t0)
        m = out.result.metrics
        print(f"{case['engine']:7s} {case['gpu']:15s} {case['plan']:24s} C={case['concurrency']:4d}: "
              f"{best:6.3f} s  ({m.requests} requests, {m.steps} steps, TTFT {m.latency.ttft_ms.mean:.1f} ms, "
              f"TPOT {m.latency.tpot_ms.mean:.3f} ms)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
