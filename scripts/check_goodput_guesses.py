#!/usr/bin/env python3
"""Goodput guesses change how many runs a search takes, never what it finds.

Runs each `scripts/bench_search.py` disaggregated case (DeepSeek-V3 fp8, SGLang, `--serving both`) in
process twice, with goodput guesses (`search.pipeline.GUESSES`: from a plan's ep variants, and from its own
first runs' latencies, `search.capacity.crossing_rps`) and without, and compares the search's
JSON document (`report.search_view.search_json`) with the statistics and each plan's run count left
out: the deployments, the closest deployment, the disaggregated section and every plan's status,
goodput, binding constraint and metrics must be identical. Prints the aggregated simulations of each
(timing is `bench_search.py`'s: in process, the first search also loads or compiles the kernels).

usage: python scripts/check_goodput_guesses.py [--cases 0,1,2,3]
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path[:0] = [str(Path(__file__).resolve().parents[1]), str(Path(__file__).resolve().parent)]   # this checkout first

import apex_plan.search.pipeline as P  # noqa: E402
from apex_plan.report.search_view import search_json  # noqa: E402
from apex_plan.requests.search import SearchRequest, run_search_request  # noqa: E402
from bench_search import DISAGG_CASES  # noqa: E402


def _doc(guesses: bool, gpu: str, isl: int, osl: int, rate: float) -> dict:
    """The search's JSON document with guesses on or off."""
    P.GUESSES = guesses
    req = SearchRequest.from_mapping(dict(
        model="deepseek-v3", gpu=gpu, gpus=32, gpus_per_node=8, weight_dtype="fp8", kv_dtype="fp8", engine="sglang",
        prompt_tokens=str(isl), output_tokens=str(osl), rate=f"{rate:g}", ttft_slo="2s", tpot_slo="50ms",
        serving="both", show_all=True))
    out = run_search_request(req)
    return json.loads(json.dumps(search_json(out.result, out.inputs, True), default=str))


def _without_run_counts(doc: dict) -> dict:
    doc = dict(doc)
    doc.pop("statistics", None)
    doc["plans"] = [{k: v for k, v in p.items() if k != "simulations"} for p in doc.get("plans", [])]
    return doc


def main() -> int:
    ap = argparse.ArgumentParser(description="Searches with and without goodput guesses find the same (see docstring).")
    ap.add_argument("--cases", default="0,1,2,3", help="indices into bench_search.DISAGG_CASES")
    a = ap.parse_args()
    same = True
    for i in (int(x) for x in a.cases.split(",")):
        gpu, label, isl, osl, rate = DISAGG_CASES[i]
        with_g, without = _doc(True, gpu, isl, osl, rate), _doc(False, gpu, isl, osl, rate)
        ok = _without_run_counts(with_g) == _without_run_counts(without)
        same &= ok
        print(f"{label}, {isl}/{osl} at {rate:g} req/s: {'identical' if ok else 'DIFFERENT'}; aggregated simulations "
              f"{without['statistics']['simulations']} -> {with_g['statistics']['simulations']}")
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
