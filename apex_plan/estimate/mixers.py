"""Token mixers as registered classes, and the op table the step-cost kernel loops over.

Each mixer kind of `apex_plan.model.spec.MIXERS` is one class in `MIXERS` that says, for the
per-GPU shard of a plan as one layer kind sees it (`Shard.view`: its own KV heads, its compression):
the op rows one of its layers adds to the step (`rows`: attention over cached context, or a
recurrent step with a per-sequence state), the KV bytes a token keeps in
one of its layers (`kv_bytes_per_token`), and the bytes a sequence holds whatever its length
(`seq_bytes`). Multi-head latent attention is its own mixer (`LatentAttention`); DeepSeek sparse
attention over an MLA model's latent cache (DeepSeek-V3.2, GLM-5) runs the same latent kernels
(`Shard.latent`).

Adding a mixer that fits an existing cost shape (OP_ATTENTION, OP_RECURRENT): its class here
(registered with `@register(name)`), its name in `model.spec.MIXERS`, its config reader in
`model/hf.py`, its geometry in `build_shard` and which layers run its projections
(`estimate.gemms.GEMM_LAYERS`). A new cost shape also needs its branch in
`estimate.kernels._op_time`.
"""

from __future__ import annotations

import numpy as np

from apex_plan.abi import GEMM_ROUTED_EXPERTS, OP, OP_ATTENTION, OP_EXPERTS, OP_GEMM, OP_RECURRENT, make_table
from apex_plan.model import spec as S
from apex_plan.model.quant import FORMATS

MIXERS: dict[str, "Mixer"] = {}
FORMAT_IDS = {name: i for i, name in enumerate(FORMATS)}   # OP.format: index of the base format name


def register(name: str):
    """Class decorator: the mixer class for layers whose token mixer is `name`."""
    def wrap(cls):
        MIXERS[name] = cls()
        return cls
    return wrap


def _row(**fields) -> dict:
    """An op row with every field not given zero (format -1: not a GEMM)."""
    row = {name: 0 for name in OP.names}
    row["format"] = -1
    row.update(fields)
    return row


class Mixer:
    """A token mixer without cost of its own (Nemotron-H MLP-only blocks)."""

    def rows(self, shard, count: int, rereads: float) -> list[dict]:
        """Op rows of `count` layers of this mixer (`rereads`: decode KV reads per KV head)."""
        return []

    def kv_bytes_per_token(self, shard) -> float:
        return 0.0

    def seq_bytes(self, shard, max_model_len: int, block_size: int) -> float:
        return 0.0


@register(S.NO_MIXER)
class NoMixer(Mixer):
    pass


@register(S.PROJ)
class LinearReplacement(Mixer):
    """A hidden x hidden linear in place of attention (DeciLM replace_with_linear): its GEMM only."""



def _raw_window(shard, count, rereads) -> list[dict]:
    """A compressed layer's attention over its raw window (DeepSeek-V4: the last `raw_window` tokens
    uncompressed, capped at its window's COST cap), none for an uncompressed one."""
    if not shard.compress:
        return []
    return [_row(shape=OP_ATTENTION, count=count, flops_per_unit=shard.attn_flops_per_pair,
                 bytes_per_unit=shard.kv_bytes_per_token_layer, rereads=rereads, windowed=1)]


def _compressed_seq_bytes(shard, max_model_len, block_size) -> float:
    """A compressed layer's bytes per sequence whatever its length: its raw window's rows (the window plus
    one block, capped at max_model_len) and its compressor's state."""
    if not shard.compress:
        return 0.0
    return min(max_model_len, shard.raw_window + block_size) * shard.kv_bytes_per_token_layer + shard.compressor_state_bytes


