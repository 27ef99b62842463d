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

import numpy as np

from apex_plan.abi import (BATCH, GEMM_ATTENTION, GEMM_DENSE_MLP, GEMM_LINEAR_ATTN, GEMM_MAMBA, GEMM_MOE_DENSE,
                           GEMM_ROUTED_EXPERTS, GRAPH_DECODE_ONLY, GRAPH_PIECEWISE, Breakdown, StepShape)
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
    return StepShape(0, 0, 0, 0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, eager)


@kernel(cache=True, inline="always")
def add_sequence(sh, win, k0, c, decode, samples, count):
    """`sh` with `count` identical sequences added: each computes c tokens after k0 cached ones, as a
    decode (decode=1: its context k0 + c is read) or a prefill chunk; samples=1: a token is sampled.
    Windowed fields cap each sequence's context at `win` tokens (win <= 0: no window)."""
    tokens = sh.tokens + count * c
    n_logits = sh.n_logits + (count if samples else 0)
    if decode:
        seq = k0 + c
        w = seq if (win <= 0.0 or seq < win) else win
        return StepShape(tokens, sh.n_decode + count, sh.n_prefill, n_logits, sh.pf_pairs, sh.pf_pad_pairs,
                         sh.pf_pad_prefix_pairs, sh.pf_q_tiles, sh.dec_ctx_tokens + count * seq, sh.pf_ctx_tokens,
                         sh.pf_pairs_w, sh.dec_ctx_w + count * w, sh.pf_ctx_w, sh.eager)
    pairs = c * (k0 + (c + 1) * 0.5)              # causal query x key pairs of this chunk
    pad = padded_pairs(c, k0)                     # the same over whole query tiles
    ctx = k0 + c                                  # KV tokens the chunk reads (its own included)
    if win > 0.0:
        pairs_w = window_pairs(k0, c, win)
        ctx_w = min(k0 + c, win + c)
    else:
        pairs_w = pairs
        ctx_w = ctx
    return StepShape(tokens, sh.n_decode, sh.n_prefill + count, n_logits, sh.pf_pairs + count * pairs,
                     sh.pf_pad_pairs + count * pad, sh.pf_pad_prefix_pairs + (count * pad if k0 > 0 else 0.0),
                     sh.pf_q_tiles + count * q_tiles(c), sh.dec_ctx_tokens, sh.pf_ctx_tokens + count * ctx,
                     sh.pf_pairs_w + count * pairs_w, sh.dec_ctx_w, sh.pf_ctx_w + count * ctx_w, sh.eager)


@kernel(cache=True)
def aggregate(batch, win, eager):
    """StepShape of a `BATCH` table (rows of identical sequences) on a model windowed at `win` tokens."""
    sh = empty_shape(eager)
    for i in range(batch.shape[0]):
        b = batch[i]
        sh = add_sequence(sh, win, b.cached_tokens, b.new_tokens, b.decode, b.samples, b.count)
    return sh


# ---- step time ------------------------------------------------------------------------------------

@kernel(cache=True, fastmath=False)
def _allreduce_s(p, msg_bytes):
    """All-reduce time of `msg_bytes` over tp GPUs: latency + ring bandwidth term."""
    tp = p.tp
    if tp <= 1.0:
        return 0.0
    # vLLM 0.6.0 takes the custom kernel only for messages strictly below its buffer size
    lat = p.allreduce_latency_s if msg_bytes < p.custom_allreduce_max_bytes else p.allreduce_nccl_latency_s
    # bytes each GPU sends in a ring all-reduce: 2 (tp-1)/tp of the message
    return lat + 2.0 * (tp - 1.0) / tp * msg_bytes / p.link_bytes_per_s


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


