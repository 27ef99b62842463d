"""Step-cost estimator and memory accounting: roofline lower bounds, monotonicity, exact memory arithmetic."""

from __future__ import annotations

import math
from functools import lru_cache

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from apex_plan.estimate import kernels as K
from apex_plan.estimate.memory import GIB, memory_report, stage_weight_bytes
from apex_plan.estimate.step_cost import CUSTOM_ALLREDUCE_MAX_BYTES, build_step_cost
from apex_plan.hardware.load import load_gpu, make_cluster
from apex_plan.model.load import load_model
from apex_plan.model.params import param_counts
from apex_plan.plan.spec import EngineConfig, Plan
from apex_plan.simulate.run import simulate
from apex_plan.units import dtype_bytes
from apex_plan.workload.spec import Workload
from apex_plan.workload.synthetic import preset_trace

GPU_NAME = "h100-sxm-80gb"

# (model, weight dtype, tp, pp): every plan here fits H100-80GB memory (checked in test_configs_fit)
CONFIGS = (
    [("llama-3.1-8b", wd, tp, 1) for wd in ("bf16", "fp8") for tp in (1, 2, 4, 8)]
    + [("llama-3.1-70b", wd, tp, 1) for wd in ("bf16", "fp8") for tp in (2, 4, 8)]
    + [("llama-3.1-70b", "bf16", 4, 2)]
    + [("mixtral-8x7b", "bf16", tp, 1) for tp in (2, 4, 8)]
    + [("mixtral-8x7b", "fp8", tp, 1) for tp in (1, 2, 4, 8)]
    + [("deepseek-v3", "fp8", 8, 2), ("deepseek-v3", "bf16", 8, 4)]
)
CONFIG_IDS = [f"{m}-{wd}-tp{tp}-pp{pp}" for m, wd, tp, pp in CONFIGS]
FAST = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@lru_cache(maxsize=None)
def gpu():
    return load_gpu(GPU_NAME)


@lru_cache(maxsize=None)
def model(name):
    return load_model(name)


@lru_cache(maxsize=None)
def step_cost(name, wd, tp, pp):
    return build_step_cost(model(name), gpu(), Plan(1, tp, pp, 1, wd, "bf16"))


def peak_flops(wd: str) -> float:
    """Highest dense FLOP/s any kernel of the step may use: the weight dtype's (fp8) or bf16."""
    g = gpu()
    return max(g.peak_flops(wd if wd in ("fp8", "int8") else "bf16"), g.peak_flops("bf16"))


def peak_bw() -> float:
    return gpu().mem_bw_gbps * 1e9


def head_bytes(name: str, tp: int, n_logits: int) -> float:
    """LM-head weight shard (bf16) plus fp32 logits: work done once per pass, not once per stage."""
    m = model(name)
    v = math.ceil(m.vocab_size / tp)
    return m.hidden_size * v * 2.0 + n_logits * v * 4.0 if n_logits else 0.0


def head_flops(name: str, tp: int, n_logits: int) -> float:
    m = model(name)
    return 2.0 * n_logits * m.hidden_size * math.ceil(m.vocab_size / tp)


def hand_decode_weight_bytes(name: str, wd: str, tp: int, batch: int) -> float:
    """Independent lower bound on the weight bytes one GPU reads per decode pass (all stages): every
    layer's projections / tp in the weight dtype, plus the LM head / tp in bf16. MoE layers read at
    least the top-k experts' slices a single token picks (more for larger batches). Norms, the
    embedding table and replication of small matrices are left out, so this under-counts."""
    m = model(name)
    pc = param_counts(m)
    wb = dtype_bytes(wd)
    experts_read = min(m.num_experts, m.experts_per_token) if m.is_moe else 0
    layer_params = (m.num_layers * pc.attention_per_layer + pc.n_dense_layers * pc.dense_mlp_per_layer
                    + pc.n_moe_layers * (pc.router_per_layer + pc.shared_experts_per_layer
                                         + experts_read * pc.routed_expert_each))
    head = pc.lm_head or pc.embedding
    return layer_params / tp * wb + head / tp * 2.0


# ---- plans used here are real -------------------------------------------------------------------

@pytest.mark.parametrize("cfg", CONFIGS, ids=CONFIG_IDS)
def test_configs_fit(cfg):
    name, wd, tp, pp = cfg
    sc = step_cost(*cfg)
    mem = memory_report(model(name), gpu(), sc.plan, sc.shard, gpu_memory_utilization=0.9,
                        max_batched_tokens=8192, max_num_seqs=256, block_size=16, max_model_len=4096)
    assert mem.feasible, mem.reason


