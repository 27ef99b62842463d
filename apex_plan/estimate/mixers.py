"""Token mixers as registered classes, and the op table the step-cost kernel loops over.

Each mixer kind of `apex_plan.model.spec.MIXERS` is one class in `MIXERS` that says, for the
per-GPU shard of a plan: which GEMM kind its projections are (`gemm_kind`, built in
`estimate.shard.build_shard`), the op rows one of its layers adds to the step (`rows`: attention
over cached context, or a recurrent step with a per-sequence state), the KV bytes a token keeps in
one of its layers (`kv_bytes_per_token`), and the bytes a sequence holds whatever its length
(`seq_bytes`). MLA is an attention geometry (latent projections and cache) that `build_shard`
folds into the full / sparse layers' figures, not a mixer of its own.

Adding a mixer that fits an existing cost shape (OP_ATTENTION, OP_RECURRENT): its class here
(registered with `@register(name)`), its name in `model.spec.MIXERS`, its config reader in
`model/hf.py`, and its geometry in `build_shard`. A new cost shape also needs its branch in
`estimate.kernels._op_time`.
"""

from __future__ import annotations

import numpy as np

from apex_plan.abi import (GEMM_ATTENTION, GEMM_DENSE_MLP, GEMM_LINEAR_ATTN, GEMM_MAMBA, GEMM_MOE_DENSE,
                           GEMM_ROUTED_EXPERTS, OP, OP_ATTENTION, OP_EXPERTS, OP_GEMM, OP_RECURRENT, make_table)
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

    gemm_kind: int | None = None

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


@register(S.FULL)
class FullAttention(Mixer):
    """Causal attention over every cached token (own head geometry when it differs, Gemma 4)."""

    gemm_kind = GEMM_ATTENTION

    def _kv(self, shard) -> float:
        return shard.full_kv_bytes_per_token_layer or shard.kv_bytes_per_token_layer

    def rows(self, shard, count, rereads):
        flops = shard.full_attn_flops_per_pair or shard.attn_flops_per_pair
        # prefill FLOPs per pair: MLA's expanded form where it differs, else the decode form
        pf = flops if shard.full_attn_flops_per_pair else (shard.prefill_flops_per_pair or flops)
        return [_row(shape=OP_ATTENTION, count=count, flops_per_unit=flops, pf_flops_per_unit=pf,
                     bytes_per_unit=self._kv(shard), rereads=rereads, latent=int(shard.latent))]

    def kv_bytes_per_token(self, shard):
        return self._kv(shard)


class WindowedAttention(Mixer):
    """Attention over at most `window` cached tokens per query: its KV is a per-sequence reserve."""

    gemm_kind = GEMM_ATTENTION

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
    """DeepSeek sparse attention: an indexer scores every cached key, attention reads the top-k."""

    gemm_kind = GEMM_ATTENTION

    def rows(self, shard, count, rereads):
        # the top-k attention runs the sparse MLA kernel in the absorbed form over the latent cache
        top_k = _row(shape=OP_ATTENTION, count=count, flops_per_unit=shard.attn_flops_per_pair,
                     pf_flops_per_unit=shard.attn_flops_per_pair, bytes_per_unit=shard.kv_bytes_per_token_layer,
                     rereads=rereads, windowed=1, latent=int(shard.latent))
        indexer = _row(shape=OP_ATTENTION, count=count, flops_per_unit=shard.index_flops_per_pair,
                       pf_flops_per_unit=shard.index_flops_per_pair, bytes_per_unit=shard.index_kv_bytes_per_token,
                       rereads=1.0)
        return [top_k, indexer]

    def kv_bytes_per_token(self, shard):
        return shard.kv_bytes_per_token_layer + shard.index_kv_bytes_per_token


@register(S.LINEAR)
class LinearAttention(Mixer):
    """Gated DeltaNet: a recurrent step per token over a fixed state per sequence."""

    gemm_kind = GEMM_LINEAR_ATTN

    def rows(self, shard, count, rereads):
        return [_row(shape=OP_RECURRENT, count=count, flops_per_unit=shard.linear_flops_per_token,
                     bytes_per_unit=shard.state_bytes_linear)]

    def seq_bytes(self, shard, max_model_len, block_size):
        return shard.state_bytes_linear


@register(S.MAMBA)
class Mamba(Mixer):
    """Mamba-2: a selective scan per token over a fixed state per sequence."""

    gemm_kind = GEMM_MAMBA

    def rows(self, shard, count, rereads):
        return [_row(shape=OP_RECURRENT, count=count, flops_per_unit=shard.mamba_flops_per_token,
                     bytes_per_unit=shard.state_bytes_mamba)]

    def seq_bytes(self, shard, max_model_len, block_size):
        return shard.state_bytes_mamba


def _format_id(fmt: str) -> int:
    """OP.format of a weight format name (a group-size suffix such as int4-g32 names its base)."""
    return FORMAT_IDS.get(fmt, FORMAT_IDS.get(fmt.split("-g")[0], -1))


def gemm_layers(stage) -> dict[int, int]:
    """Layers of `stage` running each GEMM kind."""
    by_kind = {kind: 0 for kind in (GEMM_ATTENTION, GEMM_LINEAR_ATTN, GEMM_MAMBA)}
    for mixer, n in stage.mixer_counts():
        kind = MIXERS[mixer].gemm_kind
        if kind is not None:
            by_kind[kind] += n
    by_kind.update({GEMM_DENSE_MLP: stage.dense_layers, GEMM_ROUTED_EXPERTS: stage.moe_layers,
                    GEMM_MOE_DENSE: stage.moe_layers})
    return by_kind


def op_table(shard, gemm_rates, attention_rates, rereads: float) -> np.ndarray:
    """The OP table of the shard's largest stage: its GEMMs (each at its kind's layer count, with its
    weight format and `gemm_rates(gemm)`: the peak FLOP/s, efficiency, bytes/s and fixed time per call
    of the kernel its own format runs), then each mixer's rows, attention rows at
    `attention_rates(latent)` (`rereads`: decode KV reads per KV head on the engine's backend)."""
    st = shard.largest_stage
    layers = gemm_layers(st)
    rows = [_row(shape=OP_EXPERTS if g.kind == GEMM_ROUTED_EXPERTS else OP_GEMM, count=layers[g.kind],
                 format=_format_id(g.fmt), k=g.k, n=g.n, w_bytes=g.w_bytes, experts=g.experts,
                 route_frac=g.route_frac, active_p=g.active_p, **gemm_rates(g))
            for g in shard.gemms if layers[g.kind] > 0]
    for mixer, n in st.mixer_counts():         # model.spec.MIXERS order: full, sliding, ..., mamba
        for r in MIXERS[mixer].rows(shard, n, rereads):
            latent = r.pop("latent", 0) == 1      # builder-side only: MLA rows run the MLA kernels' fit
            if r["shape"] == OP_ATTENTION:
                r.update(attention_rates(latent))
            rows.append(r)
    return make_table(OP, rows)
