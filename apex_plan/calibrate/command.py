"""`apex-plan calibrate` and `apex-plan validate`: fit one engine x GPU pair to measured runs,
cross-validate, write a profile overlay with provenance; predict runs and report the error."""

from __future__ import annotations

import dataclasses
import datetime
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from apex_plan.calibrate.fit import BOUNDS, Param, errors, fit, make_params, predict
from apex_plan.calibrate.interval import covered, error_quantiles
from apex_plan.calibrate.runs import Case
from apex_plan.engine.spec import EngineProfile
from apex_plan.errors import InputError, did_you_mean

DEFAULT_FIT = ("host.frontend_ms", "host.step_ms", "host.per_seq_ms", "host.overlap", "host.per_prefill_token_us")
MIN_CV_RUNS = 6          # k-fold cross-validation from this many runs on
MIN_LOO_RUNS = 3         # leave-one-out below MIN_CV_RUNS, from this many runs on
CV_FOLDS = 3             # fold j holds out every 3rd run from j
IDENTIFIED_REL = 0.01    # a fitted value within 1% of its prior: the runs did not move it


def parse_fit(text: str | None) -> list[str]:
    """'host.step_ms,host.overlap' -> names, each one of BOUNDS."""
    names = [n.strip() for n in (",".join(DEFAULT_FIT) if text is None else text).split(",")]
    if not all(names):
        raise InputError("--fit", None, f"'{text}' has an empty item", "e.g. --fit host.step_ms,host.frontend_ms")
    for n in names:
        if n not in BOUNDS:
            raise InputError("--fit", None, f"unknown constant '{n}'", did_you_mean(n, BOUNDS))
    if len(set(names)) != len(names):
        raise InputError("--fit", None, "a constant is named twice", "name each once")
    return names


def one_profile(cases: Sequence[Case], where: str = "RUNS") -> EngineProfile:
    """The single engine profile all cases run on (calibration fits one engine x GPU pair)."""
    if not cases:
        raise InputError(where, None, "no run to use", "give result files of the engine named by --engine")
    names = {c.engine.profile.name for c in cases}
    gpus = {c.cluster.gpu.name for c in cases}
    if len(names) > 1:
        raise InputError("--engine", None, f"runs of several engine profiles ({', '.join(sorted(names))})",
                         "name one with --engine")
    if len(gpus) > 1:
        raise InputError(where, None, f"runs on several GPUs ({', '.join(sorted(gpus))})",
                         "calibrate one engine x GPU pair at a time")
    return cases[0].engine.profile


def _stats(e: np.ndarray) -> dict:
    """MAPE and bias of (n, 2) relative errors, per metric."""
    out = {"runs": int(np.isfinite(e).all(axis=1).sum())}
    for j, key in enumerate(("ttft", "tpot")):
        col = e[:, j][np.isfinite(e[:, j])]
        out[f"{key}_mape"] = float(np.abs(col).mean()) if col.size else None
        out[f"{key}_bias"] = float(col.mean()) if col.size else None
    return out


@dataclass(frozen=True)
class Calibration:
    profile: EngineProfile          # the prior profile
    fitted: EngineProfile           # with the fitted host values and provenance
    params: list[Param]
    x: list[float]
    before: dict
    after: dict
    cross_validated: dict | None
    gpu: str


def calibrate(cases: Sequence[Case], names: Sequence[str], sources: Sequence[str], rounds: int = 2,
              progress: Callable[[str], None] | None = None, folds: int = CV_FOLDS) -> Calibration:
    """Joint fit on all runs; k-fold cross-validation from MIN_CV_RUNS runs; the overlay profile."""
    profile = one_profile(cases)
    gpu_cal = cases[0].cluster.gpu.calibration
    params = make_params(names, profile.on_gpu(cases[0].cluster.gpu.name), gpu_cal)   # priors: this GPU's values
    before = _stats(errors(cases, predict(cases)))
    x, _ = fit(cases, params, rounds=rounds, progress=progress)
    after_e = errors(cases, predict(cases, params, x))
    after = _stats(after_e)
    cv, held = None, after_e
    if folds >= 2 and len(cases) >= MIN_LOO_RUNS:
        folds = folds if len(cases) >= MIN_CV_RUNS else len(cases)     # few runs: leave one out
        held = np.full((len(cases), 2), np.nan)
        for j in range(folds):
            test = list(range(j, len(cases), folds))
            train = [c for i, c in enumerate(cases) if i not in test]
            xj, _ = fit(train, params, rounds=rounds)
            held[test] = errors([cases[i] for i in test], predict([cases[i] for i in test], params, xj))
            if progress:
                progress(f"cross-validation fold {j + 1}/{folds} done")
        cv = _stats(held)
    quant = error_quantiles(held, len(cases))
    quant["held_out"] = 1.0 if cv is not None else 0.0
    host = {p.field: v for p, v in zip(params, x) if p.target == "host"}
    date = datetime.date.today().isoformat()
    text = (f"fitted {date} by 'apex-plan calibrate' on {len(cases)} runs on {cases[0].cluster.gpu.name} from "
            f"{', '.join(Path(s).name for s in sources)}; constants {', '.join(names)}; prior profile {profile.label}"
            f"{' (' + Path(profile.path).name + ')' if profile.path else ''}. Fit error: TTFT MAPE {_pct(after['ttft_mape'])}, "
            f"TPOT MAPE {_pct(after['tpot_mape'])} (before {_pct(before['ttft_mape'])}, {_pct(before['tpot_mape'])}). ")
    text += (f"{'leave-one-out' if folds == len(cases) else str(folds) + '-fold'} cross-validated: TTFT MAPE {_pct(cv['ttft_mape'])}, TPOT MAPE {_pct(cv['tpot_mape'])}."
             if cv else "Not cross-validated (fewer than 3 runs or --folds 0): the error quantiles are in-sample.")
    gpu = cases[0].cluster.gpu.name
    # the fitted host and band are this GPU's: the prior's own entries for it (host_by_gpu,
    # calibration_error_by_gpu) would override them there, so they go; other GPUs' entries stay
    fitted = dataclasses.replace(profile, host=dataclasses.replace(profile.on_gpu(gpu).host, **host), calibration=text,
                                 calibration_error=quant,
                                 host_by_gpu={g: h for g, h in profile.host_by_gpu.items() if g != gpu},
                                 calibration_error_by_gpu={g: b for g, b in profile.calibration_error_by_gpu.items()
                                                           if g != gpu},
                                 # the fitted band is these runs' models' own: they are calibrated models now
                                 calibrated_models=tuple(sorted(set(profile.calibrated_models)
                                                                | {c.model.name for c in cases})))
    return Calibration(profile, fitted, params, x, before, after, cv, gpu)


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{x:.1%}"


