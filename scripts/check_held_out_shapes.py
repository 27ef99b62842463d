#!/usr/bin/env python3
"""Which runs of the shapes the held-out set holds does apex-plan refuse or crash on? Synthetic rows through the
shared silicon runner's own command builder (../shared/bench/run_silicon.py `run_row`), in this process.

The rows are what such a file could hold, not measurements: every Hugging Face id of the aiconfigurator-core
wheel's `systems/support_matrix/*.csv` (the models it lists per GPU and engine; its `silicon_sample.csv` is never
read), on the GPUs given, with each engine at the newest version the support matrix names, TP 1-8 with and without
expert parallelism and attention DP, 1K and 8K prompts at 4 and 64 requests (`--agg`); and random disaggregated
layouts of MoE models (`--disagg N`): 1-4 prefill and 1-2 decode instances of TP, EP and ADP up to 72 GPUs, batch
16-256, concurrency 1-1024. Each row is run and its outcome counted, the failures grouped by their first line with
the numbers masked (weights that do not fit the GPUs are legitimate refusals; anything else is worth a look).
The measured figures are placeholders: only the status is read.

    python scripts/check_held_out_shapes.py WHEEL_DIR [--gpus b300_sxm,gb200,gb300] [--agg N] [--disagg N]
        [--jobs 2] [--seed 0]
"""

from __future__ import annotations

import argparse
import collections
import csv
import random
import re
import sys
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RUNNER = ROOT.parent / "shared" / "bench"
VERSION = {"vllm": "0.24.0", "sglang": "0.5.16", "trtllm": "1.3.0rc23"}   # the support matrix's newest per engine
LAYOUTS = [(1, 1, 1), (4, 1, 1), (8, 1, 1), (4, 4, 1), (8, 8, 1), (1, 8, 8), (1, 4, 4), (1, 16, 16), (1, 32, 32),
           (1, 48, 48), (2, 8, 4), (16, 16, 1), (1, 72, 72)]                # (tp, ep, adp) of one disaggregated role


def _precision(repo: str) -> str:
    """The runner's `precision` column as a checkpoint's name implies it ('' = bf16)."""
    s = repo.lower()
    return "fp4" if ("fp4" in s or "gpt-oss" in s) else "fp8" if "fp8" in s else ""


def _row(cols, **kv) -> dict:
    r = {k: "" for k in cols}
    r.update(silicon_ttft_ms="100", silicon_tpot_ms="10", pp_size="1", **{k: str(v) for k, v in kv.items()})
    return r


def agg_rows(ids, gpus, cols, moe) -> list[dict]:
    rows = []
    for repo in ids:
        for gpu in gpus:
            for be in VERSION:
                for tp in (1, 2, 4, 8):
                    for isl, osl in ((1024, 1024), (8192, 1024)):
                        for c in (4, 64):
                            base = dict(id=f"{repo}|{gpu}|{be}|tp{tp}|{isl}/{osl}|c{c}", backend=be,
                                        backend_version=VERSION[be], model_path=repo, system=gpu,
                                        precision=_precision(repo), mode="agg", isl=isl, osl=osl, batch_size=c,
                                        tp_size=tp, attention_dp_size=1, concurrency=c)
                            rows.append(_row(cols, **base, moe_tp_size=tp if moe[repo] else "",
                                             moe_ep_size=1 if moe[repo] else ""))
                            if moe[repo] and tp > 1:
                                rows.append(_row(cols, **dict(base, id=base["id"] + "|ep"), moe_tp_size=1, moe_ep_size=tp))
                                rows.append(_row(cols, **dict(base, id=base["id"] + "|adp", tp_size=1,
                                                              attention_dp_size=tp), moe_tp_size=1, moe_ep_size=tp))
    return rows


