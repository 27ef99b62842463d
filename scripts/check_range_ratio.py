#!/usr/bin/env python3
"""Re-run aggregated silicon rows with the prompt and output lengths a benchmark client's random dataset draws
under `--random-range-ratio R` instead of the fixed lengths the runner passes (a probe, not a fit).

InferenceMAX's client (README "Benchmark Client Configuration", jyothisambolu/InferenceMAX and the SemiAnalysis
runners: `benchmark_serving.py --dataset-name random --random-input-len ISL --random-output-len OSL
--random-range-ratio 0.8 --num-prompts CONC x 10 --max-concurrency CONC --ignore-eos`) runs vLLM's older random
dataset, whose lengths are integers uniform in [int(L x R), L] (benchmark_serving.py RandomDataset:
`np.random.randint(int(input_len * range_ratio), input_len + 1)`, the same for outputs); vLLM's newer
`vllm bench serve` reads the ratio as [L (1 - R), L (1 + R)] (--random-range-ratio, default 0). The shared CSVs
keep ISL and OSL only, so `run_silicon.py` sends fixed lengths. This script sends `--prompt-tokens
uniform:int(ISL x R)-ISL --output-tokens uniform:int(OSL x R)-OSL` (or the newer form with --symmetric) and
prints each row's measured, as-sent and re-run TTFT / TPOT, then MAPE / median / bias per row family (the id's
leading word or date: dsr1_, 2026_04_06_, nvidia_, ...) and over all rows. Varying lengths also break up the
closed loop's lock-step waves that fixed lengths keep (README "Closed loops").

--requests-per-slot N also sends N x C requests (`--num-requests`; InferenceMAX's client sends 10 x C, the
simulator's default is 5 x C, README "Closed loops"), --ratio 0 keeps the lengths fixed.

usage: python scripts/check_range_ratio.py RUN.json [--ratio 0.8] [--symmetric] [--requests-per-slot N]
                                           [--only SUBSTR] [--jobs 2]
"""
from __future__ import annotations

import argparse
import json
import re
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from silicon_rows import before_after, flag, print_summary, rerun_metrics  # noqa: E402


def lengths(n: int, ratio: float, symmetric: bool) -> str:
    """The --prompt-tokens / --output-tokens form of a random dataset's lengths around `n` tokens."""
    if ratio <= 0.0:
        return str(n)
    lo, hi = (int(n * (1.0 - ratio)), int(n * (1.0 + ratio))) if symmetric else (int(n * ratio), n)
    return f"uniform:{max(lo, 1)}-{max(hi, 1)}"


def with_lengths(cmd: str, ratio: float, symmetric: bool) -> str:
    """`cmd` with its fixed prompt and output lengths replaced by the random dataset's."""
    for name in ("--prompt-tokens", "--output-tokens"):
        n = int(flag(cmd, name))
        cmd = re.sub(re.escape(name) + r" \S+", f"{name} {lengths(n, ratio, symmetric)}", cmd)
    return cmd


def family(row_id: str) -> str:
    """A row's campaign, as far as its id says: the date prefix or the leading word."""
    m = re.match(r"(\d{4}_\d{2}_\d{2})_", row_id)
    return m.group(1) if m else row_id.split("_")[0]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run_json")
    ap.add_argument("--ratio", type=float, default=0.8)
    ap.add_argument("--symmetric", action="store_true", help="vllm bench serve's newer [L(1-R), L(1+R)] form")
    ap.add_argument("--requests-per-slot", type=int, default=0, help="send N x C requests (0: the default)")
    ap.add_argument("--only", default="")
    ap.add_argument("--jobs", type=int, default=2)
    a = ap.parse_args()
    rows = [r for r in json.load(open(a.run_json)) if r.get("status") == "ok" and r["group"][4] == "agg"
            and a.only in r["id"] and flag(r["cmd"], "--concurrency")]

    def one(r):
        extra = []
        if a.requests_per_slot > 0:
            extra = ["--num-requests", str(a.requests_per_slot * int(flag(r["cmd"], "--concurrency")))]
        return r, rerun_metrics(with_lengths(r["cmd"], a.ratio, a.symmetric), extra)
    by_family: dict[str, list] = {}
    everything = []
    with ThreadPoolExecutor(a.jobs) as pool:
        for r, metrics in pool.map(one, rows):
            x = before_after(r, metrics, f" {family(r['id'])[:10]:>10s}")
            by_family.setdefault(family(r["id"]), []).append(x)
            everything.append(x)
    for fam, xs in sorted(by_family.items()):
        print(f"== {fam}")
        print_summary(xs)
    print("== all")
    print_summary(everything)


if __name__ == "__main__":
    main()
