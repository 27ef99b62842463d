"""Numba kernel: wall time of one engine step of one model replica.

The step is described by a handful of batch aggregates (tokens, decode sequences, attention work);
the model/plan/GPU are folded into a `tables` array per GEMM and a `scal` vector built once per plan
by `apex_plan.estimate.step_cost.build_step_cost`. Physical meaning of every term:

* GEMM time = max(FLOPs / achievable FLOP/s, bytes / achievable HBM bandwidth) + kernel latency
  (roofline with achievable fractions; Williams et al., CACM 2009). The fixed latency makes the
  achievable fraction depend on the GEMM's shape: a GEMM moving B bytes reaches
  B / (B + latency x bandwidth) of the streaming bandwidth, so the small per-GPU shards of
  high-TP decode (a few MB) fall well short of peak while large ones approach it.
* Prefill attention counts causal-attention FLOPs of each chunk against its cached context;
  decode attention counts the bytes of KV cache read.
* Tensor-parallel all-reduce = latency + ring bandwidth term 2(tp-1)/tp * bytes / link bandwidth.
* Prefill attention runs at the GPU's attention efficiency times the SM occupancy of its query
  tiles (128 query rows x one head per thread block): a 512-token chunk on 8 heads fills 32 of
  132 SMs. The engine's backend scales it (e.g. vLLM 0.6's Triton prefix-prefill kernel for chunks
  with cached context); decode attention reads the KV cache once per KV head, or once per query
  head on backends without GQA sharing (vLLM 0.6 paged attention with an fp8 cache).
* Steps outside a CUDA graph (per the engine profile's graph policy) cannot run faster than the
  host launches their kernels. Host time per step (schedule, prepare, sample) either adds to the
  GPU time or, on engines that overlap it (async scheduling, overlap schedulers), hides behind it:
  step = max(GPU, overlap x host) + (1 - overlap) x host.
"""

from __future__ import annotations

import math

import numpy as np

from apex_plan.abi import (BATCH, GRAPH_DECODE_ONLY, GRAPH_PIECEWISE, OP_ATTENTION, OP_EXPERTS, OP_GEMM, Breakdown,
                           StepShape)
from apex_plan.estimate.moe import busiest_rank_load, comm_s
from apex_plan.jit import kernel

ATTN_Q_TILE = 128        # query rows per attention thread block (FlashAttention-2/3 forward tile)


# ---- aggregation: one truth for the simulator and every analytic caller -------------------------

@kernel(cache=True)
def q_tiles(chunk_tokens):
    """Attention query tiles of one prefill chunk (per head)."""
    return (chunk_tokens + ATTN_Q_TILE - 1) // ATTN_Q_TILE


@kernel(cache=True)
def padded_pairs(chunk_tokens, cached_tokens):
    """Query x key pairs one chunk's attention thread blocks compute: whole 128-row query tiles, each
    row attending to the cached context plus (causally) half the chunk on average."""
    return q_tiles(chunk_tokens) * ATTN_Q_TILE * (cached_tokens + (chunk_tokens + 1) * 0.5)


@kernel(cache=True, inline="always")
def window_pairs(k0, c, win):
    """Query x key pairs of a causal chunk of c tokens after k0 cached ones when each query sees at
    most `win` keys: sum over query positions x = k0+1 .. k0+c of min(x, win)."""
    a = k0 + 1.0
    b = k0 + c + 0.0
    if b <= win:
        return (a + b) * c * 0.5
    if a >= win:
        return c * win
    return (a + win) * (win - a + 1.0) * 0.5 + (b - win) * win


@kernel(cache=True, inline="always")
def empty_shape(eager):
    """The aggregates of a step with no sequence yet (eager: 1 forces host-launched kernels)."""
    return StepShape(0, 0, 0, 0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, eager)


