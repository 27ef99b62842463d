#!/usr/bin/env python3
"""Re-run silicon rows with SGLang's receive interval switched on, as a serving recipe launched them.

Reads the JSON of `run_silicon.py --json FILE` (each row's apex-plan command and measured figures), keeps the
aggregated SGLang rows of --system (b200_sxm by default) without attention DP (SGLang 0.5.3-0.5.9 refuses the
interval there), runs each command again with `--scheduler-recv-interval N`, N = --low below --from-conc
concurrent requests and --high from it (SemiAnalysisAI/InferenceX benchmarks/dsr1_fp8_b200.sh,
dsr1_fp4_b200.sh, gptoss_fp4_b200_sglang.sh: 10 below 16, 30 from 16), and prints measured, before and after
TTFT/TPOT per row and the MAPE, median |error| and bias over them.

usage: python scripts/check_recv_interval.py RUN.json [--system b200_sxm] [--low 10] [--high 30] [--from-conc 16]
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from silicon_rows import before_after, flag, print_summary, rerun_metrics  # noqa: E402



def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run_json")
    ap.add_argument("--system", default="b200_sxm")
    ap.add_argument("--low", type=int, default=10)
    ap.add_argument("--high", type=int, default=30)
    ap.add_argument("--from-conc", type=int, default=16)
    a = ap.parse_args()
    rows = []
    for r in json.load(open(a.run_json)):
        c = r.get("cmd", "")
        if (r.get("status") != "ok" or r["group"][1] != "sglang" or r["group"][4] != "agg"
                or r["group"][0] != a.system or "adp=" in c):
            continue
        n = a.low if int(flag(c, "--concurrency")) < a.from_conc else a.high
        m = rerun_metrics(c, ["--scheduler-recv-interval", str(n)])
        rows.append(before_after(r, m, f" N={n:3d}"))
    if not rows:
        sys.exit("check_recv_interval: no row matches; check --system")
    print_summary(rows)


if __name__ == "__main__":
    main()
