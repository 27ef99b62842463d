#!/usr/bin/env python3
"""Re-run TRT-LLM silicon rows of MTP-capable models with MTP speculative decoding, as a serving recipe ran it.

The shared CSVs do not record speculative decoding, and InferenceMAX publishes every DeepSeek-R1 TRT-LLM
configuration twice: plain (benchmarks/dsr1_fp8_b200_trt.sh) and with MTP (dsr1_fp8_b200_trt_mtp.sh,
dsr1_fp4_b200_trt_mtp.sh, dsr1_fp8_h200_trt_mtp.sh: speculative_config {decoding_type: MTP,
num_nextn_predict_layers: 3}, 1 with attention DP). TRT-LLM's own default is no speculation
(llmapi/llm_args.py speculative_config None), so the profile never switches it on; this script shows which
rows read better as MTP runs. Reads the JSON of `run_silicon.py --json FILE`, keeps the TRT-LLM rows (id
containing --only) whose model has an MTP module (config num_nextn_predict_layers > 0), runs each command
again with `--speculative mtp:K` (K = --k, or --k-adp with attention DP) and prints measured, as-declared and
with-MTP TTFT/TPOT, the verdict per row ("mtp": its TPOT is within --tol with MTP and at least twice as far
off without; "plain": the reverse; "-": neither), and the TPOT MAPE over each verdict's rows both ways.
--acceptance: MTP's per-draft conditional acceptance for K > 1 (no documented default; 0.7 is a probe, not a
fit); mtp:1 takes apex-plan's documented default (DeepSeek-V3 report, 0.85) unless --acceptance is given.

usage: python scripts/check_mtp.py RUN.json [--only deepseek] [--k 3] [--k-adp 1] [--acceptance 0.7] [--tol 0.1]
"""
from __future__ import annotations

import argparse
import json
import re
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from silicon_rows import flag, rerun  # noqa: E402

from apex_plan.model.load import load_model



def _has_mtp(model: str, cache: dict) -> bool:
    if model not in cache:
        try:
            cache[model] = load_model(model).mtp_layers > 0
        except Exception:                      # a model apex-plan cannot load has no rows here to re-run
            cache[model] = False
    return cache[model]


def _verdict(e_plain: float, e_mtp: float, tol: float) -> str:
    if abs(e_mtp) <= tol and abs(e_plain) >= 2.0 * abs(e_mtp):
        return "mtp"
    if abs(e_plain) <= tol and abs(e_mtp) >= 2.0 * abs(e_plain):
        return "plain"
    return "-"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run_json")
    ap.add_argument("--only", default="")
    ap.add_argument("--k", type=int, default=3)
    ap.add_argument("--k-adp", type=int, default=1)
    ap.add_argument("--acceptance", default=None)
    ap.add_argument("--tol", type=float, default=0.10)
    a = ap.parse_args()
    acc = a.acceptance if a.acceptance is not None else "0.7"
    models: dict = {}
    rows = []
    for r in json.load(open(a.run_json)):
        c = r.get("cmd", "")
        if (r.get("status") != "ok" or r["group"][1] != "trtllm" or a.only not in r["id"] or "--plan " not in c
                or not _has_mtp(flag(c, "--model") or "", models)):
            continue
        k = a.k_adp if re.search(r"adp=(\d+)", c) and int(re.search(r"adp=(\d+)", c).group(1)) > 1 else a.k
        extra = ["--speculative", f"mtp:{k}"]
        if k > 1 or a.acceptance is not None:
            extra += ["--speculative-acceptance", acc]
        out = rerun(c, extra)
        if out.returncode != 0:
            print(f"{r['id'][:70]:70s} failed: {out.stderr.strip()[-200:]}", flush=True)
            continue
        m = json.loads(out.stdout)["metrics"]
        ttft, tpot = m["ttft_ms"]["mean"], m["tpot_ms"]["mean"]
        e0, e1 = r["pred_tpot"] / r["meas_tpot"] - 1.0, tpot / r["meas_tpot"] - 1.0
        v = _verdict(e0, e1, a.tol)
        rows.append((v, e0, e1, r["pred_ttft"] / r["meas_ttft"] - 1.0, ttft / r["meas_ttft"] - 1.0))
        print(f"{r['id'][:70]:70s} mtp:{k} TTFT meas {r['meas_ttft']:7.0f} plain {r['pred_ttft']:7.0f} mtp {ttft:7.0f}"
              f" | TPOT meas {r['meas_tpot']:5.1f} plain {r['pred_tpot']:5.1f} ({100 * e0:+4.0f}%) mtp {tpot:5.1f}"
              f" ({100 * e1:+4.0f}%)  {v}", flush=True)
    if not rows:
        sys.exit("check_mtp: no TRT-LLM row of an MTP-capable model; check --only and the JSON")
    for v in ("mtp", "plain", "-"):
        sel = [x for x in rows if x[0] == v]
        if not sel:
            continue
        def mape(k: int) -> float:
            return 100.0 * statistics.mean(abs(x[k]) for x in sel)
        print(f"{v:>5s}: {len(sel):3d} rows  TPOT MAPE plain {mape(1):5.1f} % / mtp {mape(2):5.1f} %   "
              f"TTFT MAPE plain {mape(3):5.1f} % / mtp {mape(4):5.1f} %")


if __name__ == "__main__":
    main()
