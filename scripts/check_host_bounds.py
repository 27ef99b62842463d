#!/usr/bin/env python3
"""Check the engine profiles' host constants against what the measured runs physically allow.

For every aggregated closed-loop row of the shared silicon files (rows in excluded.csv left out) the
engine's host time of one step at the run's decoding count (Little's law) must fit in the measured
TPOT: step_ms + per_seq_ms x decoding <= TPOT, at any overlap (apex_plan.calibrate.host_bounds). Prints,
per engine profile and GPU, the runs that bound per_seq_ms most tightly and every run the profile's
constants break; then the runs whose decoding count exceeds their declared max batch (the cap as the
row reads it cannot have been the engine's).

usage: PYTHONPATH=. python scripts/check_host_bounds.py [CSV ...] [--top N]
"""
from __future__ import annotations

import argparse
import sys
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from apex_plan.calibrate.host_bounds import read_bounds, read_excluded   # noqa: E402

SILICON = Path(__file__).resolve().parents[2] / "shared" / "bench" / "silicon"


def _line(b) -> str:
    name = b.model.split("/")[-1][:26]
    return (f"    {b.bound_ms:7.4f} ms/req  TPOT {b.tpot_ms:6.2f} ms  decoding {b.decoding:6.1f}  host {b.host_ms:6.2f} ms"
            f"  {name:26s} {b.id[-48:]}")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("csv", nargs="*", type=Path)
    ap.add_argument("--top", type=int, default=3, help="tightest runs shown per profile and GPU")
    args = ap.parse_args(argv)
    paths = args.csv or [SILICON / "calibration.csv", SILICON / "calibration-h200-b200.csv"]
    missing = [p for p in paths if not p.is_file()]
    if missing:
        print(f"check_host_bounds: {missing[0]}: no such file; give the silicon CSVs as arguments", file=sys.stderr)
        return 2
    bounds = read_bounds(paths, read_excluded(SILICON / "excluded.csv"))
    groups = defaultdict(list)
    for b in bounds:
        groups[(b.profile, b.gpu)].append(b)
    for (prof, gpu), rows in sorted(groups.items()):
        rows.sort(key=lambda b: b.bound_ms)
        bad = [b for b in rows if b.violated]
        print(f"{prof} on {gpu}: {len(rows)} runs, step {rows[0].step_ms} ms + {rows[0].per_seq_ms} ms/req; "
              f"tightest bound {rows[0].bound_ms:.4f} ms/req; {len(bad)} runs broken")
        for b in rows[:args.top]:
            print(_line(b))
        for b in bad[args.top:]:
            print(_line(b))
    breached = [b for b in bounds if b.cap_breached]
    print(f"\n{len(breached)} runs decode more requests than their declared max batch (per attention-DP rank):")
    for b in sorted(breached, key=lambda b: b.decoding / b.cap, reverse=True):
        print(f"    decoding {b.decoding:6.1f} > cap {b.cap:4d}  TPOT {b.tpot_ms:6.2f} ms  {b.profile} {b.gpu}  {b.id[-56:]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
