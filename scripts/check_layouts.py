#!/usr/bin/env python3
"""Find measured rows whose declared layout is m x m GPUs where the run used m, and show why, row by row.

A silicon row declares moe_tp_size = moe_ep_size = m and tp_size (or attention_dp_size) = m^2: read
literally, the MoE spans m^2 GPUs (m-way expert TP times m-way EP). Or it declares tp_size = attention_dp_size
= m with moe_ep_size = m^2: m attention-DP ranks of TP m, the experts over all m^2 GPUs. Two facts say such a
run used m GPUs (tp = ep = m, or adp = ep = m) and the converter multiplied the m-GPU layout by m:
- its id names the m-GPU layout (`..._tp8_ep8_...` on a row declaring tp 64);
- a twin row of the same GPU, engine, precision, prompt/output lengths and concurrency declares (or its id
  names) the m-GPU layout and carries the identical measured TTFT and TPOT (two layouts on 4x the GPUs cannot measure the
  same to 6 digits: it is one run recorded twice).
For each suspect row (either fact, or both) apex-plan predicts the row as declared and as m GPUs; the
reading that matches the measurement is the physical one. With --exclude-out the suspects' ids are written as a
CSV (`id` column, with the rows of ../shared/bench/silicon/excluded.csv) for run_silicon.py --exclude, so the
per-group MAPE can be reported with and without them. Nothing here changes how the runner reads rows.

usage: PYTHONPATH=. python scripts/check_layouts.py [CSV ...] [--exclude-out FILE] [--no-predict]
"""
from __future__ import annotations

import argparse
import csv
import re
import sys
from pathlib import Path

SHARED = Path(__file__).resolve().parents[2] / "shared" / "bench"
SILICON = SHARED / "silicon"
REL_SAME = 1e-6          # measured figures equal to this relative precision are one run recorded twice


def _int(text: str, default: int = 1) -> int:
    return int(float(text)) if text not in ("", None) else default


def suspect_m(r: dict) -> int:
    """m when the row declares m^2 GPUs of tp x adp as moe_tp = moe_ep = m > 1, or as tp = adp = m > 1 with
    moe_ep = m^2 (moe_tp 1), else 0."""
    mtp, mep = _int(r["moe_tp_size"], 0), _int(r["moe_ep_size"], 0)
    tp, adp = _int(r["tp_size"]), _int(r["attention_dp_size"])
    if r["mode"] != "agg":
        return 0
    if mtp == mep > 1 and tp * adp == mtp * mep:
        return mtp
    return tp if (tp == adp > 1 and mep == tp * adp and mtp <= 1) else 0


def id_layout(r: dict) -> int:
    """The tp of a `_tp{m}_ep{m}` layout the row's id names (0 when it names none)."""
    hit = re.search(r"_tp(\d+)(?:_\d+)?_ep(\d+)", r["id"])
    return int(hit.group(1)) if hit and hit.group(1) == hit.group(2) else 0


def cfg_tag(r: dict) -> str:
    """The configuration an id names (`..._cfg202`), with the row's GPU and engine; '' when none."""
    hit = re.search(r"_cfg(\d+)$", r["id"])
    return f"{r['system']}/{r['backend']}/cfg{hit.group(1)}" if hit else ""


def twins(rows: list[dict], r: dict, m: int) -> list[str]:
    """Ids of rows on m GPUs of the same group and load whose measured TTFT and TPOT equal r's."""
    key = ("system", "backend", "precision", "isl", "osl", "concurrency")   # any model: identical figures decide
    out = []
    for o in rows:
        if o is r or any(o[k] != r[k] for k in key):
            continue
        gpus = _int(o["tp_size"]) * _int(o["attention_dp_size"]) * _int(o["pp_size"])
        same = all(abs(float(o[f]) / float(r[f]) - 1.0) < REL_SAME for f in ("silicon_ttft_ms", "silicon_tpot_ms"))
        if same and (gpus == m or id_layout(o) == m):    # the twin declares, or its id names, the m-GPU layout
            out.append(o["id"])
    return out


def as_m_gpus(r: dict, m: int) -> dict:
    """The row read as m GPUs: tp = ep = m (tensor-parallel rows, and tp m x adp m rows, whose batch_size per
    rank is the concurrency over the m declared ranks: one engine holds m times as many) or adp = ep = m
    (attention-DP rows of tp 1, whose batch_size per rank is the concurrency over the m^2 declared ranks: m
    ranks hold m times as many)."""
    q = dict(r, moe_tp_size="1", moe_ep_size=str(m))
    tp, adp, batch = _int(r["tp_size"]), _int(r["attention_dp_size"]), _int(r["batch_size"])
    if adp > 1 and tp == m:
        q.update(tp_size=str(m), attention_dp_size="1", batch_size=str(batch * adp))
    elif adp > 1:
        q.update(tp_size="1", attention_dp_size=str(m), batch_size=str(batch * m))
    else:
        q.update(tp_size=str(m), attention_dp_size="1")
    return q


