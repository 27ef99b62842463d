"""Command line: `apex-plan models | hardware | check | simulate | search | calibrate | validate | sweep`.

Every bad input ends as one line on stderr naming the file or option, the field and the fix, and
exit status 2 (see `apex_plan.errors.InputError`); results go to stdout (or --output), progress
bars to stderr.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import List, Optional

import typer

from apex_plan.errors import InputError
from apex_plan.report.output import check_format, emit
from apex_plan.requests.runs import CalibrateRequest, ValidateRequest
from apex_plan.requests.search import SearchRequest
from apex_plan.requests.simulate import SimulateRequest

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
    help="Pick the parallel execution plan for serving an LLM on a GPU cluster, and predict its latency, "
         "memory and energy.\n\nExample: apex-plan search --model llama-3.1-70b --gpu h100-sxm-80gb --gpus 8 "
         "--workload chat --rate 2 --ttft-slo 500ms --tpot-slo 50ms",
)

FormatOpt = typer.Option("table", "--format", "-f", help="table | json | csv")
OutputOpt = typer.Option(None, "--output", "-o", help="write the result to FILE instead of stdout")
ReportOpt = typer.Option(None, "--report", help="also write a self-contained HTML report to FILE.html")


def _check_outputs(report: str | None, plot: str | None) -> None:
    from apex_plan.report.html import check_outputs
    check_outputs(report, plot)


def _version(value: bool) -> None:
    if value:
        from apex_plan import __version__
        typer.echo(f"apex-plan {__version__}")
        raise typer.Exit(0)


@app.callback()
def _root(version: bool = typer.Option(False, "--version", is_eager=True, callback=_version,
                                       help="print the version and exit")) -> None:
    """Pick the parallel execution plan for serving an LLM on a GPU cluster."""


def _options_of(request_cls, plot_help: str = "", outputs=("fmt", "output", "report", "plot")):
    """Give a command the arguments and options of `request_cls` (each field's spellings, default and
    help, see `apex_plan.requests.options`) and the output options named in `outputs` (--format,
    --output, --report, --plot); the command receives them as keyword arguments. Values are checked
    when the request is built."""
    import dataclasses
    import inspect

    from apex_plan.requests.options import REQUIRED, field_kinds, is_argument
    kinds = field_kinds(request_cls)
    params = []
    for f in dataclasses.fields(request_cls):
        default = ... if f.default is REQUIRED else f.default
        if is_argument(f):
            params.append(inspect.Parameter(f.name, inspect.Parameter.KEYWORD_ONLY, annotation=List[str],
                                            default=typer.Argument(default, help=f.metadata["help"])))
            continue
        params.append(inspect.Parameter(f.name, inspect.Parameter.KEYWORD_ONLY, annotation=kinds[f.name][0],
                                        default=typer.Option(default, *f.metadata["flags"], help=f.metadata["help"])))
    for name, opt, hint in (("fmt", FormatOpt, str), ("output", OutputOpt, Optional[str]),
                            ("report", ReportOpt, Optional[str]),
                            ("plot", typer.Option(None, "--plot", help=plot_help), Optional[str])):
        if name in outputs:
            params.append(inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=opt, annotation=hint))

    def wrap(fn):
        fn.__signature__ = inspect.Signature(params)
        fn.__annotations__ = {p.name: p.annotation for p in params}
        return fn
    return wrap


# ------------------------------------------------------------------------------------------------
@app.command(epilog="Example: apex-plan models llama-3.1-70b --format json")
def models(name: Optional[str] = typer.Argument(None, help="built-in name or path to .yaml / config.json"),
           fmt: str = FormatOpt, output: Optional[str] = OutputOpt) -> None:
    """List built-in models, or show one with its exact parameter counts and KV-cache size."""
    from apex_plan.model.load import list_models, load_model
    from apex_plan.report import describe as D
    check_format(fmt)
    if name:
        m = load_model(name)
        emit(fmt, output, lambda: {"schema_version": D.SCHEMA_VERSION, **D.model_doc(m)},
             lambda: D.models_rows([m]), lambda c: D.model_table(m, c))
    else:
        ms = [load_model(n) for n in list_models()]
        emit(fmt, output, lambda: D.models_list_doc(ms), lambda: D.models_rows(ms), lambda c: D.models_table(ms, c))


@app.command(epilog="Example: apex-plan hardware h100-sxm-80gb")
def hardware(name: Optional[str] = typer.Argument(None, help="built-in GPU profile or path to a profile YAML"),
             fmt: str = FormatOpt, output: Optional[str] = OutputOpt) -> None:
    """List GPU profiles, or show one with its calibration constants."""
    from apex_plan.hardware.load import list_gpus, load_gpu
    from apex_plan.report import describe as D
    check_format(fmt)
    if name:
        g = load_gpu(name, where="hardware NAME")
        emit(fmt, output, lambda: {"schema_version": D.SCHEMA_VERSION, **D.gpu_doc(g)},
             lambda: D.gpus_rows([g]), lambda c: D.gpu_table(g, c))
    else:
        gs = [load_gpu(n) for n in list_gpus()]
        emit(fmt, output, lambda: {"schema_version": D.SCHEMA_VERSION, "gpus": [D.gpu_doc(g) for g in gs]},
             lambda: D.gpus_rows(gs), lambda c: D.gpus_table(gs, c))


@app.command(epilog="Example: apex-plan check models/llama-3.1-70b.yaml examples/cluster.yaml examples/chat.jsonl")
def check(files: List[Path] = typer.Argument(..., help="model, GPU profile, cluster, trace, engine profile, sweep or "
                                                         "measured-run files")) -> None:
    """Validate input files with the readers every command uses; one line per file, exit 2 if any is bad."""
    from apex_plan.checkfiles import check_file
    bad = 0
    for f in files:
        try:
            typer.echo(f"ok  {f}: {check_file(f)}")
        except InputError as e:
            bad += 1
            typer.echo(f"bad {e}", err=True)
    if bad:
        raise typer.Exit(2)


# ------------------------------------------------------------------------------------------------
_SIM_EPILOG = ("Example: apex-plan simulate --model llama-3.1-70b --gpu h100-sxm-80gb --gpus 8 --plan dp=1,tp=8,pp=1 "
               "--workload chat --rate 1 --num-requests 500 --ttft-slo 500ms --tpot-slo 50ms")


@app.command(epilog=_SIM_EPILOG)
@_options_of(SimulateRequest, "also draw the TTFT/TPOT CDFs to FILE.svg or FILE.png")
def simulate(**options) -> int:
    """Predict what a real server measures for one plan on one workload (latency, memory, energy)."""
    from apex_plan.requests.simulate import run_simulate
    fmt, output, report, plot = (options.pop(k) for k in ("fmt", "output", "report", "plot"))
    check_format(fmt, output)
    _check_outputs(report, plot)
    out = run_simulate(SimulateRequest.from_mapping(options), "--report" if report else "--plot" if plot else None)
    res, inputs = out.result, out.inputs
    if out.disaggregated:
        from apex_plan.report import disagg_view as D
        emit(fmt, output, lambda: D.disagg_json(res, inputs), lambda: D.disagg_rows(res, inputs),
             lambda c: D.disagg_table(res, c, inputs["model_source"]))
    else:
        from apex_plan.report import simulate_view as V
        emit(fmt, output, lambda: V.simulate_json(res, inputs), lambda: V.simulate_rows(res, inputs),
             lambda c: V.simulate_table(res, c))
        if report or plot:
            from apex_plan.report.html import simulate_outputs
            simulate_outputs(res, inputs, report, plot, out.model_source, out.gpu_source)
    if not res.feasible:                 # exit status 1: the plan does not run, or no request completes
        print(f"apex-plan simulate: {res.reason}", file=sys.stderr)
        return 1
    return 0


# ------------------------------------------------------------------------------------------------
_SEARCH_EPILOG = ("Example: apex-plan search --model llama-3.1-70b --gpu h100-sxm-80gb --gpus 8 --workload chat "
                  "--rate 2 --ttft-slo 500ms --tpot-slo 50ms")


@app.command(epilog=_SEARCH_EPILOG)
@_options_of(SearchRequest, "also draw the Pareto charts to FILE.svg or FILE.png")
def search(**options) -> int:
    """Find the parallel plan and deployment that meet the SLOs at the demanded rate.

    Exit status: 0 a deployment meets the SLO, 1 none does (the closest is still printed), 2 bad input."""
    from apex_plan.report import search_view as V
    from apex_plan.requests.search import run_search_request
    fmt, output, report, plot = (options.pop(k) for k in ("fmt", "output", "report", "plot"))
    check_format(fmt, output)
    _check_outputs(report, plot)
    req = SearchRequest.from_mapping(options)
    with V.progress_reporter() as progress:
        out = run_search_request(req, progress)
    res, inputs = out.result, out.inputs
    emit(fmt, output, lambda: V.search_json(res, inputs, out.show_all), lambda: V.search_rows(res, out.show_all),
         lambda c: V.search_table(res, c, out.show_all))
    if report or plot:
        from apex_plan.report.html import search_outputs
        from apex_plan.search.curves import load_curves
        search_outputs(res, inputs, report, plot, load_curves(res))
    return 0 if out.meets_slo else 1   # exit status 1: no deployment meets the SLO (the closest is shown)


# ------------------------------------------------------------------------------------------------
@app.command(epilog="Example: apex-plan calibrate runs/*.json --engine vllm@0.11.0 --gpu h100-sxm-80gb "
                    "--plan tp=1 --output vllm-h100.yaml")
@_options_of(CalibrateRequest, outputs=("fmt",))
def calibrate(**options) -> None:
    """Fit an engine x GPU pair's constants to measured runs, cross-validate, write a profile overlay."""
    from apex_plan.report import calibrate_view as V
    from apex_plan.requests.runs import run_calibrate
    fmt = options.pop("fmt")
    req = CalibrateRequest.from_mapping(options)
    check_format(fmt)
    doc = run_calibrate(req, fmt, progress=lambda s: typer.echo("  " + s, err=True))
    emit(fmt, None, lambda: V.calibrate_json(doc), lambda: V.calibrate_rows(doc), lambda c: V.calibrate_table(doc, c))


