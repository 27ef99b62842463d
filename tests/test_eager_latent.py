"""Host time of latent-attention layers outside CUDA graphs (host.eager_latent_layer_us): an eager step of an MLA
model pays it once per latent layer on the largest stage (SGLang PR #12160: an eager DeepSeek-V3 extend step of one
token takes 82.64 ms, its CUDA graph 23.10 ms); graph-replayed decode steps and models without latent attention
do not."""

from __future__ import annotations

import dataclasses

import pytest

from apex_plan.engine.load import resolve_engine_profile
from apex_plan.estimate.step_cost import build_step_cost
from apex_plan.hardware.load import load_gpu, make_cluster
from apex_plan.model.load import load_model
from apex_plan.plan.spec import Plan

GPU = load_gpu("h200-sxm-141gb")


def _cost(model: str, latent_us: float, engine: str = "sglang@0.5.9", plan: Plan = Plan(tp=8, weight_dtype="fp8")):
    prof = resolve_engine_profile(engine)
    prof = dataclasses.replace(prof, host=dataclasses.replace(prof.host, eager_latent_layer_us=latent_us))
    return build_step_cost(load_model(model), GPU, plan, make_cluster(GPU, plan.num_gpus), profile=prof)


def test_the_profiles_carry_the_measured_figure():
    for engine in ("sglang@0.5.9", "sglang@0.5.1", "trtllm"):
        assert resolve_engine_profile(engine).host.eager_latent_layer_us == pytest.approx(1190.0)
    assert resolve_engine_profile("vllm").host.eager_latent_layer_us == 0.0     # piecewise graphs: not eager


def test_an_eager_one_token_extend_of_deepseek_v3_is_the_measured_forward():
    """61 latent layers: a one-token prefill (eager, host-bound) gains 61 x 1.19 ms, and its host time is the
    PR's 82.6 ms eager forward (launches at 8 us plus the latent layers)."""
    base, with_latent = _cost("deepseek-ai/DeepSeek-V3", 0.0), _cost("deepseek-ai/DeepSeek-V3", 1190.0)
    assert with_latent.params[0]["latent_layers"] == 61
    t0, t1 = base.prefill_time_s(1), with_latent.prefill_time_s(1)
    assert t1 - t0 == pytest.approx(61 * 1190e-6, rel=1e-9)
    assert 80e-3 < t1 < 90e-3


def test_graph_decode_steps_and_dense_attention_models_are_unchanged():
    base, with_latent = _cost("deepseek-ai/DeepSeek-V3", 0.0), _cost("deepseek-ai/DeepSeek-V3", 1190.0)
    for batch in (1, 16, 128):
        assert with_latent.decode_time_s(batch, 2048) == base.decode_time_s(batch, 2048)
    plan = Plan(tp=1, weight_dtype="bf16")
    a, b = _cost("llama-3.1-8b", 0.0, plan=plan), _cost("llama-3.1-8b", 1190.0, plan=plan)
    assert b.params[0]["latent_layers"] == 0
    for chunk in (1, 1024, 8192):
        assert b.prefill_time_s(chunk) == a.prefill_time_s(chunk)


def test_a_compute_bound_prefill_hides_it():
    """8K tokens of DeepSeek-V3 on 8 x H200 take longer on the GPU than the host's ~83 ms: no change."""
    base, with_latent = _cost("deepseek-ai/DeepSeek-V3", 0.0), _cost("deepseek-ai/DeepSeek-V3", 1190.0)
    assert with_latent.prefill_time_s(8192) == pytest.approx(base.prefill_time_s(8192), rel=1e-12)