@kernel(cache=True, fastmath=False)
def _attn_s(p, sh, flop_pair, pf_flop_pair, kv_b, reread, windowed, klat):
    """Seconds of one layer's attention. Prefill: tile-padded query x key pairs (`pf_flop_pair` FLOPs each)
    at the GPU's attention efficiency x the backend's scale x SM occupancy (query tiles x heads over SMs),
    or the KV read if slower. Decode: the KV read (`reread` times per KV head without GQA sharing) at the
    decode attention's bandwidth, or its FLOPs at its efficiency; `klat` per call.
    windowed: contexts capped at the window; the padded pairs shrink in the windowed pairs' ratio."""
    bw = p.hbm_bytes_per_s * p.hbm_efficiency
    a_peak = p.attn_peak_flops_per_s * p.attn_efficiency      # achievable prefill attention FLOP/s, full occupancy
    pf_pad, pf_pad_prefix = sh.pf_pad_pairs, sh.pf_pad_prefix_pairs
    dec_ctx, pf_ctx = sh.dec_ctx_tokens, sh.pf_ctx_tokens
    if windowed:
        wr = sh.pf_pairs_w / sh.pf_pairs if sh.pf_pairs > 0.0 else 1.0
        pf_pad, pf_pad_prefix = pf_pad * wr, pf_pad_prefix * wr
        dec_ctx, pf_ctx = sh.dec_ctx_w, sh.pf_ctx_w
    t = 0.0
    if sh.n_prefill > 0:
        occ = min(1.0, max(sh.pf_q_tiles, 1.0) * p.attn_heads / p.sms)
        eff = (pf_pad - pf_pad_prefix) / p.attn_scale_fresh + pf_pad_prefix / p.attn_scale_prefix
        t += max(pf_flop_pair * eff / (a_peak * occ), kv_b * pf_ctx / bw) + klat
    if sh.n_decode > 0:
        d_peak = p.attn_peak_flops_per_s * p.decode_attn_efficiency   # achievable decode attention FLOP/s
        d_bw = p.hbm_bytes_per_s * p.decode_kv_efficiency             # achievable KV-read bytes/s
        t += max(flop_pair * dec_ctx / d_peak, kv_b * dec_ctx * reread / d_bw) + klat
    return t


@kernel(cache=True, fastmath=False, inline="always")
def _gemm_sum(p, gemms, kind, m):
    """Seconds, FLOPs and HBM bytes of one layer's GEMMs of `kind` over m tokens (roofline + latency), each
    at its own weight format's kernel fit (row fields flops_per_s, bytes_per_s, latency_s)."""
    act_b = p.act_bytes
    t = f = b = 0.0
    for r in range(gemms.shape[0]):
        g = gemms[r]
        if g.kind != kind:
            continue
        k, n, wb = g.k, g.n, g.w_bytes
        if kind == GEMM_ROUTED_EXPERTS:
            # routed experts: tokens reaching this GPU's experts, and how many experts they touch
            m_e = m * g.route_frac
            active = g.experts * (1.0 - (1.0 - g.active_p) ** m)
            if p.ep > 1.0:
                m_e *= p.moe_imbalance          # the busiest rank sets the pace
            flops = 2.0 * m_e * k * n                           # multiply-adds of the expert GEMMs
            byts = active * k * n * wb + m_e * (k + n) * act_b  # touched experts' weights + activations
        else:
            flops = 2.0 * m * k * n                             # multiply-adds: 2 * M * K * N
            byts = k * n * wb + m * (k + n) * act_b             # weights once + in/out activations
        t += max(flops / g.flops_per_s, byts / g.bytes_per_s) + g.latency_s
        f += flops
        b += byts
    return t, f, b


