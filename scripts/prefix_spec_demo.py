"""What prefix caching, cache-aware routing and MTP speculative decoding buy, on three workloads.

1. examples/mooncake.jsonl (Mooncake format) on Llama-3.1-70B, 1 x 8 H100 (tp=8): simulated hit
   rate beside the exact infinite-cache hit rate from the hash ids; TTFT with and without caching;
   capacity (the highest rate, time-scaling the trace, meeting the SLO with no queue build-up).
2. A multi-turn chat workload (8 turns, 2,000-token system prompts) over 4 replicas of
   Llama-3.1-8B (1 H100 each): hit rate and goodput with round-robin, session-affinity and
   longest-prefix routing, and capacity (the trace time-scaled: think times shrink with it).
3. DeepSeek-V3 (fp8) on 8 x H200 (tp=8): TPOT and goodput with MTP (mtp:1 at acceptance 0.6
   and 0.8, mtp:3 at 0.8) against no speculation.

Usage: python scripts/prefix_spec_demo.py [--part 1|2|3] [--requests 2000]
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

from apex_plan.engine.speculative import parse_speculative
from apex_plan.hardware.load import load_gpu, make_cluster
from apex_plan.model.load import load_model
from apex_plan.plan.spec import EngineConfig, Plan
from apex_plan.search.capacity import find_goodput, scaled_trace
from apex_plan.simulate.run import simulate
from apex_plan.workload.prefix import SessionOptions, multiturn_trace
from apex_plan.workload.spec import Slo, Workload
from apex_plan.workload.synthetic import PRESETS, preset_trace
from apex_plan.workload.trace import read_trace

ROOT = Path(__file__).resolve().parents[1]


def _row(label: str, m: dict) -> str:
    pc = m.get("prefix_cache") or {}
    slo = m.get("slo") or {}
    return (f"  {label:<34} hit {pc.get('hit_rate', 0.0):6.1%} (infinite {pc.get('infinite_cache_hit_rate', 0.0):6.1%})  "
            f"TTFT p50 {m['ttft_ms']['p50']:7.0f} p90 {m['ttft_ms']['p90']:7.0f} ms  TPOT p50 {m['tpot_ms']['p50']:6.2f} ms  "
            f"goodput {slo.get('goodput_requests_per_s', 0.0):6.2f} req/s")


def _capacity(model, cluster, plan, cfg, trace, slo: Slo) -> float:
    cap = find_goodput(lambda r: simulate(model, cluster, plan, cfg, Workload(scaled_trace(trace, r)), slo).metrics,
                       slo, trace.rate_per_s, iterations=6)
    return cap.goodput_rps


def mooncake() -> None:
    tr = read_trace(ROOT / "examples" / "mooncake.jsonl")
    model, cluster = load_model("llama-3.1-70b"), make_cluster(load_gpu("h100-sxm-80gb"), 8, 8)
    plan, slo = Plan(tp=8), Slo(ttft_s=2.0, tpot_s=0.05)
    print(f"1. {tr.name}: {len(tr)} requests at {tr.rate_per_s:.2f} req/s, Llama-3.1-70B tp=8 on 8 x H100, "
          f"SLO TTFT 2 s / TPOT 50 ms (p90)")
    for caching in (True, False):
        cfg = EngineConfig(name="vllm", prefix_caching=caching, max_model_len=32768)
        m = simulate(model, cluster, plan, cfg, Workload(tr), slo).metrics.to_dict()
        cap = _capacity(model, cluster, plan, cfg, tr, slo)
        print(_row(f"vLLM V1, prefix caching {'on' if caching else 'off'}", m) + f"  capacity {cap:.2f} req/s")


def multiturn(n: int) -> None:
    chat = PRESETS["chat"]
    tr = multiturn_trace(n, chat.prompt, chat.output, 16.0,
                         SessionOptions(turns=8, prefix_tokens=2000, num_prefixes=8, think_time_s=20.0), seed=1)
    model, cluster = load_model("llama-3.1-8b"), make_cluster(load_gpu("h100-sxm-80gb"), 4, 8)
    plan, slo = Plan(dp=4, tp=1), Slo(ttft_s=0.5, tpot_s=0.05)
    print(f"2. multi-turn chat: {len(tr)} requests, 8 turns, 8 system prompts of 2,000 tokens, sessions at 2/s "
          f"(a mean {tr.rate_per_s:.2f} req/s over {tr.duration_s:.0f} s), 4 x Llama-3.1-8B (1 H100 each), "
          f"SLO TTFT 500 ms / TPOT 50 ms (p90)")
    for routing in ("round_robin", "session", "prefix"):
        cfg = EngineConfig(name="vllm", routing=routing, max_model_len=32768)
        m = simulate(model, cluster, plan, cfg, Workload(tr), slo).metrics.to_dict()
        cap = _capacity(model, cluster, plan, cfg, tr, slo)
        print(_row(f"routing {routing}", m) + f"  capacity {cap:.1f} req/s")


def mtp(n: int) -> None:
    model, cluster = load_model("deepseek-v3"), make_cluster(load_gpu("h200-sxm-141gb"), 8, 8)
    plan, slo = Plan(tp=8, weight_dtype="fp8", kv_dtype="fp8"), Slo(ttft_s=2.0, tpot_s=0.05)
    tr = preset_trace("chat", 4.0, n, seed=2)
    print(f"3. DeepSeek-V3 fp8, tp=8 on 8 x H200, chat preset at 4 req/s ({n} requests), SLO TTFT 2 s / TPOT 50 ms")
    base = EngineConfig(name="vllm", max_model_len=32768)
    for label, spec in (("no speculation", None), ("mtp:1 acceptance 0.6", parse_speculative("mtp:1", "0.6")),
                        ("mtp:1 acceptance 0.8", parse_speculative("mtp:1", "0.8")),
                        ("mtp:3 acceptance 0.8", parse_speculative("mtp:3", "0.8"))):
        cfg = dataclasses.replace(base, speculative=spec)
        m = simulate(model, cluster, plan, cfg, Workload(tr), slo).metrics.to_dict()
        cap = _capacity(model, cluster, plan, cfg, tr, slo)
        print(_row(label, m) + f"  capacity {cap:.2f} req/s")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--part", type=int, choices=(1, 2, 3))
    ap.add_argument("--requests", type=int, default=2000)
    a = ap.parse_args()
    if a.part in (None, 1):
        mooncake()
    if a.part in (None, 2):
        multiturn(a.requests)
    if a.part in (None, 3):
        mtp(a.requests)


if __name__ == "__main__":
    main()
