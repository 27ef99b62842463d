"""Model layer: built-in model files, the loader's error handling, and exact parameter / KV counts."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from apex_plan.errors import InputError
from apex_plan.model.load import SUPPORTED_ARCHITECTURES, list_models, load_model
from apex_plan.model.kv import kv_cache_bytes_per_token, kv_cache_bytes_per_token_per_layer
from apex_plan.model.params import param_counts, weight_bytes

BUILT_INS = [
    "llama-3.1-8b", "llama-3.1-70b", "llama-3.1-405b", "mistral-large-2407", "mixtral-8x7b",
    "mixtral-8x22b", "qwen2.5-72b", "qwen3-30b-a3b", "qwen3-235b-a22b", "deepseek-v3",
]

# Published totals (model cards / papers) with 3+ significant digits: ours must be within 0.5%.
PUBLISHED_TOTAL = {
    "llama-3.1-8b": 8.03e9,
    "llama-3.1-70b": 70.6e9,
    "llama-3.1-405b": 405.9e9,      # 405_853_388_800 in the safetensors index
    "mistral-large-2407": 123e9,
    "mixtral-8x7b": 46.7e9,
    "mixtral-8x22b": 141e9,
    "qwen2.5-72b": 72.7e9,
    "qwen3-30b-a3b": 30.5e9,
    "qwen3-235b-a22b": 235e9,
    "deepseek-v3": 671e9,           # main model; the 14B MTP module (685B in all) is not counted
}
PUBLISHED_ACTIVE = {"mixtral-8x7b": 12.9e9, "mixtral-8x22b": 39e9}

# Exact counts from our formulas, pinned so a change to them is noticed.
EXACT_TOTAL = {
    "llama-3.1-8b": 8_030_261_248,
    "llama-3.1-70b": 70_553_706_496,
    "llama-3.1-405b": 405_853_388_800,
    "mistral-large-2407": 122_610_069_504,
    "mixtral-8x7b": 46_702_792_704,
    "mixtral-8x22b": 140_630_071_296,
    "qwen2.5-72b": 72_706_203_648,
    "qwen3-30b-a3b": 30_532_122_624,
    "qwen3-235b-a22b": 235_093_634_560,
    "deepseek-v3": 671_026_419_200,
}


def _hf_llama_config() -> dict:
    """A Llama-3.1-8B style config.json (meta-llama/Llama-3.1-8B-Instruct)."""
    return {
        "_name_or_path": "meta-llama/Llama-3.1-8B-Instruct", "architectures": ["LlamaForCausalLM"],
        "model_type": "llama", "hidden_size": 4096, "intermediate_size": 14336, "num_hidden_layers": 32,
        "num_attention_heads": 32, "num_key_value_heads": 8, "vocab_size": 128256,
        "max_position_embeddings": 131072, "tie_word_embeddings": False, "rope_theta": 500000.0,
        "rms_norm_eps": 1e-05, "torch_dtype": "bfloat16",
    }


def _write_json(path: Path, cfg: dict) -> Path:
    path.write_text(json.dumps(cfg))
    return path


# ---------------------------------------------------------------- built-ins

def test_every_built_in_is_listed_and_loads():
    assert set(BUILT_INS) <= set(list_models())
    for name in BUILT_INS:
        spec = load_model(name)
        assert spec.name == name
        assert spec.architecture in SUPPORTED_ARCHITECTURES
        assert "/" in spec.source


@pytest.mark.parametrize("name", BUILT_INS)
def test_total_matches_published_and_exact(name):
    counts = param_counts(load_model(name))
    assert counts.total == EXACT_TOTAL[name]
    assert counts.total == pytest.approx(PUBLISHED_TOTAL[name], rel=0.005)


@pytest.mark.parametrize("name", sorted(PUBLISHED_ACTIVE))
def test_active_matches_published(name):
    assert param_counts(load_model(name)).active == pytest.approx(PUBLISHED_ACTIVE[name], rel=0.005)


@pytest.mark.parametrize("name,published_b", [("qwen3-30b-a3b", 3.3), ("qwen3-235b-a22b", 22), ("deepseek-v3", 37)])
def test_active_matches_two_digit_published_figures(name, published_b):
    """These figures have two significant digits, so 0.5% is finer than they are; pin exact counts
    and check the published digits: Qwen truncates its active count, DeepSeek rounds the count
    without the embedding lookup (`active_matmul`)."""
    counts = param_counts(load_model(name))
    if name == "deepseek-v3":
        assert counts.active == 37_552_297_472
        assert round(counts.active_matmul / 1e9) == published_b          # 36.63B
    else:
        step = 0.1 if published_b < 10 else 1.0
        assert published_b <= counts.active / 1e9 < published_b + step   # 3.353B, 22.19B
    assert counts.active < counts.total


def test_dense_models_are_fully_active():
    for name in ("llama-3.1-8b", "mistral-large-2407", "qwen2.5-72b"):
        counts = param_counts(load_model(name))
        assert counts.active == counts.total
        assert counts.n_moe_layers == 0 and counts.routed_experts_per_layer == 0


def test_llama_70b_total_by_hand():
    h, inter, vocab, layers, heads, kv, hd = 8192, 28672, 128256, 80, 64, 8, 128
    attention = h * heads * hd + 2 * h * kv * hd + heads * hd * h      # q, k, v, o
    mlp = 3 * h * inter                                               # gate, up, down
    norms = 2 * h
    expected = layers * (attention + mlp + norms) + 2 * vocab * h + h  # + embed, lm_head, final norm
    assert expected == 70_553_706_496
    assert param_counts(load_model("llama-3.1-70b")).total == expected


def test_llama_70b_kv_bytes():
    spec = load_model("llama-3.1-70b")
    assert kv_cache_bytes_per_token_per_layer(spec, "bf16") == 2 * 8 * 128 * 2
    assert kv_cache_bytes_per_token(spec, "bf16") == 327_680                  # 80 * 2 * 8 * 128 * 2
    assert kv_cache_bytes_per_token(spec, "fp8") == 163_840


def test_deepseek_v3_mla_spec_and_kv_bytes():
    spec = load_model("deepseek-v3")
    assert spec.attention == "mla" and spec.num_kv_heads == spec.num_heads == 128 and spec.head_dim == 128
    assert (spec.n_dense_layers, spec.n_moe_layers) == (3, 58)
    assert kv_cache_bytes_per_token_per_layer(spec, "bf16") == (512 + 64) * 2
    counts = param_counts(spec)
    # q_a + q_a_norm + q_b + kv_a + kv_a_norm + kv_b + o
    assert counts.attention_per_layer == (7168 * 1536 + 1536 + 1536 * 128 * 192 + 7168 * 576 + 512
                                          + 512 * 128 * 256 + 128 * 128 * 7168)
    assert counts.router_per_layer == 7168 * 256 + 256
    assert counts.shared_experts_per_layer == counts.routed_expert_each == 3 * 7168 * 2048


def test_moe_component_counts():
    mixtral = param_counts(load_model("mixtral-8x7b"))
    assert mixtral.routed_expert_each == 3 * 4096 * 14336
    assert mixtral.routed_experts_per_layer == 8 * mixtral.routed_expert_each
    assert mixtral.dense_mlp_per_layer == 0 and mixtral.shared_experts_per_layer == 0
    qwen3 = param_counts(load_model("qwen3-30b-a3b"))
    assert qwen3.attention_per_layer == 2048 * 4096 * 2 + 2 * 2048 * 512 + 2 * 128   # q,o + k,v + q/k norms


def test_qwen2_has_qkv_biases():
    counts = param_counts(load_model("qwen2.5-72b"))
    assert counts.attention_per_layer == 2 * 8192 * 8192 + 2 * 8192 * 1024 + 8192 + 2 * 1024


def test_weight_bytes():
    spec = load_model("llama-3.1-70b")
    assert weight_bytes(spec, "bf16") == 2 * 70_553_706_496
    assert weight_bytes(spec, "fp8") == 70_553_706_496
    with pytest.raises(InputError, match="weight_dtype"):
        weight_bytes(spec, "fp7")


# ---------------------------------------------------------------- other inputs

def test_hf_config_json_loads(tmp_path):
    path = _write_json(tmp_path / "config.json", _hf_llama_config())
    spec = load_model(str(path))
    assert spec.source == "meta-llama/Llama-3.1-8B-Instruct"
    assert spec.head_dim == 128 and spec.num_kv_heads == 8
    assert param_counts(spec).total == EXACT_TOTAL["llama-3.1-8b"]
    assert load_model(str(tmp_path)) == spec                       # a folder holding config.json


def test_yaml_path_loads(tmp_path):
    path = tmp_path / "mine.yaml"
    path.write_text(yaml.safe_dump({"name": "mine", "source": "me/mine", **_hf_llama_config()}))
    assert param_counts(load_model(str(path))).total == EXACT_TOTAL["llama-3.1-8b"]


def test_models_dir_env_override(tmp_path, monkeypatch):
    (tmp_path / "tiny.yaml").write_text(yaml.safe_dump({"name": "tiny", **_hf_llama_config()}))
    monkeypatch.setenv("APEX_PLAN_MODELS_DIR", str(tmp_path))
    assert list_models() == ["tiny"]
    assert load_model("tiny").name == "tiny"


def test_qwen2_moe_config(tmp_path):
    """Qwen/Qwen1.5-MoE-A2.7B: 14.3B total, 2.7B active; one shared expert with its own width."""
    cfg = {"architectures": ["Qwen2MoeForCausalLM"], "hidden_size": 2048, "intermediate_size": 5632,
           "moe_intermediate_size": 1408, "shared_expert_intermediate_size": 5632, "num_experts": 60,
           "num_experts_per_tok": 4, "num_hidden_layers": 24, "num_attention_heads": 16,
           "num_key_value_heads": 16, "vocab_size": 151936, "max_position_embeddings": 8192,
           "tie_word_embeddings": False, "decoder_sparse_step": 1, "mlp_only_layers": []}
    spec = load_model(str(_write_json(tmp_path / "config.json", cfg)))
    assert spec.num_shared_experts == 1 and spec.shared_expert_intermediate_size == 5632
    counts = param_counts(spec)
    assert counts.router_per_layer == 2048 * 60 + 2048                      # gate + shared_expert_gate
    assert counts.total == pytest.approx(14.3e9, rel=0.005)
    assert counts.active == pytest.approx(2.7e9, rel=0.005)


def test_qwen3_moe_dense_layers(tmp_path):
    base = yaml.safe_load((Path(__file__).resolve().parents[1] / "models" / "qwen3-30b-a3b.yaml").read_text())
    for extra, n_dense in (({"decoder_sparse_step": 2}, 24), ({"mlp_only_layers": [0, 5, 47]}, 3)):
        spec = load_model(str(_write_json(tmp_path / "config.json", {**base, **extra})))
        assert spec.n_dense_layers == n_dense and spec.n_moe_layers == 48 - n_dense


def test_deepseek_v2_lite_without_q_lora(tmp_path):
    """deepseek-ai/DeepSeek-V2-Lite: q_lora_rank is null (plain q_proj); 15.7B total."""
    cfg = {"architectures": ["DeepseekV2ForCausalLM"], "hidden_size": 2048, "intermediate_size": 10944,
           "moe_intermediate_size": 1408, "n_routed_experts": 64, "n_shared_experts": 2,
           "num_experts_per_tok": 6, "first_k_dense_replace": 1, "moe_layer_freq": 1,
           "num_hidden_layers": 27, "num_attention_heads": 16, "num_key_value_heads": 16,
           "kv_lora_rank": 512, "q_lora_rank": None, "qk_rope_head_dim": 64, "qk_nope_head_dim": 128,
           "v_head_dim": 128, "vocab_size": 102400, "max_position_embeddings": 163840,
           "tie_word_embeddings": False}
    spec = load_model(str(_write_json(tmp_path / "config.json", cfg)))
    assert spec.q_lora_rank == 0 and spec.n_dense_layers == 1
    assert param_counts(spec).total == pytest.approx(15.7e9, rel=0.005)


# ---------------------------------------------------------------- bad inputs

def _raises(path_or_name: str, *needles: str) -> InputError:
    with pytest.raises(InputError) as info:
        load_model(path_or_name)
    for needle in needles:
        assert needle in str(info.value), str(info.value)
    return info.value


def test_unknown_name_suggests():
    err = _raises("llama-3.1-70", "unknown model", "llama-3.1-70b")
    assert err.where == "--model"


def test_missing_file(tmp_path):
    _raises(str(tmp_path / "nope.yaml"), str(tmp_path / "nope.yaml"), "not found")
    _raises(str(tmp_path / "nope" / "config.json"), "config.json", "not found")


def test_malformed_yaml_and_json(tmp_path):
    bad_yaml = tmp_path / "bad.yaml"
    bad_yaml.write_text("name: [unclosed\nhidden_size: 4096\n")
    _raises(str(bad_yaml), str(bad_yaml), "malformed YAML")
    bad_json = tmp_path / "config.json"
    bad_json.write_text('{"hidden_size": 4096,,}')
    _raises(str(bad_json), str(bad_json), "malformed JSON")
    top_list = tmp_path / "list.yaml"
    top_list.write_text("- 1\n- 2\n")
    _raises(str(top_list), str(top_list), "mapping")


def test_unsupported_architecture(tmp_path):
    path = _write_json(tmp_path / "config.json", {**_hf_llama_config(), "architectures": ["GPT2LMHeadModel"]})
    _raises(str(path), str(path), "field 'architectures'", "GPT2LMHeadModel", "LlamaForCausalLM")


@pytest.mark.parametrize("field", ["hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size",
                                   "vocab_size", "max_position_embeddings", "architectures"])
def test_missing_required_field(tmp_path, field):
    cfg = _hf_llama_config()
    del cfg[field]
    path = _write_json(tmp_path / "config.json", cfg)
    _raises(str(path), str(path), f"field '{field}'", "missing")


@pytest.mark.parametrize("value,problem", [(0, "positive"), (-4, "positive"), (4096.5, "whole number"),
                                           ("4096", "whole number"), (True, "whole number")])
def test_bad_numbers(tmp_path, value, problem):
    path = _write_json(tmp_path / "config.json", {**_hf_llama_config(), "hidden_size": value})
    _raises(str(path), str(path), "field 'hidden_size'", problem)


def test_heads_not_divisible_by_kv_heads(tmp_path):
    path = _write_json(tmp_path / "config.json", {**_hf_llama_config(), "num_key_value_heads": 7})
    _raises(str(path), str(path), "field 'num_key_value_heads'", "multiple")


def test_more_experts_per_token_than_experts(tmp_path):
    base = yaml.safe_load((Path(__file__).resolve().parents[1] / "models" / "mixtral-8x7b.yaml").read_text())
    path = tmp_path / "mixtral.yaml"
    path.write_text(yaml.safe_dump({**base, "num_experts_per_tok": 9}))
    _raises(str(path), str(path), "field 'num_experts_per_tok'", "at most 8")


def test_no_raw_exception_escapes(tmp_path):
    """Any junk value in any field gives a spec or an InputError, never a KeyError/TypeError."""
    base = yaml.safe_load((Path(__file__).resolve().parents[1] / "models" / "deepseek-v3.yaml").read_text())
    junk = [None, "x", -1, 0, 1.5, [], {}, [1, "a"], True]
    path = tmp_path / "m.yaml"
    for field in base:
        for value in junk:
            path.write_text(yaml.safe_dump({**base, field: value}))
            try:
                load_model(str(path))
            except InputError as err:
                assert str(path) in str(err)