@kernel(cache=True, fastmath=False, inline="always")
def _mixers(p, sh, m):
    """Seconds, FLOPs and HBM bytes of the token mixers (attention kinds, linear attention, Mamba)
    of one stage: each kind costed once and multiplied by its layer count."""
    bw = p.hbm_bytes_per_s * p.hbm_efficiency                 # achievable HBM bytes/s
    klat = p.kernel_latency_s
    kv_b = p.kv_bytes_per_token
    a_peak = p.attn_peak_flops_per_s * p.attn_efficiency      # achievable attention FLOP/s
    n_seqs = sh.n_prefill + sh.n_decode
    reread = p.decode_kv_rereads
    dec_ctx, pf_ctx, pf_pairs = sh.dec_ctx_tokens, sh.pf_ctx_tokens, sh.pf_pairs
    # full attention: every cached token (own geometry when given); windowed (sliding / chunked /
    # sparse top-k): capped contexts
    full_kv_b = p.full_kv_bytes_per_token if p.full_kv_bytes_per_token > 0.0 else kv_b
    full_flop = p.full_attn_flops_per_pair if p.full_attn_flops_per_pair > 0.0 else p.attn_flops_per_pair
    # prefill FLOPs per pair: the expanded form where it differs (MLA), else the decode form
    pf_flop = p.prefill_attn_flops_per_pair if p.prefill_attn_flops_per_pair > 0.0 else p.attn_flops_per_pair
    full_pf_flop = full_flop if p.full_attn_flops_per_pair > 0.0 else pf_flop
    alat = p.attn_latency_s
    t_attn = _attn_s(p, sh, full_flop, full_pf_flop, full_kv_b, reread, False, alat)
    t_win = 0.0
    if p.windowed_layers + p.sparse_layers > 0.0:
        t_win = _attn_s(p, sh, p.attn_flops_per_pair, pf_flop, kv_b, reread, True, alat)
    attn_flops = full_pf_flop * pf_pairs + full_flop * dec_ctx             # QK^T and PV multiply-adds
    attn_bytes = full_kv_b * (dec_ctx * reread + pf_ctx)                   # KV cache read
    win_flops = pf_flop * sh.pf_pairs_w + p.attn_flops_per_pair * sh.dec_ctx_w
    win_bytes = kv_b * (sh.dec_ctx_w * reread + sh.pf_ctx_w)
    # sparse attention's indexer scores every cached token's key (then attention reads the top-k)
    idx_flops = p.index_flops_per_pair * (pf_pairs + dec_ctx)
    idx_bytes = p.index_kv_bytes_per_token * (dec_ctx + pf_ctx)
    t_idx = 0.0
    if p.sparse_layers > 0.0:
        t_idx = _attn_s(p, sh, p.index_flops_per_pair, p.index_flops_per_pair, p.index_kv_bytes_per_token, 1.0, False,
                        klat)
    # linear attention / Mamba: a recurrent step per token, each sequence's state read and written once
    lin_flops = p.linear_flops_per_token * m
    lin_bytes = 2.0 * p.linear_state_bytes * n_seqs
    mamba_flops = p.mamba_flops_per_token * m
    mamba_bytes = 2.0 * p.mamba_state_bytes * n_seqs
    t_lin = max(lin_flops / a_peak, lin_bytes / bw) + klat if p.linear_layers > 0.0 else 0.0
    t_mamba = max(mamba_flops / a_peak, mamba_bytes / bw) + klat if p.mamba_layers > 0.0 else 0.0

    n_full, n_win, n_sparse, n_lin, n_mamba = (p.full_layers, p.windowed_layers, p.sparse_layers, p.linear_layers,
                                               p.mamba_layers)
    st_attn = n_full * t_attn + n_win * t_win + n_sparse * (t_win + t_idx) + n_lin * t_lin + n_mamba * t_mamba
    st_attn_flops = (n_full * attn_flops + (n_win + n_sparse) * win_flops + n_sparse * idx_flops + n_lin * lin_flops
                     + n_mamba * mamba_flops)
    st_attn_bytes = (n_full * attn_bytes + (n_win + n_sparse) * win_bytes + n_sparse * idx_bytes + n_lin * lin_bytes
                     + n_mamba * mamba_bytes)
    return st_attn, st_attn_flops, st_attn_bytes


