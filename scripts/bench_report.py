"""What `--report FILE.html` adds to a search: in process (best of N: the search, then the report
data (re-simulating the top deployments and each plan's load curve) and the HTML page), and as a
process (`apex-plan search` with and without --report, best of N each, interleaved), and the import
time of the report modules in a fresh interpreter.

    python scripts/bench_report.py            # llama-3.1-70b on 8 x H100 (chat), deepseek-v3 on 64 x H100
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import time
from pathlib import Path

from apex_plan import inputs as I
from apex_plan.model.load import load_model
from apex_plan.plan.spec import EngineConfig
from apex_plan.report.html import search_html, write_report
from apex_plan.report.report_data import from_search
from apex_plan.search.curves import load_curves
from apex_plan.search.pipeline import SearchInputs, run_search
from apex_plan.workload.slo import parse_slo

CASES = [("llama-3.1-70b", 8, 2.0, "500ms", "50ms"), ("deepseek-v3", 64, 2.0, "1s", "100ms")]
BUDGET_S = 1.0          # the requirement: report generation adds at most 1 s to a search


def in_process(model: str, gpus: int, rate: float, ttft: str, tpot: str, reps: int, out: Path) -> tuple[float, float]:
    m = load_model(model)
    cl = I.cluster_from_options("h100-sxm-80gb", gpus, 8, None)
    eng = I.engine_from_options(EngineConfig(name="vllm", gpu_memory_utilization=0.9, max_num_seqs=256))
    wl = I.workload_from_options(I.WorkloadOptions(workload="chat", rate=rate, num_requests=1000))
    inp = SearchInputs(m, cl, wl.trace, rate, parse_slo(ttft, tpot, 90.0), engines=(eng,))
    search_s, report_s = [], []
    for _ in range(reps):
        t0 = time.perf_counter()
        res = run_search(inp)
        t1 = time.perf_counter()
        write_report(str(out), search_html(from_search(res, {"model": model, "gpus": gpus}, curves=load_curves(res))))
        t2 = time.perf_counter()
        search_s.append(t1 - t0)
        report_s.append(t2 - t1)
    return min(search_s), min(report_s)


def as_process(model: str, gpus: int, rate: float, ttft: str, tpot: str, reps: int, out: Path) -> tuple[float, float]:
    base = [sys.executable, "-m", "apex_plan", "search", "--model", model, "--gpu", "h100-sxm-80gb", "--gpus",
            str(gpus), "--workload", "chat", "--rate", str(rate), "--ttft-slo", ttft, "--tpot-slo", tpot,
            "--format", "json", "--output", str(out.with_suffix(".json"))]
    plain, rep = [], []
    for _ in range(reps):
        for args, acc in ((base, plain), (base + ["--report", str(out)], rep)):
            t0 = time.perf_counter()
            subprocess.run(args, check=True, capture_output=True)
            acc.append(time.perf_counter() - t0)
    return min(plain), min(rep)


def import_cost_s() -> float:
    """Seconds to import the report modules in a fresh interpreter that already has the search."""
    code = ("import time, apex_plan.cli, apex_plan.search.pipeline; t = time.perf_counter(); "
            "import apex_plan.report.html, apex_plan.report.report_data, apex_plan.report.figures; "
            "print(time.perf_counter() - t)")
    return min(float(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout)
               for _ in range(3))


def main() -> None:
    reps = int(sys.argv[1]) if len(sys.argv) > 1 else 3
    tmp = Path(tempfile.mkdtemp(prefix="apex-report-"))
    worst = 0.0
    for case in CASES:
        out = tmp / f"{case[0]}.html"
        s, r = in_process(*case, reps=reps, out=out)
        ps, pr = as_process(*case, reps=reps, out=out)
        worst = max(worst, r)
        print(f"{case[0]} on {case[1]} x H100: in process search {s:.2f} s + report {r:.2f} s "
              f"({out.stat().st_size / 1024:.0f} KiB); as a process {ps:.2f} s -> {pr:.2f} s with --report "
              f"(+{pr - ps:.2f} s)")
    imp = import_cost_s()
    print(f"importing the report modules: {imp:.3f} s")
    worst += imp
    print(f"largest addition in process, imports included: {worst:.2f} s (budget {BUDGET_S:.1f} s): {'ok' if worst <= BUDGET_S else 'OVER'}")


if __name__ == "__main__":
    main()