@register(S.FULL)
class FullAttention(Mixer):
    """Causal attention over every cached token (own head geometry when it differs, Gemma 4). A compressed
    layer (DeepSeek-V4 HCA) attends to one row per `compress` tokens, all of them, beside its raw window:
    its FLOPs per query x token pair and KV bytes per token are a row's over `compress`."""


    def _kv(self, shard) -> float:
        return shard.full_kv_bytes_per_token_layer or shard.kv_bytes_per_token_layer

    def rows(self, shard, count, rereads):
        c = max(shard.compress, 1)
        flops = shard.full_attn_flops_per_pair or shard.attn_flops_per_pair
        return [_row(shape=OP_ATTENTION, count=count, flops_per_unit=flops / c, bytes_per_unit=self._kv(shard) / c,
                     rereads=rereads)] + _raw_window(shard, count, rereads)

    def kv_bytes_per_token(self, shard):
        return self._kv(shard) / max(shard.compress, 1)

    def seq_bytes(self, shard, max_model_len, block_size):
        return _compressed_seq_bytes(shard, max_model_len, block_size)


@register(S.MLA)
class LatentAttention(Mixer):
    """Multi-head latent attention (DeepSeek-V2/V3, Kimi-K2) over every cached token: each token keeps its
    compressed latent and shared rope key (`model.kv`), the projections are `estimate.gemms._mla`'s.
    Decode runs the absorbed form over the latent cache, prefill the expanded form (its own FLOPs per
    pair), both on the engines' MLA kernels (`attention_rates(latent=True)`)."""

    def rows(self, shard, count, rereads):
        return [_row(shape=OP_ATTENTION, count=count, flops_per_unit=shard.attn_flops_per_pair,
                     pf_flops_per_unit=shard.prefill_flops_per_pair, bytes_per_unit=shard.kv_bytes_per_token_layer,
                     rereads=rereads, latent=1)]

    def kv_bytes_per_token(self, shard):
        return shard.kv_bytes_per_token_layer


class WindowedAttention(Mixer):
    """Attention over at most `window` cached tokens per query: its KV is a per-sequence reserve."""


    def rows(self, shard, count, rereads):
        return [_row(shape=OP_ATTENTION, count=count, flops_per_unit=shard.attn_flops_per_pair,
                     pf_flops_per_unit=shard.attn_flops_per_pair, bytes_per_unit=shard.kv_bytes_per_token_layer,
                     rereads=rereads, windowed=1)]

    def seq_bytes(self, shard, max_model_len, block_size):
        # the window plus one block, capped at max_model_len
        win_tokens = min(max_model_len, shard.window + block_size) if shard.window else 0
        return win_tokens * shard.kv_bytes_per_token_layer


@register(S.SLIDING)
class SlidingWindow(WindowedAttention):
    """The last `window` tokens (gpt-oss, Gemma)."""


@register(S.CHUNKED)
class ChunkedAttention(WindowedAttention):
    """Attention inside fixed chunks of `window` tokens (Llama 4 local layers), costed at the window."""


@register(S.SPARSE)
class SparseAttention(Mixer):
    """DeepSeek sparse attention: an indexer scores every cached key, attention reads the top-k (the
    context they span capped at COST.topk_tokens). A compressed layer (DeepSeek-V4 CSA) caches and scores
    one row per `compress` tokens (top-k rows spanning index_topk x compress tokens), beside its raw window."""


    def rows(self, shard, count, rereads):
        c = max(shard.compress, 1)
        # the top-k attention runs the sparse MLA kernel in the absorbed form over the latent cache
        top_k = _row(shape=OP_ATTENTION, count=count, flops_per_unit=shard.attn_flops_per_pair / c,
                     bytes_per_unit=shard.kv_bytes_per_token_layer / c, rereads=rereads, windowed=2,
                     latent=int(shard.latent))
        indexer = _row(shape=OP_ATTENTION, count=count, flops_per_unit=shard.index_flops_per_pair / c,
                       bytes_per_unit=shard.index_kv_bytes_per_token / c, rereads=1.0)
        return [top_k, indexer] + _raw_window(shard, count, rereads)

    def kv_bytes_per_token(self, shard):
        return (shard.kv_bytes_per_token_layer + shard.index_kv_bytes_per_token) / max(shard.compress, 1)

    def seq_bytes(self, shard, max_model_len, block_size):
        return _compressed_seq_bytes(shard, max_model_len, block_size)


