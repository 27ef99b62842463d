"""Engine settings fitted to the plan and GPU (apex_plan/simulate/fit.py): SGLang's memory fraction and
chunk size rules (exact arithmetic), TRT-LLM's max_num_tokens as deployments size it (a closed loop of
long prompts does not serialise), max_model_len and the memory fraction fitted to the KV pool, and
simulations where nothing completes reported with their reason (never null metrics)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from apex_plan.engine.load import resolve_engine_profile
from apex_plan.engine.speculative import parse_speculative
from apex_plan.estimate.shard import build_shard
from apex_plan.hardware.load import load_gpu, make_cluster
from apex_plan.model.load import load_model
from apex_plan.plan.spec import EngineConfig, Plan
from apex_plan.simulate.fit import fit_engine, reserved_fraction
from apex_plan.simulate.run import simulate
from apex_plan.workload.spec import Workload
from apex_plan.workload.synthetic import LengthDist, closed_loop, synthetic_trace
from test_cli import run_main

H100_MIB, B200_MIB = 81559, 183359      # nvidia-smi totals of the profiles (memory_gib x 1024)


def sglang_fit(gpu_name: str, plan: Plan, **cfg):
    model = load_model("llama-3.1-8b")
    eng, mem, why = fit_engine(model, plan, build_shard(model, plan), EngineConfig(name="sglang@0.5.9", **cfg),
                               load_gpu(gpu_name), 2048, 1024)
    assert eng is not None, why
    return eng


def test_sglang_mem_fraction_static_rule():
    # H100 tp1: chunk 8192, graphs 256: reserved = 512 + 1.5 x 8192 + 2 x 256 + 1 x 128 = 13440 MiB
    eng = sglang_fit("h100-sxm-80gb", Plan(tp=1))
    assert eng.max_batched_tokens == 8192 and eng.profile.graphs.max_batch == 256
    assert eng.gpu_memory_utilization == round((H100_MIB - 13440) / H100_MIB, 3)
    # B200 tp8: chunk 16384, graphs 512: 512 + 24576 + 1024 + 8 x 128 = 27136 MiB
    eng = sglang_fit("b200-sxm-180gb", Plan(tp=8))
    assert eng.max_batched_tokens == 16384 and eng.profile.graphs.max_batch == 512
    assert eng.gpu_memory_utilization == round((B200_MIB - 27136) / B200_MIB, 3)
    # DP attention over 8 ranks: + 3 x 512 x 8 + 1.5 x 512 x 8 (graphs above 300), chunk // 8 per rank
    eng = sglang_fit("b200-sxm-180gb", Plan(tp=1, adp=8))
    assert eng.max_batched_tokens == 16384 // 8
    assert eng.gpu_memory_utilization == round((B200_MIB - 27136 - 12288 - 6144) / B200_MIB, 3)
    # the floor of 10 GiB on GPUs above 60 GiB
    prof = resolve_engine_profile("sglang@0.5.9")
    assert reserved_fraction(prof.memory, 80 * 1024.0 ** 3, 2048, 8, Plan(tp=1)) == round(1 - 10240 / 81920, 3)
    # what the user gives stays
    eng = sglang_fit("b200-sxm-180gb", Plan(tp=8), max_batched_tokens=4096, gpu_memory_utilization=0.8)
    assert (eng.max_batched_tokens, eng.gpu_memory_utilization) == (4096, 0.8)
    # SGLang before 0.5.3 keeps its fixed defaults
    model = load_model("llama-3.1-8b")
    old, _, _ = fit_engine(model, Plan(tp=8), build_shard(model, Plan(tp=8)), EngineConfig(name="sglang@0.5.1"),
                           load_gpu("b200-sxm-180gb"), 2048, 1024)
    assert (old.max_batched_tokens, old.gpu_memory_utilization, old.profile.graphs.max_batch) == (8192, 0.88, 256)


def trt_run(prompt: int, conc: int, budget: int | None = None, speculative=None, engine: str = "trtllm@1.2.0"):
    model, gpu = load_model("llama-3.1-8b"), load_gpu("h100-sxm-80gb")
    tr = synthetic_trace(5 * conc, LengthDist("constant", mean=prompt), LengthDist("constant", mean=256), None,
                         "poisson", 1.0, 0)
    res = simulate(model, make_cluster(gpu, 1), Plan(tp=1), EngineConfig(name=engine, max_num_seqs=conc,
                   max_batched_tokens=budget, speculative=speculative), closed_loop(tr, conc))
    assert res.feasible, res.reason
    return res


def test_trtllm_budget_holds_the_prompt_beside_the_batch():
    res = trt_run(8192, 4)
    assert res.engine.max_batched_tokens == 8192 + 4 + 64 + 64 - (8192 + 4 + 64) % 64   # ceil64(8192 + 4 + 64)
    assert trt_run(1024, 16).engine.max_batched_tokens == 8192                         # the default floor


def test_trtllm_budget_holds_the_prompt_beside_speculating_decodes():
    """With k drafts every decode verifies k + 1 tokens, so the budget deployments size holds (k + 1) x batch
    beside the prompt (InferenceX dsr1_*_trt_mtp.sh), and the scheduler charges them (microBatchScheduler.cpp)."""
    spec = parse_speculative("eagle3:3", "0.7")
    res = trt_run(8192, 64, speculative=spec)
    assert res.engine.max_batched_tokens == 8512                       # ceil64(4 x 64 + 8192 + 64) = 8512
    assert trt_run(8192, 64).engine.max_batched_tokens == 8320         # ceil64(64 + 8192 + 64) without drafts
    assert res.metrics.completed == res.metrics.requests


def test_speculating_decodes_take_their_drafts_from_the_step_budget():
    """A closed loop of 8 long prompts at a budget of prompt + 8: without drafts the 8 decodes (one token each)
    leave the prompt its room and a new context joins at once; with 3 drafts each the decodes take 32 tokens,
    the prompt no longer fits beside them (TRT-LLM: a context that does not fit waits) and waits for
    generations to finish, so the mean TTFT grows by a good part of a request lifetime."""
    spec = parse_speculative("eagle3:3", "0.5")
    plain = trt_run(4096, 8, budget=4096 + 8)
    drafts = trt_run(4096, 8, budget=4096 + 8, speculative=spec)
    lifetime_ms = 255 * drafts.metrics.latency.tpot_ms.mean
    assert drafts.metrics.latency.ttft_ms.mean > plain.metrics.latency.ttft_ms.mean + 0.2 * lifetime_ms
    # an SGLang-style prefill-first engine decodes outside the prefill budget: the drafts do not hold prompts back
    sg_plain = trt_run(4096, 8, budget=4096 + 8, engine="sglang@0.5.9")
    sg_drafts = trt_run(4096, 8, budget=4096 + 8, speculative=spec, engine="sglang@0.5.9")
    assert sg_drafts.metrics.latency.ttft_ms.mean < sg_plain.metrics.latency.ttft_ms.mean + 0.2 * lifetime_ms


def test_closed_loop_of_long_prompts_does_not_serialise_on_trtllm():
    """Four 8192-token requests in flight: with the budget deployments run, a new context joins the
    running generations; with --max-batched-tokens 8192 it waits for all of them (TRT-LLM's
    microBatchScheduler breaks on a context that does not fit), as the engine itself would."""
    sized, fixed = trt_run(8192, 4), trt_run(8192, 4, budget=8192)
    one = trt_run(8192, 1)
    prefill_s = one.metrics.latency.ttft_ms.mean / 1e3 - one.engine.profile.host.frontend_ms / 1e3
    decode_s = 255 * one.metrics.latency.tpot_ms.mean / 1e3
    ttft = sized.metrics.latency.ttft_ms.mean / 1e3 - sized.engine.profile.host.frontend_ms / 1e3
    assert ttft < 4 * prefill_s < decode_s                   # at most the first wave's queue, never a lifetime
    assert fixed.metrics.latency.ttft_ms.mean / 1e3 > ttft + 0.5 * decode_s


def test_simulate_lowers_max_model_len_and_says_so(capsys, monkeypatch):
    args = ["simulate", "--model", "minimax-m2.5", "--gpu", "b200-sxm-180gb", "--gpus", "1", "--weight-dtype", "fp4",
            "--engine", "vllm", "--prompt-tokens", "1024", "--output-tokens", "128", "--concurrency", "4",
            "--kv-dtype", "bf16"]   # a bf16 cache (the NVFP4 checkpoint's own fp8 cache holds the whole context)
    code, out, err = run_main(args + ["--format", "json"], capsys, monkeypatch)
    assert code == 0, err
    doc = json.loads(out)
    low = doc["engine"]["max_model_len"]
    assert low < load_model("minimax-m2.5").max_context and low % 16 == 0
    assert low <= doc["memory_per_gpu"]["kv_cache_tokens"]
    assert any(f"max_model_len lowered to {low}" in n for n in doc["engine"]["notes"])
    code, out, err = run_main(args + ["--max-model-len", "196608", "--format", "json"], capsys, monkeypatch)
    assert code == 1 and "max_model_len is 196608" in err and err.count("\n") == 1
    doc = json.loads(out)
    assert doc["feasible"] is False and doc["exit_status"] == 1 and "metrics" not in doc


def test_memory_fraction_raised_when_the_default_leaves_no_room(capsys, monkeypatch):
    args = ["simulate", "--model", "deepseek-ai/DeepSeek-R1", "--gpu", "b200-sxm-180gb", "--gpus", "4", "--plan",
            "tp=4", "--weight-dtype", "fp8", "--engine", "sglang@0.5.9", "--prompt-tokens", "8192",
            "--output-tokens", "64", "--concurrency", "2", "--format", "json"]
    code, out, err = run_main(args, capsys, monkeypatch)
    assert code == 0, err
    doc = json.loads(out)
    util = doc["engine"]["gpu_memory_utilization"]
    assert 0.9 < util < 1 and any("memory fraction raised" in n for n in doc["engine"]["notes"])
    assert doc["metrics"]["ttft_ms"]["mean"] > 0 and doc["metrics"]["completed"] == doc["metrics"]["requests"]
    code, out, err = run_main(args + ["--gpu-memory-utilization", "0.85"], capsys, monkeypatch)
    assert code == 1 and "exceed 0.85" in err


def test_no_request_completing_is_a_reason_not_null_metrics():
    model, gpu = load_model("llama-3.1-8b"), load_gpu("h100-sxm-80gb")
    tr = synthetic_trace(8, LengthDist("constant", mean=4000), LengthDist("constant", mean=16), None, "poisson", 1.0, 0)
    res = simulate(model, make_cluster(gpu, 1), Plan(tp=1), EngineConfig(max_model_len=2048), Workload(tr))
    assert not res.feasible and res.reason.startswith("no request completed") and "max_model_len is 2048" in res.reason
    assert res.metrics is None
    ok = simulate(model, make_cluster(gpu, 1), Plan(tp=1), EngineConfig(max_model_len=8192), Workload(tr))
    assert ok.feasible and ok.metrics.completed == 8 and np.isfinite(ok.metrics.latency.ttft_ms.mean)


def test_balance_hold_spreads_closed_loop_replacements_over_its_window():
    """Under TRT-LLM's attention-DP balance a de-synchronised loop sends each replacement within one balance
    window (timeout steps x a full rank's decode step), so the loop does not lock into waves; elsewhere the
    replacement jitter is the plain one (a tenth of lifetime / C)."""
    import dataclasses
    from apex_plan.estimate.step_cost import build_step_cost
    from apex_plan.simulate.engine import resolve_engine
    from apex_plan.simulate.run import STEADY_JITTER, _balance_window_s, client_delays_s
    model, gpu = load_model("qwen3-30b-a3b"), load_gpu("h100-sxm-80gb")
    cl = make_cluster(gpu, 2)
    eng = resolve_engine(EngineConfig(name="trtllm@1.2.0", max_num_seqs=16), model)
    prompt, output = np.full(8, 512), np.full(8, 128)
    adp = Plan(tp=1, ep=2, adp=2, weight_dtype="bf16", kv_dtype="bf16")
    sc = build_step_cost(model, gpu, adp, cl, engine=eng)
    assert _balance_window_s(sc, eng, adp, prompt, output, 16) == 60 * sc.decode_time_s(16, 512 + 64)
    assert _balance_window_s(sc, eng, Plan(tp=2, weight_dtype="bf16", kv_dtype="bf16"), prompt, output, 16) == 0.0
    off = dataclasses.replace(eng, profile=dataclasses.replace(
        eng.profile, scheduler=dataclasses.replace(eng.profile.scheduler, adp_balance_steps=0)))
    assert _balance_window_s(sc, off, adp, prompt, output, 16) == 0.0
    d = client_delays_s(400, 20, 10.0, jitter_s=2.0)
    assert (d[20:] >= 0).all() and (d[20:] < 2.0).all() and d[20:].max() > 1.5
    assert (client_delays_s(400, 20, 10.0)[20:] < STEADY_JITTER * 10.0 / 20).all()


def test_attention_dp_balance_holds_contexts_at_most_its_timeout():
    """TRT-LLM with attention DP as the serving recipes run it: a new context waits until every rank
    has one or 60 iterations pass; the wait shows in TTFT, bounded by 60 steps, and off without ADP."""
    import dataclasses
    model, gpu = load_model("qwen3-30b-a3b"), load_gpu("h100-sxm-80gb")
    prof = resolve_engine_profile("trtllm@1.2.0")
    assert prof.scheduler.adp_balance_steps == 60
    tr = synthetic_trace(160, LengthDist("constant", mean=512), LengthDist("constant", mean=128), None,
                         "poisson", 1.0, 0)
    plan = Plan(tp=1, ep=2, adp=2, weight_dtype="bf16", kv_dtype="bf16")

    def run(steps):
        p = dataclasses.replace(prof, scheduler=dataclasses.replace(prof.scheduler, adp_balance_steps=steps))
        res = simulate(model, make_cluster(gpu, 2), plan, EngineConfig(max_num_seqs=16, profile=p),
                       closed_loop(tr, 32))
        assert res.feasible and res.metrics.completed == 160, res.reason
        return res.metrics

    held, free = run(60), run(0)
    wait_s = (held.latency.ttft_ms.mean - free.latency.ttft_ms.mean) / 1e3
    assert wait_s > 0
    assert wait_s < 60 * held.latency.tpot_ms.mean / 1e3 * 1.5


# ---- per-sequence state crowding out the KV pool: max_num_seqs fitted ----------------------------

@pytest.mark.parametrize("engine", ["sglang@0.5.9", "trtllm"])
def test_windowed_state_for_the_default_batch_lowers_max_num_seqs(engine):
    """Llama-4-Maverick's chunked local attention keeps an 8K-token window per sequence: set aside for the
    engine's default batch (1024 / 2048) it leaves no KV, so the default batch is lowered to the largest
    that holds the whole context beside every window, and one more sequence would not fit."""
    from apex_plan.estimate.memory import memory_report
    model, plan, gpu = load_model("llama-4-maverick"), Plan(tp=8, weight_dtype="fp8"), load_gpu("b200-sxm-180gb")
    shard = build_shard(model, plan)
    eng, mem, why = fit_engine(model, plan, shard, EngineConfig(name=engine), gpu, 2176, 2048)
    assert eng is not None, why
    default = resolve_engine_profile(engine).scheduler.max_num_seqs
    assert eng.max_num_seqs < default and any("max_num_seqs lowered" in n for n in eng.notes)
    assert eng.max_model_len == model.max_context and mem.kv_tokens >= eng.max_model_len
    st = shard.stages[0]
    seq_b = shard.seq_bytes_stage(st, eng.max_model_len, eng.block_size)
    # exact: every running sequence's window plus the per-token blocks fit the pool
    assert eng.max_num_seqs * seq_b + mem.kv_blocks * eng.block_size * shard.kv_bytes_per_token_stage(st) <= mem.kv_pool_bytes
    one_more = memory_report(model, gpu, plan, shard, gpu_memory_utilization=eng.gpu_memory_utilization,
                             max_batched_tokens=eng.max_batched_tokens, max_num_seqs=eng.max_num_seqs + 1,
                             block_size=eng.block_size, max_model_len=eng.max_model_len, policy=eng.profile.memory)
    assert not one_more.feasible


@pytest.mark.parametrize("engine", ["sglang@0.5.9", "vllm"])
def test_a_given_max_num_seqs_is_a_cap_kept_lowered_to_memory_or_refused_with_the_reason(engine):
    """A given --max-num-seqs is a cap, not a reservation: kept where every sequence's window fits; above
    that the engines admit what their pools hold (vLLM's scheduler, SGLang's SWA pool), so the running
    count is lowered to the most sequences whose windows fit beside the given context, and said so."""
    from apex_plan.estimate.memory import memory_report
    model, plan, gpu = load_model("llama-4-maverick"), Plan(tp=8, weight_dtype="fp8"), load_gpu("b200-sxm-180gb")
    shard = build_shard(model, plan)
    eng, _, why = fit_engine(model, plan, shard, EngineConfig(name=engine, max_num_seqs=16), gpu, 2176, 2048)
    assert eng is not None and eng.max_num_seqs == 16, why
    eng, mem, why = fit_engine(model, plan, shard, EngineConfig(name=engine, max_num_seqs=4096,
                                                                max_model_len=1048576), gpu, 2176, 2048)
    assert eng is not None and 16 < eng.max_num_seqs < 4096, why
    assert eng.max_model_len == 1048576 and any(n.startswith(f"at most {eng.max_num_seqs} of the 4096 sequences asked") for n in eng.notes)
    one_more = memory_report(model, gpu, plan, shard, gpu_memory_utilization=eng.gpu_memory_utilization,
                             max_batched_tokens=eng.max_batched_tokens, max_num_seqs=eng.max_num_seqs + 1,
                             block_size=eng.block_size, max_model_len=eng.max_model_len, policy=eng.profile.memory)
    assert not one_more.feasible
    small = Plan(tp=2, weight_dtype="fp8")         # 400 GB of fp8 weights on two 180 GB GPUs: no pool at all
    eng, mem, why = fit_engine(model, small, build_shard(model, small), EngineConfig(name=engine, max_num_seqs=16),
                               gpu, 2176, 2048)
    assert eng is None and "exceed" in why


def test_a_traded_context_holds_every_running_sequence_at_the_longest_request():
    """Llama-4-Scout bf16 on one GB300 (10M-token context, 8K chunked windows): with 64 sequences asked the
    windows leave no KV, so the context is traded down to the most sequences that can each hold the
    longest request (9216 tokens), not to one such request beside a full batch of windows."""
    model, plan, gpu = load_model("llama-4-scout"), Plan(tp=1), load_gpu("gb300-nvl72")
    shard = build_shard(model, plan)
    eng, mem, why = fit_engine(model, plan, shard, EngineConfig(name="vllm", max_num_seqs=64), gpu, 9216, 8192)
    assert eng is not None, why
    assert 1 < eng.max_num_seqs < 64 and eng.max_model_len < model.max_context
    assert mem.kv_tokens >= eng.max_num_seqs * 9216           # every running sequence at full length


# ---- engines and GPU vendors ---------------------------------------------------------------------

@pytest.mark.parametrize("command", [
    ["simulate", "--model", "llama-3.1-8b", "--gpu", "mi300x", "--gpus", "1", "--plan", "tp=1", "--engine", "trtllm",
     "--prompt-tokens", "512", "--output-tokens", "16", "--concurrency", "2"],
    ["search", "--model", "llama-3.1-8b", "--gpu", "mi300x", "--gpus", "8", "--engine", "trtllm", "--rate", "1",
     "--ttft-slo", "1s", "--tpot-slo", "50ms"],
])
def test_trtllm_on_an_amd_gpu_is_one_line_exit_2(command, capsys, monkeypatch):
    code, out, err = run_main(command, capsys, monkeypatch)
    assert code == 2 and out == ""
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and "--engine" in lines[0] and "NVIDIA GPUs only" in lines[0] and "mi300x" in lines[0]
    assert "Traceback" not in err


def test_vllm_and_sglang_run_on_amd_gpus():
    assert resolve_engine_profile("trtllm").features.gpu_vendors == ("nvidia",)
    for engine in ("vllm", "sglang"):
        assert resolve_engine_profile(engine).features.gpu_vendors == ()     # CUDA and ROCm builds
