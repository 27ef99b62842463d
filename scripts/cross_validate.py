#!/usr/bin/env python3
"""Leave-one-model-out and leave-one-GPU-out cross-validation of the engine profiles' fitted constants.

For each engine profile with runs in the CSVs (aggregated silicon rows; rows of excluded.csv left
out) and each fold kind (model, gpu, config: one run in five by a hash of its id, as the shared files
hold one configuration in five of each group): for every model (or GPU) its runs are held out, the --fit
constants are fitted (apex_plan.calibrate.fit, from the profile's values, inside the bounds) on
every --train-every'th of the other runs, and the held-out runs are predicted with the fitted
constants. Printed per profile and fold kind, over all held-out runs: coverage (predicted /
attempted), MAPE, median |error| and bias of TTFT and TPOT, and how often the measured value falls
inside the 80 % interval built from the training runs by the rule the profiles store them by
(`bands`): the error quantiles on the held-out run's GPU, or, when that GPU has fewer than MIN_BAND_RUNS
training runs (a held-out GPU has none), the default band: the quantiles of the training runs' errors as a
GPU nobody calibrated sees them (each GPU's fitted front end replaced by the profile's own, as in the GPU
folds the stored default comes from; `band_hits`). `scripts/refresh_bands.py` writes the bands into the
profiles and prints this table.
A fold whose held-out model or GPU is the profile's only one is skipped (nothing to train on).

usage: python scripts/cross_validate.py [CSV ...] [--engine NAME,...] [--fit host.frontend_ms,...]
       [--folds model,gpu,config] [--train-every 3] [--rounds 1] [--requests-per-slot 3] [--jobs 2] [--by-gpu N]
       [--json OUT] [--bands OUT.yaml]

--rounds 0 searches nothing: every run is predicted once with the profiles' constants; in each fold
the front ends a profile fitted per GPU (host_by_gpu frontend_ms, scripts/calibrate.py --frontend-by-gpu)
are refitted without the held-out runs (exactly: the front end adds to every TTFT), a held-out GPU
takes the default front end refitted on the other GPUs (as scripts/calibrate.py --frontend-by-gpu fits
the profiles' default), and each fold's band comes from the other runs. --bands writes the
80 % bands of each profile from the held-out errors (per GPU from the config folds, else the model
folds; the default from the GPU folds), the `calibration_error` / `calibration_error_by_gpu` blocks of
engine_profiles/.
"""
from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import zlib
import sys
import time
from collections import defaultdict
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

from apex_plan.calibrate.fit import BOUNDS, errors, fit, fit_default_frontend_ms, fit_frontend_ms, make_params, predict
from apex_plan.calibrate.interval import error_quantiles
from apex_plan.engine.spec import widen
from apex_plan.calibrate.runs import read_silicon_csv

SILICON = Path(__file__).resolve().parents[2] / "shared" / "bench" / "silicon"
DEFAULT_CSVS = [SILICON / "calibration.csv", SILICON / "calibration-h200-b200.csv"]
DEFAULT_FIT = "host.frontend_ms,host.step_ms,host.per_seq_ms"
KEY = {"model": lambda c: c.group[2], "gpu": lambda c: c.group[0],
       "config": lambda c: zlib.crc32(c.id.encode()) % CONFIG_FOLDS}   # one run in five, by a hash of its id
CONFIG_FOLDS = 5       # as the shared files hold one configuration in five of each group
MIN_BAND_RUNS = 20     # a GPU's own band from this many runs on (fewer: the 10th/90th percentiles of a handful
                       # of runs are a guess; the pooled band of every GPU stands in)


def load(csvs, requests_per_slot: int, exclude: Path) -> list:
    """Aggregated cases of every CSV, without the rows excluded.csv lists."""
    bad = {r["id"] for r in csv.DictReader(open(exclude))} if exclude.is_file() else set()
    out = []
    for path in csvs:
        cases, _ = read_silicon_csv(path, requests_per_slot)
        out += [c for c in cases if c.id not in bad]
    return out