@kernel(cache=True, fastmath=False, inline="always")
def step_time(cost, sh):
    """Seconds of one step of shape `sh` (a StepShape) on `cost` (CostTables), and its Breakdown."""
    p = cost.params[0]
    if sh.tokens <= 0:
        return 0.0, Breakdown(0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0)
    peak = p.gemm_peak_flops_per_s * p.gemm_efficiency      # achievable GEMM FLOP/s
    bw = p.hbm_bytes_per_s * p.hbm_efficiency               # achievable HBM bytes/s
    klat = p.kernel_latency_s
    act_b = p.act_bytes
    hidden = p.hidden
    m = float(sh.tokens)

    # --- GEMMs of one layer, summed per kind (the layer counts multiply them below) -----------------
    t_ag, f_ag, b_ag = _gemm_sum(p, cost.gemms, GEMM_ATTENTION, m)
    t_ex, f_ex, b_ex = _gemm_sum(p, cost.gemms, GEMM_ROUTED_EXPERTS, m)
    t_dm, f_dm, b_dm = _gemm_sum(p, cost.gemms, GEMM_DENSE_MLP, m)
    t_md, f_md, b_md = _gemm_sum(p, cost.gemms, GEMM_MOE_DENSE, m)
    t_lg, f_lg, b_lg = _gemm_sum(p, cost.gemms, GEMM_LINEAR_ATTN, m)
    t_mg, f_mg, b_mg = _gemm_sum(p, cost.gemms, GEMM_MAMBA, m)

    # --- token mixers: attention per layer kind, linear attention, Mamba ----------------------------
    st_attn, st_attn_flops, st_attn_bytes = _mixers(p, sh, m)

    # --- elementwise kernels: norms, residual adds, rotary, activation, KV-cache write (bytes) ---
    elem_bytes = p.elem_bytes_per_token * m
    t_elem = elem_bytes / bw + p.elem_kernels_per_layer * klat

    # --- tensor-parallel all-reduces: after attention and after the MLP ---------------------------
    msg = m * hidden * act_b                      # activation bytes reduced per all-reduce
    t_ar = 2.0 * _allreduce_s(p, msg)
    # --- expert-parallel all-to-all: dispatch + combine of top-k token copies; with tensor-parallel
    # attention every rank already holds every token and the MoE output joins the all-reduce -------
    t_a2a = 0.0
    if p.ep > 1.0 and p.moe_all_to_all > 0.0:
        ep = p.ep
        a2a_bytes = m * p.experts_per_token * hidden * act_b * (ep - 1.0) / ep  # token copies leaving a GPU
        t_a2a = 2.0 * (p.a2a_latency_s + p.moe_imbalance * a2a_bytes / p.a2a_bytes_per_s)

    n_dense = p.dense_layers
    n_moe = p.moe_layers
    n_full = p.full_layers
    n_win = p.windowed_layers
    n_sparse = p.sparse_layers
    n_lin = p.linear_layers
    n_mamba = p.mamba_layers
    n_attn = n_full + n_win + n_sparse            # layers running the attention GEMMs
    n_layers = n_dense + n_moe + p.mlp_free_layers
    n_blocks = 2.0 * n_layers - p.mixerless_layers - p.mlp_free_layers   # mixers + MLPs: one all-reduce each
    st_gemm = n_attn * t_ag + n_lin * t_lg + n_mamba * t_mg + n_dense * t_dm + n_moe * (t_ex + t_md)
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
    busy = max(gpu, host_launch)                      # the GPU cannot run ahead of the launches
    # engine CPU time of the step: fixed + per scheduled sequence + per prefill token
    host = p.host_step_s + p.host_per_seq_s * (sh.n_decode + sh.n_prefill) + p.host_per_prefill_token_s * (m - sh.n_decode)
    ov = p.host_overlap
    wall = max(busy, ov * host) + (1.0 - ov) * host   # overlapped host time hides behind the GPU step
    # per GPU of the largest stage: FLOPs and HBM bytes of this step
    flops = (n_attn * f_ag + n_lin * f_lg + n_mamba * f_mg + st_attn_flops + n_dense * f_dm
             + n_moe * (f_ex + f_md) + head_flops)
    byts = (n_attn * b_ag + n_lin * b_lg + n_mamba * b_mg + st_attn_bytes + n_layers * elem_bytes
            + n_dense * b_dm + n_moe * (b_ex + b_md) + head_bytes)
    return wall, Breakdown(pp * st_gemm, pp * st_attn, pp * st_comm + t_p2p, pp * st_elem, t_head + t_embed,
                           wall - gpu, flops, byts, host)


@kernel(cache=True)
def batch_step_time(cost, batch, eager):
    """step_time of a `BATCH` table: the analytic callers' entry point (one dispatch per step)."""
    return step_time(cost, aggregate(batch, cost.params[0].window_tokens, eager))


def make_batch(decodes: int = 0, context: int = 0, chunk: int = 0, cached: int = 0, samples: bool = True) -> np.ndarray:
    """A BATCH of `decodes` decode sequences of `context` tokens each and, when chunk > 0, one
    prefill chunk of `chunk` tokens after `cached` ones (sampling a token when `samples`)."""
    rows = []
    if decodes > 0:
        rows.append((max(context, 1) - 1, 1, 1, 1, decodes))
    if chunk > 0:
        rows.append((cached, chunk, 0, 1 if samples else 0, 1))
    return np.array(rows, dtype=BATCH)
