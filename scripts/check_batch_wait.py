#!/usr/bin/env python3
"""Re-run silicon rows with TRT-LLM batch waiting switched on, as a serving recipe launched them.

Reads the JSON of `run_silicon.py --json FILE` (each row's apex-plan command and measured figures), keeps the
TRT-LLM rows whose id contains --only, whose prompt/output lengths are --isl/--osl and whose TP is below
--tp-below (InferenceMAX's Llama-3.1-70B recipes set batch waiting for 1024/1024 at TP < 8:
SemiAnalysisAI/InferenceX benchmarks/70b_fp8_h200_trt_slurm.sh), runs each command again with
`--batch-wait-iters N --batch-wait-ratio R` (plus --extra), and prints measured, before and after TTFT/TPOT
per row and the MAPE and median |error| over them.

usage: python scripts/check_batch_wait.py RUN.json [--only llama_3_1_70b] [--isl 1024] [--osl 1024]
       [--tp-below 8] [--iters 20] [--ratio 0.9] [--extra "--max-batched-tokens 2304"]
"""
from __future__ import annotations

import argparse
import json
import re
import shlex
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from silicon_rows import before_after, flag, print_summary, rerun_metrics  # noqa: E402



def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run_json")
    ap.add_argument("--only", default="llama_3_1_70b")
    ap.add_argument("--isl", default="1024")
    ap.add_argument("--osl", default="1024")
    ap.add_argument("--tp-below", type=int, default=8)
    ap.add_argument("--iters", type=int, default=20)
    ap.add_argument("--ratio", type=float, default=0.9)
    ap.add_argument("--extra", default="")
    a = ap.parse_args()
    rows = []
    for r in json.load(open(a.run_json)):
        c = r.get("cmd", "")
        tp = re.search(r"tp=(\d+)", c)
        if (r.get("status") != "ok" or r["group"][1] != "trtllm" or a.only not in r["id"] or not tp
                or int(tp.group(1)) >= a.tp_below or flag(c, "--prompt-tokens") != a.isl
                or flag(c, "--output-tokens") != a.osl):
            continue
        m = rerun_metrics(c, ["--batch-wait-iters", str(a.iters), "--batch-wait-ratio", str(a.ratio)]
                          + shlex.split(a.extra))
        rows.append(before_after(r, m))
    if not rows:
        sys.exit("check_batch_wait: no row matches; check --only/--isl/--osl/--tp-below")
    print_summary(rows)


if __name__ == "__main__":
    main()
