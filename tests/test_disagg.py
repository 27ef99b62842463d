"""Disaggregated serving: exact KV-transfer bytes, conservation, the infinite-link identity, decode
back-pressure holding prefill blocks, the CLI and the launch commands."""

from __future__ import annotations

import json

import numpy as np
import pytest

from apex_plan.engine.load import resolve_engine_profile
from apex_plan.hardware.load import load_gpu, make_cluster
from apex_plan.model.load import load_model
from apex_plan.plan.disagg import DisaggPlan
from apex_plan.plan.spec import EngineConfig, Plan
from apex_plan.report.launch import disagg_launch, parse_launch
from apex_plan.simulate import disagg as D
from apex_plan.simulate.transfer import Links, kv_transfer_bytes, nic_bytes, rank_links
from apex_plan.workload.spec import Trace, Workload
from apex_plan.workload.synthetic import LengthDist, closed_loop, synthetic_trace
from test_cli import assert_one_line_error, run_main

H100 = load_gpu("h100-sxm-80gb")


def _cfg(engine="vllm", **kw):
    return EngineConfig(name=engine, profile=resolve_engine_profile(engine), **kw)


def _trace(n, prompt, output, rate=None, seed=0):
    return synthetic_trace(n, LengthDist("constant", mean=prompt), LengthDist("constant", mean=output), rate,
                           "poisson", 1.0, seed)


def test_kv_transfer_bytes_exact_mla_gqa_and_window():
    ds = load_model("deepseek-v3")
    # MLA: the latent (kv_lora_rank 512) + rope key (64) per token per layer, 61 layers, bf16
    assert kv_transfer_bytes(ds, "bf16", np.array([1024]))[0] == 61 * (512 + 64) * 2 * 1024
    ll = load_model("llama-3.1-70b")
    # GQA: K and V of 8 KV heads of 128 dims, 80 layers, fp8
    assert kv_transfer_bytes(ll, "fp8", np.array([3000, 7]))[1] == 80 * 2 * 8 * 128 * 1 * 7
    gpt = load_model("gpt-oss-120b")
    kinds = gpt.kind_counts()
    win = [k for k in kinds if k.mixer == "sliding"][0]
    full = sum(n for k, n in kinds.items() if k.mixer == "full")
    per_tok = 2 * gpt.num_kv_heads * gpt.head_dim * 2
    expect = full * 1000 * per_tok + kinds[win] * min(1000, win.window) * per_tok
    assert kv_transfer_bytes(gpt, "bf16", np.array([1000]))[0] == expect


def test_nic_bytes_split_over_gpus():
    ll = load_model("llama-3.1-70b")
    total = np.array([1e9])
    send, recv = nic_bytes(ll, Plan(1, 4, 1), Plan(1, 8, 1), total)
    assert recv[0] == pytest.approx(1e9 / 8)      # each of 8 decode GPUs gets one of the 8 KV heads
    assert send[0] == pytest.approx(1e9 / 4)      # one copy of everything, spread over 4 prefill GPUs
    ds = load_model("deepseek-v3")
    send, recv = nic_bytes(ds, Plan(1, 1, 1, adp=8), Plan(1, 8, 1), total)
    assert recv[0] == 1e9 and send[0] == 8e9      # MLA latent replicated on each of the 8 decode GPUs


def test_links_nvlink_inside_a_node_rdma_across():
    cl = make_cluster(H100, 16, 8)
    dp = DisaggPlan(Plan(2, 2, 1), Plan(1, 4, 1))       # prefill GPUs 0-1, 2-3; decode 4-7: one node
    links = rank_links(cl, dp)
    assert links.over_nvlink.all()
    dp = DisaggPlan(Plan(1, 8, 1), Plan(1, 8, 1))       # prefill node 0, decode node 1
    links = rank_links(cl, dp)
    assert not links.over_nvlink.any()
    assert links.bw_bytes_per_s[0, 0] == pytest.approx(cl.inter_node_bw_gbps * 1e9 * H100.calibration.link_efficiency)


def _sim(trace_or_wl, dp, engine="vllm", links=None, **kw):
    m = load_model(kw.pop("model", "llama-3.1-8b"))
    cl = make_cluster(H100, kw.pop("gpus", 16), 8)
    wl = trace_or_wl if isinstance(trace_or_wl, Workload) else Workload(trace_or_wl)
    return D.simulate_disagg(m, cl, dp, _cfg(engine, **kw), wl, links=links)


