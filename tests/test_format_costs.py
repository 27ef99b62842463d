"""Each GEMM is costed at its own weight format's tensor-core peak (mixed checkpoints), never the plan's;
the roofline bounds hold per format; MLA attention counts its prefill (expanded) and decode (absorbed)
forms."""

from __future__ import annotations

import pytest

from apex_plan.abi import OP_ATTENTION, OP_EXPERTS, OP_GEMM
from apex_plan.estimate import kernels as K
from apex_plan.estimate.mixers import FORMAT_IDS
from apex_plan.estimate.shard import build_shard
from apex_plan.estimate.step_cost import build_step_cost
from apex_plan.hardware.formats import compute_dtype
from apex_plan.hardware.load import load_gpu
from apex_plan.model.load import load_model
from apex_plan.plan.spec import Plan

B200, H200, H100 = load_gpu("b200-sxm-180gb"), load_gpu("h200-sxm-141gb"), load_gpu("h100-sxm-80gb")


def _gemm_rows(sc):
    """(Gemm, OP row) pairs of the shard's GEMMs that run on its largest stage."""
    rows = [r for r in sc.cost.ops if r["shape"] in (OP_GEMM, OP_EXPERTS)]
    gemms = [g for g in sc.shard.gemms if any(r["k"] == g.k and r["n"] == g.n for r in rows)]
    assert len(gemms) == len(rows)
    return list(zip(gemms, rows))


def _params(sc) -> dict:
    p = sc.cost.params[0]
    return {k: p[k] for k in p.dtype.names}


def test_every_gemm_row_runs_at_its_own_formats_peak():
    model = load_model("gpt-oss-120b")                   # mxfp4 experts, bf16 attention and router
    c = B200.calibration
    for gpu, expert_peak in ((B200, "fp4"), (H200, "bf16")):   # Hopper: weight-only 4-bit kernels (bf16 FLOPs)
        sc = build_step_cost(model, gpu, Plan(tp=1, weight_dtype="fp4"))
        assert {"bf16", "mxfp4"} <= {g.fmt for g in sc.shard.gemms}
        for g, row in _gemm_rows(sc):
            assert row["format"] == FORMAT_IDS[g.fmt]
            want = expert_peak if g.fmt == "mxfp4" else "bf16"
            assert row["peak_flops_per_s"] == pytest.approx(gpu.peak_flops(want))
            c = gpu.calibration
            assert row["efficiency"] == pytest.approx(c.compute_efficiency)
            assert row["bytes_per_s"] == pytest.approx(gpu.mem_bw_gbps * 1e9 * c.bandwidth_efficiency)
            assert row["latency_s"] == pytest.approx(c.kernel_latency_us * 1e-6)


def test_no_gemm_row_takes_the_plans_format_instead_of_its_own():
    """A mixed checkpoint: the plan says fp4, attention and router weights are bf16. Their rows must run at
    the bf16 tensor-core peak, never at the plan's fp4 one; a bf16 plan of the same GEMMs runs the same."""
    model = load_model("gpt-oss-120b")
    sc = build_step_cost(model, B200, Plan(tp=1, weight_dtype="fp4"))
    bf16_rows = [(g, r) for g, r in _gemm_rows(sc) if g.fmt == "bf16"]
    assert bf16_rows and any(g.name == "qkv" for g, _ in bf16_rows)
    for g, r in bf16_rows:
        assert r["peak_flops_per_s"] == pytest.approx(B200.peak_flops("bf16"))
        assert r["peak_flops_per_s"] < B200.peak_flops("fp4")
    qkv = next(r for g, r in bf16_rows if g.name == "qkv")
    # the same qkv GEMM over a 4096-token prefill takes as long as in a plan whose weights are all bf16
    sh = K.aggregate(K.make_batch(chunk=4096), sc.params["window_tokens"][0], sc.params["topk_tokens"][0],
                    sc.params["window2_tokens"][0], 0)
    t_fp4_plan = K._op_time(sc.cost.params[0], sh, qkv, 4096.0, 4096.0)[0]
    sc16 = build_step_cost(model, B200, Plan(tp=1, weight_dtype="bf16"))
    qkv16 = next(r for g, r in _gemm_rows(sc16) if g.name == "qkv")
    assert t_fp4_plan == pytest.approx(K._op_time(sc16.cost.params[0], sh, qkv16, 4096.0, 4096.0)[0])
    expert = next(r for g, r in _gemm_rows(sc) if g.name == "experts_gate_up")
    assert expert["format"] == FORMAT_IDS["mxfp4"] and expert["peak_flops_per_s"] == pytest.approx(B200.peak_flops("fp4"))


