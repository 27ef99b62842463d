"""The held-slot signature of closed loops (apex_plan.calibrate.closed_loop_hold): the fit reads k held
slots from TTFT against osl, the simulator shows k = 1 with one slot held and k = 0 without, and the
shared TRT-LLM 1.0 H100 campaigns (skipped without them) disagree, which is why trtllm-1 holds none."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from apex_plan.calibrate.closed_loop_hold import campaign_slopes, group_fits, hold_slope, read_rows
from apex_plan.engine.load import resolve_engine_profile
from apex_plan.hardware.load import load_gpu, make_cluster
from apex_plan.model.load import load_model
from apex_plan.plan.spec import EngineConfig, Plan
from apex_plan.simulate.run import simulate
from apex_plan.workload.synthetic import LengthDist, closed_loop, synthetic_trace

SILICON = Path(__file__).resolve().parents[2] / "shared" / "bench" / "silicon"
FILES = [SILICON / "calibration.csv", SILICON / "calibration-h200-b200.csv"]


def test_hold_slope_recovers_the_held_slots_exactly():
    osl, tpot, c = [128, 256, 512], [8.0, 7.5, 7.4], 8
    for k in (0.0, 1.0, 2.0):
        ttft = [40.0 + k * o * t / (c - 1) for o, t in zip(osl, tpot)]
        slope, base = hold_slope(osl, tpot, ttft, c)
        assert slope == pytest.approx(k, abs=1e-9) and base == pytest.approx(40.0)


def _row(osl, ttft, **kw):
    row = dict(mode="agg", system="h100_sxm", backend="trtllm", backend_version="1.0", model_path="m", precision="",
               tp_size="1", pp_size="1", attention_dp_size="", moe_ep_size="", isl="1024", concurrency="8",
               osl=str(osl), silicon_ttft_ms=str(ttft), silicon_tpot_ms="7.0")
    row.update(kw)
    return row


def test_groups_need_two_output_lengths_and_a_small_closed_loop():
    rows = [_row(128, 100.0 + 128), _row(256, 100.0 + 256), _row(512, 100.0 + 512)]
    rows += [_row(128, 50.0, concurrency="64"), _row(256, 50.0, concurrency="64")]       # C above the window
    rows += [_row(128, 50.0, isl="2048")]                                               # one osl: no fit
    rows += [_row(256, 50.0, mode="disagg"), _row(128, "n/a", tp_size="2"), _row(256, 60.0, tp_size="2")]
    fits = group_fits(rows)
    assert len(fits) == 1 and fits[0].runs == 3 and fits[0].key[-1] == 8
    assert fits[0].slope == pytest.approx(1.0) and fits[0].base_ms == pytest.approx(100.0)
    (camp,) = campaign_slopes(fits)
    assert camp.groups == 1 and camp.median_slope == pytest.approx(1.0)


def _sim_slope(held: int, concurrency: int = 8) -> float:
    """The simulated closed loop's held-slot slope: Llama-3.1-8B on one H100, 1K prompts, osl 128-512."""
    model, gpu = load_model("llama-3.1-8b"), load_gpu("h100-sxm-80gb")
    prof = resolve_engine_profile("trtllm@1.0.0rc3")
    prof = dataclasses.replace(prof, scheduler=dataclasses.replace(prof.scheduler, held_slots=held))
    plan = Plan(tp=1, weight_dtype="bf16", kv_dtype="bf16")
    osl, ttft, tpot = (128, 256, 512), [], []
    for o in osl:
        tr = synthetic_trace(5 * concurrency, LengthDist("constant", mean=1024), LengthDist("constant", mean=o),
                             None, "poisson", 1.0, 0)
        res = simulate(model, make_cluster(gpu, 1), plan, EngineConfig(max_num_seqs=concurrency, profile=prof),
                       closed_loop(tr, concurrency))
        assert res.feasible and res.metrics.completed == tr.prompt_tokens.size, res.reason
        ttft.append(res.metrics.latency.ttft_ms.mean)
        tpot.append(res.metrics.latency.tpot_ms.mean)
    return hold_slope(osl, tpot, ttft, concurrency)[0]


def test_simulated_loop_shows_the_signature_of_its_held_slots():
    # every request seated at once: TTFT flat in osl; one slot held: each new request waits for the next
    # completion, one lifetime / (C - 1) (the first wave, sent together, waits a little longer)
    assert abs(_sim_slope(0)) < 0.05
    assert 0.8 < _sim_slope(1) < 1.2


@pytest.fixture(scope="module")
def shared_campaigns():
    if not all(p.is_file() for p in FILES):
        pytest.skip("../shared/bench/silicon not present")
    return {c.campaign: c for c in campaign_slopes(group_fits(read_rows(FILES)))}


def test_trtllm_1_0_h100_campaigns_disagree_on_a_held_slot(shared_campaigns):
    # same engine version, GPU and source: the Llama-3.1-8B rows wait one completion (k ~ 0.9 over 36
    # groups), the Qwen3-235B-A22B rows seat at once (k ~ 0 over 26): not a property of the engine
    llama = shared_campaigns[("h100_sxm", "trtllm", "1.0.0rc3", "meta-llama/Llama-3.1-8B-Instruct", "")]
    qwen = shared_campaigns[("h100_sxm", "trtllm", "1.0.0rc3", "Qwen/Qwen3-235B-A22B-FP8", "fp8")]
    assert llama.groups >= 30 and 0.7 < llama.median_slope < 1.1
    assert qwen.groups >= 20 and abs(qwen.median_slope) < 0.1
    assert resolve_engine_profile("trtllm@1.0.0rc3").scheduler.held_slots == 0
