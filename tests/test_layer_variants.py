"""Layer kinds that differ in shape are costed per kind: DeciLM / Nemotron-NAS per-layer FFN widths, KV
heads and linear replacements, and DeepSeek-V4's compressed KV (one cached row per `compress` tokens,
a raw window, top-k rows). Exact arithmetic against the parameter counts and the configs' fields."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from apex_plan.abi import GEMM_ATTENTION, GEMM_DENSE_MLP, GEMM_PROJ_MIXER, GEMM_PROJ_MLP, OP_ATTENTION, OP_GEMM
from apex_plan.estimate.memory import memory_report, stage_weight_bytes
from apex_plan.estimate.shard import build_shard
from apex_plan.estimate.step_cost import build_step_cost
from apex_plan.hardware.load import load_gpu
from apex_plan.model import spec as S
from apex_plan.model.load import load_model
from apex_plan.model.kv import kv_cache_bytes_per_seq, kv_cache_bytes_per_token
from apex_plan.model.params import component_params, param_counts
from apex_plan.plan.spec import Plan

CARDS = Path(__file__).resolve().parent / "fixtures" / "model_cards"
H200 = load_gpu("h200-sxm-141gb")


def _block(group=None, mult=None, attn="", ffn=""):
    """One DeciLM block_configs entry: attention with `group` query heads per KV head (or attn 'no_op' /
    'linear'), FFN of `mult` (or ffn 'no_op' / 'linear')."""
    return {"attention": {"n_heads_in_group": group, "no_op": attn == "no_op", "replace_with_linear": attn == "linear"},
            "ffn": {"ffn_mult": mult, "no_op": ffn == "no_op", "replace_with_linear": ffn == "linear"}}


# a Nemotron-NAS layout with every block variant of the 51B / Ultra configs (TensorRT-LLM's
# test_modeling_nemotron_nas.py mini config has the same variants): KV heads 8, 4 and 16, linear
# replacements of attention and FFN, no-op blocks, FFN widths from ffn_mult
BLOCKS = [_block(4, 2.0), _block(2, 2.0), _block(mult=2.0, attn="linear"), _block(mult=1.0, attn="no_op"),
          _block(4, ffn="linear"), _block(8, ffn="no_op"), _block(4, 2.0), _block(4, 5.25)]
H, HEADS, VOCAB = 2048, 32, 32128


def _nas(tmp_path) -> S.ModelSpec:
    cfg = {"architectures": ["DeciLMForCausalLM"], "model_type": "nemotron-nas", "hidden_size": H,
           "num_attention_heads": HEADS, "num_hidden_layers": len(BLOCKS), "num_key_value_heads": None,
           "intermediate_size": None, "vocab_size": VOCAB, "max_position_embeddings": 8192,
           "tie_word_embeddings": False, "torch_dtype": "bfloat16", "block_configs": BLOCKS}
    path = tmp_path / "config.json"
    path.write_text(json.dumps(cfg))
    return load_model(str(path))


def test_nas_block_variants_read_and_counted(tmp_path):
    """Each block's kind, and the parameter total by hand: attention q, o (hidden x hidden) plus k, v of its
    KV heads x head_dim 64; linear replacements hidden x hidden; SwiGLU FFNs of width
    ceil(2/3 x mult x hidden / 256) x 256; RMSNorms before each present mixer and FFN."""
    m = _nas(tmp_path)
    kinds = m.layers()
    assert [k.mixer for k in kinds] == ["full", "full", "proj", "none", "full", "full", "full", "full"]
    assert [k.mlp for k in kinds] == ["dense", "dense", "dense", "dense", "proj", "none", "dense", "dense"]
    assert [k.kv_heads for k in kinds if k.mixer == "full"] == [8, 16, 8, 4, 8, 8]
    assert m.num_kv_heads == 8                                   # the most common
    width = {2.0: 2816, 1.0: 1536, 5.25: 7168}                   # 2/3 x mult x 2048 rounded up to 256
    assert [k.mlp_width for k in kinds if k.mlp == "dense"] == [width[2.0]] * 3 + [width[1.0], width[2.0], width[5.25]]
    d = H // HEADS
    attn = sum(2 * H * H + 2 * H * kv * d for kv in (8, 16, 8, 4, 8, 8))
    ffn = sum(3 * H * w for w in (2816, 2816, 2816, 1536, 2816, 7168))
    linear = 2 * H * H                                            # one linear attention, one linear FFN
    norms = (7 + 7) * H + H                                       # 7 mixers, 7 FFNs present; final norm
    assert param_counts(m).total == attn + ffn + linear + norms + 2 * VOCAB * H
    # KV: only the six attention layers, each its own KV heads (K and V, bf16)
    assert kv_cache_bytes_per_token(m, "bf16") == sum(2 * kv * d * 2 for kv in (8, 16, 8, 4, 8, 8))


@pytest.mark.parametrize("tp", [1, 2, 4])
def test_nas_gemms_and_kv_per_layer_kind(tmp_path, tp):
    """The shard's GEMMs: one qkv per KV-head count and one FFN pair per width, each at the count of layers
    running it; their weights add up to the checkpoint's attention and FFN parameters; the KV pool's bytes
    per token are each attention layer's own."""
    m = _nas(tmp_path)
    plan = Plan(tp=tp)
    shard = build_shard(m, plan)
    (st,) = shard.stages
    gemms = {g.name: g for g in shard.gemms}
    assert {n for n in gemms if n.startswith("qkv")} == {"qkv_kv4", "qkv_kv8", "qkv_kv16"}
    assert {st.gemm_layers(gemms[f"qkv_kv{v}"]) for v in (4, 16)} == {1} and st.gemm_layers(gemms["qkv_kv8"]) == 4
    assert st.gemm_layers(gemms["gate_up_2816"]) == 4 and st.gemm_layers(gemms["down_7168"]) == 1
    assert st.gemm_layers(gemms["proj_attn"]) == 1 and st.gemm_layers(gemms["proj_mlp"]) == 1
    comp = component_params(m)

    def weights(*kinds):
        return sum(st.gemm_layers(g) * g.weight_params for g in shard.gemms if g.kind in kinds) * tp

    assert weights(GEMM_ATTENTION, GEMM_PROJ_MIXER) == comp["attention"]    # tp splits every one of them evenly
    assert weights(GEMM_DENSE_MLP, GEMM_PROJ_MLP) == comp["mlp"]
    d = H // HEADS
    assert shard.kv_bytes_per_token_stage(st) == sum(2 * (kv // tp) * d * 2 for kv in (8, 16, 8, 4, 8, 8))


def test_nas_op_table_rows_per_kind(tmp_path):
    """The op table: the FFN rows' FLOPs per token are the sum over layers of each layer's own width, the
    attention rows carry each KV-head count's bytes at its layer count, the linear replacements are GEMMs."""
    m = _nas(tmp_path)
    sc = build_step_cost(m, H200, Plan(tp=1))
    ops = sc.cost.ops
    gemm = ops[ops["shape"] == OP_GEMM]
    d = H // HEADS
    # every GEMM row's k x n x count: the weights each token multiplies by, = attention + FFN + linear params
    comp = component_params(m)
    assert float((gemm["k"] * gemm["n"] * gemm["count"]).sum()) == comp["attention"] + comp["mlp"]
    attn = ops[ops["shape"] == OP_ATTENTION]
    assert sorted(zip(attn["bytes_per_unit"], attn["count"])) == sorted(
        [(2 * 4 * d * 2.0, 1.0), (2 * 8 * d * 2.0, 4.0), (2 * 16 * d * 2.0, 1.0)])


def test_nas_decode_reads_each_layers_kv(tmp_path):
    """A decode step's HBM bytes grow with its context by exactly the KV the attention layers read per
    token (each its own KV heads); the linear-replacement and no-op layers read none."""
    m = _nas(tmp_path)
    sc = build_step_cost(m, H200, Plan(tp=1))
    b1 = sc.step_s(decodes=4, context=1000)[1]["bytes"]
    b2 = sc.step_s(decodes=4, context=3000)[1]["bytes"]
    assert b2 - b1 == pytest.approx(4 * 2000 * kv_cache_bytes_per_token(m, "bf16"), rel=1e-12)


def test_super_49b_weights_match_its_parameters():
    """Llama-3.3-Nemotron-Super-49B (80 blocks, 31 without attention, 8 FFN widths): the estimator's weight
    bytes over the stages of a tp2-pp2 plan equal the checkpoint's GEMM parameters x 2 bytes, plus norms,
    embedding and LM head; its 49 attention layers' KV is what the pool holds per token."""
    m = load_model(str(CARDS / "decilm_nemotron_super_49b.json"))
    plan = Plan(tp=2, pp=2)
    shard = build_shard(m, plan)
    comp = component_params(m)
    gemm_w = sum(st.gemm_layers(g) * g.weight_bytes for st in shard.stages for g in shard.gemms) * plan.tp
    assert gemm_w == 2.0 * (comp["attention"] + comp["mlp"])
    total = sum(stage_weight_bytes(m, plan, shard, st) for st in shard.stages) * plan.tp
    assert total == pytest.approx(2.0 * param_counts(m).total, rel=2e-3)   # norms of no-op blocks counted per layer
    # the down projections, row-parallel: each FFN width over tp GPUs
    downs = {g.k for g in shard.gemms if g.kind == GEMM_DENSE_MLP and g.name.startswith("down")}
    assert downs == {k.mlp_width // 2 for k in m.layers() if k.mlp == S.DENSE}
    assert sum(shard.kv_bytes_per_token_stage(st) for st in shard.stages) == 49 * 2 * (8 // 2) * 128 * 2


# ---- DeepSeek-V4 compressed attention --------------------------------------------------------------

@pytest.mark.parametrize("fixture", ["deepseek_v4_flash.json", "deepseek_v4_pro.json"])
@pytest.mark.parametrize("kv_dtype", ["bf16", "fp8"])
def test_v4_kv_pool_equals_the_per_sequence_bytes(fixture, kv_dtype):
    """On one GPU, a sequence of L tokens (a multiple of 128) takes L x the pool's bytes per token plus its
    fixed bytes (raw windows of 128 tokens, compressor states) = kv_cache_bytes_per_seq(L) exactly: one
    row per 4 (CSA, with its indexer key) or 128 (HCA) tokens, the raw window's rows in every layer."""
    m = load_model(str(CARDS / fixture))
    shard = build_shard(m, Plan(tp=1, weight_dtype="fp8", kv_dtype=kv_dtype))
    (st,) = shard.stages
    for L in (4096, 131072, 1 << 20):
        got = L * shard.kv_bytes_per_token_stage(st) + shard.seq_bytes_stage(st, L, block_size=0)
        assert got == pytest.approx(kv_cache_bytes_per_seq(m, kv_dtype, L), rel=1e-12)
    # per token: far below one full row per token per layer
    assert shard.kv_bytes_per_token_stage(st) < m.num_layers * m.head_dim * 2 / 4


def test_v4_memory_pool_holds_more_tokens_than_uncompressed():
    """DeepSeek-V4-Flash on 8 x H200 tp8: the KV pool's tokens = its bytes over the compressed bytes per token,
    after max_num_seqs raw windows and compressor states are set aside."""
    m = load_model(str(CARDS / "deepseek_v4_flash.json"))
    plan = Plan(tp=8, weight_dtype="fp8", kv_dtype="fp8")
    shard = build_shard(m, plan)
    mem = memory_report(m, H200, plan, shard, gpu_memory_utilization=0.9, max_batched_tokens=8192, max_num_seqs=64,
                        block_size=64, max_model_len=1 << 20)
    assert mem.feasible
    st = shard.largest_stage
    token_pool = mem.kv_pool_bytes - 64 * shard.seq_bytes_stage(st, 1 << 20, 64)
    assert mem.kv_blocks == int(token_pool // (mem.kv_bytes_per_token * 64))
    # fp8, one 512-wide row: CSA (512 + 128 indexer) / 4 x 21 layers + HCA 512 / 128 x 20 layers
    assert mem.kv_bytes_per_token == 21 * 640 / 4 + 20 * 512 / 128


def test_v4_decode_reads_compressed_rows():
    """Past the raw window (128) and the top-k span (512 rows x 4 = 2048 tokens), a decode's HBM bytes grow
    per context token only by the compressed rows read in full: HCA 512 / 128 bytes and the CSA indexer's
    128 / 4 bytes (fp8) per layer; the top-k attention and the raw windows read a fixed amount."""
    m = load_model(str(CARDS / "deepseek_v4_flash.json"))
    sc = build_step_cost(m, H200, Plan(tp=8, weight_dtype="fp8", kv_dtype="fp8"))
    assert (sc.params["window_tokens"][0], sc.params["topk_tokens"][0]) == (128, 2048)
    ops = sc.cost.ops
    attn = ops[ops["shape"] == OP_ATTENTION]
    b1 = sc.step_s(decodes=2, context=10_000)[1]["bytes"]
    b2 = sc.step_s(decodes=2, context=30_000)[1]["bytes"]
    hca = [r for r in attn if r["windowed"] == 0 and r["bytes_per_unit"] == 512 / 128]
    idx = [r for r in attn if r["windowed"] == 0 and r["bytes_per_unit"] == 128 / 4]
    assert sum(r["count"] for r in hca) == 20 and sum(r["count"] for r in idx) == 21
    per_token = sum(r["count"] * r["bytes_per_unit"] * r["rereads"] for r in attn if r["windowed"] == 0)
    assert b2 - b1 == pytest.approx(2 * 20_000 * per_token, rel=1e-12)


def test_v4_hyper_connection_streams_add_elementwise_bytes():
    """mHC keeps hc_mult residual streams: per block, combining them into the block input and writing the
    output back reads and writes 3 x hc_mult x hidden more than a single residual (bf16 activations),
    and its mixing GEMM (hc_mult x hidden in, 2 x (2 + hc_mult) x hc_mult out) runs in every layer."""
    import dataclasses
    m = load_model(str(CARDS / "deepseek_v4_flash.json"))
    plan = Plan(tp=1, weight_dtype="fp8")
    with_hc, without = build_shard(m, plan), build_shard(dataclasses.replace(m, hc_mult=0), plan)
    h, hc = m.hidden_size, m.hc_mult
    # two blocks x (combine: hc*h read; write-back: hc*h read and hc*h written) beyond the single stream's
    assert with_hc.elem_bytes_per_token_layer - without.elem_bytes_per_token_layer == 2 * 3 * hc * h * 2
    mix = next(g for g in with_hc.gemms if g.name == "hyper_conn")
    (st,) = with_hc.stages
    assert (mix.k, mix.n, st.gemm_layers(mix)) == (hc * h, 2 * (2 + hc) * hc, m.num_layers)