@kernel(cache=True, inline="always")
def _capped(k0, c, cap):
    """(causal pairs, KV tokens a prefill chunk reads, decode context) of c tokens after k0 cached ones when
    each query sees at most `cap` keys (cap <= 0: no cap)."""
    seq = k0 + c
    if cap <= 0.0:
        return c * (k0 + (c + 1) * 0.5), seq + 0.0, seq + 0.0
    return window_pairs(k0, c, cap), min(seq, cap + c) + 0.0, min(seq, cap) + 0.0


@kernel(cache=True, inline="always")
def add_sequence(sh, win, topk, win2, k0, c, decode, samples, count):
    """`sh` with `count` identical sequences added: each computes c tokens after k0 cached ones, as a
    decode (decode=1: its context k0 + c is read) or a prefill chunk; samples: rows sampled per
    sequence (1 for a token; k + 1 for a speculative verification of k drafts, 0 for none).
    Windowed fields cap each sequence's context at `win` tokens, top-k fields at `topk`, second-window
    fields at `win2` (<= 0: no cap)."""
    tokens = sh.tokens + count * c
    n_logits = sh.n_logits + count * samples       # sampled rows: 1 per sequence (k + 1 when verifying k drafts)
    pairs_w, ctx_w, dec_w = _capped(k0, c, win)
    pairs_k, ctx_k, dec_k = _capped(k0, c, topk)
    pairs_v, ctx_v, dec_v = _capped(k0, c, win2)
    if decode:
        seq = k0 + c
        return StepShape(tokens, sh.n_decode + count, sh.n_prefill, n_logits, sh.pf_pairs, sh.pf_pad_pairs,
                         sh.pf_pad_prefix_pairs, sh.pf_q_tiles, sh.dec_ctx_tokens + count * seq, sh.pf_ctx_tokens,
                         sh.pf_pairs_w, sh.dec_ctx_w + count * dec_w, sh.pf_ctx_w,
                         sh.pf_pairs_k, sh.dec_ctx_k + count * dec_k, sh.pf_ctx_k,
                         sh.pf_pairs_v, sh.dec_ctx_v + count * dec_v, sh.pf_ctx_v, sh.eager)
    pairs = c * (k0 + (c + 1) * 0.5)              # causal query x key pairs of this chunk
    pad = padded_pairs(c, k0)                     # the same over whole query tiles
    ctx = k0 + c                                  # KV tokens the chunk reads (its own included)
    return StepShape(tokens, sh.n_decode, sh.n_prefill + count, n_logits, sh.pf_pairs + count * pairs,
                     sh.pf_pad_pairs + count * pad, sh.pf_pad_prefix_pairs + (count * pad if k0 > 0 else 0.0),
                     sh.pf_q_tiles + count * q_tiles(c), sh.dec_ctx_tokens, sh.pf_ctx_tokens + count * ctx,
                     sh.pf_pairs_w + count * pairs_w, sh.dec_ctx_w, sh.pf_ctx_w + count * ctx_w,
                     sh.pf_pairs_k + count * pairs_k, sh.dec_ctx_k, sh.pf_ctx_k + count * ctx_k,
                     sh.pf_pairs_v + count * pairs_v, sh.dec_ctx_v, sh.pf_ctx_v + count * ctx_v, sh.eager)


@kernel(cache=True)
def aggregate(batch, win, topk, win2, eager):
    """StepShape of a `BATCH` table (rows of identical sequences) on a model windowed at `win` tokens
    (and at `win2` in its layers of a second window) whose sparse layers' top-k rows span `topk` tokens."""
    sh = empty_shape(eager)
    for i in range(batch.shape[0]):
        b = batch[i]
        sh = add_sequence(sh, win, topk, win2, b.cached_tokens, b.new_tokens, b.decode, b.samples, b.count)
    return sh


# ---- step time ------------------------------------------------------------------------------------