def test_bf16_plans_keep_the_calibrated_gemm_figures():
    sc = build_step_cost(load_model("llama-3.1-70b"), H100, Plan(tp=4))
    c = H100.calibration
    for _, row in _gemm_rows(sc):
        assert row["peak_flops_per_s"] == pytest.approx(989.4e12)
        assert row["efficiency"] == pytest.approx(c.compute_efficiency)
        assert row["bytes_per_s"] == pytest.approx(3350e9 * c.bandwidth_efficiency)
        assert row["latency_s"] == pytest.approx(c.kernel_latency_us * 1e-6)


@pytest.mark.parametrize("gpu", [H100, H200, B200], ids=lambda g: g.name)
@pytest.mark.parametrize("model,wd", [("llama-3.1-70b", "bf16"), ("llama-3.1-70b", "fp8"),
                                      ("Qwen/Qwen3-235B-A22B-FP8", "fp8"), ("gpt-oss-120b", "fp4"),
                                      ("deepseek-v3", "fp8")])
@pytest.mark.parametrize("tokens", [1, 64, 4096])
def test_gemm_time_never_beats_each_formats_roofline(gpu, model, wd, tokens):
    """Lower bound per format: every GEMM row takes at least its FLOPs at its format's datasheet peak or its
    weight bytes at the datasheet HBM bandwidth, whichever is longer (no efficiency above 1)."""
    if wd == "fp4" and not gpu.supports("fp4") and "gpt-oss" not in model:
        pytest.skip("no fp4 tensor cores")
    m = load_model(model)
    sc = build_step_cost(m, gpu, Plan(tp=8 if "deepseek" in model else 4, weight_dtype=wd))
    m_tok = float(tokens)
    sh = K.aggregate(K.make_batch(chunk=tokens), sc.params["window_tokens"][0], sc.params["topk_tokens"][0],
                    sc.params["window2_tokens"][0], 0)
    bound = 0.0
    for g, r in _gemm_rows(sc):
        t, flops, byts = K._op_time(sc.cost.params[0], sh, r, m_tok, m_tok)
        floor = max(flops / gpu.peak_flops(compute_dtype(gpu, g.fmt, "bf16")), byts / (gpu.mem_bw_gbps * 1e9))
        assert t >= floor * (1 - 1e-12)
        bound += r["count"] * floor
    _, b = sc.step_s(chunk=tokens)
    assert b["gemm"] >= bound * sc.plan.pp * (1 - 1e-12)


def test_mla_prefill_counts_the_expanded_form_and_decode_the_absorbed_one():
    model = load_model("deepseek-v3")
    plan = Plan(tp=8, weight_dtype="fp8")
    shard = build_shard(model, plan)
    heads = model.num_heads / 8
    qk = model.qk_nope_head_dim + model.qk_rope_head_dim
    assert shard.prefill_flops_per_pair == pytest.approx(2.0 * heads * (qk + model.v_head_dim))
    assert shard.attn_flops_per_pair == pytest.approx(2.0 * heads * (2 * model.kv_lora_rank + model.qk_rope_head_dim))
    sc = build_step_cost(model, H200, plan)
    (a,) = [r for r in sc.cost.ops if r["shape"] == OP_ATTENTION]
    assert a["pf_flops_per_unit"] == pytest.approx(shard.prefill_flops_per_pair)
    assert a["flops_per_unit"] == pytest.approx(shard.attn_flops_per_pair)
    c = H200.calibration
    # an 8K-token fresh prefill's attention: at least its expanded-form FLOPs at the attention efficiency,
    # and well under the absorbed form's (3.4x the FLOPs per pair for DeepSeek-V3)
    s = 8192
    _, b = sc.step_s(chunk=s)
    pairs = float(K.padded_pairs(s, 0))
    layers = sc.shard.largest_stage.layers
    floor = layers * shard.prefill_flops_per_pair * pairs / (H200.peak_flops("bf16") * c.attention_efficiency)
    assert floor <= b["attention"] <= 1.5 * floor + layers * 1e-4
    assert b["attention"] < layers * shard.attn_flops_per_pair * pairs / (H200.peak_flops("bf16") * c.attention_efficiency)


def test_non_mla_attention_prefills_at_the_measured_kernel():
    sc = build_step_cost(load_model("llama-3.1-8b"), H200, Plan(tp=1))
    c = H200.calibration
    (a,) = [r for r in sc.cost.ops if r["shape"] == OP_ATTENTION]
    assert a["pf_flops_per_unit"] == a["flops_per_unit"]
    # prefill at the tables' FlashAttention-3-class kernel, decode at the calibration's figure
    assert a["efficiency"] == pytest.approx(c.prefill_attention_efficiency) and c.prefill_attention_efficiency > 0
    assert a["decode_efficiency"] == c.attention_efficiency
    assert a["bytes_per_s"] == pytest.approx(H200.mem_bw_gbps * 1e9 * c.bandwidth_efficiency)
