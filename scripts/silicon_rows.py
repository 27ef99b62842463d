"""Shared helpers for the check_* scripts that re-run rows of a `run_silicon.py --json` file."""
from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys


def flag(cmd: str, name: str) -> str | None:
    """The value of `name` in one row's `apex-plan simulate ...` command, None when absent."""
    m = re.search(re.escape(name) + r" (\S+)", cmd)
    return m.group(1) if m else None


def rerun(cmd: str, extra: list[str]) -> subprocess.CompletedProcess:
    """Run one row's command in this interpreter (`python -m apex_plan`) with `extra` arguments appended."""
    argv = [sys.executable, "-m", "apex_plan"] + shlex.split(cmd)[1:] + list(extra)
    return subprocess.run(argv, capture_output=True, text=True)


def rerun_metrics(cmd: str, extra: list[str]) -> dict:
    """The `metrics` object of a re-run row; raises CalledProcessError when the command fails."""
    out = rerun(cmd, extra)
    out.check_returncode()
    return json.loads(out.stdout)["metrics"]


def before_after(r: dict, metrics: dict, label: str = "") -> tuple:
    """(meas, before, after) of TTFT then TPOT for row `r` re-run to `metrics`; prints the row's line."""
    after = (metrics["ttft_ms"]["mean"], metrics["tpot_ms"]["mean"])
    print(f"{r['id'][:70]:70s} c={flag(r['cmd'], '--concurrency'):>4s}{label} TTFT meas {r['meas_ttft']:7.0f} "
          f"before {r['pred_ttft']:7.0f} after {after[0]:7.0f} | TPOT {r['meas_tpot']:5.1f} "
          f"{r['pred_tpot']:5.1f} {after[1]:5.1f}", flush=True)
    return (r["meas_ttft"], r["pred_ttft"], after[0], r["meas_tpot"], r["pred_tpot"], after[1])


def print_summary(rows: list[tuple]) -> None:
    """MAPE, median |error| and bias (mean signed error) of TTFT and TPOT before and after, over `before_after` rows."""
    import statistics
    for name, k in (("TTFT", 0), ("TPOT", 3)):
        e0 = [x[k + 1] / x[k] - 1 for x in rows]      # signed relative error before
        e1 = [x[k + 2] / x[k] - 1 for x in rows]      # and after
        print(f"{name}: {len(rows)} rows, MAPE {100 * statistics.mean(map(abs, e0)):.1f} -> "
              f"{100 * statistics.mean(map(abs, e1)):.1f} %, median {100 * statistics.median(map(abs, e0)):.1f} -> "
              f"{100 * statistics.median(map(abs, e1)):.1f} %, bias {100 * statistics.mean(e0):+.1f} -> "
              f"{100 * statistics.mean(e1):+.1f} %")
