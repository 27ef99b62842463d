#!/usr/bin/env python3
"""Print the held-slot slope of every measuring campaign of the shared silicon files.

For each group of aggregated closed-loop rows that differ only in the output length (same GPU, engine,
version, model, dtype, layout, prompt length, 2 <= concurrency <= 32) it fits TTFT = base + k x osl x
TPOT / (C - 1): k = 0 when a new request is seated at once (TTFT flat in osl), k = 1 when it waits for
the next completion, as behind one held batch slot (apex_plan.calibrate.closed_loop_hold). Then per
campaign: the groups, the median k and its range, the median base. README 'Closed loops'.

usage: PYTHONPATH=. python scripts/check_closed_loop_hold.py [CSV ...] [--groups]
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from apex_plan.calibrate.closed_loop_hold import campaign_slopes, group_fits, read_rows   # noqa: E402

SILICON = Path(__file__).resolve().parents[2] / "shared" / "bench" / "silicon"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("csv", nargs="*", type=Path)
    ap.add_argument("--groups", action="store_true", help="also print every group's fit")
    args = ap.parse_args(argv)
    paths = args.csv or [SILICON / "calibration.csv", SILICON / "calibration-h200-b200.csv"]
    missing = [p for p in paths if not p.is_file()]
    if missing:
        print(f"check_closed_loop_hold: {missing[0]}: no such file; give the silicon CSVs as arguments",
              file=sys.stderr)
        return 2
    fits = group_fits(read_rows(paths))
    print(f"{'campaign (GPU, engine, version, model, dtype)':72s} groups   k median [min..max]  base ms")
    for c in campaign_slopes(fits):
        name = " ".join(x or "-" for x in c.campaign)
        print(f"{name[:72]:72s} {c.groups:6d}   {c.median_slope:+6.2f} [{c.min_slope:+.2f}..{c.max_slope:+.2f}]"
              f"  {c.median_base_ms:7.0f}")
    if args.groups:
        for f in fits:
            print(f"  k {f.slope:+6.2f} base {f.base_ms:7.0f} ms  runs {f.runs}  {' '.join(map(str, f.key))}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
