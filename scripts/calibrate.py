#!/usr/bin/env python3
"""Fit an engine profile's host constants (and optionally GPU physics) to measured runs, jointly over
all runs, inside physical bounds, and cross-validate.

Reads either CSV format: closed-loop benchmark rows (the silicon columns: backend, model_path, isl,
osl, concurrency, silicon_ttft_ms, ...) or trace-replay rows (the vllm-h100 columns: model, trace,
ttft_mean_s, ...). Rows are filtered to one engine family (--engine); every --train-every'th row is
fitted (all when 1), the others are held out and predicted with the fitted constants. The fit
minimises capped mean |ln(pred/measured)| of TTFT and TPOT (apex_plan.calibrate.fit) by coordinate
search from the profile's current values, which also act as weak priors. It prints the fitted
values; copy them into engine_profiles/<profile>.yaml (host.*) or hardware_profiles/<gpu>.yaml (gpu.*).

With --by-gpu the host constants are then refitted on each GPU's runs (at least --min-gpu-runs of
them), starting from the joint values: the `host_by_gpu` entries of the profile (a platform's CPUs
and drivers set its host time; GPUs without runs keep the joint values). Several CSVs are read
together; rows listed in --exclude (default ../shared/bench/silicon/excluded.csv) are left out.

With --frontend-by-gpu nothing is searched: every run is predicted once, and on each GPU with at
least --min-gpu-runs runs the per-request front-end time (host.frontend_ms) is set to the value that
minimises that GPU's TTFT MAPE (exact: the front end adds to every TTFT after the engine loop;
apex_plan.calibrate.fit.fit_frontend_ms), jointly over all its models. Each GPU's choice is checked
leave-one-model-out (refitted on the other models' runs of that GPU, the held-out model predicted).
It then gives the default for GPUs without an entry (host.frontend_ms): the value that minimises the
mean over those GPUs of each GPU's TTFT MAPE (each GPU weighs the same, whatever its run count), checked
leave-one-GPU-out (each GPU predicted with the default refitted on the other GPUs) against the
profile's current default.

usage: python scripts/calibrate.py [CSV ...] --engine vllm [--fit host.step_ms,host.per_seq_ms,...]
       [--train-every 3] [--rounds 2] [--requests-per-slot 5] [--by-gpu] [--min-gpu-runs 20]
       python scripts/calibrate.py CSV ... --engine trtllm --frontend-by-gpu
"""
from __future__ import annotations

import argparse
import csv
import dataclasses
import sys
import time
from pathlib import Path

import numpy as np

from apex_plan.calibrate.fit import BOUNDS, errors, fit, fit_default_frontend_ms, fit_frontend_ms, make_params, predict
from apex_plan.calibrate.runs import read_runs

SHARED = Path(__file__).resolve().parents[2] / "shared" / "bench"
DEFAULT_FIT = "host.frontend_ms,host.step_ms,host.per_seq_ms,host.overlap,host.per_prefill_token_us"


def summary(label: str, cases, pred) -> str:
    e = errors(cases, pred)
    ok = np.isfinite(e).all(axis=1)
    if not ok.any():
        return f"{label}: no run predicted"
    return (f"{label}: {ok.sum()}/{len(cases)} runs, TTFT MAPE {np.abs(e[ok, 0]).mean():.1%} (bias {e[ok, 0].mean():+.1%}), "
            f"TPOT MAPE {np.abs(e[ok, 1]).mean():.1%} (bias {e[ok, 1].mean():+.1%})")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("csv", nargs="*", default=[str(SHARED / "silicon" / "calibration.csv")])
    ap.add_argument("--engine", required=True, help="engine family or profile name whose runs to fit (vllm, sglang, trtllm, vllm-0.6)")
    ap.add_argument("--fit", default=DEFAULT_FIT, help="constants: " + ", ".join(BOUNDS))
    ap.add_argument("--train-every", type=int, default=1, help="fit every k-th run, validate on the others")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--requests-per-slot", type=int, default=5)
    ap.add_argument("--by-gpu", action="store_true", help="then refit the host constants per GPU (host_by_gpu)")
    ap.add_argument("--min-gpu-runs", type=int, default=20)
    ap.add_argument("--frontend-by-gpu", action="store_true",
                    help="only fit host.frontend_ms per GPU, exactly, with a leave-one-model-out check")
    ap.add_argument("--exclude", default=str(SHARED / "silicon" / "excluded.csv"))
    args = ap.parse_args()
    cases, skipped = [], []
    bad = {r["id"] for r in csv.DictReader(open(args.exclude))} if Path(args.exclude).is_file() else set()
    for path in args.csv:
        if not Path(path).exists():
            print(f"{path}: not found", file=sys.stderr)
            return 2
        got, skip = read_runs(path, args.requests_per_slot)
        cases += [c for c in got if c.id not in bad]
        skipped += skip
    cases = [c for c in cases if args.engine in (c.engine.profile.family, c.engine.profile.name)]
    if not cases:
        print(f"--engine: no run of '{args.engine}' in {', '.join(args.csv)}", file=sys.stderr)
        return 2
    names = {c.engine.profile.name for c in cases}
    if len(names) > 1:
        print(f"--engine: runs of several profiles ({', '.join(sorted(names))}); name one", file=sys.stderr)
        return 2
    if args.frontend_by_gpu:
        return frontend_by_gpu(cases, args.min_gpu_runs)
    k = max(1, args.train_every)
    train = cases[::k]
    held = [c for i, c in enumerate(cases) if k > 1 and i % k]
    params = make_params([n for n in args.fit.split(",") if n], train[0].engine.profile,
                         train[0].cluster.gpu.calibration)
    print(f"{len(cases)} runs of {names.pop()} ({len(skipped)} rows skipped); fitting on {len(train)}, "
          f"holding out {len(held)}")
    before_train = predict(train)
    print(summary("before, fitted runs", train, before_train))
    if held:
        before_held = predict(held)
        print(summary("before, held-out runs", held, before_held))
    t0 = time.perf_counter()
    x, val = fit(train, params, rounds=args.rounds, progress=lambda s: print("  " + s, flush=True))
    print(f"fit: loss {val:.4f} in {time.perf_counter() - t0:.0f} s")
    print(summary("after, fitted runs", train, predict(train, params, x)))
    if held:
        print(summary("after, held-out runs", held, predict(held, params, x)))
    print("fitted constants (bounds):")
    for p, v in zip(params, x):
        print(f"  {p.target}.{p.field}: {v:.4g}   [{p.low:g}, {p.high:g}] prior {p.prior:g}")
    if args.by_gpu:
        by_gpu(train, held, params, x, args)
    return 0