@kernel(cache=True, fastmath=False)
def _allreduce_s(p, msg_bytes):
    """All-reduce time of `msg_bytes` over tp GPUs: latency + ring bandwidth term."""
    tp = p.tp
    if tp <= 1.0:
        return 0.0
    # bytes each GPU sends in a ring all-reduce: 2 (tp-1)/tp of the message
    ring_s = 2.0 * (tp - 1.0) / tp * msg_bytes / p.link_bytes_per_s
    nccl_s = p.allreduce_nccl_latency_s + ring_s
    # vLLM 0.6.0 takes the custom kernel only for messages strictly below its buffer size
    if msg_bytes >= p.custom_allreduce_max_bytes:
        return nccl_s
    if p.allreduce_one_shot_bytes_per_s <= 0.0:
        return p.allreduce_latency_s + ring_s
    # one-shot: every rank reads the tp-1 peers' whole buffers (vLLM 1-stage, TRT-LLM ONESHOT)
    one_s = p.allreduce_latency_s + (tp - 1.0) * msg_bytes / p.allreduce_one_shot_bytes_per_s
    # two-shot: reduce-scatter + all-gather, 2 (tp-1)/tp of the message, one barrier more (2-stage, TWOSHOT)
    two_s = p.allreduce_latency_s + p.allreduce_two_shot_latency_s + \
        2.0 * (tp - 1.0) / tp * msg_bytes / p.allreduce_two_shot_bytes_per_s
    # the engines pick the faster strategy by size and ranks; never slower than NCCL's ring at that size
    return min(one_s, two_s, nccl_s)


@kernel(cache=True)
def host_launched_kernels(p, sh, layer_kernels):
    """Kernels the host launches one by one this step (0 when a CUDA graph replays it all)."""
    if sh.eager == 1:
        return layer_kernels
    mode = p.graph_mode
    gmax = p.graph_max
    if mode == GRAPH_DECODE_ONLY:
        # decode-only graphs: any prefill, or a batch above the largest capture, runs eager
        return layer_kernels if (sh.n_prefill > 0 or sh.n_decode > gmax) else 0.0
    if sh.tokens > gmax:
        return layer_kernels
    if mode == GRAPH_PIECEWISE and sh.n_prefill > 0:
        # piecewise graphs: only the attention op of each layer is launched by the host
        return (p.dense_layers + p.moe_layers) * p.eager_kernels_mixed
    return 0.0


@kernel(cache=True, inline="always")
def _capped_shape(sh, windowed):
    """(prefill pairs, decode context, prefill KV reads) of a step as a row of `windowed` cap slot sees
    them: 0 uncapped, 1 at the window, 2 at the top-k span, 3 at the second window."""
    if windowed == 1:
        return sh.pf_pairs_w, sh.dec_ctx_w, sh.pf_ctx_w
    if windowed == 2:
        return sh.pf_pairs_k, sh.dec_ctx_k, sh.pf_ctx_k
    if windowed == 3:
        return sh.pf_pairs_v, sh.dec_ctx_v, sh.pf_ctx_v
    return sh.pf_pairs, sh.dec_ctx_tokens, sh.pf_ctx_tokens


@kernel(cache=True, fastmath=False)
def _attn_s(p, sh, o, windowed):
    """Seconds of one layer's attention row `o`. Prefill: tile-padded query x key pairs (o.pf_flops_per_unit
    each) at the row's prefill efficiency x the backend's scale x SM occupancy (query tiles x heads over
    SMs), or the KV read if slower. Decode: the KV read (o.rereads times per KV head without GQA sharing)
    at the row's bytes/s, or its FLOPs at its decode efficiency; o.latency_s per call.
    windowed: 1 contexts capped at the window, 2 at the top-k span, 3 at the second window; the padded
    pairs shrink in the capped pairs' ratio."""
    bw = p.hbm_bytes_per_s * p.hbm_efficiency
    kv_b = o.bytes_per_unit
    a_peak = p.attn_peak_flops_per_s * o.efficiency           # achievable prefill attention FLOP/s, full occupancy
    pf_pad, pf_pad_prefix = sh.pf_pad_pairs, sh.pf_pad_prefix_pairs
    dec_ctx, pf_ctx = sh.dec_ctx_tokens, sh.pf_ctx_tokens
    if windowed > 0:
        capped, dec_ctx, pf_ctx = _capped_shape(sh, windowed)
        wr = capped / sh.pf_pairs if sh.pf_pairs > 0.0 else 1.0
        pf_pad, pf_pad_prefix = pf_pad * wr, pf_pad_prefix * wr
    t = 0.0
    if sh.n_prefill > 0:
        occ = min(1.0, max(sh.pf_q_tiles, 1.0) * p.attn_heads / p.sms)
        eff = (pf_pad - pf_pad_prefix) / p.attn_scale_fresh + pf_pad_prefix / p.attn_scale_prefix
        t += max(o.pf_flops_per_unit * eff / (a_peak * occ), kv_b * pf_ctx / bw) + o.latency_s
    if sh.n_decode > 0:
        d_peak = p.attn_peak_flops_per_s * o.decode_efficiency   # achievable decode attention FLOP/s
        t += max(o.flops_per_unit * dec_ctx / d_peak, kv_b * dec_ctx * o.rereads / o.bytes_per_s) + o.latency_s
    return t