@app.command(epilog="Example: apex-plan validate runs/*.json --engine vllm-h100.yaml --gpu h100-sxm-80gb --plan tp=1")
@_options_of(ValidateRequest, outputs=("fmt", "output"))
def validate(**options) -> None:
    """Predict each measured run and print its error, MAPE, bias and interval coverage per group."""
    from apex_plan.report import calibrate_view as V
    from apex_plan.requests.runs import run_validate
    fmt, output = options.pop("fmt"), options.pop("output")
    req = ValidateRequest.from_mapping(options)
    check_format(fmt, output)
    doc = run_validate(req)
    emit(fmt, output, lambda: V.validate_json(doc), lambda: V.validate_rows(doc), lambda c: V.validate_table(doc, c))


# ------------------------------------------------------------------------------------------------
@app.command(epilog="Example: apex-plan sweep scenarios.yaml --output results.jsonl --report sweep.html")
def sweep(
    scenarios: Path = typer.Argument(..., help="sweep YAML: base options, a grid and/or a list of scenarios"),
    output: Optional[str] = typer.Option(None, "--output", "-o",
                                         help="JSON lines, one search result per scenario (default: STEM.jsonl here)"),
    executor: str = typer.Option("local", "--executor", help="local (process pool) | ray"),
    ray_address: Optional[str] = typer.Option(None, "--ray-address", help="existing Ray cluster (default: a local Ray)"),
    jobs: Optional[int] = typer.Option(None, "--jobs", "-j", help="parallel searches (default: the CPUs)"),
    retry_failed: bool = typer.Option(False, "--retry-failed", help="run failed scenarios again"),
    report: Optional[str] = ReportOpt,
    fmt: str = FormatOpt,
) -> None:
    """Run many searches (a grid or list of scenarios), resumable; print a summary table."""
    from apex_plan.sweep.command import sweep_command
    check_format(fmt)
    _check_outputs(report, None)
    raise typer.Exit(sweep_command(scenarios, output, executor, ray_address, jobs, retry_failed, report, fmt))


_COMMAND = []


def _command():
    """The click command typer builds from `app`, built once per process (it takes ~10-20 ms)."""
    if not _COMMAND:
        import typer.main
        _COMMAND.append(typer.main.get_command(app))
    return _COMMAND[0]


def main() -> None:
    """Console entry point: bad input is one line on stderr and exit status 2; any other failure is
    one line and status 1; a closed stdout ends quietly."""
    from apex_plan import console as C
    C.one_line_warnings()
    try:
        rv = _command().main(args=C.vllm_spellings(sys.argv[1:]), prog_name="apex-plan", standalone_mode=False)
        sys.stdout.flush()
    except SystemExit as e:            # click's own handling of a closed pipe exits here
        try:
            sys.stdout.flush()
        except (OSError, ValueError):
            C.stdout_closed()
        raise SystemExit(e.code) from None
    except BaseException as e:  # noqa: BLE001 -- the one place every failure becomes one line
        sys.exit(C.exit_status(e))
    sys.exit(rv if isinstance(rv, int) else 0)


if __name__ == "__main__":
    main()
