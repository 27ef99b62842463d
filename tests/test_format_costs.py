"""Each GEMM is costed at its own weight format's kernel fit (mixed checkpoints), routed experts at the
fused-MoE fit, MLA attention in its prefill (expanded) and decode (absorbed) forms."""

from __future__ import annotations

import pytest

from apex_plan.abi import GEMM_ROUTED_EXPERTS as ROUTED_EXPERTS
from apex_plan.estimate import kernels as K
from apex_plan.estimate.shard import build_shard
from apex_plan.estimate.step_cost import build_step_cost
from apex_plan.hardware.formats import gemm_fit, moe_fit
from apex_plan.hardware.load import load_gpu
from apex_plan.model.load import load_model
from apex_plan.plan.spec import Plan

B200, H200 = load_gpu("b200-sxm-180gb"), load_gpu("h200-sxm-141gb")


def test_every_gemm_row_runs_at_its_own_formats_fit():
    model = load_model("gpt-oss-120b")                   # mxfp4 experts, bf16 attention and router
    plan = Plan(tp=1, weight_dtype="fp4")
    sc = build_step_cost(model, B200, plan)
    fmts = {g.fmt for g in sc.shard.gemms}
    assert {"bf16", "mxfp4"} <= fmts
    bw = B200.mem_bw_gbps * 1e9
    for g, row in zip(sc.shard.gemms, sc.cost.gemms):
        f = moe_fit(B200, g.fmt, "bf16") if g.kind == ROUTED_EXPERTS else gemm_fit(B200, g.fmt, "bf16")
        assert row["flops_per_s"] == pytest.approx(B200.peak_flops(f.peak_dtype) * f.compute_efficiency)
        assert row["bytes_per_s"] == pytest.approx(bw * f.bandwidth_efficiency)
        assert row["latency_s"] == pytest.approx(f.latency_us * 1e-6 * (0.5 if g.kind == ROUTED_EXPERTS else 1.0))
    attn = next(r for g, r in zip(sc.shard.gemms, sc.cost.gemms) if g.name == "qkv")
    c = B200.calibration
    assert attn["flops_per_s"] == pytest.approx(B200.peak_flops("bf16") * c.compute_efficiency)   # bf16: calibration


def test_bf16_plans_keep_the_calibrated_gemm_figures():
    model = load_model("llama-3.1-70b")
    sc = build_step_cost(model, load_gpu("h100-sxm-80gb"), Plan(tp=4))
    c = load_gpu("h100-sxm-80gb").calibration
    for row in sc.cost.gemms:
        assert row["flops_per_s"] == pytest.approx(989.4e12 * c.compute_efficiency)
        assert row["bytes_per_s"] == pytest.approx(3350e9 * c.bandwidth_efficiency)
        assert row["latency_s"] == pytest.approx(c.kernel_latency_us * 1e-6)


def test_moe_decode_pays_the_fused_layer_latency_and_reads_active_experts_whole():
    model = load_model("Qwen/Qwen3-235B-A22B-FP8")
    plan = Plan(tp=2, weight_dtype="fp8")
    sc = build_step_cost(model, H200, plan)
    f = moe_fit(H200, "fp8", "bf16")
    times = []
    for batch in (1, 8, 64):
        _, b = sc.step_s(decodes=batch, context=1000)
        times.append(b["gemm"])
        # lower bounds: every MoE layer's fixed cost, and its active experts' weights at peak HBM bandwidth
        experts = next(g for g in sc.shard.gemms if g.name == "experts_gate_up")
        active = experts.experts * (1.0 - (1.0 - experts.active_p) ** batch)
        w_bytes = active * sum(g.k * g.n * g.w_bytes for g in sc.shard.gemms if g.kind == ROUTED_EXPERTS)
        layers = sc.shard.largest_stage.moe_layers
        assert b["gemm"] >= layers * (f.latency_us * 1e-6 + w_bytes / (H200.mem_bw_gbps * 1e9))
    assert times[0] < times[1] < times[2]                    # more tokens touch more experts


def test_mla_prefill_counts_the_expanded_form_and_decode_the_absorbed_one():
    model = load_model("deepseek-v3")
    shard = build_shard(model, Plan(tp=8, weight_dtype="fp8"))
    heads = model.num_heads / 8
    qk = model.qk_nope_head_dim + model.qk_rope_head_dim
    assert shard.prefill_flops_per_pair == pytest.approx(2.0 * heads * (qk + model.v_head_dim))
    assert shard.attn_flops_per_pair == pytest.approx(2.0 * heads * (2 * model.kv_lora_rank + model.qk_rope_head_dim))
    sc = build_step_cost(model, H200, Plan(tp=8, weight_dtype="fp8"))
    mla = H200.kernel_formats.mla
    p = sc.cost.params[0]; p = {k: p[k] for k in p.dtype.names}
    assert p["attn_efficiency"] == mla.prefill_efficiency and p["decode_attn_efficiency"] == mla.decode_compute_efficiency
    # an 8K-token fresh prefill's attention: at least its expanded-form FLOPs at the MLA prefill efficiency
    s = 8192
    _, b = sc.step_s(chunk=s)
    pairs = float(K.padded_pairs(s, 0))
    layers = sc.shard.largest_stage.layers
    floor = layers * shard.prefill_flops_per_pair * pairs / (H200.peak_flops("bf16") * mla.prefill_efficiency)
    assert floor <= b["attention"] <= 1.5 * floor + layers * 1e-4


def test_non_mla_attention_is_unchanged_by_the_mla_fit():
    sc = build_step_cost(load_model("llama-3.1-8b"), H200, Plan(tp=1))
    c = H200.calibration
    p = sc.cost.params[0]; p = {k: p[k] for k in p.dtype.names}
    assert p["decode_attn_efficiency"] == c.attention_efficiency and p["decode_kv_efficiency"] == c.bandwidth_efficiency
    assert p["prefill_attn_flops_per_pair"] == 0.0