# ---- roofline lower bounds ----------------------------------------------------------------------

def _check_roofline(cfg, t, bd, n_logits):
    name, wd, tp, pp = cfg
    assert t > 0 and math.isfinite(t)
    # B_BYTES / B_FLOPS are per GPU of the largest stage; one pass goes through pp such stages, the
    # LM head (counted once in the breakdown) runs once per pass.
    hb, hf = head_bytes(name, tp, n_logits), head_flops(name, tp, n_logits)
    assert bd["bytes"] >= hb and bd["flops"] >= hf
    pass_bytes = pp * (bd["bytes"] - hb) + hb
    pass_flops = pp * (bd["flops"] - hf) + hf
    assert t >= bd["bytes"] / peak_bw()
    assert t >= bd["flops"] / peak_flops(wd)
    assert t >= pass_bytes / peak_bw()
    assert t >= pass_flops / peak_flops(wd)
    # the GPU part of the step alone (host time excluded) already respects the bound
    gpu_part = t - bd["engine_host"]
    assert gpu_part >= pass_bytes / peak_bw() * (1 - 1e-12)
    assert gpu_part >= pass_flops / peak_flops(wd) * (1 - 1e-12)


@pytest.mark.parametrize("cfg", CONFIGS, ids=CONFIG_IDS)
@FAST
@given(batch=st.integers(1, 256), ctx=st.integers(1, 32768))
def test_decode_roofline(cfg, batch, ctx):
    sc = step_cost(*cfg)
    t, bd = sc.step_s(decodes=batch, context=ctx)
    assert t == pytest.approx(sc.decode_time_s(batch, ctx), rel=1e-12)
    _check_roofline(cfg, t, bd, batch)
    # KV cache read alone: every decode sequence reads its context's K and V in every layer
    name, wd, tp, pp = cfg
    kv_read = sc.shard.kv_bytes_per_token_layer * model(name).num_layers * batch * ctx
    assert t >= kv_read / peak_bw()
    # independent hand count of the weights read: nothing decodes faster than streaming them once
    hand = hand_decode_weight_bytes(name, wd, tp, batch) / peak_bw()
    assert t >= hand
    # ... and the weight-streaming kernels alone (layer GEMMs + LM head) already take that long
    assert bd["gemm"] + bd["embed_lm_head"] >= hand


@pytest.mark.parametrize("cfg", [c for c in CONFIGS if not model(c[0]).is_moe and c[3] == 1],
                         ids=[i for c, i in zip(CONFIGS, CONFIG_IDS) if not model(c[0]).is_moe and c[3] == 1])
def test_decode_at_least_weights_of_memory_report(cfg):
    """Dense models: a decode step of batch 1 is no faster than reading memory_report's weights
    (less the embedding table, which decode only gathers rows of) at peak HBM bandwidth."""
    name, wd, tp, pp = cfg
    sc = step_cost(*cfg)
    m = model(name)
    mem = memory_report(m, gpu(), sc.plan, sc.shard, gpu_memory_utilization=0.9, max_batched_tokens=8192,
                        max_num_seqs=256, block_size=16, max_model_len=4096)
    embed = math.ceil(m.vocab_size / tp) * m.hidden_size * 2.0
    assert mem.weights_bytes > embed
    for ctx in (1, 1024, 32768):
        assert sc.decode_time_s(1, ctx) >= (mem.weights_bytes - embed) / peak_bw()


@pytest.mark.parametrize("cfg", CONFIGS, ids=CONFIG_IDS)
@FAST
@given(chunk=st.integers(1, 8192), cached=st.integers(0, 16384), decodes=st.integers(0, 64),
       ctx=st.integers(1, 8192), last=st.booleans())
def test_prefill_and_mixed_roofline(cfg, chunk, cached, decodes, ctx, last):
    sc = step_cost(*cfg)
    tokens = chunk + decodes
    n_logits = decodes + (1 if last else 0)
    t, bd = sc.step_s(decodes=decodes, context=ctx, chunk=chunk, cached=cached, samples=last, eager=True)
    _check_roofline(cfg, t, bd, n_logits)
    # GEMM FLOPs alone: 2 * tokens * (weights a token passes through), at least the attention projections
    name, wd, tp, pp = cfg
    pc = param_counts(model(name))
    proj = pc.attention_per_layer * model(name).num_layers / tp
    assert t >= 2.0 * tokens * proj / peak_flops(wd)


# ---- monotonicity -------------------------------------------------------------------------------

