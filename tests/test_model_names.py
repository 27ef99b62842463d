"""`--model ORG/NAME`: built-ins found by their Hugging Face repo id, aliases and quantisation suffixes."""

from __future__ import annotations

import json

import pytest
import yaml

from apex_plan.errors import InputError
from apex_plan.model.load import load_model, resolve_repo_id, strip_quant_suffixes


@pytest.mark.parametrize("repo_id,name", [
    ("Qwen/Qwen3-32B", "qwen3-32b"),
    ("qwen/QWEN3-32b", "qwen3-32b"),                              # case-insensitive
    ("Qwen/Qwen3-235B-A22B-FP8", "qwen3-235b-a22b"),              # explicit alias
    ("meta-llama/Llama-3.1-8B-Instruct", "llama-3.1-8b"),         # source
    ("meta-llama/Meta-Llama-3.1-8B", "llama-3.1-8b"),             # alias
    ("openai/gpt-oss-120b", "gpt-oss-120b"),
    ("MiniMaxAI/MiniMax-M2.5", "minimax-m2.5"),
    ("deepseek-ai/DeepSeek-V3", "deepseek-v3"),
    ("deepseek-ai/DeepSeek-R1", "deepseek-r1"),
    ("Qwen/Qwen3-32B-FP8-Static-PerTensor", "qwen3-32b"),         # suffixes stripped
    ("RedHatAI/Qwen3-32B-FP8-dynamic", "qwen3-32b"),              # another organisation's re-quantisation
    ("Qwen/Qwen3-30B-A3B-GPTQ-Int4", "qwen3-30b-a3b"),
    ("nvidia/DeepSeek-R1-0528-FP4-v2", "deepseek-r1"),
    ("zai-org/GLM-5-FP8", "glm-5"),
    ("nvidia/Qwen3.5-397B-A17B-NVFP4", "qwen3.5-397b-a17b"),
    ("moonshotai/Kimi-K2.5", "kimi-k2.5"),
])
def test_repo_ids_resolve(repo_id, name):
    assert resolve_repo_id(repo_id) == name
    assert load_model(repo_id).name == name


def test_strip_quant_suffixes():
    assert strip_quant_suffixes("nvidia/Qwen3-235B-A22B-NVFP4") == "nvidia/Qwen3-235B-A22B"
    assert strip_quant_suffixes("x/Model-7B-AWQ") == "x/Model-7B"
    assert strip_quant_suffixes("x/Model-7B-Instruct") == "x/Model-7B-Instruct"     # not a quantisation tag
    assert strip_quant_suffixes("nvidia/DeepSeek-R1-0528-FP4-v2") == "nvidia/DeepSeek-R1-0528"   # revision after a tag
    assert strip_quant_suffixes("mistralai/Mixtral-8x7B-v0.1") == "mistralai/Mixtral-8x7B-v0.1"  # a version, kept


def test_unknown_repo_id_is_one_clear_error():
    with pytest.raises(InputError) as info:
        load_model("nobody/NoSuchModel-7B")
    msg = str(info.value)
    assert "--model" in msg and "nobody/NoSuchModel-7B" in msg and "qwen3-32b" in msg


def test_ambiguous_name_without_org_does_not_guess(tmp_path, monkeypatch):
    """Two built-ins whose repo names match once the organisation is dropped: no guess."""
    base = {"architectures": ["LlamaForCausalLM"], "hidden_size": 64, "intermediate_size": 128,
            "num_hidden_layers": 2, "num_attention_heads": 4, "vocab_size": 100, "max_position_embeddings": 128}
    (tmp_path / "a.yaml").write_text(yaml.safe_dump({"name": "a", "source": "orga/Tiny", **base}))
    (tmp_path / "b.yaml").write_text(yaml.safe_dump({"name": "b", "source": "orgb/Tiny", **base}))
    monkeypatch.setenv("APEX_PLAN_MODELS_DIR", str(tmp_path))
    assert resolve_repo_id("orga/tiny") == "a"
    assert resolve_repo_id("orgc/Tiny-FP8") is None


def test_a_path_still_wins(tmp_path):
    """An existing ORG/NAME folder holding config.json is read as a path, not a repo id."""
    folder = tmp_path / "Qwen" / "Qwen3-32B"
    folder.mkdir(parents=True)
    cfg = {"architectures": ["LlamaForCausalLM"], "hidden_size": 64, "intermediate_size": 128,
           "num_hidden_layers": 2, "num_attention_heads": 4, "vocab_size": 100, "max_position_embeddings": 128}
    (folder / "config.json").write_text(json.dumps(cfg))
    assert load_model(str(folder)).hidden_size == 64