def disagg_rows(ids, gpus, cols, moe, n, rng) -> list[dict]:
    pool, rows = [i for i in ids if moe[i]], []
    for _ in range(n):
        repo, gpu, be = rng.choice(pool), rng.choice(gpus), rng.choice(list(VERSION))
        (ptp, pep, padp), (dtp, dep, dadp) = rng.choice(LAYOUTS), rng.choice(LAYOUTS)
        pw, dw, b, c = rng.choice((1, 2, 3, 4)), rng.choice((1, 2)), rng.choice((16, 64, 128, 256)), rng.choice((1, 8, 64, 256, 1024))
        isl, osl = rng.choice(((1024, 1024), (8192, 1024), (4096, 512)))
        rows.append(_row(cols, id=f"{repo}|{gpu}|{be}|{pw}P{ptp},{pep},{padp}|{dw}D{dtp},{dep},{dadp}|b{b}|c{c}|{isl}",
                         backend=be, backend_version="dynamo", model_path=repo, system=gpu, precision=_precision(repo),
                         mode="disagg", isl=isl, osl=osl, concurrency=c, prefill_num_workers=pw, prefill_tp_size=ptp,
                         prefill_pp_size=1, prefill_attention_dp_size=padp, prefill_moe_ep_size=pep, decode_num_workers=dw,
                         decode_tp_size=dtp, decode_pp_size=1, decode_attention_dp_size=dadp, decode_moe_ep_size=dep,
                         decode_batch_size=b))
    return rows


def _run(row):
    import run_silicon
    try:
        return row["id"], run_silicon.run_row(row, None)
    except BaseException as e:          # a crash of the runner itself counts too
        return row["id"], {"status": "crashed", "why": f"{type(e).__name__}: {e}"}


def _init():
    sys.path[:0] = [str(RUNNER), str(ROOT)]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("wheel_dir", type=Path)
    ap.add_argument("--gpus", default="b300_sxm,gb200,gb300", help="the runner's system names, comma-separated")
    ap.add_argument("--agg", type=int, default=1500, help="aggregated rows to draw from the grid (0: none)")
    ap.add_argument("--disagg", type=int, default=300, help="random disaggregated rows (0: none)")
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    matrix = sorted((args.wheel_dir / "aiconfigurator_core" / "systems" / "support_matrix").glob("*.csv"))
    if not matrix or not (RUNNER / "run_silicon.py").is_file():
        print(f"error: needs {args.wheel_dir}/aiconfigurator_core/systems/support_matrix/*.csv and "
              f"{RUNNER}/run_silicon.py", file=sys.stderr)
        return 2
    _init()
    from apex_plan.model.load import load_model
    ids = sorted({r["HuggingFaceID"] for p in matrix for r in csv.DictReader(p.open())})
    moe, unknown = {}, []
    for repo in ids:
        try:
            moe[repo] = load_model(repo).num_experts > 0
        except Exception as e:           # an id the tool cannot load is a finding of its own
            unknown.append(f"{repo}: {str(e).splitlines()[0][:120]}")
    ids = [i for i in ids if i in moe]
    cols = (RUNNER / "silicon" / "calibration-h200-b200.csv").open().readline().strip().split(",")
    rng, gpus = random.Random(args.seed), args.gpus.split(",")
    rows = agg_rows(ids, gpus, cols, moe)
    rng.shuffle(rows)
    rows = rows[:args.agg] + disagg_rows(ids, gpus, cols, moe, args.disagg, rng)
    counts, examples = collections.Counter(), collections.defaultdict(list)
    with ProcessPoolExecutor(args.jobs, initializer=_init) as pool:
        for rid, out in pool.map(_run, rows, chunksize=4):
            why = out.get("why", "")
            key = f"{out['status']:7s} {re.sub(r'[0-9.]+', '#', why.splitlines()[0])[:140]}" if why else out["status"]
            counts[key] += 1
            examples[key].append(rid)
    print(f"{len(ids)} model ids load, {len(unknown)} do not" + "".join(f"\n  {u}" for u in unknown))
    print(f"{len(rows)} rows on {', '.join(gpus)}:")
    for key, n in counts.most_common():
        print(f"{n:6d}  {key}\n        e.g. {'; '.join(examples[key][:2])}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
