"""`apex-plan calibrate` and `apex-plan validate` as requests: measured runs and what their files may
not say (engine, GPU, plan, model, weight dtype), each option declared once with its CLI spellings,
help and limits (`requests.options`), and the functions that run them and return the document
the views print."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Mapping, Optional

from apex_plan.errors import InputError
from apex_plan.requests.common import HELP
from apex_plan.requests.options import argument, build, option

RUNS_HELP = ("measured runs: 'vllm bench serve --save-result' JSON, SGLang bench_serving JSON lines, "
             "aiperf / genai-perf profile export JSON, silicon or trace-replay CSV")


# options both commands declare: what a measured run's file does not say
def _gpu_opt():
    return option(None, "--gpu", help=HELP["gpu"] + " (runs whose file does not say it)")


def _plan_opt():
    return option(None, "--plan", help="dp=D,tp=T,pp=P of runs whose file does not say it")


def _model_opt():
    return option(None, "--model", "-m", help=HELP["model"] + " (when the file names none)")


def _dtype_opt():
    return option("bf16", "--weight-dtype", help="weight dtype of runs whose file does not say it")


def _slots_opt():
    return option(5, "--requests-per-slot", help="closed loop: simulated requests per slot",
                  count=(1, 100, "e.g. --requests-per-slot 5"))


@dataclass(frozen=True)
class CalibrateRequest:
    """The options of `apex-plan calibrate`; field metadata holds each one's CLI spellings and limits."""
    runs: tuple = argument(help=RUNS_HELP)
    engine: Optional[str] = option(None, "--engine", help=HELP["engine"] + " whose constants to fit (NAME or "
                                   "NAME@VERSION or a profile YAML; CSV rows of other engines are skipped)")
    gpu: Optional[str] = _gpu_opt()
    plan: Optional[str] = _plan_opt()
    model: Optional[str] = _model_opt()
    weight_dtype: str = _dtype_opt()
    fit: Optional[str] = option(None, "--fit", help="constants to fit, comma separated (default: the host.* times "
                                "and overlap); any of host.*, gpu.* (gpu.* are reported, not written)")
    rounds: int = option(2, "--rounds", help="coordinate-search rounds", count=(1, 10, "e.g. --rounds 2"))
    requests_per_slot: int = _slots_opt()
    folds: int = option(3, "--folds", help="cross-validation folds with >= 6 runs (fold j holds out every k-th run "
                        "from j); 0: none", count=(0, 20, "e.g. --folds 3"))
    overlay: Optional[str] = option(None, "--output", "-o", help="write the calibrated engine profile (YAML) here")

    @classmethod
    def from_mapping(cls, options: Mapping[str, Any]) -> "CalibrateRequest":
        """The request from field name -> value, every value checked (`requests.options.build`)."""
        return build(cls, options)


@dataclass(frozen=True)
class ValidateRequest:
    """The options of `apex-plan validate`; field metadata holds each one's CLI spellings and limits."""
    runs: tuple = argument(help=RUNS_HELP)
    engine: Optional[str] = option(None, "--engine", help=HELP["engine"] + " (NAME or NAME@VERSION or a profile "
                                   "YAML; default: each CSV row's own, vllm for JSON runs)")
    gpu: Optional[str] = _gpu_opt()
    plan: Optional[str] = _plan_opt()
    model: Optional[str] = _model_opt()
    weight_dtype: str = _dtype_opt()
    requests_per_slot: int = _slots_opt()

    @classmethod
    def from_mapping(cls, options: Mapping[str, Any]) -> "ValidateRequest":
        """The request from field name -> value, every value checked (`requests.options.build`)."""
        return build(cls, options)


def _defaults(req: CalibrateRequest | ValidateRequest):
    """What the runs' files may not say, from the request."""
    from apex_plan.calibrate.formats import RunDefaults
    return RunDefaults(req.engine, req.gpu, req.plan, req.model, req.weight_dtype, req.requests_per_slot)


def run_calibrate(req: CalibrateRequest, fmt: str, progress: Callable[[str], None] | None = None) -> dict:
    """Fit the engine x GPU constants to the runs, cross-validate, write the overlay (--output);
    returns the calibration document. `fmt` is the output format, checked with --output."""
    from apex_plan.calibrate import command as C
    from apex_plan.calibrate.formats import read_measured
    from apex_plan.report.output import check_format
    names = C.parse_fit(req.fit)
    if req.folds == 1:
        raise InputError("--folds", None, "one fold holds every run out and fits on none",
                         "use --folds 0 (no cross-validation) or 2 or more")
    if req.overlay is not None and not req.overlay.endswith((".yaml", ".yml")):
        raise InputError("--output", None, f"'{req.overlay}' is not a .yaml path", "e.g. --output vllm-h100.yaml")
    check_format(fmt, req.overlay)
    runs = list(req.runs)
    cases, _ = read_measured(runs, _defaults(req))
    cal = C.calibrate(cases, names, runs, req.rounds, progress=progress, folds=req.folds)
    if req.overlay:
        C.write_overlay(cal, req.overlay)
    return C.calibrate_doc(cal, runs, req.overlay)


def run_validate(req: ValidateRequest) -> dict:
    """Predict each measured run; the document of errors, MAPE, bias and interval coverage per group."""
    from apex_plan.calibrate.command import validate_doc
    from apex_plan.calibrate.formats import read_measured
    cases, skipped = read_measured(list(req.runs), _defaults(req))
    if not cases:
        raise InputError("RUNS", None, "no run to validate", "give result files (CSV rows of --engine's profile)")
    return validate_doc(cases, skipped)