@kernel(cache=True, fastmath=False, inline="always")
def _op_time(p, sh, o, m, moe_m):
    """Seconds, FLOPs and HBM bytes of one layer's op row `o` in a step of shape `sh` (m tokens; moe_m:
    the tokens per attention rank the MoE layers see, the replica's mean in lock-step attention DP)."""
    bw = p.hbm_bytes_per_s * p.hbm_efficiency                 # achievable HBM bytes/s
    klat = p.kernel_latency_s
    act_b = p.act_bytes
    if o.shape == OP_GEMM or o.shape == OP_EXPERTS:
        # each GEMM at its own weight format's kernel: achievable FLOP/s, bytes/s and time per call
        peak = o.peak_flops_per_s * o.efficiency
        k, n, wb = o.k, o.n, o.w_bytes
        if o.shape == OP_EXPERTS:
            # routed experts: expert-token copies reaching this GPU, and how many of its experts they
            # touch: the MoE layer gathers the tokens of every attention-DP rank (route_frac /
            # (experts x active_p) of this rank's, = adp), each picking a given expert with active_p;
            # the busiest expert-parallel rank sets the pace (estimate.moe: imbalance by tokens per step)
            m_e = moe_m * o.route_frac
            gathered = m_e / (o.experts * o.active_p) if o.experts * o.active_p > 0.0 else moe_m
            imb = busiest_rank_load(p, o, gathered)
            m_e *= imb
            active = o.experts * (1.0 - (1.0 - o.active_p) ** (gathered * imb))
            flops = 2.0 * m_e * k * n                           # multiply-adds of the expert GEMMs
            byts = active * k * n * wb + m_e * (k + n) * act_b  # touched experts' weights + activations
            tile = o.tile_rows
            if tile > 0.0 and active > 0.0:
                # the grouped GEMM computes whole row tiles: each touched expert's rows rounded up to tiles
                padded = active * tile * math.ceil(m_e / active / tile)
                return max(2.0 * padded * k * n / peak, byts / o.bytes_per_s) + o.latency_s, flops, byts
        else:
            flops = 2.0 * m * k * n                             # multiply-adds: 2 * M * K * N
            byts = k * n * wb + m * (k + n) * act_b             # weights once + in/out activations
            # tensor-core time over each output tile's K plus its fixed overhead (k_overhead, 0 without a fit)
            busy = 2.0 * m * (k + o.k_overhead) * n
            return max(busy / peak, byts / o.bytes_per_s) + o.latency_s, flops, byts
        return max(flops / peak, byts / o.bytes_per_s) + o.latency_s, flops, byts
    if o.shape == OP_ATTENTION:
        windowed = o.windowed
        pairs, dec_ctx, pf_ctx = _capped_shape(sh, windowed)
        t = _attn_s(p, sh, o, windowed)
        flops = o.pf_flops_per_unit * pairs + o.flops_per_unit * dec_ctx        # QK^T and PV multiply-adds
        byts = o.bytes_per_unit * (dec_ctx * o.rereads + pf_ctx)                # KV cache read
        return t, flops, byts
    # OP_RECURRENT: a recurrent step per token, each sequence's state read and written once
    a_peak = p.attn_peak_flops_per_s * p.attn_efficiency
    flops = o.flops_per_unit * m
    byts = 2.0 * o.bytes_per_unit * (sh.n_prefill + sh.n_decode)
    return max(flops / a_peak, byts / bw) + klat, flops, byts