def constants(cal: Calibration) -> list[dict]:
    """Each fitted constant with its prior, bounds and whether the runs identified it."""
    out = []
    for p, v in zip(cal.params, cal.x):
        scale = abs(p.prior) if p.prior else (p.high - p.low)
        moved = abs(v - p.prior) > IDENTIFIED_REL * scale
        at_bound = moved and v in (p.low, p.high)
        out.append({"name": f"{p.target}.{p.field}", "value": v, "prior": p.prior, "low": p.low, "high": p.high,
                    "identified": bool(moved),
                    "note": ("at its bound: the runs push past the physical range" if at_bound else "") if moved
                    else "not identified, kept at prior",
                    "written": p.target == "host"})
    return out


def calibrate_doc(cal: Calibration, sources: Sequence[str], output: str | None) -> dict:
    return {"command": "calibrate", "engine": cal.profile.label, "gpu": cal.gpu, "sources": list(sources),
            "constants": constants(cal), "before": cal.before, "after": cal.after,
            "cross_validated": cal.cross_validated, "calibration_error": cal.fitted.calibration_error,
            "overlay": output, "calibration": cal.fitted.calibration}


def write_overlay(cal: Calibration, path: str) -> None:
    """The full profile with the fitted host values, provenance and error quantiles, as YAML."""
    import yaml
    from apex_plan.engine.load import profile_to_dict
    doc = profile_to_dict(cal.fitted)
    head = (f"# {cal.fitted.name} calibrated by apex-plan calibrate on {cal.gpu}; see 'calibration'.\n"
            f"# Load it with --engine {Path(path).name} (a path).\n")
    try:
        Path(path).write_text(head + yaml.safe_dump(doc, sort_keys=False))
    except OSError as e:
        raise InputError(path, None, f"cannot write: {e.strerror}", "choose a writable --output path") from None


# ------------------------------------------------------------------------------------------------
def validate_doc(cases: Sequence[Case], skipped: Sequence[tuple[str, str]]) -> dict:
    """Per-run prediction and error, MAPE / bias / interval coverage per group and overall."""
    pred = predict(cases)
    e = errors(cases, pred)
    meas = np.array([[c.ttft_ms, c.tpot_ms] for c in cases]).reshape(-1, 2)
    cov = np.full((len(cases), 2), np.nan)
    for i, c in enumerate(cases):
        band = c.engine.profile.for_model(c.model.name).on_gpu(c.cluster.gpu.name)   # its model's and GPU's band
        cov[i] = covered(band, pred[i:i + 1], meas[i:i + 1])[0]
    runs = []
    for i, c in enumerate(cases):
        runs.append({"id": c.id, "group": "/".join(c.group), "engine": c.engine.profile.label,
                     "plan": c.plan.label(), "measured_ttft_ms": meas[i, 0], "predicted_ttft_ms": _f(pred[i, 0]),
                     "ttft_error": _f(e[i, 0]), "measured_tpot_ms": meas[i, 1], "predicted_tpot_ms": _f(pred[i, 1]),
                     "tpot_error": _f(e[i, 1])})
    groups = {}
    for g in sorted({r["group"] for r in runs}):
        idx = [i for i, r in enumerate(runs) if r["group"] == g]
        groups[g] = {**_stats(e[idx]), **_coverage(cov[idx])}
    profiles = {c.engine.profile.label: c.engine.profile for c in cases}
    return {"command": "validate", "runs": runs, "groups": groups, "overall": {**_stats(e), **_coverage(cov)},
            "profiles": {k: {"calibration": p.calibration or "none", "calibration_error": p.calibration_error or None,
                             "calibration_error_by_gpu": p.calibration_error_by_gpu or None}
                         for k, p in profiles.items()},
            "skipped": [{"id": i, "reason": r} for i, r in skipped]}


def _f(x: float) -> float | None:
    return float(x) if np.isfinite(x) else None


def _coverage(cov: np.ndarray) -> dict:
    """Fraction of runs whose measured value lies inside the profile's stated interval."""
    out = {}
    for j, key in enumerate(("ttft", "tpot")):
        col = cov[:, j][np.isfinite(cov[:, j])]
        out[f"{key}_in_interval"] = float(col.mean()) if col.size else None
    return out
