#!/usr/bin/env python3
"""A search change that should only save time finds what it found before.

Runs the six `scripts/bench_search.py` cases in process (the four DeepSeek-V3 fp8 `--serving both`
cases of `bench_search.DISAGG_CASES`, llama-3.1-70b on 8 x H100 with the lmsys trace (the chat preset
at 0.5 req/s when ../shared is absent) and DeepSeek-V3 on 1024 x H100 with the chat preset at 10 req/s),
each with `--all`, and writes or compares the JSON documents (`report.search_view.search_json`).

`--write DIR` stores them (case0.json ... case5.json); `--compare DIR` runs them again and compares,
with the statistics left out:
* the deployments (plans, counts, placement, metrics, launch commands, disaggregated pools and TTFT
  phases), the closest deployment, the binding constraint, the recommendation and the disaggregated
  section (its role plans and infeasible sizings) must be identical;
* every plan simulated in both ("ok" or "no_goodput" in both) must have identical metrics, goodput
  and binding; its run count may differ;
* plans whose status changed (a tighter pruning rule skips more) are listed, and allowed only when the
  plan is in no deployment before.
Exit status 0 when all of that holds, 1 otherwise. Prints each case's wall and CPU seconds (the first
case also loads or compiles the kernels).

usage: python scripts/check_search_same.py --write DIR | --compare DIR [--cases 0,1,2,3,4,5]
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

sys.path[:0] = [str(Path(__file__).resolve().parents[1]), str(Path(__file__).resolve().parent)]   # this checkout first

from apex_plan.report.search_view import search_json  # noqa: E402
from apex_plan.requests.search import SearchRequest, run_search_request  # noqa: E402
from bench_search import BENCH, DISAGG_CASES  # noqa: E402


def cases() -> list[dict]:
    """The option mappings of the six cases."""
    out = [dict(model="deepseek-v3", gpu=gpu, gpus=32, gpus_per_node=8, weight_dtype="fp8", kv_dtype="fp8",
                engine="sglang", prompt_tokens=str(isl), output_tokens=str(osl), rate=f"{rate:g}", ttft_slo="2s",
                tpot_slo="50ms", serving="both") for gpu, _, isl, osl, rate in DISAGG_CASES]
    lmsys = BENCH / "traces" / "llama-3.1-70b.lmsys_05.dp1tp8.jsonl"
    llama = dict(model="llama-3.1-70b", gpu="h100-sxm-80gb", gpus=8, ttft_slo="500ms", tpot_slo="50ms")
    out.append(llama | (dict(trace=str(lmsys)) if lmsys.exists() else dict(workload="chat", rate="0.5")))
    out.append(dict(model="deepseek-v3", gpu="h100-sxm-80gb", gpus=1024, workload="chat", rate="10", ttft_slo="1s",
                    tpot_slo="100ms"))
    return out


def run_case(opts: dict) -> dict:
    req = SearchRequest.from_mapping(opts | dict(show_all=True))
    out = run_search_request(req)
    return json.loads(json.dumps(search_json(out.result, out.inputs, True), default=str))


def _outcome(doc: dict) -> dict:
    """What the search found: everything but the statistics and the per-plan records."""
    keep = {k: v for k, v in doc.items() if k not in ("statistics", "plans", "inputs")}
    dis = keep.get("disaggregated")
    if isinstance(dis, dict):
        keep["disaggregated"] = {k: v for k, v in dis.items() if k != "statistics"}
    return keep


def _plans(doc: dict) -> dict[str, dict]:
    return {p["key"]: {k: v for k, v in p.items() if k not in ("simulations", "rank")}
            for p in doc.get("plans", [])}


def compare(before: dict, after: dict) -> list[str]:
    """The differences that matter (module docstring), one line each."""
    bad = []
    ob, oa = _outcome(before), _outcome(after)
    for k in sorted(set(ob) | set(oa)):
        if ob.get(k) != oa.get(k):
            bad.append(f"'{k}' differs")
    pb, pa = _plans(before), _plans(after)
    used = {r["plan"] for d in before.get("deployments", []) for r in d["replicas"]}
    simulated = ("ok", "no_goodput")
    for key in sorted(set(pb) | set(pa)):
        b, a = pb.get(key), pa.get(key)
        if b is None or a is None:
            bad.append(f"plan {key} only {'after' if b is None else 'before'}")
        elif b.get("status") in simulated and a.get("status") in simulated:
            if b != a:
                bad.append(f"plan {key}: simulated in both, records differ")
        elif b.get("status") != a.get("status"):
            line = f"plan {key}: {b.get('status')} -> {a.get('status')}"
            if key in used:
                bad.append(line + " (in a deployment before)")
            else:
                print("    " + line)
    return bad


def main() -> int:
    ap = argparse.ArgumentParser(description="Search results before/after a change (see the module docstring).")
    g = ap.add_mutually_exclusive_group(required=True)
    g.add_argument("--write", type=Path)
    g.add_argument("--compare", type=Path)
    ap.add_argument("--cases", default="0,1,2,3,4,5")
    a = ap.parse_args()
    all_cases = cases()
    same = True
    print(f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs at the start")
    for i in (int(x) for x in a.cases.split(",")):
        t0, c0 = time.perf_counter(), time.process_time()
        doc = run_case(all_cases[i])
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
        label = f"case {i} ({all_cases[i]['model']}, {all_cases[i]['gpus']} x {all_cases[i]['gpu']})"
        sims = doc["statistics"].get("simulations")
        dsims = (doc["statistics"].get("disaggregated") or {}).get("simulations")
        print(f"{label}: {wall:.2f} s wall, {cpu:.2f} s CPU; {sims} aggregated and {dsims} disaggregated simulations")
        if a.write:
            a.write.mkdir(parents=True, exist_ok=True)
            (a.write / f"case{i}.json").write_text(json.dumps(doc, indent=1, sort_keys=True))
            continue
        bad = compare(json.loads((a.compare / f"case{i}.json").read_text()), doc)
        same &= not bad
        print(f"  {'identical' if not bad else 'DIFFERENT'}" + "".join(f"\n  {b}" for b in bad[:20]))
    print(f"load average {os.getloadavg()[0]:.1f} at the end")
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
