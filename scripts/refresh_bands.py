#!/usr/bin/env python3
"""Regenerate every engine profile's 80 % error bands and print their coverage on the held-out folds.

One command: the cross-validation of `scripts/cross_validate.py` with --rounds 0 (every aggregated run of
the shared silicon CSVs predicted once with the profiles as they are; rows of excluded.csv left out), folds
model, gpu and config, then
* the bands as `cross_validate.bands` builds them (per GPU from the config folds' held-out errors, the
  default `calibration_error` from the leave-one-GPU-out folds'), written into engine_profiles/<profile>.yaml
  in place of the `calibration_error:` / `calibration_error_by_gpu:` blocks (the rest of each file is kept
  as it is; a provenance comment line above the blocks says when and from what);
* the coverage table: per profile and fold kind, how often the measured value falls inside the band the
  profile would state for the held-out run, built by the same rule from the other runs only
  (`cross_validate.band_hits`). The bar (issue 16): 75-85 %.

The bands do not enter any prediction (only intervals, `validate`'s 'in interval' and `search --slo-margin`),
so the table does not depend on the numbers being replaced; run it after the last change to predictions.

usage: python scripts/refresh_bands.py [CSV ...] [--dry-run] [--jobs 2] [--requests-per-slot 5]
(about 20-40 s on 2 cores with a warm numba cache.)
"""
from __future__ import annotations

import argparse
import datetime
import re
import subprocess
import sys
import time
from pathlib import Path

sys.path[:0] = [str(Path(__file__).resolve().parents[1]), str(Path(__file__).resolve().parent)]   # this checkout first

import cross_validate as cv  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
PROFILES = ROOT / "engine_profiles"
ORDER = ("level", "runs", "held_out", "ttft_low", "ttft_high", "tpot_low", "tpot_high")
PROVENANCE = "# bands written by scripts/refresh_bands.py"


def _flow(band: dict) -> str:
    """One band as the profiles write it: {level: 0.8, runs: 86, held_out: 1, ttft_low: ..., ...}."""
    parts = []
    for k in ORDER:
        if k in band:
            v = band[k]
            parts.append(f"{k}: {int(v)}" if k in ("runs", "held_out") else f"{k}: {v:g}")
    return "{" + ", ".join(parts) + "}"


def blocks(band: dict, provenance: str) -> list[str]:
    """The provenance line and the band blocks of one profile (default, per GPU, new model and the models
    calibrated), as YAML lines."""
    out = [provenance, f"calibration_error: {_flow(band['calibration_error'])}"]
    by_gpu = band["calibration_error_by_gpu"]
    if by_gpu:
        out.append("calibration_error_by_gpu:")
        out += [f"  {gpu}: {_flow(b)}" for gpu, b in sorted(by_gpu.items())]
    if band.get("calibration_error_new_model") and band.get("calibrated_models"):
        out.append(f"calibration_error_new_model: {_flow(band['calibration_error_new_model'])}")
        out.append(f"calibrated_models: [{', '.join(band['calibrated_models'])}]")
    return out


def replace_blocks(text: str, new: list[str]) -> str:
    """`text` (a profile's YAML) with its provenance line and band blocks replaced by `new` (appended
    when it has none)."""
    lines = text.splitlines()
    keep, i, at = [], 0, None
    while i < len(lines):
        line = lines[i]
        if line.startswith(PROVENANCE):
            i += 1
            continue
        if re.match(r"(calibration_error(_by_gpu|_new_model)?|calibrated_models):", line):
            at = len(keep) if at is None else at
            i += 1
            while i < len(lines) and lines[i].startswith("  "):      # the block's indented entries
                i += 1
            continue
        keep.append(line)
        i += 1
    if at is None:
        keep.append("")
        at = len(keep)
    return "\n".join(keep[:at] + new + keep[at:]) + "\n"


def _commit() -> str:
    try:
        return subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown commit"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("csv", nargs="*", default=[str(p) for p in cv.DEFAULT_CSVS])
    ap.add_argument("--dry-run", action="store_true", help="print the bands and the table, write nothing")
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--requests-per-slot", type=int, default=5)
    ap.add_argument("--exclude", default=str(cv.SILICON / "excluded.csv"))
    args = ap.parse_args(argv)
    for p in args.csv:
        if not Path(p).is_file():
            print(f"{p}: not found (give a silicon-format CSV)", file=sys.stderr)
            return 2
    t0 = time.perf_counter()
    cases = cv.load(args.csv, args.requests_per_slot, Path(args.exclude))
    results = cv.fixed_folds(cases, set(), ["model", "gpu", "config"], args.jobs)
    bands = cv.bands(results)
    stamp = (f"{PROVENANCE} on {datetime.date.today().isoformat()} at {_commit()} from "
             f"{', '.join(Path(p).name for p in args.csv)}: held-out errors (--rounds 0)")
    for name, band in sorted(bands.items()):
        path = PROFILES / f"{name}.yaml"
        new = blocks(band, stamp)
        if args.dry_run or not path.is_file():
            print(f"{path.name}{' (no such file: not written)' if not path.is_file() else ''}:\n  " + "\n  ".join(new))
            continue
        path.write_text(replace_blocks(path.read_text(), new))
        print(f"wrote {path.relative_to(ROOT)}: default band + {len(band['calibration_error_by_gpu'])} GPU bands")
    print("\n".join(cv.table(results)))
    print(f"({time.perf_counter() - t0:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