@pytest.mark.parametrize("engine", ["vllm", "sglang", "trtllm"])
def test_conservation_every_request_prefilled_transferred_decoded_once(engine):
    tr = _trace(300, 700, 60, rate=40.0)
    res = _sim(tr, DisaggPlan(Plan(2, 1, 1), Plan(2, 2, 1), decode_max_num_seqs=16), engine)
    assert res.feasible, res.reason
    assert (res.visits == 1).all()
    assert res.metrics.disagg.conservation.to_dict() == {"prefilled": 300, "transferred": 300, "decoded": 300}
    t, ph = res.times, res.phases
    # phases in order for every request
    for a, b in ((t.arrival_s, t.scheduled_s), (t.scheduled_s, ph.prefill_done_s),
                 (ph.prefill_done_s, ph.decode_admit_s), (ph.decode_admit_s, ph.transfer_start_s),
                 (ph.transfer_start_s, ph.transfer_end_s), (ph.transfer_end_s, t.first_token_s),
                 (t.first_token_s, t.finish_s)):
        assert (b >= a - 1e-12).all()
    # the phase means add up to the mean TTFT
    m = res.metrics
    phases = m.disagg.ttft_phases
    parts = sum(v["mean"] for v in phases.to_dict().values() if isinstance(v, dict)) + phases.frontend_ms
    assert parts == pytest.approx(m.latency.ttft_ms.mean, rel=1e-9)


def test_infinite_link_ttft_is_prefill_plus_first_decode_step():
    prompt = 2000
    tr = Trace(np.array([0.0]), np.array([prompt]), np.array([50]), "one")
    dp = DisaggPlan(Plan(1, 2, 1), Plan(1, 4, 1))
    inf = Links(np.full((1, 1), np.inf), np.zeros((1, 1)), np.zeros((1, 1), bool))
    res = _sim(tr, dp, "trtllm", links=inf)
    pre, dec = res.prefill.step_cost, res.decode.step_cost
    expect = (pre.prefill_time_s(prompt, res.prefill.engine.max_batched_tokens) + dec.decode_time_s(1, prompt + 1))
    ttft = res.times.first_token_s[0] - res.times.arrival_s[0]
    assert ttft == pytest.approx(expect, rel=1e-12)
    # a real link adds its latency and the busiest NIC's bytes over its bandwidth, nothing else
    real = _sim(tr, dp, "trtllm")
    lk = real.links
    send, recv = nic_bytes(load_model("llama-3.1-8b"), dp.prefill, dp.decode,
                           real.transfer_bytes)
    extra = lk.latency_s[0, 0] + max(send[0], recv[0]) / lk.bw_bytes_per_s[0, 0]
    assert real.times.first_token_s[0] - real.times.arrival_s[0] == pytest.approx(expect + extra, rel=1e-12)