MONO_CONFIGS = [("llama-3.1-8b", "bf16", 1, 1), ("llama-3.1-70b", "bf16", 8, 1), ("llama-3.1-70b", "fp8", 4, 1),
                ("mixtral-8x7b", "bf16", 2, 1), ("deepseek-v3", "fp8", 8, 2), ("llama-3.1-70b", "bf16", 4, 2)]
MONO_IDS = [f"{m}-{wd}-tp{tp}-pp{pp}" for m, wd, tp, pp in MONO_CONFIGS]


@lru_cache(maxsize=None)
def step_cost_nccl(name, wd, tp, pp):
    """Same plan with vLLM's custom all-reduce off (--no-custom-allreduce): NCCL for every message."""
    return build_step_cost(model(name), gpu(), Plan(1, tp, pp, 1, wd, "bf16"), custom_allreduce=False)


@pytest.mark.parametrize("cfg", MONO_CONFIGS, ids=MONO_IDS)
@FAST
@given(batch=st.integers(1, 255), ctx=st.integers(1, 32000), db=st.integers(1, 64), dc=st.integers(1, 4096))
def test_decode_monotone(cfg, batch, ctx, db, dc):
    # decode batches (<= 256 sequences) of these models never outgrow the custom all-reduce buffer
    assert 256 * model(cfg[0]).hidden_size * 2 <= CUSTOM_ALLREDUCE_MAX_BYTES
    sc = step_cost(*cfg)
    t = sc.decode_time_s(batch, ctx)
    assert sc.decode_time_s(min(batch + db, 256), ctx) >= t
    assert sc.decode_time_s(batch, ctx + dc) >= t


@pytest.mark.parametrize("cfg", MONO_CONFIGS, ids=MONO_IDS)
@FAST
@given(prompt=st.integers(1, 8192), dp=st.integers(1, 2048), chunk=st.sampled_from([None, 512, 2048]))
def test_prefill_monotone(cfg, prompt, dp, chunk):
    sc = step_cost_nccl(*cfg)
    assert sc.prefill_time_s(prompt + dp, chunk) >= sc.prefill_time_s(prompt, chunk)


@pytest.mark.parametrize("custom_ar", [False, True], ids=["nccl", "custom-ar"])
@pytest.mark.parametrize("cfg", MONO_CONFIGS, ids=MONO_IDS)
@FAST
@given(chunk=st.integers(1, 8192), extra=st.integers(1, 1024), cached=st.integers(0, 8192),
       decodes=st.integers(0, 64), ctx=st.integers(1, 8192))
def test_step_monotone_in_tokens(cfg, custom_ar, chunk, extra, cached, decodes, ctx):
    """One eager step: a bigger prefill chunk, more cached context, or an extra decode never costs less."""
    sc = step_cost(*cfg) if custom_ar else step_cost_nccl(*cfg)

    def step(c, k, d):
        return sc.step_s(decodes=d, context=ctx, chunk=c, cached=k, eager=True)[0]

    t = step(chunk, cached, decodes)
    assert step(chunk + extra, cached, decodes) >= t
    assert step(chunk, cached + extra, decodes) >= t
    assert step(chunk, cached, decodes + 1) >= t


@pytest.mark.parametrize("cfg", [("llama-3.1-70b", "bf16", 8, 1), ("llama-3.1-70b", "bf16", 4, 2)],
                         ids=["70b-tp8", "70b-tp4-pp2"])
def test_step_time_monotone_across_custom_allreduce_limit(cfg):
    """Regression: a step that outgrows vLLM's 8 MiB custom all-reduce buffer (512 tokens x 8192 x 2 B)
    switches to NCCL; that must not make it cheaper (it did while the H100 profile had NCCL latency
    8.0 us below the custom all-reduce's 9.1 us: 29.654 ms at 512 prefill tokens, 29.520 ms at 513)."""
    c = gpu().calibration
    assert c.allreduce_latency_us >= c.custom_allreduce_latency_us
    sc = step_cost(*cfg)
    assert 512 * model(cfg[0]).hidden_size * 2 == CUSTOM_ALLREDUCE_MAX_BYTES

    def prefill_step(c):
        return sc.step_s(chunk=c, eager=True)[0]

    # vLLM uses the custom kernel strictly below 8 MiB: 511 tokens custom, 512 and 513 NCCL
    assert prefill_step(513) >= prefill_step(512) >= prefill_step(511)
    assert sc.prefill_time_s(513) >= sc.prefill_time_s(512) >= sc.prefill_time_s(511)


def test_zero_token_step_is_free():
    sc = step_cost("llama-3.1-8b", "bf16", 1, 1)
    t, bd = sc.step_s()
    assert t == 0.0 and all(v == 0.0 for v in bd.values())