def run_fold(job) -> dict:
    """Fit on the training cases, predict the held-out ones; errors and interval hits of the held-out.
    With `by_gpu` (model folds), the host constants are then refitted per GPU with enough training
    runs, as the profiles' host_by_gpu are, and each held-out run is predicted with its GPU's."""
    name, kind, value, train, held, fit_names, rounds, by_gpu = job
    params = make_params(fit_names, train[0].engine.profile, train[0].cluster.gpu.calibration)
    x, _ = fit(train, params, rounds=rounds)
    e_train = errors(train, predict(train, params, x))
    e_held = errors(held, predict(held, params, x))
    if by_gpu and kind == "model":
        for gpu in {c.cluster.gpu.name for c in held}:
            tr = [i for i, c in enumerate(train) if c.cluster.gpu.name == gpu]
            if len(tr) < by_gpu:
                continue
            gp = [dataclasses.replace(p, prior=v) for p, v in zip(params, x)]
            xg, _ = fit([train[i] for i in tr], gp, rounds=rounds)
            e_train[tr] = errors([train[i] for i in tr], predict([train[i] for i in tr], gp, xg))
            ho = [i for i, c in enumerate(held) if c.cluster.gpu.name == gpu]
            e_held[ho] = errors([held[i] for i in ho], predict([held[i] for i in ho], gp, xg))
    hits = band_hits(e_train, [c.cluster.gpu.name for c in train], e_held, [c.cluster.gpu.name for c in held],
                     [KEY["model"](c) for c in train])
    return {"profile": name, "kind": kind, "held_out": value, "train": len(train), "held": len(held),
            "fitted": {f"{p.target}.{p.field}": v for p, v in zip(params, x)},
            "gpus": [c.cluster.gpu.name for c in held], "models": [KEY["model"](c) for c in held], "ids": [c.id for c in held],
            "errors": e_held.tolist(), "in_interval": hits.tolist()}


def cells(gpus: np.ndarray, models: np.ndarray) -> np.ndarray:
    """A (GPU, model) label per run: the groups whose runs share one bias (calibrate/interval.error_quantiles)."""
    return np.array([f"{g}|{m}" for g, m in zip(np.asarray(gpus).tolist(), np.asarray(models).tolist())])


def band_hits(e_train: np.ndarray, gpu_train: list, e_held: np.ndarray, gpu_held: list,
              model_train: list, e_default: np.ndarray | None = None, new_model: bool = False) -> np.ndarray:
    """(n, 2) 1/0: does each held-out measured value fall inside the 80 % band the profile would state for
    its GPU, built by the rule `bands` stores them by, from the training runs only: the training runs'
    error quantiles on that GPU (a model of n runs weighing sqrt(n)); when that GPU has fewer than
    MIN_BAND_RUNS training runs (a held-out GPU has none), the profile's default band: the quantiles of
    `e_default`, the training runs' errors as a GPU nobody calibrated sees them (each GPU's own front end
    replaced by the profile's, as in the GPU folds the stored default comes from; `e_train` when None),
    a (GPU, model) cell of n runs weighing sqrt(n). `new_model` (a model fold: the held-out runs' model is in no
    training run): the new-model band on every GPU, the training runs' errors pooled over GPUs by (GPU, model)
    cell, replaces each calibrated GPU's band and widens the default (EngineProfile.for_model). nan: no prediction."""
    hits = np.full(e_held.shape, np.nan)
    gpu_train, gpu_held, model_train = np.array(gpu_train), np.array(gpu_held), np.array(model_train)
    # pooled over GPUs, a run's group is its (GPU, model) cell: runs of one model on one GPU share a bias,
    # on another GPU the chip's physics add their own
    e_def = e_train if e_default is None else e_default
    pooled = error_quantiles(e_def, len(e_def), groups=cells(gpu_train, model_train))
    fresh = error_quantiles(e_train, len(e_train), groups=cells(gpu_train, model_train)) if new_model else None
    for gpu in set(gpu_held.tolist()):
        own = gpu_train == gpu
        q = (error_quantiles(e_train[own], int(own.sum()), groups=model_train[own]) if own.sum() >= MIN_BAND_RUNS
             else pooled)
        if fresh is not None:                          # a new model: on a calibrated GPU the new-model band
            q = fresh if own.sum() >= MIN_BAND_RUNS else widen(q, fresh)
        rows = gpu_held == gpu
        for j, key in enumerate(("ttft", "tpot")):
            ok = rows & np.isfinite(e_held[:, j])
            # measured inside [pred / (1 + e_high), pred / (1 + e_low)]  <=>  e_low <= e <= e_high
            hits[ok, j] = (e_held[ok, j] >= q[f"{key}_low"]) & (e_held[ok, j] <= q[f"{key}_high"])
    return hits