def test_full_decode_pool_holds_prefill_blocks_and_stops_prefill_admission(monkeypatch):
    """Prefill pool of two prompts, one decode slot: the third prompt is prefilled only once the first
    transfer has landed (its blocks freed), the fourth only once the second request got a decode
    slot, i.e. after the first finished decoding."""
    prompt = 1024
    orig = D._sched

    def small_prefill_pool(role, gpu, least, closed, engine_base):
        rec = orig(role, gpu, least, closed, engine_base)
        if role.plan is role_plans["prefill"]:
            rec["kv_blocks"] = 2 * prompt // int(rec["block_tokens"][0]) + 2
            rec["watermark_blocks"] = 0
        return rec
    monkeypatch.setattr(D, "_sched", small_prefill_pool)
    tr = Trace(np.zeros(4), np.full(4, prompt), np.full(4, 40), "burst")
    dp = DisaggPlan(Plan(1, 1, 1), Plan(1, 1, 1), decode_max_num_seqs=1)
    role_plans = {"prefill": dp.prefill}
    res = _sim(tr, dp, "vllm")
    t, ph = res.times, res.phases
    assert (res.visits == 1).all()
    assert t.scheduled_s[2] >= ph.transfer_end_s[0] - 1e-12
    assert ph.decode_admit_s[1] >= t.finish_s[0] - 1e-12
    assert t.scheduled_s[3] >= ph.transfer_end_s[1] - 1e-12
    assert res.estats["kv_peak_blocks"][0] == 2 * (prompt // 16)    # two held prompts filled the prefill pool
    assert res.metrics.disagg.ttft_phases.decode_admission_wait_ms.mean > 0


def test_closed_loop_keeps_concurrency_and_routing_spreads_decode():
    wl = closed_loop(_trace(120, 500, 100), 24)
    for routing in ("round_robin", "least_loaded"):
        res = _sim(wl, DisaggPlan(Plan(1, 1, 1), Plan(3, 1, 1), decode_max_num_seqs=8), routing=routing)
        assert res.metrics.completed == 120 and (res.visits == 1).all()
        steps = res.estats["busy_s"][1:]  # decode engines' busy time: all three used
        assert (steps > 0).all()


def test_closed_loop_replaces_each_finished_request_at_once():
    # no start spreading: after the first wave (sent together at t = 0), every request is sent the instant
    # an earlier one finished, so the sorted send times are the sorted finish times of the first n - C
    conc, n = 12, 60
    for engine in ("vllm", "trtllm", "sglang"):
        res = _sim(closed_loop(_trace(n, 500, 40), conc), DisaggPlan(Plan(1, 1, 1), Plan(2, 1, 1)), engine=engine)
        t = res.times
        assert (t.arrival_s[:conc] == 0.0).all()
        np.testing.assert_allclose(np.sort(t.arrival_s[conc:]), np.sort(t.finish_s)[:n - conc], rtol=0, atol=1e-12)


# ---- CLI ------------------------------------------------------------------------------------------
_BASE = ["simulate", "--model", "llama-3.1-8b", "--gpu", "h100-sxm-80gb", "--gpus", "16", "--prompt-tokens", "500",
         "--output-tokens", "50", "--concurrency", "8"]


def test_cli_disagg_json(capsys, monkeypatch):
    code, out, err = run_main(_BASE + ["--prefill-plan", "tp=2", "--prefill-replicas", "2", "--decode-plan", "tp=4",
                                       "--decode-replicas", "2", "--decode-max-num-seqs", "8", "--engine", "sglang",
                                       "--format", "json"], capsys, monkeypatch)
    assert code == 0, err
    doc = json.loads(out)
    assert doc["serving"] == "disagg" and doc["plan"]["gpus"] == 12
    assert doc["metrics"]["conservation"]["decoded"] == doc["metrics"]["completed"] == 40
    assert doc["metrics"]["ttft_ms"]["mean"] > 0 and doc["metrics"]["tpot_ms"]["mean"] > 0
    assert "--disaggregation-mode prefill" in doc["launch"]["prefill"]
    assert "--disaggregation-mode decode" in doc["launch"]["decode"]
    code, out, err = run_main(_BASE + ["--prefill-plan", "tp=2", "--decode-plan", "tp=4"], capsys, monkeypatch)
    assert code == 0 and "TTFT by phase" in out and "router:" in out


def test_cli_disagg_infeasible_exits_1_with_the_reason(capsys, monkeypatch):
    """As an aggregated plan that does not run: exit status 1, the reason on stderr and in the JSON, no metrics."""
    args = ["simulate", "--model", "llama-3.1-70b", "--gpu", "h100-sxm-80gb", "--gpus", "4", "--prefill-plan", "tp=1", "--prefill-replicas", "2",
            "--decode-plan", "tp=2", "--prompt-tokens", "512", "--output-tokens", "16", "--concurrency", "4"]
    code, out, err = run_main(args + ["--format", "json"], capsys, monkeypatch)
    doc = json.loads(out)
    assert code == 1 and doc["feasible"] is False and doc["exit_status"] == 1 and "metrics" not in doc
    assert doc["reason"].startswith("prefill instances: weights") and doc["reason"] in err


@pytest.mark.parametrize("extra,needle", [
    (["--plan", "tp=2", "--prefill-plan", "tp=2", "--decode-plan", "tp=2"], "--plan"),
    (["--prefill-plan", "tp=2"], "--decode-plan"),
    (["--prefill-plan", "dp=2,tp=2", "--decode-plan", "tp=2"], "--prefill-plan"),
    (["--prefill-plan", "tp=3", "--decode-plan", "tp=2"], "--prefill-plan"),
    (["--prefill-plan", "tp=8", "--prefill-replicas", "2", "--decode-plan", "tp=8"], "--gpus"),
    (["--prefill-plan", "tp=2", "--decode-plan", "tp=2,ep=2"], "--decode-plan"),
])
def test_cli_disagg_bad_input(extra, needle, capsys, monkeypatch):
    code, out, err = run_main(_BASE + extra, capsys, monkeypatch)
    assert_one_line_error(code, out, err, needle)


def test_disagg_launch_round_trip():
    prof = resolve_engine_profile("sglang")
    from apex_plan.simulate.engine import resolve_engine
    m = load_model("deepseek-v3")
    eng = resolve_engine(EngineConfig(name="sglang", profile=prof), m)
    dp = DisaggPlan(Plan(1, 1, 1, 8, "fp8", adp=8), Plan(2, 8, 1, 8, "fp8"))
    la = disagg_launch("sglang", "deepseek-ai/DeepSeek-V3", dp, eng, eng)
    p, d = parse_launch(la.prefill), parse_launch(la.decode)
    assert (p["tp"], p["adp"], p["ep"]) == (1, 8, 8) and (d["tp"], d["adp"], d["ep"]) == (8, 1, 8)
    assert la.prefill_instances == 1 and la.decode_instances == 2
    assert la.router.count("--prefill ") == 1 and la.router.count("--decode ") == 2
    for fam in ("vllm", "trtllm"):
        la = disagg_launch(fam, "deepseek-ai/DeepSeek-V3", dp, eng, eng)
        assert parse_launch(la.decode)["tp"] * parse_launch(la.decode)["adp"] == 8
