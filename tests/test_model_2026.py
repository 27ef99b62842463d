"""The 2026 architectures: exact parameter totals against model cards, layer groups, weight
formats, and KV bytes of sliding-window and hybrid models."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from apex_plan.errors import InputError
from apex_plan.model import spec as S
from apex_plan.model.load import load_model
from apex_plan.model.kv import kv_cache_bytes_per_seq, kv_cache_bytes_per_token
from apex_plan.model.params import component_params, param_counts, weight_bytes
from apex_plan.model.quant import format_bytes, formats_from_config

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "configs"

# Our exact counts (text decoder, no MTP module, no vision tower), pinned so a change is noticed.
EXACT_TOTAL = {
    "gpt-oss-120b": 116_829_156_672,
    "gpt-oss-20b": 20_914_757_184,
    "qwen3-32b": 32_762_123_264,
    "minimax-m2.5": 228_689_764_864,
    "kimi-k2.5": 1_026_408_232_448,
    "deepseek-r1": 671_026_419_200,
    "deepseek-v3.2": 671_877_944_064,
    "glm-5": 743_911_218_432,
    "qwen3.5-397b-a17b": 396_346_350_336,
    "qwen3-coder-480b-a35b": 480_154_875_392,
    "llama-4-maverick": 400_711_848_960,
    "nemotron-3-super-120b": 120_668_707_840,
}

# (published total, published active, relative tolerance of the total) from the model cards.
# gpt-oss: "116.83B total, 5.13B active" (the gpt-oss model card counts active without the embedding).
PUBLISHED = {
    "gpt-oss-120b": (116.83e9, 5.13e9, 0.0005),
    "gpt-oss-20b": (20.91e9, 3.61e9, 0.0005),
    "qwen3-32b": (32.8e9, None, 0.005),
    "minimax-m2.5": (229e9, 10e9, 0.005),        # "229B total, 10B activated"
    "kimi-k2.5": (1.0e12, 32e9, 0.05),           # "1T total, 32B activated" (one significant digit)
    "glm-5": (744e9, 40e9, 0.005),               # "744B total, 40B active"
    "qwen3.5-397b-a17b": (397e9, 17e9, 0.005),   # "397B total, 17B activated" (name: A17B)
    "qwen3-coder-480b-a35b": (480e9, 35e9, 0.005),
    "llama-4-maverick": (400e9, 17e9, 0.005),    # "17B active, 400B total"
    "nemotron-3-super-120b": (120e9, 12e9, 0.01),
}


@pytest.mark.parametrize("name", sorted(EXACT_TOTAL))
def test_exact_totals(name):
    assert param_counts(load_model(name)).total == EXACT_TOTAL[name]


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_totals_match_model_cards(name):
    total, active, rel = PUBLISHED[name]
    counts = param_counts(load_model(name))
    assert counts.total == pytest.approx(total, rel=rel)
    if active is not None:
        # cards give the active count with or without the embedding lookup, rounded to their digits
        # or truncated to the figure in the model's name (A17B, A35B)
        assert any(x == pytest.approx(active, rel=0.005) or active <= x < 1.1 * active
                   for x in (counts.active, counts.active_matmul)), (counts.active, counts.active_matmul)


def test_gpt_oss_120b_by_hand():
    """gpt-oss-120b from its config: biased q/k/v/o, sinks, 128 biased experts, biased router."""
    h, layers, heads, kv, d, E, inter, vocab = 2880, 36, 64, 8, 64, 128, 2880, 201088
    attn = h * heads * d + heads * d + 2 * (h * kv * d + kv * d) + heads * d * h + h + heads   # q,k,v,o (+biases) + sinks
    expert = h * 2 * inter + 2 * inter + inter * h + h                 # gate_up (+bias), down (+bias)
    router = h * E + E
    layer = attn + 2 * h + router + E * expert
    total = layers * layer + 2 * vocab * h + h
    assert total == EXACT_TOTAL["gpt-oss-120b"]
    spec = load_model("gpt-oss-120b")
    assert [(tuple(k.label() for k in g.kinds), g.repeat) for g in spec.groups] == [(("sliding128+moe", "full+moe"), 18)]


def test_layer_groups_of_hybrids():
    q = load_model("qwen3.5-397b-a17b")
    assert [(tuple(k.mixer for k in g.kinds), g.repeat) for g in q.groups] == [
        ((S.LINEAR, S.LINEAR, S.LINEAR, S.FULL), 15)]
    assert q.n_attention_layers == 15 and q.n_moe_layers == 60
    glm = load_model("glm-5")
    assert [(k.mixer, k.mlp, g.repeat) for g in glm.groups for k in g.kinds] == [
        (S.SPARSE, S.DENSE, 3), (S.SPARSE, S.MOE, 75)]
    nemo = load_model("nemotron-3-super-120b")
    counts = {k.label(): n for k, n in nemo.kind_counts().items()}
    assert counts == {"mamba+none": 40, "none+moe": 40, "full+none": 8}
    mav = load_model("llama-4-maverick")
    assert mav.n_moe_layers == 24 and mav.n_dense_layers == 24
    assert sum(n for k, n in mav.kind_counts().items() if k.mixer == S.CHUNKED and k.window == 8192) == 36


def test_sliding_window_kv_bytes_at_1k_and_128k():
    """gpt-oss-120b, bf16 KV: 2 x 8 KV heads x 64 x 2 bytes = 2048 B per token per layer; the 18
    full layers keep every token, the 18 sliding layers at most 128."""
    spec = load_model("gpt-oss-120b")
    per_layer = 2 * 8 * 64 * 2
    for ctx in (1024, 131072):
        seq = 18 * ctx * per_layer + 18 * min(ctx, 128) * per_layer
        assert kv_cache_bytes_per_seq(spec, "bf16", ctx) == seq
        assert kv_cache_bytes_per_token(spec, "bf16", ctx) == seq / ctx
    assert kv_cache_bytes_per_token(spec, "bf16", 1024) == 41_472
    assert kv_cache_bytes_per_token(spec, "bf16", 131072) == 36_900
    assert kv_cache_bytes_per_token(spec, "bf16") == 36 * per_layer        # no window applied


def test_hybrid_kv_bytes_at_1k_and_128k():
    """Qwen3.5-397B-A17B, bf16 KV: 15 gated full-attention layers of 2 KV heads x 256 keep every
    token; 45 Gated DeltaNet layers keep a fixed state per sequence: 64 value heads x 128 x 128 in
    fp32 (mamba_ssm_dtype) plus the conv window (2*16*128 + 64*128) x 3 in bf16."""
    spec = load_model("qwen3.5-397b-a17b")
    full = 15 * 2 * 2 * 256 * 2
    state = 45 * (64 * 128 * 128 * 4 + (2 * 16 * 128 + 64 * 128) * 3 * 2)
    assert state == 192_061_440
    for ctx, per_token in ((1024, 218_280.0), (131072, 32_185.3125)):
        assert kv_cache_bytes_per_seq(spec, "bf16", ctx) == full * ctx + state
        assert kv_cache_bytes_per_token(spec, "bf16", ctx) == per_token


def test_sparse_attention_caches_the_indexer_key():
    spec = load_model("deepseek-v3.2")
    assert spec.index_topk == 2048
    assert kv_cache_bytes_per_token(spec, "bf16") == 61 * ((512 + 64) * 2 + 128 * 2)


def test_checkpoint_weight_formats():
    gpt = load_model("gpt-oss-120b")
    assert gpt.weight_format("experts") == "mxfp4" and gpt.weight_format("attention") == "bf16"
    comp = component_params(gpt)
    assert sum(comp.values()) == EXACT_TOTAL["gpt-oss-120b"]
    # MXFP4 experts (0.5 B + one E8M0 scale per 32), everything else bf16
    expected = comp["experts"] * (0.5 + 1 / 32) + (EXACT_TOTAL["gpt-oss-120b"] - comp["experts"]) * 2
    assert weight_bytes(gpt, "fp4") == pytest.approx(expected, rel=1e-12)
    assert 64e9 < weight_bytes(gpt, "fp4") < 66e9                      # the 65 GB checkpoint
    kimi = load_model("kimi-k2.5")
    assert kimi.weight_format("experts") == "int4-g32" and kimi.weight_format("attention") == "bf16"
    assert 590e9 < weight_bytes(kimi, "int4") < 600e9                  # the ~594 GB INT4 checkpoint
    minimax = load_model("minimax-m2.5")
    assert minimax.weight_format("experts") == "fp8-block" and minimax.weight_format("router") == "bf16"


def test_format_bytes():
    assert format_bytes("nvfp4") == 0.5 + 1 / 16
    assert format_bytes("mxfp4") == 0.5 + 1 / 32
    assert format_bytes("fp8-block") == 1 + 4 / 16384
    assert format_bytes("int4-g32") == 0.5 + 2 / 32
    assert format_bytes("int4") == 0.5 + 2 / 128
    with pytest.raises(InputError):
        format_bytes("fp5")


def test_quantization_configs_read():
    assert formats_from_config({"quant_method": "fp8", "weight_block_size": [128, 128]}, 4)["experts"] == "fp8-block"
    modelopt = {"quantization": {"quant_algo": "NVFP4", "group_size": 16,
                                 "exclude_modules": ["lm_head", "model.layers.*.self_attn*"]}}
    f = formats_from_config(modelopt, 4)
    assert f["experts"] == "nvfp4" and f["attention"] == "bf16" and f["lm_head"] == "bf16"
    partial = {"quantization": {"quant_algo": "FP8", "exclude_modules": ["model.layers.0.self_attn"]}}
    assert formats_from_config(partial, 4)["attention"] == "fp8"         # one layer of four left out: still fp8
    assert formats_from_config({"quant_method": "bitsandbytes"}, 4) == {}


# ---------------------------------------------------------------- small config.json fixtures

@pytest.mark.parametrize("fixture", sorted(p.name for p in FIXTURES.glob("*.json")))
def test_fixture_configs_load(fixture):
    """Every architecture of the issue list loads from a (shrunken) Hugging Face config.json."""
    data = json.loads((FIXTURES / fixture).read_text())
    spec = load_model(str(FIXTURES / fixture))
    assert [[[k.label() for k in g.kinds], g.repeat] for g in spec.groups] == data["_expected_groups"]
    assert spec.num_layers == sum(g.num_layers for g in spec.groups)
    # two ways of summing the same parameters: per layer kind, and per weight component
    assert param_counts(spec).total == sum(component_params(spec).values())


def test_gated_deltanet_fixture_by_hand():
    """The shrunken Qwen3.5 MoE config: 6 linear-attention + 2 gated full-attention layers, all MoE."""
    spec = load_model(str(FIXTURES / "qwen3_5_moe.json"))
    h, heads, kv, d, E, w, vocab = 64, 4, 2, 16, 8, 32, 256
    nk, nv, dk, dv, kernel = 2, 4, 8, 8, 4
    key_dim, value_dim = nk * dk, nv * dv
    linear = (h * (2 * key_dim + 2 * value_dim) + h * 2 * nv + (2 * key_dim + value_dim) * kernel + 2 * nv + dv
              + value_dim * h)                                       # qkvz, ba, conv, dt_bias+A_log, norm, out
    full = h * 2 * heads * d + 2 * h * kv * d + heads * d * h + 2 * d  # gated q, k, v, o, q/k norms
    moe = h * E + h + 3 * h * w * E + 3 * h * w                        # router + shared gate, experts, shared expert
    total = 6 * (linear + moe + 2 * h) + 2 * (full + moe + 2 * h) + 2 * vocab * h + h
    assert param_counts(spec).total == total


def test_unsupported_architecture_is_one_line(tmp_path):
    path = tmp_path / "config.json"
    path.write_text(json.dumps({"architectures": ["Step9FlashForCausalLM"], "hidden_size": 64}))
    with pytest.raises(InputError) as info:
        load_model(str(path))
    assert "unsupported architecture Step9FlashForCausalLM" in str(info.value)
    assert "\n" not in str(info.value)
