"""One rule for a checkpoint's weight formats: its own quantization_config decides; the repo tag only when
there is none. A block-fp8 re-publication (Qwen/...-FP8, weight_block_size [128, 128]) is costed as block fp8,
not as the per-tensor fp8 its '-FP8' tag would name."""

from __future__ import annotations

import dataclasses

import pytest

from apex_plan.errors import InputError
from apex_plan.estimate.shard import build_shard
from apex_plan.model.load import load_model, spec_from_hf
from apex_plan.model.params import component_params, weight_bytes
from apex_plan.model.quant import format_bytes, repo_formats, tag_formats
from apex_plan.plan.spec import Plan


def test_stated_config_wins_over_the_tag():
    stated = {"experts": "fp8-block", "attention": "bf16"}
    assert repo_formats("zai-org/GLM-5-FP8", stated) == stated
    assert repo_formats("Qwen/Qwen3-32B-AWQ", {}) == tag_formats("int4")      # no config recorded: the tag
    assert repo_formats("deepseek-ai/DeepSeek-R1-0528", {}) == {}             # neither: the base checkpoint's


def test_qwen_fp8_alias_is_block_fp8_with_its_scale_bytes():
    fp8 = load_model("Qwen/Qwen3-235B-A22B-FP8")
    formats = dict(fp8.weight_formats)
    assert formats["experts"] == formats["attention"] == "fp8-block"
    assert formats["router"] == formats["lm_head"] == formats["embedding"] == "bf16"
    # the block scales add one fp32 per 128 x 128 weights of every quantised component, nothing else
    parts = component_params(fp8)
    quantised = sum(n for c, n in parts.items() if formats.get(c) == "fp8-block")
    per_tensor = dataclasses.replace(fp8, weight_formats=tuple(
        sorted({c: ("fp8" if f == "fp8-block" else f) for c, f in formats.items()}.items())))
    extra = weight_bytes(fp8, "fp8") - weight_bytes(per_tensor, "fp8")
    assert extra == pytest.approx(quantised * (format_bytes("fp8-block") - format_bytes("fp8")), rel=1e-12)
    assert extra == pytest.approx(quantised * 4.0 / (128 * 128), rel=1e-12)
    # the shard's GEMMs carry the block format, so they run the block-fp8 kernels' fit
    assert {g.fmt for g in build_shard(fp8, Plan(tp=8, weight_dtype="fp8")).gemms if g.name != "router"} \
        >= {"fp8-block"}


def test_nvfp4_alias_keeps_the_components_its_config_excludes_in_bf16():
    m = dict(load_model("nvidia/MiniMax-M2.5-NVFP4").weight_formats)
    assert m["experts"] == "nvfp4" and m["attention"] == "bf16"     # ignore: model.layers.*.self_attn*
    q = dict(load_model("nvidia/Qwen3.5-397B-A17B-NVFP4").weight_formats)
    assert q["experts"] == "nvfp4" and q["linear_attn"] == q["shared_experts"] == "bf16"


def test_tagged_alias_without_config_still_takes_its_tag():
    assert dict(load_model("meta-llama/Llama-3.1-405B-Instruct-FP8").weight_formats)["mlp"] == "fp8"
    assert dict(load_model("Qwen/Qwen3-32B-AWQ").weight_formats)["mlp"] == "int4"


def test_checkpoint_repo_picks_the_alias_by_its_stated_dtype():
    spec = load_model("qwen3-235b-a22b")
    assert spec.checkpoint_repo("fp8") == ("Qwen/Qwen3-235B-A22B-FP8", True)
    assert spec.checkpoint_repo("fp4") == ("nvidia/Qwen3-235B-A22B-NVFP4", True)
    assert spec.checkpoint_repo("bf16") == ("Qwen/Qwen3-235B-A22B", False)


_BASE = dict(architectures=["LlamaForCausalLM"], hidden_size=256, num_hidden_layers=2, num_attention_heads=4,
             num_key_value_heads=2, intermediate_size=512, vocab_size=1000, max_position_embeddings=4096,
             aliases=["org/m-FP8"])


@pytest.mark.parametrize("value, field", [
    ({"org/other-FP8": {"quant_method": "fp8"}}, "alias_quantization.org/other-FP8"),   # not an alias
    ([1, 2], "alias_quantization"),                                                       # not a mapping
    ({"org/m-FP8": {"activation_scheme": "dynamic"}}, "alias_quantization.org/m-FP8"),    # states no format
])
def test_bad_alias_quantization_names_the_field(value, field):
    with pytest.raises(InputError) as err:
        spec_from_hf(dict(_BASE, alias_quantization=value), "m.yaml")
    assert err.value.field == field


def test_alias_quantization_read_like_the_models_own():
    spec = spec_from_hf(dict(_BASE, alias_quantization={"org/m-FP8": {"quant_method": "fp8",
                                                                      "weight_block_size": [128, 128]}}), "m.yaml")
    assert spec.stated_formats("ORG/M-fp8")["mlp"] == "fp8-block"                     # repo ids: any case


def test_moe_layer_counts_quantise_kernels_for_the_attention_gemms_only():
    """The fused-MoE op quantises the experts' inputs inside itself (the per-op tables time it whole) and the
    router runs in bf16: a block-fp8 MoE layer adds exactly one quantise kernel each for qkv and o."""
    from apex_plan.engine.load import resolve_engine_profile
    from apex_plan.estimate.step_cost import kernel_count_fields
    model = load_model("Qwen/Qwen3-235B-A22B-FP8")
    plan = Plan(tp=4, weight_dtype="fp8")
    shard = build_shard(model, plan)
    for engine in ("vllm", "sglang", "trtllm"):
        prof = resolve_engine_profile(engine)
        per = prof.quantization.kernels_per_gemm_dynamic
        f = kernel_count_fields(model, plan, shard, prof, "dynamic")
        assert f["kernels_per_moe_layer"] == 16 + 2 * per          # no shared expert; block fp8 fuses nothing
        assert f["elem_kernels_per_layer"] == 5 + 2 * per