def predict(rs, r: dict):
    """apex-plan's (TTFT, TPOT) ms of row r through the shared runner's own row reading, or None."""
    res = rs.run_row(r, None)
    return (res["pred_ttft"], res["pred_tpot"]) if res["status"] == "ok" else None


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("csv", nargs="*", default=[str(SILICON / "calibration.csv"), str(SILICON / "calibration-h200-b200.csv")])
    ap.add_argument("--exclude-out", type=Path, help="write excluded.csv's ids plus the suspects' here")
    ap.add_argument("--no-predict", action="store_true", help="list the evidence only (no simulations)")
    args = ap.parse_args()
    for path in args.csv:
        if not Path(path).is_file():
            print(f"error: {path}: no such file; pass a silicon CSV", file=sys.stderr)
            return 2
    rs = None
    if not args.no_predict:
        if not (SHARED / "run_silicon.py").is_file():
            print(f"error: {SHARED / 'run_silicon.py'}: the shared runner is missing; check out ../shared beside "
                  "the project or pass --no-predict", file=sys.stderr)
            return 2
        sys.path.insert(0, str(SHARED))
        import run_silicon as rs  # noqa: E402  (the shared runner: its row reading, not a copy of it)

    suspects = []
    for path in args.csv:
        rows = list(csv.DictReader(open(path)))
        found = []
        for r in rows:
            m = suspect_m(r)
            if m:
                found.append((r, m, id_layout(r) == m, twins(rows, r, m)))
        # rows of one configuration (`..._cfg<N>` ids: one deployment, several loads) share its evidence
        proven = {cfg_tag(r): r["id"] for r, m, named, twin in found if cfg_tag(r) and (named or twin)}
        for r, m, named, twin in found:
            if not (named or twin) and cfg_tag(r) in proven:
                twin = [f"configuration of {proven[cfg_tag(r)]}"]
            if named or twin:
                suspects.append((r, m, named, twin))
    print(f"{'id':66} {'GPU':8} {'engine':7} declared -> m | measured TTFT/TPOT | as declared | as m GPUs | evidence")
    errs = {"declared": [], "m": []}
    for r, m, named, twin in suspects:
        meas = (float(r["silicon_ttft_ms"]), float(r["silicon_tpot_ms"]))
        adp = _int(r["attention_dp_size"])
        decl = f"tp{r['tp_size']}" if adp <= 1 else (f"adp{adp}" if _int(r["tp_size"]) <= 1 else f"tp{r['tp_size']}xadp{adp}")
        cells = []
        for label, row in (("declared", r), ("m", as_m_gpus(r, m))):
            p = None if args.no_predict else predict(rs, row)
            cells.append("-" if p is None else f"{p[0]:7.0f} / {p[1]:5.1f}")
            if p is not None:
                errs[label].append([abs(p[i] / meas[i] - 1.0) for i in (0, 1)])
        why = "; ".join(filter(None, ["id names tp%d_ep%d" % (m, m) if named else "",
                                      ("same figures as " if twin[0][:13] != "configuration" else "") + ", ".join(twin) if twin else ""]))
        print(f"{r['id'][:66]:66} {r['system'][:8]:8} {r['backend']:7} {decl:>5} -> {m:<2} | "
              f"{meas[0]:7.0f} / {meas[1]:5.1f} | {cells[0]} | {cells[1]} | {why}")
    for label, e in errs.items():
        if e:
            t = sorted(x[0] for x in e)
            p = sorted(x[1] for x in e)
            print(f"read {label:8}: {len(e)} rows, TTFT MAPE {100 * sum(t) / len(t):.1f}% (median {100 * t[len(t) // 2]:.1f}%), "
                  f"TPOT MAPE {100 * sum(p) / len(p):.1f}% (median {100 * p[len(p) // 2]:.1f}%)")
    print(f"{len(suspects)} rows declare m x m GPUs where their id or an identical twin says m")
    if args.exclude_out:
        base = SILICON / "excluded.csv"
        ids = [x["id"] for x in csv.DictReader(open(base))] if base.is_file() else []
        ids += [r["id"] for r, *_ in suspects]
        with open(args.exclude_out, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["id"])
            w.writerows([i] for i in dict.fromkeys(ids))
        print(f"wrote {args.exclude_out} ({len(ids)} ids)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