@kernel(cache=True, fastmath=False, refcounts=False)   # allocates nothing; the caller owns `ops`
def _a2a_imbalance(p, ops, moe_m):
    """Busiest expert-parallel rank's load over the mean in the token exchange, from the expert rows."""
    for r in range(ops.shape[0]):
        o = ops[r]
        if o.shape == OP_EXPERTS and o.experts * o.active_p > 0.0:
            return busiest_rank_load(p, o, moe_m * o.route_frac / (o.experts * o.active_p))
    return 1.0


@kernel(cache=True, fastmath=False, inline="always")
def _ops(p, sh, ops, m, moe_m):
    """GEMM seconds, mixer seconds, FLOPs and HBM bytes of one pipeline stage: every op row of the
    table costed once and multiplied by its layer count."""
    st_gemm = st_attn = flops = byts = 0.0
    for r in range(ops.shape[0]):
        o = ops[r]
        t, f, b = _op_time(p, sh, o, m, moe_m)
        if o.shape == OP_GEMM or o.shape == OP_EXPERTS:
            st_gemm += o.count * t
        else:
            st_attn += o.count * t
        flops += o.count * f
        byts += o.count * b
    return st_gemm, st_attn, flops, byts


@kernel(cache=True, fastmath=False, inline="always")
def step_time(cost, sh):
    """Seconds of one step of shape `sh` (a StepShape) on `cost` (CostTables), and its Breakdown;
    every attention-DP rank of the replica is taken to run a step like this one."""
    return rank_step_time(cost, sh, float(sh.tokens))


