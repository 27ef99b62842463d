"""The kernel ABI: every record field is written by its builder and read by a kernel, and the
simulator and the analytic callers cost a step through the same aggregation (one truth)."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

from apex_plan import abi, jit
from apex_plan.estimate import kernels as K
from apex_plan.estimate.mixers import MIXERS
from apex_plan.estimate.step_cost import build_step_cost
from apex_plan.hardware.load import load_gpu, make_cluster
from apex_plan.model.params import param_counts
from apex_plan.units import DTYPE_BYTES
from apex_plan.model.load import list_models, load_model
from apex_plan.model import spec as S
from apex_plan.model.quant import FORMATS, format_dtype
from apex_plan.plan.spec import EngineConfig, Plan
from apex_plan.simulate.run import simulate
from apex_plan.workload.spec import Trace, Workload

ROOT = Path(__file__).resolve().parents[1] / "apex_plan"
# every module defining a numba kernel (apex_plan.jit.KERNEL_FILES), less the record declarations themselves
KERNEL_SOURCE = "".join(f.read_text() for f in jit.KERNEL_FILES if f.name not in ("abi.py", "jit.py"))
B200 = load_gpu("b200-sxm-180gb")
FORMATS_BY_ID = dict(enumerate(FORMATS))
PROMPT = 20000          # longer than every built-in window (gpt-oss 128, Llama 4 chunks 8192, DSA top-k 2048)


def _weight_dtype(model) -> str:
    """The dtype of the checkpoint's expert (else MLP) weights; fp8 for unquantised checkpoints, fp4 for
    those whose fp8 weights outgrow 8 x B200 (DeepSeek-V4-Pro's 1.6T)."""
    fmts = dict(model.weight_formats)
    fmt = fmts.get("experts") or fmts.get("mlp")
    dtype = format_dtype(fmt) if fmt and format_dtype(fmt) not in ("bf16", "fp16") else "fp8"
    # weights bytes at that dtype against 8 x B200's ~1.2 TB: DeepSeek-V4-Pro's fp8 experts do not fit
    return "fp4" if param_counts(model).total_non_embedding * DTYPE_BYTES[dtype] > 1.1e12 else dtype


def _plan(name: str) -> tuple:
    """tp 8 at the checkpoint's dtype (`_weight_dtype`), with two pipeline stages for a model whose fp4
    weights still outgrow 8 x B200 (Kimi-K3's 2.8T)."""
    model = load_model(name)
    dtype = _weight_dtype(model)
    pp = 2 if param_counts(model).total_non_embedding * DTYPE_BYTES[dtype] > 1.1e12 else 1
    return model, Plan(tp=8, pp=pp, weight_dtype=dtype, kv_dtype="fp8")


def test_make_record_refuses_missing_and_unknown_fields():
    full = {name: 1.0 for name in abi.COST.names}
    assert abi.record_dict(abi.make_record(abi.COST, **full)) == full
    del full["tp"]
    with pytest.raises(TypeError, match="tp"):
        abi.make_record(abi.COST, **full)
    with pytest.raises(TypeError, match="no_such_field"):
        abi.make_record(abi.COST, **{name: 1.0 for name in abi.COST.names}, no_such_field=1.0)


@pytest.mark.parametrize("name", list_models())
def test_builders_write_every_cost_field(name):
    """build_step_cost names every COST field (make_record refuses otherwise), each value finite; the
    op table has a row per GEMM at its kind's layer count, with the GEMM's weight format, and each
    mixer's rows at its layer count."""
    model, plan = _plan(name)
    sc = build_step_cost(model, B200, plan)
    p = abi.record_dict(sc.params)
    assert set(p) == set(abi.COST.names)
    assert all(np.isfinite(v) for v in p.values()), p
    st = sc.shard.largest_stage
    assert p["dense_layers"] + p["moe_layers"] + p["mlp_free_layers"] == st.layers
    ops = sc.cost.ops
    gemm_rows = ops[(ops["shape"] == abi.OP_GEMM) | (ops["shape"] == abi.OP_EXPERTS)]
    run = [g for g in sc.shard.gemms if st.gemm_layers(g)]
    assert len(gemm_rows) == len(run)
    assert list(gemm_rows["count"]) == [st.gemm_layers(g) for g in run]
    assert [FORMATS_BY_ID[i] for i in gemm_rows["format"]] == [g.fmt.split("-g")[0] for g in run]
    assert all(np.isfinite(ops[f]).all() for f in ops.dtype.names)
    # every mixer layer of the stage is costed: attention and recurrent rows add up to its mixer layers
    mixer_rows = ops[(ops["shape"] == abi.OP_ATTENTION) | (ops["shape"] == abi.OP_RECURRENT)]
    indexers = st.count("sparse")                   # a sparse layer has two rows: top-k attention and its indexer
    raw = sum(n for k, n in st.kinds if k.compress)  # a compressed layer (DeepSeek-V4) one more: its raw window
    assert mixer_rows["count"].sum() - indexers - raw == st.layers - st.count("none") - st.count("proj")


# fields carried for callers outside the kernels (OP.format: the weight format per GEMM row, for
# per-format GEMM physics and reports)
NOT_READ_BY_KERNELS = {"format"}


@pytest.mark.parametrize("dtype", [abi.COST, abi.OP, abi.SCHED, abi.REQUEST, abi.ENGINE, abi.SLOT, abi.BATCH,
                                   abi.XFER, abi.XENGINE, abi.LINK])
def test_every_record_field_is_read_by_a_kernel(dtype):
    """A field no kernel reads is a second truth waiting to drift: each is read by name somewhere."""
    unread = [f for f in dtype.names if not re.search(rf"\.{f}\b", KERNEL_SOURCE) and f not in NOT_READ_BY_KERNELS]
    assert not unread


def test_source_stamp_covers_every_kernel_file(tmp_path):
    a, b = tmp_path / "a.py", tmp_path / "b.py"
    a.write_text("x = 1\n")
    b.write_text("y = 1\n")
    before = jit.source_stamp((a, b))
    b.write_text("y = 2\n")                      # an edit to the inlined file, not the caller's
    assert jit.source_stamp((a, b)) != before
    assert all(f.is_file() for f in jit.KERNEL_FILES)


@jit.kernel(refcounts=False)
def _twice(x):
    return 2 * x


@jit.kernel()
def _call_twice(n):
    return _twice(0) + _twice(True) + _twice(n)      # literal int, literal bool, int64 argument


def test_a_kernel_compiles_one_specialisation_per_argument_type():
    """Called from compiled code with constants, a kernel compiles for their types (int64, bool),
    not once per constant value (numba's Literal[int](0))."""
    assert _call_twice(3) == 8
    assert sorted(str(s[0]) for s in _twice.signatures) == ["bool", "int64"]


def test_aggregate_counts_each_sequence_once():
    """A batch of 3 decodes at 1000 tokens and one 512-token chunk after 256 cached, window 128, top-k span 600."""
    batch = K.make_batch(decodes=3, context=1000, chunk=512, cached=256, samples=False)
    sh = K.aggregate(batch, 128.0, 600.0, 0.0, 0)
    assert (sh.tokens, sh.n_decode, sh.n_prefill, sh.n_logits) == (3 + 512, 3, 1, 3)
    assert sh.dec_ctx_tokens == 3000 and sh.dec_ctx_w == 3 * 128
    assert sh.pf_pairs == sum(256 + i for i in range(1, 513))
    assert sh.pf_pairs_w == sum(min(256 + i, 128) for i in range(1, 513))
    assert sh.pf_ctx_tokens == 768 and sh.pf_ctx_w == 128 + 512
    # the top-k cap: the same sums at its own cap
    assert sh.dec_ctx_k == 3 * 600 and sh.pf_ctx_k == min(768, 600 + 512)
    assert sh.pf_pairs_k == sum(min(256 + i, 600) for i in range(1, 513))
    unwindowed = K.aggregate(batch, 0.0, 0.0, 0.0, 0)
    assert (unwindowed.dec_ctx_w, unwindowed.pf_pairs_w) == (unwindowed.dec_ctx_tokens, unwindowed.pf_pairs)
    assert (unwindowed.dec_ctx_k, unwindowed.pf_pairs_k) == (unwindowed.dec_ctx_tokens, unwindowed.pf_pairs)


@pytest.mark.parametrize("name", list_models())
def test_one_request_simulation_equals_the_analytic_steps(name):
    """One request alone: after the serial front end, the simulator's prefill steps and its decode step cost
    exactly what StepCost.prefill_time_s / decode_time_s say (windowed and hybrid models included)."""
    model, plan = _plan(name)
    cluster = make_cluster(B200, plan.num_gpus)
    eng = EngineConfig(max_model_len=32768, gpu_memory_utilization=0.9)
    trace = Trace(np.zeros(1), np.array([PROMPT], np.int64), np.array([2], np.int64))
    res = simulate(model, cluster, plan, eng, Workload(trace))
    assert res.feasible, res.reason
    sc, e = res.step_cost, res.engine
    first = float(res.times.first_token_s[0]) - e.profile.host.serial_frontend_s(PROMPT)   # the front end first
    assert first == pytest.approx(sc.prefill_time_s(PROMPT, e.max_batched_tokens if e.chunked_prefill else None),
                                  rel=1e-12)
    decode = float(res.times.finish_s[0]) - float(res.times.first_token_s[0])
    assert decode == pytest.approx(sc.decode_time_s(1, PROMPT + 1), rel=1e-9)


def test_every_mixer_kind_is_registered():
    assert set(MIXERS) == set(S.MIXERS)


def _all_models() -> list:
    fixtures = sorted((Path(__file__).resolve().parent / "fixtures" / "configs").glob("*.json"))
    return [load_model(n) for n in list_models()] + [load_model(str(p)) for p in fixtures]


def test_latent_attention_is_the_mixer_of_every_mla_layer():
    """A config with kv_lora_rank (attention "mla") reads as MLA layers, or sparse ones over the latent
    cache, never as full attention; no other model has an MLA layer."""
    seen = 0
    for m in _all_models():
        mixers = {k.mixer for k in m.layers()}
        if m.attention == "mla":
            assert S.FULL not in mixers and mixers & {S.MLA, S.SPARSE}, m.name
            seen += S.MLA in mixers
        else:
            assert S.MLA not in mixers, m.name
    assert seen >= 3          # DeepSeek-V3, Kimi-K2.5, the DeepSeek-V3 fixture at least


def test_latent_attention_rows_are_the_latent_geometry():
    """DeepSeek-V3 at tp 8: one MLA row per layer kind's layers, absorbed-form decode FLOPs per pair
    2 x heads x (2 kv_lora + rope), expanded-form prefill 2 x heads x (nope + rope + v), the latent
    (kv_lora + rope) bf16 bytes per token, run on the MLA kernels."""
    from apex_plan.estimate.mixers import LatentAttention
    from apex_plan.estimate.shard import build_shard
    m = load_model("deepseek-v3")
    sh = build_shard(m, Plan(1, 8, 1))
    assert isinstance(MIXERS[S.MLA], LatentAttention)
    (row,) = MIXERS[S.MLA].rows(sh, 58, 1.0)
    heads = m.num_heads / 8
    assert row["count"] == 58 and row["latent"] == 1 and row["windowed"] == 0
    assert row["flops_per_unit"] == 2.0 * heads * (2 * 512 + 64)
    assert row["pf_flops_per_unit"] == 2.0 * heads * (128 + 64 + 128)
    assert row["bytes_per_unit"] == MIXERS[S.MLA].kv_bytes_per_token(sh) == (512 + 64) * 2
