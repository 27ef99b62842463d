"""The 2026 families (DeepSeek-V4, MiniMax-M3, Step-3.7, MiMo-V2-Flash, DeciLM / Nemotron-NAS): their
published config.json files (tests/fixtures/model_cards/, copied from the aiconfigurator-core 0.12.0
wheel's model_configs/) load, and the parameter totals agree with the model cards."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from apex_plan.model import spec as S
from apex_plan.model.load import load_model
from apex_plan.model.kv import kv_cache_bytes_per_seq, kv_cache_bytes_per_token_per_layer, kv_tokens_held
from apex_plan.model.params import component_params, param_counts

CARDS = Path(__file__).resolve().parent / "fixtures" / "model_cards"

# fixture -> the model card's total and active parameters and their tolerances (cards.json, with sources;
# scripts/check_model_configs.py prints the same comparison for the wheel's configs)
CARDS_JSON = {k: v for k, v in json.loads((CARDS / "cards.json").read_text()).items() if not k.startswith("_")}
CARD = {k: (v["total"], v["active"], v["tol_total"], v["tol_active"]) for k, v in CARDS_JSON.items() if v["active"]}
K3_TOTAL = CARDS_JSON["kimi_k3.json"]["total"]


@pytest.mark.parametrize("fixture", sorted(CARD))
def test_totals_match_model_cards(fixture):
    total, active, tol_total, tol_active = CARD[fixture]
    spec = load_model(str(CARDS / fixture))
    c = param_counts(spec)
    assert abs(c.total / total - 1) <= tol_total, (fixture, c.total)
    assert abs(c.active_matmul / active - 1) <= tol_active, (fixture, c.active_matmul)
    # two ways of summing the same parameters: per layer kind, and per weight component
    assert c.total == sum(component_params(spec).values())
    assert c.active <= c.total


def test_decilm_per_layer_widths():
    """Nemotron-Super-49B: 80 blocks, 31 without attention, FFN widths from ffn_mult (2/3 x mult x 8192,
    rounded up to 256): 5.25 -> 28672 (Llama-3.1-70B's width), 0.5 -> 2816."""
    spec = load_model(str(CARDS / "decilm_nemotron_super_49b.json"))
    cfg = json.loads((CARDS / "decilm_nemotron_super_49b.json").read_text())
    layers = spec.layers()
    assert len(layers) == 80 == spec.num_layers
    assert sum(k.mixer == S.NO_MIXER for k in layers) == sum(b["attention"]["no_op"] for b in cfg["block_configs"])
    widths = {k.mlp_width for k in layers}
    assert {28672, 14336, 2816, 5632, 7168, 17920} <= widths
    assert spec.num_kv_heads == 8                                 # 64 heads / n_heads_in_group 8
    # only attention layers keep KV: 49 layers x 8 heads x 128 x 2 (K, V) x 2 bytes
    assert spec.n_attention_layers == 49


def test_deepseek_v4_compressed_kv():
    """DeepSeek-V4-Flash: layers 0-1 sliding window (128 raw tokens), then CSA (one row per 4 tokens +
    the window, indexer key per row) and HCA (one row per 128 + the window); one 512-wide vector per row."""
    spec = load_model(str(CARDS / "deepseek_v4_flash.json"))
    kinds = spec.kind_counts()
    csa = next(k for k in kinds if k.compress == 4)
    hca = next(k for k in kinds if k.compress == 128)
    assert kinds[csa] == 21 and kinds[hca] == 20 and sum(kinds.values()) == 43
    assert kv_tokens_held(csa, 1 << 20) == 128 + (1 << 18)
    assert kv_tokens_held(hca, 1 << 20) == 128 + (1 << 13)
    assert kv_cache_bytes_per_token_per_layer(spec, "fp8", S.FULL) == 512        # K = V, one head, 1 byte
    # KV of a 1M-token sequence is far below a full-attention cache of the same rows (compression works)
    full = 43 * (1 << 20) * 512
    assert kv_cache_bytes_per_seq(spec, "fp8", 1 << 20) < full / 6


def test_mimo_v2_heads_per_layer_kind():
    """MiMo-V2-Flash: sliding layers 8 KV heads, full layers 4; q/k head 192, v head 128."""
    spec = load_model(str(CARDS / "mimo_v2_flash.json"))
    assert spec.attention_dims(S.SLIDING) == (192, 8) and spec.attention_dims(S.FULL) == (192, 4)
    assert kv_cache_bytes_per_token_per_layer(spec, "bf16", S.SLIDING) == 8 * (192 + 128) * 2
    assert kv_cache_bytes_per_token_per_layer(spec, "bf16", S.FULL) == 4 * (192 + 128) * 2


def test_kimi_k3_kda_and_latent_moe():
    spec = load_model(str(CARDS / "kimi_k3.json"))
    c = param_counts(spec)
    assert abs(c.total / K3_TOTAL - 1) <= 0.01, c.total
    kinds = spec.kind_counts()
    assert sum(n for k, n in kinds.items() if k.mixer == S.LINEAR) == 69
    assert sum(n for k, n in kinds.items() if k.mixer == S.MLA) == 24          # its MLA layers: the latent mixer
    assert c.total == sum(component_params(spec).values())
    # experts in the 3584-wide latent: 3 x 3584 x 3072 each, plus the two latent projections per MoE layer
    assert c.routed_expert_each == 3 * 3584 * 3072
    assert spec.checkpoint_dtype == "fp4"                      # its compressed-tensors mxfp4 config


WHEEL = Path(__file__).resolve().parents[2] / "aic" / "core" / "aiconfigurator_core"   # the unpacked wheel, when present


@pytest.mark.skipif(not (WHEEL / "model_configs").is_dir(), reason="aiconfigurator-core wheel not unpacked beside the checkout")
def test_check_model_configs_compares_every_carded_config():
    """The script on the wheel: every model config loads, and each config the card table names is within
    its card's tolerance (one 'ok' line each, exit 0)."""
    import subprocess
    import sys
    script = Path(__file__).resolve().parents[1] / "scripts" / "check_model_configs.py"
    out = subprocess.run([sys.executable, str(script), str(WHEEL), "--quiet"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr
    carded = sum(len(v["configs"]) for v in CARDS_JSON.values())
    assert sum(1 for line in out.stdout.splitlines() if line.startswith("ok ") and "vs card" in line) == carded
    assert "89 of 89 model configs" in out.stdout