@kernel(cache=True, fastmath=False, inline="always")
def rank_step_time(cost, sh, moe_m):
    """`step_time` of one attention-DP rank stepping in lock step with the others of its replica:
    its own batch `sh` through attention and the dense layers, `moe_m` tokens (the mean over the
    replica's ranks) through the experts and the token exchange."""
    p = cost.params[0]
    if sh.tokens <= 0:
        return 0.0, Breakdown(0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0)
    peak = p.attn_peak_flops_per_s * p.gemm_efficiency      # achievable FLOP/s of the LM head (activation dtype)
    bw = p.hbm_bytes_per_s * p.hbm_efficiency               # achievable HBM bytes/s
    klat = p.kernel_latency_s
    act_b = p.act_bytes
    hidden = p.hidden
    m = float(sh.tokens)

    # --- GEMMs and token mixers: the op table's rows times their layer counts -------------------------
    st_gemm, st_attn, op_flops, op_bytes = _ops(p, sh, cost.ops, m, moe_m)

    # --- elementwise kernels: norms, residual adds, rotary, activation, KV-cache write (bytes) ---
    elem_bytes = p.elem_bytes_per_token * m
    t_elem = elem_bytes / bw + p.elem_kernels_per_layer * klat

    # --- tensor-parallel all-reduces: after attention and after the MLP ---------------------------
    msg = m * hidden * act_b                      # activation bytes reduced per all-reduce
    t_ar = 2.0 * _allreduce_s(p, msg)
    # --- MoE token exchange between attention-DP ranks (estimate.moe.comm_s); with tensor-parallel
    # attention every rank already holds every token and the MoE output joins the all-reduce -------
    t_a2a = 0.0
    if p.moe_layers > 0.0 and p.a2a_kind > 0.0:
        t_a2a = comm_s(p, m, moe_m, sh.n_prefill == 0, _a2a_imbalance(p, cost.ops, moe_m))

    n_dense = p.dense_layers
    n_moe = p.moe_layers
    n_layers = n_dense + n_moe + p.mlp_free_layers
    n_blocks = 2.0 * n_layers - p.mixerless_layers - p.mlp_free_layers   # mixers + MLPs: one all-reduce each
    st_elem = n_layers * t_elem
    st_comm = 0.5 * n_blocks * t_ar + n_moe * t_a2a
    st_kernels = n_dense * p.kernels_per_dense_layer + n_moe * p.kernels_per_moe_layer

    # --- LM head for sampled rows, logits gather, and the vocab-parallel embedding ---------------
    t_head = 0.0
    head_flops = 0.0
    head_bytes = 0.0
    n_logits = sh.n_logits
    if n_logits > 0:
        vg = p.vocab_per_gpu
        head_flops = 2.0 * n_logits * hidden * vg                          # logits GEMM
        head_bytes = hidden * vg * p.head_weight_bytes + n_logits * vg * 4.0  # LM-head weight + fp32 logits
        t_head = max(head_flops / peak, head_bytes / bw) + 2.0 * klat
        if p.tp > 1.0:
            t_head += _allreduce_s(p, n_logits * vg * 4.0)  # gather of the logits shards
    t_embed = _allreduce_s(p, msg) + 2.0 * m * hidden * act_b / bw + klat  # gather rows + reduce

    pp = p.pp
    t_p2p = 0.0
    if pp > 1.0:
        t_p2p = (pp - 1.0) * (p.p2p_latency_s + msg / p.p2p_bytes_per_s)  # activations between stages

    # the largest stage sets the pace of every stage: latency of one pass = pp stages of it
    gpu = pp * (st_gemm + st_attn + st_elem + st_comm) + t_head + t_embed + t_p2p
    launched = host_launched_kernels(p, sh, st_kernels)
    host_launch = pp * launched * p.eager_launch_s    # the host enqueues these kernels itself
    if launched >= st_kernels > 0.0:
        host_launch += pp * p.latent_layers * p.eager_latent_layer_s   # an eager step: each latent layer's Python
    busy = max(gpu, host_launch)                      # the GPU cannot run ahead of the launches
    # engine CPU time of the step: fixed + per scheduled sequence + per prefill token
    host = p.host_step_s + p.host_per_seq_s * (sh.n_decode + sh.n_prefill) + p.host_per_prefill_token_s * (m - sh.n_decode)
    ov = p.host_overlap
    wall = max(busy, ov * host) + (1.0 - ov) * host   # overlapped host time hides behind the GPU step
    # per GPU of the largest stage: FLOPs and HBM bytes of this step
    flops = op_flops + head_flops
    byts = op_bytes + n_layers * elem_bytes + head_bytes
    return wall, Breakdown(pp * st_gemm, pp * st_attn, pp * st_comm + t_p2p, pp * st_elem, t_head + t_embed,
                           wall - gpu, flops, byts, host)


@kernel(cache=True)
def batch_step_time(cost, batch, eager):
    """step_time of a `BATCH` table: the analytic callers' entry point (one dispatch per step)."""
    p = cost.params[0]
    return step_time(cost, aggregate(batch, p.window_tokens, p.topk_tokens, p.window2_tokens, eager))


@kernel(cache=True)
def rank_batch_step_time(cost, batch, eager, moe_m):
    """rank_step_time of a `BATCH` table: one attention-DP rank of a lock-step replica whose ranks
    average `moe_m` tokens through the experts."""
    p = cost.params[0]
    return rank_step_time(cost, aggregate(batch, p.window_tokens, p.topk_tokens, p.window2_tokens, eager), moe_m)


def make_batch(decodes: int = 0, context: int = 0, chunk: int = 0, cached: int = 0, samples: bool = True) -> np.ndarray:
    """A BATCH of `decodes` decode sequences of `context` tokens each and, when chunk > 0, one
    prefill chunk of `chunk` tokens after `cached` ones (sampling a token when `samples`)."""
    rows = []
    if decodes > 0:
        rows.append((max(context, 1) - 1, 1, 1, 1, decodes))
    if chunk > 0:
        rows.append((cached, chunk, 0, 1 if samples else 0, 1))
    return np.array(rows, dtype=BATCH)