def _frontends(cases: list) -> np.ndarray:
    """Each run's front end as its profile states it on its GPU (the GPU's host_by_gpu entry, else host)."""
    return np.array([c.engine.profile.on_gpu(c.cluster.gpu.name).host.frontend_ms for c in cases])


def default_frontend(cases: list, p: np.ndarray) -> float:
    """The default front end (host.frontend_ms of GPUs without an entry) as scripts/calibrate.py
    --frontend-by-gpu fits it (fit_default_frontend_ms), from `cases` and their predictions `p` alone."""
    return fit_default_frontend_ms(p[:, 0] - _frontends(cases), np.array([c.ttft_ms for c in cases]),
                                   np.array([c.cluster.gpu.name for c in cases]), MIN_BAND_RUNS,
                                   cases[0].engine.profile.host.frontend_ms)


def uncalibrated(cases: list, p: np.ndarray, frontend_ms: float | None = None) -> np.ndarray:
    """Predictions `p` (n, 2) of `cases` (made with the profile's per-GPU front ends, host_by_gpu) as a GPU
    nobody calibrated would get them: each run's TTFT with its GPU's front end replaced by `frontend_ms`
    (default: the profile's own default)."""
    out = p.copy()
    if not cases:
        return out
    f = cases[0].engine.profile.host.frontend_ms if frontend_ms is None else frontend_ms
    out[:, 0] += f - _frontends(cases)
    return out


def _predict_chunk(chunk: list) -> np.ndarray:
    return predict(chunk)


def _frontend_refit(train: list, p_train: np.ndarray, held: list, p_held: np.ndarray) -> None:
    """Refit, in place, the front end the profile fitted for the held-out runs' GPU (its host_by_gpu frontend_ms)
    from that GPU's training runs (exact, fit_frontend_ms): a model or config fold. (In a GPU fold the held-out
    GPU takes the default refitted on the training GPUs: `default_frontend`, `uncalibrated`.)"""
    prof = (train or held)[0].engine.profile
    for gpu in {c.cluster.gpu.name for c in held}:
        entry = prof.host_by_gpu.get(gpu)
        if entry is None or entry.frontend_ms == prof.host.frontend_ms:
            continue
        ho = np.array([c.cluster.gpu.name == gpu for c in held])
        tr = np.array([c.cluster.gpu.name == gpu for c in train])
        if tr.sum() < MIN_BAND_RUNS:
            continue
        meas = np.array([c.ttft_ms for c in train])[tr]
        f = fit_frontend_ms(p_train[tr, 0], meas, entry.frontend_ms)
        p_train[tr, 0] += f - entry.frontend_ms
        p_held[ho, 0] += f - entry.frontend_ms


def fixed_folds(cases, names, kinds, jobs: int) -> list:
    """The folds of `jobs_for` without a search (--rounds 0): every run predicted once with the profiles'
    constants; in each fold the per-GPU front ends are refitted without the held-out runs (exact), the
    held-out errors are those of its runs, and its band comes from the others'."""
    by_profile = defaultdict(list)
    for c in cases:
        if not names or c.engine.profile.name in names or c.engine.profile.family in names:
            by_profile[c.engine.profile.name].append(c)
    chunks = [rows[i:i + 8] for rows in by_profile.values() for i in range(0, len(rows), 8)]
    with ProcessPoolExecutor(max(1, jobs)) as pool:
        preds = list(pool.map(_predict_chunk, chunks))
    pred = {id(c): p for chunk, ps in zip(chunks, preds) for c, p in zip(chunk, ps)}
    out = []
    for name, rows in sorted(by_profile.items()):
        for kind in kinds:
            values = sorted({KEY[kind](c) for c in rows})
            for v in values if len(values) > 1 else ():
                train = [c for c in rows if KEY[kind](c) != v]
                held = [c for c in rows if KEY[kind](c) == v]
                p_train = np.array([pred[id(c)] for c in train]).reshape(-1, 2)
                p_held = np.array([pred[id(c)] for c in held]).reshape(-1, 2)
                f_default = default_frontend(train, p_train) if kind == "gpu" else None
                e_default = errors(train, uncalibrated(train, p_train, f_default))   # before the refit: the GPU folds' errors
                if kind == "gpu":                  # the held-out GPU is one nobody calibrated: the refitted default
                    p_held = uncalibrated(held, p_held, f_default)
                else:
                    _frontend_refit(train, p_train, held, p_held)
                e_train, e_held = errors(train, p_train), errors(held, p_held)
                hits = band_hits(e_train, [c.cluster.gpu.name for c in train], e_held, [c.cluster.gpu.name for c in held],
                                 [KEY["model"](c) for c in train], e_default, new_model=kind == "model")
                out.append({"profile": name, "kind": kind, "held_out": v, "train": len(train), "held": len(held),
                            "fitted": {}, "gpus": [c.cluster.gpu.name for c in held],
                            "models": [KEY["model"](c) for c in held], "builtins": [c.model.name for c in held],
                            "ids": [c.id for c in held], "errors": e_held.tolist(),
                            "in_interval": hits.tolist()})
    return out


