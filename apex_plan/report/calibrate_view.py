"""`calibrate` and `validate` results as tables and CSV rows (the JSON is the command's document)."""

from __future__ import annotations

from rich.console import Console

from apex_plan.report.layout import print_table, table
from apex_plan.report.output import SCHEMA_VERSION, flatten


def _pct(x, signed: bool = False) -> str:
    return "-" if x is None else format(x, "+.1%" if signed else ".1%")


def _err_line(label: str, s: dict | None) -> str:
    if not s:
        return f"{label}: -"
    return (f"{label}: {s['runs']} runs, TTFT MAPE {_pct(s['ttft_mape'])} (bias {_pct(s['ttft_bias'], True)}), "
            f"TPOT MAPE {_pct(s['tpot_mape'])} (bias {_pct(s['tpot_bias'], True)})")


def calibrate_json(doc: dict) -> dict:
    return {"schema_version": SCHEMA_VERSION, **doc}


def calibrate_rows(doc: dict) -> list[dict]:
    return [{"engine": doc["engine"], "gpu": doc["gpu"], **c} for c in doc["constants"]]


def calibrate_table(doc: dict, console: Console) -> None:
    console.print(f"[bold]calibrate[/bold] {doc['engine']} on {doc['gpu']}: {len(doc['sources'])} file(s)")
    t = table("Fitted constants (joint fit, within bounds)",
              [(c, "left" if c in ("constant", "note") else "right") for c in ("constant", "fitted", "prior", "bounds", "note")])
    for c in doc["constants"]:
        note = c["note"] or ("" if c["written"] else "GPU constant: reported, not written to the overlay")
        t.add_row(c["name"], f"{c['value']:.4g}", f"{c['prior']:.4g}", f"[{c['low']:g}, {c['high']:g}]", note)
    print_table(console, t)
    console.print(_err_line("before", doc["before"]))
    console.print(_err_line("after (fitted runs)", doc["after"]))
    console.print(_err_line("cross-validated (held-out folds)", doc["cross_validated"])
                  if doc["cross_validated"] else "cross-validated: not done (fewer than 3 runs, or --folds 0)")
    ce = doc["calibration_error"]
    if "ttft_low" in ce:
        console.print(f"{ce['level']:.0%} error band stored: TTFT [{_pct(ce['ttft_low'], True)}, "
                      f"{_pct(ce['ttft_high'], True)}], TPOT [{_pct(ce.get('tpot_low'), True)}, "
                      f"{_pct(ce.get('tpot_high'), True)}]")
    if doc["overlay"]:
        console.print(f"overlay written: {doc['overlay']} (use --engine {doc['overlay']})")


def validate_json(doc: dict) -> dict:
    return {"schema_version": SCHEMA_VERSION, **doc}


def validate_rows(doc: dict) -> list[dict]:
    return [flatten(r) for r in doc["runs"]]


def validate_table(doc: dict, console: Console) -> None:
    t = table("Per-run error (predicted / measured - 1)",
              [(c, "left" if c in ("run", "group") else "right")
               for c in ("run", "group", "TTFT meas ms", "TTFT pred ms", "err", "TPOT meas ms", "TPOT pred ms", "err")])
    for r in doc["runs"]:
        t.add_row(r["id"], r["group"], f"{r['measured_ttft_ms']:.1f}", _num(r["predicted_ttft_ms"], ".1f"),
                  _pct(r["ttft_error"], True), f"{r['measured_tpot_ms']:.2f}", _num(r["predicted_tpot_ms"], ".2f"),
                  _pct(r["tpot_error"], True))
    print_table(console, t, ("group",))         # the groups are in the next table
    g = table("Per group", [(c, "left" if c == "group" else "right")
                            for c in ("group", "runs", "TTFT MAPE", "TTFT bias", "TPOT MAPE", "TPOT bias",
                                      "TTFT in interval", "TPOT in interval")])
    for name, s in [*doc["groups"].items(), ("all", doc["overall"])]:
        g.add_row(name, str(s["runs"]), _pct(s["ttft_mape"]), _pct(s["ttft_bias"], True), _pct(s["tpot_mape"]),
                  _pct(s["tpot_bias"], True), _pct(s["ttft_in_interval"]), _pct(s["tpot_in_interval"]))
    print_table(console, g)
    for label, p in doc["profiles"].items():
        console.print(f"{label}: calibration: {p['calibration']}")
    if doc["skipped"]:
        console.print(f"{len(doc['skipped'])} rows skipped (e.g. {doc['skipped'][0]['id']}: {doc['skipped'][0]['reason']})")


def _num(x, spec: str) -> str:
    return "-" if x is None else format(x, spec)
