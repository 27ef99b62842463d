#!/usr/bin/env python3
"""What each measured closed-loop run asks of its GPUs: prefill arithmetic, decoding batch, KV held.

For every aggregated row of a silicon CSV (Little's law on its measured TTFT and TPOT,
`apex_plan.calibrate.physics`): requests/s, the share of the GPUs' dense tensor-core peak its prompt
prefills need (matmuls at the weight format's peak, attention at bf16; then at the GPU profile's fitted
GEMM and prefill-attention efficiencies), the share its decode tokens need, the requests decoding
against the declared max batch, and the tokens in KV against the pool the engine allocates. With a
runner JSON (`run_silicon.py --json`) the predicted TTFT and TPOT are shown beside the measured ones.
Rows whose prefill needs more than --impossible of the peak (default 0.8; the GPUs' fitted GEMM tables
reach about half) are marked IMPOSSIBLE: as declared, they cannot have computed every prompt token (a
prefix cache hit, or shorter prompts). Rows decoding more requests than the declared batch (`batch_size`, per
attention-DP rank) allows are marked ABOVE_CAP: as declared, the engine cannot have run them at once.

usage: PYTHONPATH=. python scripts/check_physics.py [CSV] [--json RUNNER.json] [--only SUBSTR,...]
           [--min-share 0.0] [--impossible 0.8]
"""
from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from apex_plan.calibrate.physics import run_physics   # noqa: E402
from apex_plan.calibrate.runs import case_from_row   # noqa: E402
from apex_plan.errors import InputError              # noqa: E402

SILICON = Path(__file__).resolve().parents[2] / "shared" / "bench" / "silicon"

ABOVE_CAP = 1.15   # decoding above this x the declared batch x attention-DP ranks is marked ABOVE_CAP (15 % slack:
                   # Little's law on mean TTFT / TPOT, not an instantaneous count)


def _rows(path: Path, only: list[str]):
    """Aggregated rows of the CSV whose id, system, backend or model contains one of `only`."""
    with open(path, newline="") as fh:
        for r in csv.DictReader(fh):
            text = " ".join(r.get(k, "") for k in ("id", "system", "backend", "model_path"))
            if r.get("mode") == "agg" and (not only or any(s in text for s in only)):
                yield r


def _preds(path: Path | None) -> dict:
    """id -> (predicted TTFT, TPOT) from a runner JSON."""
    if path is None:
        return {}
    return {r["id"]: (r.get("pred_ttft"), r.get("pred_tpot")) for r in json.loads(path.read_text())
            if r.get("status") == "ok"}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("csv", nargs="?", type=Path, default=SILICON / "calibration-h200-b200.csv")
    ap.add_argument("--json", type=Path, help="runner JSON with the predictions")
    ap.add_argument("--only", default="", help="comma-separated substrings of id/system/backend/model")
    ap.add_argument("--min-share", type=float, default=0.0, help="print rows whose prefill share is at least this")
    ap.add_argument("--impossible", type=float, default=0.8, help="prefill share of the dense peak marked impossible")
    args = ap.parse_args(argv)
    if not args.csv.is_file():
        print(f"check_physics: {args.csv}: no such file", file=sys.stderr)
        return 2
    preds = _preds(args.json)
    out = []
    for r in _rows(args.csv, [s for s in args.only.split(",") if s]):
        try:
            case = case_from_row(r, requests_per_slot=1)
            p = run_physics(case, cap=int(float(r.get("batch_size") or 0)))
        except (InputError, ValueError, KeyError) as e:
            print(f"  skipped {r.get('id', '?')}: {e}", file=sys.stderr)
            continue
        if p.prefill_peak_share >= args.min_share:
            out.append((p, r))
    print(f"{'prefill':>7} {'at fit':>6} {'decode':>6} {'req/s':>6} {'gpus':>4} {'conc':>5} {'isl/osl':>10} "
          f"{'TTFT ms':>8} {'pred':>7} {'TPOT ms':>7} {'pred':>6} {'TTFT/TPOT':>9} {'decoding':>8} {'cap':>4} "
          f"{'KV held/pool':>12}  row")
    for p, r in sorted(out, key=lambda t: -t[0].prefill_peak_share):
        pt, pp = preds.get(p.id, (None, None))
        mark = "IMPOSSIBLE " if p.prefill_peak_share > args.impossible else ""
        # more requests decoding (Little's law) than the declared batch allows on every attention-DP rank
        adp = max(int(float(r.get("attention_dp_size") or 1)), 1)
        if p.cap > 0 and p.decoding > ABOVE_CAP * p.cap * adp:
            mark += "ABOVE_CAP "
        model = r.get("model_path", "").split("/")[-1][:28]
        pts, pps = (f"{pt:7.1f}", f"{pp:6.2f}") if pt is not None and pp is not None else (f"{'-':>7}", f"{'-':>6}")
        print(f"{p.prefill_peak_share:7.1%} {p.prefill_fit_share:6.0%} {p.decode_peak_share:6.1%} "
              f"{p.requests_per_s:6.1f} {p.gpus:4d} {p.concurrency:5d} {p.isl:>5}/{p.osl:<4} {p.ttft_ms:8.1f} {pts} "
              f"{p.tpot_ms:7.2f} {pps} {p.ttft_steps:9.1f} {p.decoding:8.1f} {p.cap:4d} "
              f"{p.kv_tokens_held / max(p.kv_pool_tokens, 1):12.2f}  "
              f"{mark}{r.get('system')} {r.get('backend')} {model} {p.id[-40:]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