def jobs_for(cases, names, kinds, fit_names, train_every: int, rounds: int, by_gpu: int = 0) -> list:
    by_profile = defaultdict(list)
    for c in cases:
        by_profile[c.engine.profile.name].append(c)
    jobs = []
    for name in sorted(by_profile):
        if names and name not in names and by_profile[name][0].engine.profile.family not in names:
            continue
        rows = by_profile[name]
        for kind in kinds:
            values = sorted({KEY[kind](c) for c in rows})
            if len(values) < 2:
                continue
            for v in values:
                train = [c for c in rows if KEY[kind](c) != v][::train_every]
                held = [c for c in rows if KEY[kind](c) == v]
                if train and held:
                    jobs.append((name, kind, v, train, held, fit_names, rounds, by_gpu))
    return jobs


def table(results: list) -> list[str]:
    groups = defaultdict(list)
    for r in results:
        groups[(r["profile"], r["kind"])].append(r)
    lines = [f"{'profile':14} {'fold':6} {'folds':>5} {'runs':>5} {'cover':>6}  {'TTFT MAPE':>9} {'median':>7} {'bias':>7}"
             f"  {'TPOT MAPE':>9} {'median':>7} {'bias':>7}  {'in 80% TTFT/TPOT':>16}"]
    for (name, kind), rs in sorted(groups.items()):
        e = np.array([row for r in rs for row in r["errors"]], float).reshape(-1, 2)
        h = np.array([row for r in rs for row in r["in_interval"]], float).reshape(-1, 2)
        ok = np.isfinite(e).all(axis=1)
        if not ok.any():
            lines.append(f"{name:14} {kind:6} {len(rs):5} {len(e):5} {0:5.0f}%")
            continue
        a = np.abs(e[ok])
        lines.append(f"{name:14} {kind:6} {len(rs):5} {len(e):5} {100 * ok.mean():5.0f}%  {100 * a[:, 0].mean():8.1f}%"
                     f" {100 * np.median(a[:, 0]):6.1f}% {100 * e[ok, 0].mean():+6.1f}%  {100 * a[:, 1].mean():8.1f}%"
                     f" {100 * np.median(a[:, 1]):6.1f}% {100 * e[ok, 1].mean():+6.1f}%"
                     f"  {100 * np.nanmean(h[:, 0]):7.0f}% /{100 * np.nanmean(h[:, 1]):4.0f}%")
    return lines


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("csv", nargs="*", default=[str(p) for p in DEFAULT_CSVS])
    ap.add_argument("--engine", default="", help="profile names or families to validate (default: all)")
    ap.add_argument("--fit", default=DEFAULT_FIT, help="constants refitted per fold: " + ", ".join(BOUNDS))
    ap.add_argument("--folds", default="model,gpu", help="fold kinds: model, gpu, config (one run in five)")
    ap.add_argument("--train-every", type=int, default=3, help="fit on every k-th training run (speed)")
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--requests-per-slot", type=int, default=3)
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--by-gpu", type=int, default=0, metavar="N",
                    help="model folds: refit per GPU with at least N training runs (as host_by_gpu)")
    ap.add_argument("--exclude", default=str(SILICON / "excluded.csv"))
    ap.add_argument("--json", help="write every fold's fitted values and held-out errors here")
    ap.add_argument("--bands", help="write the 80 %% error bands (calibration_error, calibration_error_by_gpu) of "
                                    "each profile from the held-out errors here, as YAML for engine_profiles/")
    args = ap.parse_args()
    for p in args.csv:
        if not Path(p).is_file():
            print(f"{p}: not found (give a silicon-format CSV)", file=sys.stderr)
            return 2
    kinds = [k for k in args.folds.split(",") if k]
    if not kinds or any(k not in KEY for k in kinds):
        print(f"--folds: '{args.folds}' is not a list of model, gpu, config", file=sys.stderr)
        return 2
    fit_names = [n for n in args.fit.split(",") if n]
    if not fit_names or any(n not in BOUNDS for n in fit_names):
        print(f"--fit: '{args.fit}' names a constant outside {', '.join(BOUNDS)}", file=sys.stderr)
        return 2
    t0 = time.perf_counter()
    cases = load(args.csv, args.requests_per_slot, Path(args.exclude))
    names = {n for n in args.engine.split(",") if n}
    if args.rounds == 0:                 # the profiles' constants as they are: predict every run once
        results = fixed_folds(cases, names, kinds, args.jobs)
    else:
        jobs = jobs_for(cases, names, kinds, fit_names, max(1, args.train_every), args.rounds, args.by_gpu)
        print(f"{len(cases)} runs, {len(jobs)} folds; fitting {', '.join(fit_names)}", file=sys.stderr)
        with ProcessPoolExecutor(max(1, args.jobs)) as pool:
            results = list(pool.map(run_fold, jobs))
    print("\n".join(table(results)))
    print(f"({time.perf_counter() - t0:.0f} s)")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))
    if args.bands:
        import yaml
        Path(args.bands).write_text(yaml.safe_dump(bands(results), sort_keys=True))
    return 0