@register(S.LINEAR)
class LinearAttention(Mixer):
    """Gated DeltaNet: a recurrent step per token over a fixed state per sequence."""


    def rows(self, shard, count, rereads):
        return [_row(shape=OP_RECURRENT, count=count, flops_per_unit=shard.linear_flops_per_token,
                     bytes_per_unit=shard.state_bytes_linear)]

    def seq_bytes(self, shard, max_model_len, block_size):
        return shard.state_bytes_linear


@register(S.MAMBA)
class Mamba(Mixer):
    """Mamba-2: a selective scan per token over a fixed state per sequence."""


    def rows(self, shard, count, rereads):
        return [_row(shape=OP_RECURRENT, count=count, flops_per_unit=shard.mamba_flops_per_token,
                     bytes_per_unit=shard.state_bytes_mamba)]

    def seq_bytes(self, shard, max_model_len, block_size):
        return shard.state_bytes_mamba


def _format_id(fmt: str) -> int:
    """OP.format of a weight format name (a group-size suffix such as int4-g32 names its base)."""
    return FORMAT_IDS.get(fmt, FORMAT_IDS.get(fmt.split("-g")[0], -1))


def _merged(rows: list[dict]) -> list[dict]:
    """`rows` with rows that differ only in their layer count merged into one (counts added)."""
    out: dict[tuple, dict] = {}
    for r in rows:
        key = tuple((f, r[f]) for f in OP.names if f != "count")
        if key in out:
            out[key]["count"] += r["count"]
        else:
            out[key] = dict(r)
    return list(out.values())


def op_table(shard, gemm_rates, attention_rates, rereads: float) -> np.ndarray:
    """The OP table of the shard's largest stage: its GEMMs (each at the count of the stage's layers
    that run it, with its weight format and `gemm_rates(gemm)`: the peak FLOP/s, efficiency, bytes/s and
    fixed time per call of the kernel its own format runs), then each mixer's rows per layer kind,
    attention rows at `attention_rates(latent)` (`rereads`: decode KV reads per KV head on the engine's
    attention backend; 1 means shared by a KV head's queries, whatever the kind's KV heads)."""
    st = shard.largest_stage
    rows = [_row(shape=OP_EXPERTS if g.kind == GEMM_ROUTED_EXPERTS else OP_GEMM, count=st.gemm_layers(g),
                 format=_format_id(g.fmt), k=g.k, n=g.n, w_bytes=g.w_bytes, experts=g.experts,
                 route_frac=g.route_frac, active_p=g.active_p, **gemm_rates(g))
            for g in shard.gemms if st.gemm_layers(g) > 0]
    mixer_rows = []
    for kind, n in st.mixer_kinds():         # model.spec.MIXERS order: full, sliding, ..., mamba
        view = shard.view(kind)
        kind_rereads = 1.0 if rereads == 1.0 else max(1.0, view.heads_per_gpu / view.kv_heads_per_gpu)
        for r in MIXERS[kind.mixer].rows(view, n, kind_rereads):
            latent = r.pop("latent", 0) == 1      # builder-side only: MLA rows run the MLA kernels
            if r["windowed"] == 1 and kind.window != shard.window:
                r["windowed"] = 3                 # a layer of the model's second window: its own cap
            if r["shape"] == OP_ATTENTION:
                r.update(attention_rates(latent))
                # prefill FLOPs per pair: the decode form's unless the row names its own (MLA expanded)
                r["pf_flops_per_unit"] = r["pf_flops_per_unit"] or r["flops_per_unit"]
            mixer_rows.append(r)
    return make_table(OP, rows + _merged(mixer_rows))