def by_gpu(train, held, params, x, args) -> None:
    """Refit the host constants on each GPU's runs from the joint values; print host_by_gpu."""
    host = [(p, v) for p, v in zip(params, x) if p.target == "host"]
    print("host_by_gpu:")
    for gpu in sorted({c.cluster.gpu.name for c in train}):
        tr = [c for c in train if c.cluster.gpu.name == gpu]
        ho = [c for c in held if c.cluster.gpu.name == gpu]
        if len(tr) < args.min_gpu_runs:
            print(f"  # {gpu}: {len(tr)} fitted runs (< {args.min_gpu_runs}): keeps the joint values")
            continue
        gp = [dataclasses.replace(p, prior=v) for p, v in host]
        xg, _ = fit(tr, gp, rounds=args.rounds)
        print(f"  {gpu}: {{{', '.join(f'{p.field}: {v:.4g}' for p, v in zip(gp, xg))}}}")
        print("    # " + summary("fitted runs", tr, predict(tr, gp, xg)))
        if ho:
            print("    # " + summary("held-out runs, joint values", ho, predict(ho, gp, [v for _, v in host])))
            print("    # " + summary("held-out runs, this GPU's", ho, predict(ho, gp, xg)))


def _mape(meas: np.ndarray, pred: np.ndarray) -> str:
    ok = np.isfinite(pred)
    a = np.abs(pred[ok] / meas[ok] - 1.0)
    return f"{100 * a.mean():.1f} / {100 * np.median(a):.1f} %" if a.size else "-"


def frontend_by_gpu(cases, min_runs: int) -> int:
    """Fit host.frontend_ms per GPU (exact, jointly over its models) and check it leave-one-model-out."""
    pred = predict(cases)[:, 0]
    meas = np.array([c.ttft_ms for c in cases])
    gpu = np.array([c.cluster.gpu.name for c in cases])
    model = np.array([c.group[2] for c in cases])
    now = np.array([c.engine.profile.on_gpu(c.cluster.gpu.name).host.frontend_ms for c in cases])
    print("host_by_gpu:   # TTFT MAPE / median |error|: now -> fitted; held-out models: now -> refitted without them")
    for g in sorted(set(gpu.tolist())):
        on = gpu == g
        if on.sum() < min_runs:
            print(f"  # {g}: {on.sum()} runs (< {min_runs}): keeps the profile's front end")
            continue
        f = fit_frontend_ms(pred[on], meas[on], float(now[on][0]))
        fitted = pred[on] - now[on] + f
        held = np.full(on.sum(), np.nan)                       # each model predicted with the others' front end
        for m in sorted(set(model[on].tolist())):
            out, rest = on & (model == m), on & (model != m)
            if rest.any():
                fm = fit_frontend_ms(pred[rest], meas[rest], float(now[on][0]))
                held[(model[on] == m)] = pred[out] - now[out] + fm
        print(f"  {g}: {{frontend_ms: {f:.1f}}}   # {on.sum()} runs, {len(set(model[on].tolist()))} models: "
              f"{_mape(meas[on], pred[on])} -> {_mape(meas[on], fitted)}; held-out models "
              f"{_mape(meas[on], pred[on])} -> {_mape(meas[on], held)}")
    default_frontend(pred - now, meas, gpu, min_runs, cases[0].engine.profile.host.frontend_ms)
    return 0


def default_frontend(base: np.ndarray, meas: np.ndarray, gpu: np.ndarray, min_runs: int, now_ms: float) -> float:
    """Print host.frontend_ms for GPUs without an entry (fit_default_frontend_ms on runs whose TTFT without a
    front end is `base`) and its leave-one-GPU-out check against the profile's `now_ms`."""
    f = fit_default_frontend_ms(base, meas, gpu, min_runs, now_ms)
    print(f"host.frontend_ms (GPUs without an entry): {f:.1f}   # now {now_ms:g}; "
          f"each GPU predicted with the default fitted on the others:")
    names = [g for g in sorted(set(gpu.tolist())) if (gpu == g).sum() >= min_runs]
    for g in names if len(names) > 1 else ():
        on = gpu == g
        fo = fit_default_frontend_ms(base[~on], meas[~on], gpu[~on], min_runs, now_ms)
        print(f"  # {g}: default {now_ms:g} ms {_mape(meas[on], base[on] + now_ms)} -> "
              f"{fo:.1f} ms from the other GPUs {_mape(meas[on], base[on] + fo)}")
    return f

if __name__ == "__main__":
    sys.exit(main())