def bands(results: list) -> dict:
    """Per profile: the band of each GPU with at least MIN_BAND_RUNS runs from its held-out errors in the
    config folds (other configurations of measured groups), else the leave-one-model-out folds (a new
    model on a calibrated GPU), and the default band of any other GPU from the held-out errors of the
    leave-one-GPU-out folds (a GPU nobody calibrated), else of the folds the GPU bands came from."""
    out = {}
    for name in sorted({r["profile"] for r in results}):
        rs = [r for r in results if r["profile"] == name]
        model = [r for r in rs if r["kind"] == "config"] or [r for r in rs if r["kind"] == "model"]
        e = np.array([row for r in model for row in r["errors"]], float).reshape(-1, 2)
        g = np.array([gpu for r in model for gpu in r["gpus"]])
        m = np.array([x for r in model for x in r["models"]])
        by_gpu = {}
        for gpu in sorted(set(g.tolist())):
            if (g == gpu).sum() >= MIN_BAND_RUNS:
                by_gpu[gpu] = _rounded(error_quantiles(e[g == gpu], int((g == gpu).sum()), groups=m[g == gpu]))
        default = [r for r in rs if r["kind"] == "gpu"] or model
        e_d = np.array([row for r in default for row in r["errors"]], float).reshape(-1, 2)
        m_d = cells(np.array([x for r in default for x in r["gpus"]]), np.array([x for r in default for x in r["models"]]))
        # a model the bands did not see: the leave-one-model-out folds' held-out errors pooled over GPUs by
        # (GPU, model) cell (EngineProfile.for_model), and the built-in models those folds hold
        fresh = [r for r in rs if r["kind"] == "model"]
        e_n = np.array([row for r in fresh for row in r["errors"]], float).reshape(-1, 2)
        m_n = cells(np.array([x for r in fresh for x in r["gpus"]]), np.array([x for r in fresh for x in r["models"]]))
        out[name] = {"calibration_error": _rounded(error_quantiles(e_d, len(e_d), groups=m_d)),
                     "calibration_error_by_gpu": by_gpu,
                     "calibration_error_new_model": (_rounded(error_quantiles(e_n, len(e_n), groups=m_n))
                                                     if len(e_n) else {}),
                     "calibrated_models": sorted({b for r in rs for b in r.get("builtins", ())})}
    return out


def _rounded(q: dict) -> dict:
    return {k: round(float(v), 4) for k, v in dict(q, held_out=1.0).items()}


if __name__ == "__main__":
    sys.exit(main())
