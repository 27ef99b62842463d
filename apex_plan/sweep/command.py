"""`apex-plan sweep`: load the scenarios, run what is not done yet, summarise, optionally report."""

from __future__ import annotations

from pathlib import Path

from apex_plan.errors import InputError

from apex_plan.report import sweep_view as V
from apex_plan.report.output import emit
from apex_plan.sweep.run import run_sweep
from apex_plan.sweep.scenarios import load_scenarios


def sweep_command(scenarios: Path, output: str | None, executor: str, ray_address: str | None, jobs: int | None,
                  retry_failed: bool, report: str | None, fmt: str) -> int:
    """Returns the exit status: 0 when every scenario ran (with or without a deployment), 1 when any failed."""
    if ray_address is not None and executor != "ray":
        raise InputError("--ray-address", None, "given without --executor ray", "add --executor ray or drop it")
    scs, prices = load_scenarios(scenarios)
    out = Path(output) if output else Path(Path(scenarios).stem + ".jsonl")     # in the current folder
    from apex_plan.report.output import check_writable
    check_writable(str(out), "--output")
    lines, wall_s = run_sweep(scs, out, executor, jobs, ray_address, retry_failed)
    rows = V.summary_rows(scs, lines, prices)
    emit(fmt, None, lambda: V.sweep_json(rows, str(out), wall_s), lambda: rows,
         lambda c: V.sweep_table(rows, c, str(out), wall_s))
    if report:
        from apex_plan.report.html import write_report
        write_report(report, V.sweep_html(rows, f"apex-plan sweep: {Path(scenarios).name}"))
    return 1 if any(r["status"] == "failed" for r in rows) else 0