# ---- exact memory arithmetic --------------------------------------------------------------------

def test_llama70b_tp8_weights_exact():
    m = model("llama-3.1-70b")
    plan = Plan(1, 8, 1, 1, "bf16", "bf16")
    sc = build_step_cost(m, gpu(), plan)
    hidden, inter, heads, kv, hd, vocab, layers, tp = 8192, 28672, 64, 8, 128, 128256, 80, 8
    q = hidden * heads * hd // tp
    k = v = hidden * kv * hd // tp
    o = heads * hd * hidden // tp
    mlp = 3 * hidden * inter // tp
    norms = 2 * hidden                               # replicated on every GPU
    per_layer = q + k + v + o + mlp + norms
    vocab_shard = -(-vocab // tp)                    # 16032 rows of the embedding and of the LM head
    params = layers * per_layer + 2 * vocab_shard * hidden + hidden   # + final norm
    expected = params * 2                            # bf16
    assert expected == 17_640_734_720
    # the same figure from the published total (70,553,706,496): sharded part / 8 + replicated norms
    total, emb = 70_553_706_496, vocab * hidden
    sharded = total - 2 * emb - layers * norms - hidden
    assert expected == 2 * (sharded // tp + layers * norms + hidden + 2 * vocab_shard * hidden)
    (stage,) = sc.shard.stages
    assert stage_weight_bytes(m, plan, sc.shard, stage) == expected
    mem = memory_report(m, gpu(), plan, sc.shard, gpu_memory_utilization=0.9, max_batched_tokens=512,
                        max_num_seqs=256, block_size=16, max_model_len=131072)
    assert mem.weights_bytes == expected
    # KV cache: 80 layers x (K and V) x 1 KV head per GPU x 128 dims x 2 bytes
    assert 80 * 2 * 1 * 128 * 2 == 40960
    assert mem.kv_bytes_per_token == 40960
    assert sc.shard.kv_bytes_per_token_layer * 80 == 40960
    pool = mem.total_bytes * 0.9 - mem.weights_bytes - mem.activation_bytes - mem.reserve_bytes
    assert mem.total_bytes == gpu().memory_bytes
    assert mem.reserve_bytes == 0.5 * GIB          # the vLLM 0.6 memory policy's reserve (no graph pool)
    assert mem.kv_pool_bytes == pytest.approx(pool, rel=1e-12)
    assert mem.kv_blocks == math.floor(mem.kv_pool_bytes / (16 * 40960))
    assert mem.kv_tokens == mem.kv_blocks * 16
    assert mem.feasible


def test_kv_pool_shrinks_with_utilization_and_grows_with_tp():
    m = model("llama-3.1-70b")
    blocks = {}
    for tp in (2, 4, 8):
        plan = Plan(1, tp, 1, 1, "bf16", "bf16")
        sc = build_step_cost(m, gpu(), plan)
        for u in (0.88, 0.9, 0.95):
            blocks[tp, u] = memory_report(m, gpu(), plan, sc.shard, gpu_memory_utilization=u, max_batched_tokens=512,
                                          max_num_seqs=256, block_size=16, max_model_len=4096).kv_blocks
    for tp in (2, 4, 8):
        assert blocks[tp, 0.88] < blocks[tp, 0.9] < blocks[tp, 0.95]
    for u in (0.88, 0.9, 0.95):
        assert blocks[2, u] < blocks[4, u] < blocks[8, u]


# ---- plans that do not fit ----------------------------------------------------------------------

def test_405b_bf16_tp1_infeasible_with_gib_in_reason():
    m = model("llama-3.1-405b")
    plan = Plan(1, 1, 1, 1, "bf16", "bf16")
    sc = build_step_cost(m, gpu(), plan)
    mem = memory_report(m, gpu(), plan, sc.shard, gpu_memory_utilization=0.9, max_batched_tokens=2048,
                        max_num_seqs=256, block_size=16, max_model_len=2048)
    assert not mem.feasible
    assert mem.weights_bytes > gpu().memory_bytes
    gib = mem.weights_bytes / GIB
    assert f"{gib:.1f} GiB" in mem.reason
    assert f"{gpu().memory_bytes / GIB:.1f} GiB" in mem.reason
    assert mem.kv_blocks == 0
    res = simulate(m, make_cluster(gpu(), 8), plan, EngineConfig(max_model_len=2048),
                   Workload(preset_trace("chat", 1.0, 10, 0)))
    assert res.feasible is False
    assert f"{gib:.1f} GiB" in res.reason and "exceed" in res.reason
    assert res.times is None and res.metrics is None
