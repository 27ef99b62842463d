"""The 48-scenario sweep (examples/sweep-48.yaml) with each executor: wall times, identical results,
and a run killed halfway then restarted, which must finish without redoing finished scenarios.

    python scripts/bench_sweep.py                      # local process pool, then local Ray
    python scripts/bench_sweep.py --executors local    # without Ray
    python scripts/bench_sweep.py --kill-only          # only the kill-and-restart check
    python scripts/bench_sweep.py --executors ray,local --no-kill   # the other order, timings only
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SWEEP = ROOT / "examples" / "sweep-48.yaml"


def results(path: Path) -> dict[str, dict]:
    out = {}
    for line in path.read_text().splitlines():
        doc = json.loads(line)
        out[doc["inputs"]["scenario"]["id"]] = doc
    return out


def run(executor: str, out: Path, extra: list[str] = ()) -> tuple[float, subprocess.CompletedProcess]:
    t0 = time.perf_counter()
    p = subprocess.run([sys.executable, "-m", "apex_plan", "sweep", str(SWEEP), "--output", str(out),
                        "--executor", executor, "--format", "json", *extra], capture_output=True, text=True)
    return time.perf_counter() - t0, p


def kill_and_restart(tmp: Path, reference: dict[str, dict] | None) -> None:
    out = tmp / "killed.jsonl"
    p = subprocess.Popen([sys.executable, "-m", "apex_plan", "sweep", str(SWEEP), "--output", str(out)],
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    while True:
        time.sleep(0.2)
        n = len(out.read_text().splitlines()) if out.exists() else 0
        if n >= 24 or p.poll() is not None:
            break
    os.killpg(p.pid, signal.SIGKILL)                  # the sweep and its workers, no chance to clean up
    p.wait()
    before = results(out)
    print(f"killed after {len(before)} of 48 scenarios had been written")
    wall, q = run("local", out)
    after_lines = out.read_text().splitlines()
    ids = [json.loads(x)["inputs"]["scenario"]["id"] for x in after_lines]
    redone = len(ids) - len(set(ids))
    summary = json.loads(q.stdout)
    print(f"restart: {wall:.1f} s, stderr says: {q.stderr.splitlines()[0] if q.stderr else ''}")
    print(f"restart ran {len(after_lines) - len(before)} scenarios; lines {len(after_lines)}, distinct scenarios "
          f"{len(set(ids))}, scenarios run twice: {redone}; ok {summary['ok']}, failed {summary['failed']}")
    assert len(set(ids)) == 48 and redone == 0
    if reference is not None:
        same = results(out) == reference
        print(f"killed+restarted results identical to the uninterrupted local run: {same}")
        assert same


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--executors", default="local,ray")
    ap.add_argument("--kill-only", action="store_true")
    ap.add_argument("--no-kill", action="store_true", help="skip the kill-and-restart check")
    ap.add_argument("--keep", help="folder to keep the JSON lines in (default: a temporary one)")
    a = ap.parse_args()
    tmp = Path(a.keep or tempfile.mkdtemp(prefix="apex-sweep-"))
    tmp.mkdir(parents=True, exist_ok=True)
    ref = None
    if not a.kill_only:
        res = {}
        for ex in a.executors.split(","):
            out = tmp / f"{ex}.jsonl"
            out.unlink(missing_ok=True)
            wall, p = run(ex, out)
            s = json.loads(p.stdout)
            res[ex] = results(out)
            print(f"{ex:5s}: {wall:6.1f} s wall for {s['scenarios']} scenarios ({s['ok']} ok, {s['failed']} failed), "
                  f"{len(os.sched_getaffinity(0))} CPUs")
            wall2, p2 = run(ex, out)
            print(f"{ex:5s}: rerun on the finished file: {wall2:.1f} s, {p2.stderr.strip().splitlines()[0]}")
        if len(res) > 1:
            a_, b_ = list(res.values())[:2]
            print(f"results identical across executors: {a_ == b_} ({len(a_)} scenarios)")
            assert a_ == b_
        ref = res.get("local")
    if not a.no_kill:
        kill_and_restart(tmp, ref)
    print(f"files in {tmp}")


if __name__ == "__main__":
    main()
