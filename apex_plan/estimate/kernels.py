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
from numba import njit

# ---- indices into the scalar vector `scal` ------------------------------------------------------
S_PEAK_FLOPS = 0          # dense peak FLOP/s of the weight dtype's tensor cores
S_BW = 1                  # HBM bandwidth, bytes/s
S_CE = 2                  # achievable fraction of peak FLOP/s on GEMMs
S_BE = 3                  # achievable fraction of HBM bandwidth
S_AE = 4                  # achievable fraction of peak FLOP/s in prefill attention
S_KLAT = 5                # GPU latency per kernel, s
S_EAGER = 6               # host launch time per kernel without CUDA graphs, s
S_AR_LAT = 7              # all-reduce latency, s (custom or NCCL as configured)
S_AR_LAT_NCCL = 8         # NCCL all-reduce latency, s (messages above the custom all-reduce limit)
S_AR_CUSTOM_MAX = 9       # largest message the custom all-reduce takes, bytes (0: off)
S_LINK_BW = 10            # effective per-GPU link bandwidth in collectives, bytes/s
S_TP = 11                 # tensor-parallel degree
S_PP = 12                 # pipeline stages
S_LAYERS_DENSE = 13       # dense-MLP layers on the largest stage
S_LAYERS_MOE = 14         # MoE layers on the largest stage
S_HIDDEN = 15             # hidden size
S_ACT_B = 16              # bytes per activation element
S_KV_TOK_B = 17           # KV-cache bytes per token per layer on one GPU
S_ATTN_FLOP_TOK = 18      # attention FLOPs per (query token x context token) per layer on one GPU
S_ELEM_B_TOK = 19         # elementwise bytes per token per layer on one GPU (norms, rotary, act, KV write)
S_KERNELS_DENSE = 20      # kernels per dense layer
S_KERNELS_MOE = 21        # kernels per MoE layer
S_VOCAB_GPU = 22          # vocabulary columns of the LM head on one GPU
S_HEAD_W_B = 23           # bytes per LM-head weight element
S_P2P_LAT = 24            # pipeline send/recv latency, s
S_P2P_BW = 25             # pipeline link bandwidth, bytes/s
S_EP = 26                 # expert-parallel degree
S_A2A_LAT = 27            # all-to-all latency, s
S_A2A_BW = 28             # all-to-all bandwidth per GPU, bytes/s
S_MOE_IMB = 29            # busiest expert rank's load over the mean
S_TOPK = 30               # experts per token
S_STEP_OH = 31            # engine CPU time per step, s
S_SEQ_OH = 32             # engine CPU time per scheduled sequence, s
S_PF_TOK_OH = 33          # engine CPU time per prefill token, s
S_ELEM_KERNELS = 34      # elementwise kernels per layer
S_ATTN_PEAK = 35         # dense peak FLOP/s of the attention kernels (activation dtype)
S_OVERLAP = 36           # fraction of host time per step that overlaps GPU work
S_GRAPH_MODE = 37        # 0 decode-only graphs, 1 piecewise (attention eager in mixed steps), 2 full graphs
S_GRAPH_MAX = 38         # largest step captured in a graph (sequences for decode-only, tokens otherwise)
S_EAGER_MIXED = 39       # kernels per layer launched by the host in a piecewise-graphed mixed step
S_DEC_KV_REREAD = 40     # decode KV reads per KV head (1: GQA shared; query heads per KV head otherwise)
S_ATTN_HEADS = 41        # query heads on one GPU (attention thread blocks per 128-row query tile)
S_SMS = 42               # streaming multiprocessors
S_AE_FRESH = 43          # backend scale of attention efficiency for fresh prefill
S_AE_PREFIX = 44         # backend scale for chunks attending to cached context
S_A2A = 45               # 1 when MoE tokens move by all-to-all (attention-DP ranks hold different tokens)
S_N = 46
# layer-kind scalars follow the S_N scalars: scal[S_N + L_*] (built by apex_plan.estimate.shard.layer_scalars)
L_FULL, L_WIN, L_SPARSE, L_LINEAR, L_MAMBA, L_MIXERLESS, L_NO_MLP, L_WINDOW = 0, 1, 2, 3, 4, 5, 6, 7
L_IDX_KV_B, L_IDX_FLOP, L_STATE_LIN_B, L_STATE_MAMBA_B, L_LIN_FLOP_TOK, L_MAMBA_FLOP_TOK = 8, 9, 10, 11, 12, 13
L_FULL_KV_B, L_FULL_FLOP = 14, 15

ATTN_Q_TILE = 128        # query rows per attention thread block (FlashAttention-2/3 forward tile)

# ---- columns of the GEMM table `tables` (one row per GEMM of a layer) ---------------------------
G_K = 0                   # reduction dim (input features) on one GPU
G_N = 1                   # output features on one GPU
G_W_B = 2                 # bytes per weight element
G_MOE = 3                 # kind: 0 every layer, 1 routed experts, 2 dense MLP, 3 MoE-layer dense part
G_EXPERTS = 4             # routed experts held on one GPU (0 for dense GEMMs)
G_ROUTE_FRAC = 5          # expert-token assignments landing on this GPU per input token
G_ACTIVE_P = 6            # probability that one token activates a given expert (topk / experts)
G_NCOL = 7

# ---- breakdown slots ----------------------------------------------------------------------------
B_GEMM = 0
B_ATTN = 1
B_COMM = 2
B_ELEM = 3
B_HEAD = 4
B_HOST = 5                # engine CPU time per step and launch-bound excess
B_FLOPS = 6               # FLOPs on one GPU (all layers of its stage)
B_BYTES = 7               # HBM bytes on one GPU
B_SCHED = 8               # engine scheduler host time (one thread per replica, shared by its virtual engines)
B_SCRATCH = 9             # 3 x 6 scratch slots (time, FLOPs, bytes per GEMM kind): no allocation per step
B_N = B_SCRATCH + 18


@njit(cache=True, fastmath=False)
def _allreduce_s(scal, msg_bytes):
    """All-reduce time of `msg_bytes` over tp GPUs: latency + ring bandwidth term."""
    tp = scal[S_TP]
    if tp <= 1.0:
        return 0.0
    # vLLM 0.6.0 takes the custom kernel only for messages strictly below its buffer size
    lat = scal[S_AR_LAT] if msg_bytes < scal[S_AR_CUSTOM_MAX] else scal[S_AR_LAT_NCCL]
    # bytes each GPU sends in a ring all-reduce: 2 (tp-1)/tp of the message
    return lat + 2.0 * (tp - 1.0) / tp * msg_bytes / scal[S_LINK_BW]


@njit(cache=True)
def q_tiles(chunk_tokens):
    """Attention query tiles of one prefill chunk (per head)."""
    return (chunk_tokens + ATTN_Q_TILE - 1) // ATTN_Q_TILE


@njit(cache=True)
def padded_pairs(chunk_tokens, cached_tokens):
    """Query x key pairs one chunk's attention thread blocks compute: whole 128-row query tiles, each
    row attending to the cached context plus (causally) half the chunk on average."""
    return q_tiles(chunk_tokens) * ATTN_Q_TILE * (cached_tokens + (chunk_tokens + 1) * 0.5)


@njit(cache=True)
def host_launched_kernels(scal, tokens, n_decode, n_prefill, layer_kernels, eager):
    """Kernels the host launches one by one this step (0 when a CUDA graph replays it all)."""
    if eager == 1:
        return layer_kernels
    mode = scal[S_GRAPH_MODE]
    gmax = scal[S_GRAPH_MAX]
    if mode == 0.0:
        # decode-only graphs: any prefill, or a batch above the largest capture, runs eager
        return layer_kernels if (n_prefill > 0 or n_decode > gmax) else 0.0
    if tokens > gmax:
        return layer_kernels
    if mode == 1.0 and n_prefill > 0:
        # piecewise graphs: only the attention op of each layer is launched by the host
        return (scal[S_LAYERS_DENSE] + scal[S_LAYERS_MOE]) * scal[S_EAGER_MIXED]
    return 0.0


@njit(cache=True, fastmath=False)
def _attn_s(scal, flop_pair, kv_b, pf_pad, pf_pad_prefix, pf_tiles, dec_ctx, pf_ctx, n_prefill, n_decode, bw, klat,
            reread):
    """Seconds of one layer's attention. Prefill: tile-padded query x key pairs at the GPU's attention
    efficiency x the backend's scale x SM occupancy (query tiles x heads over SMs), or the KV read if
    slower. Decode: the KV read (`reread` times per KV head without GQA sharing), or its FLOPs."""
    a_peak = scal[S_ATTN_PEAK] * scal[S_AE]      # achievable attention FLOP/s at full occupancy
    t = 0.0
    if n_prefill > 0:
        occ = min(1.0, max(pf_tiles, 1.0) * scal[S_ATTN_HEADS] / scal[S_SMS])
        eff = (pf_pad - pf_pad_prefix) / scal[S_AE_FRESH] + pf_pad_prefix / scal[S_AE_PREFIX]
        t += max(flop_pair * eff / (a_peak * occ), kv_b * pf_ctx / bw) + klat
    if n_decode > 0:
        t += max(flop_pair * dec_ctx / a_peak, kv_b * dec_ctx * reread / bw) + klat
    return t


@njit(cache=True, fastmath=False, inline="always")
def step_time(tables, scal, tokens, n_decode, n_prefill, pf_attn_work, dec_ctx_tokens, pf_ctx_tokens,
              n_logits, eager, out, pf_pad_work, pf_pad_prefix, pf_q_tiles, pf_attn_work_w=-1.0, dec_ctx_w=-1.0,
              pf_ctx_w=-1.0):
    """Seconds of one step; fills `out` (length B_N) with the breakdown, FLOPs and bytes.

    tokens: query tokens in the step (prefill chunk tokens + one per decode sequence).
    n_decode / n_prefill: decode sequences and prefill chunks in the step; pf_attn_work: sum over
    prefill chunks of c * (k + (c + 1) / 2) (query x key pairs of causal attention for a chunk of c
    tokens after k cached ones); dec_ctx_tokens: sum of decode context lengths (KV tokens read);
    pf_ctx_tokens: KV tokens read by prefill chunks; n_logits: sequences sampled this step;
    eager: 1 forces every kernel to be launched by the host, 0 follows the engine's graph policy;
    pf_pad_work: query x key pairs with each chunk's queries padded to whole 128-row tiles (what the
    kernel's thread blocks compute, see `padded_pairs`); pf_pad_prefix: the part of it from chunks
    with cached context; pf_q_tiles: sum over chunks of their query tiles. pf_attn_work_w /
    dec_ctx_w / pf_ctx_w: the same aggregates with each sequence's context capped at the model's
    window (sliding window, chunk or sparse top-k; scal[S_N + L_WINDOW]); negative: not given, the
    uncapped figures are used.
    """
    for i in range(out.shape[0]):
        out[i] = 0.0
    if tokens <= 0:
        return 0.0
    peak = scal[S_PEAK_FLOPS] * scal[S_CE]       # achievable GEMM FLOP/s
    bw = scal[S_BW] * scal[S_BE]                 # achievable HBM bytes/s
    klat = scal[S_KLAT]
    act_b = scal[S_ACT_B]
    hidden = scal[S_HIDDEN]
    m = float(tokens)

    # --- GEMMs, summed per kind: 0 attention layers, 1 routed experts, 2 dense MLP, 3 MoE-layer dense part,
    #     4 linear-attention layers, 5 Mamba layers
    t_kind = out[B_SCRATCH:B_SCRATCH + 6]          # views into the caller's buffer (zeroed above)
    f_kind = out[B_SCRATCH + 6:B_SCRATCH + 12]
    b_kind = out[B_SCRATCH + 12:B_SCRATCH + 18]
    for r in range(tables.shape[0]):
        k = tables[r, G_K]
        n = tables[r, G_N]
        wb = tables[r, G_W_B]
        kind = int(tables[r, G_MOE])
        if kind == 1:
            # routed experts: tokens reaching this GPU's experts, and how many experts they touch
            m_e = m * tables[r, G_ROUTE_FRAC]
            active = tables[r, G_EXPERTS] * (1.0 - (1.0 - tables[r, G_ACTIVE_P]) ** m)
            if scal[S_EP] > 1.0:
                m_e *= scal[S_MOE_IMB]          # the busiest rank sets the pace
            flops = 2.0 * m_e * k * n                           # multiply-adds of the expert GEMMs
            byts = active * k * n * wb + m_e * (k + n) * act_b  # touched experts' weights + activations
        else:
            flops = 2.0 * m * k * n                             # multiply-adds: 2 * M * K * N
            byts = k * n * wb + m * (k + n) * act_b             # weights once + in/out activations
        t_kind[kind] += max(flops / peak, byts / bw) + klat
        f_kind[kind] += flops
        b_kind[kind] += byts

    # --- attention, per layer kind ----------------------------------------------------------------
    L0 = S_N
    if pf_attn_work_w < 0.0:
        pf_attn_work_w = pf_attn_work
    if dec_ctx_w < 0.0:
        dec_ctx_w = dec_ctx_tokens
    if pf_ctx_w < 0.0:
        pf_ctx_w = pf_ctx_tokens
    kv_b = scal[S_KV_TOK_B]
    a_peak = scal[S_ATTN_PEAK] * scal[S_AE]      # achievable attention FLOP/s
    n_prefill_dec = n_prefill + n_decode
    reread = scal[S_DEC_KV_REREAD]
    # windowed layers see the capped contexts; their padded prefill pairs shrink in the same ratio
    wr = pf_attn_work_w / pf_attn_work if pf_attn_work > 0.0 else 1.0
    # full attention: every cached token (own geometry when given); windowed (sliding / chunked /
    # sparse top-k): capped contexts
    full_kv_b = scal[L0 + L_FULL_KV_B] if scal[L0 + L_FULL_KV_B] > 0.0 else kv_b
    full_flop = scal[L0 + L_FULL_FLOP] if scal[L0 + L_FULL_FLOP] > 0.0 else scal[S_ATTN_FLOP_TOK]
    t_attn = _attn_s(scal, full_flop, full_kv_b, pf_pad_work, pf_pad_prefix, pf_q_tiles, dec_ctx_tokens,
                     pf_ctx_tokens, n_prefill, n_decode, bw, klat, reread)
    t_win = 0.0
    if scal[L0 + L_WIN] + scal[L0 + L_SPARSE] > 0.0:
        t_win = _attn_s(scal, scal[S_ATTN_FLOP_TOK], kv_b, pf_pad_work * wr, pf_pad_prefix * wr, pf_q_tiles, dec_ctx_w,
                        pf_ctx_w, n_prefill, n_decode, bw, klat, reread)
    attn_flops = full_flop * (pf_attn_work + dec_ctx_tokens)                         # QK^T and PV multiply-adds
    attn_bytes = full_kv_b * (dec_ctx_tokens * reread + pf_ctx_tokens)               # KV cache read
    win_flops = scal[S_ATTN_FLOP_TOK] * (pf_attn_work_w + dec_ctx_w)
    win_bytes = kv_b * (dec_ctx_w * reread + pf_ctx_w)
    # sparse attention's indexer scores every cached token's key (then attention reads the top-k)
    idx_flops = scal[L0 + L_IDX_FLOP] * (pf_attn_work + dec_ctx_tokens)
    idx_bytes = scal[L0 + L_IDX_KV_B] * (dec_ctx_tokens + pf_ctx_tokens)
    t_idx = 0.0
    if scal[L0 + L_SPARSE] > 0.0:
        t_idx = _attn_s(scal, scal[L0 + L_IDX_FLOP], scal[L0 + L_IDX_KV_B], pf_pad_work, pf_pad_prefix, pf_q_tiles,
                        dec_ctx_tokens, pf_ctx_tokens, n_prefill, n_decode, bw, klat, 1.0)
    # linear attention / Mamba: a recurrent step per token, each sequence's state read and written once
    lin_flops = scal[L0 + L_LIN_FLOP_TOK] * m
    lin_bytes = 2.0 * scal[L0 + L_STATE_LIN_B] * n_prefill_dec
    mamba_flops = scal[L0 + L_MAMBA_FLOP_TOK] * m
    mamba_bytes = 2.0 * scal[L0 + L_STATE_MAMBA_B] * n_prefill_dec
    t_lin = max(lin_flops / a_peak, lin_bytes / bw) + klat if scal[L0 + L_LINEAR] > 0.0 else 0.0
    t_mamba = max(mamba_flops / a_peak, mamba_bytes / bw) + klat if scal[L0 + L_MAMBA] > 0.0 else 0.0

    # --- elementwise kernels: norms, residual adds, rotary, activation, KV-cache write (bytes) ---
    elem_bytes = scal[S_ELEM_B_TOK] * m
    t_elem = elem_bytes / bw + scal[S_ELEM_KERNELS] * klat

    # --- tensor-parallel all-reduces: after attention and after the MLP ---------------------------
    msg = m * hidden * act_b                      # activation bytes reduced per all-reduce
    t_ar = 2.0 * _allreduce_s(scal, msg)
    # --- expert-parallel all-to-all: dispatch + combine of top-k token copies; with tensor-parallel
    # attention every rank already holds every token and the MoE output joins the all-reduce -------
    t_a2a = 0.0
    if scal[S_EP] > 1.0 and scal[S_A2A] > 0.0:
        ep = scal[S_EP]
        a2a_bytes = m * scal[S_TOPK] * hidden * act_b * (ep - 1.0) / ep  # token copies leaving a GPU
        t_a2a = 2.0 * (scal[S_A2A_LAT] + scal[S_MOE_IMB] * a2a_bytes / scal[S_A2A_BW])

    n_dense = scal[S_LAYERS_DENSE]
    n_moe = scal[S_LAYERS_MOE]
    n_full = scal[L0 + L_FULL]
    n_win = scal[L0 + L_WIN]
    n_sparse = scal[L0 + L_SPARSE]
    n_lin = scal[L0 + L_LINEAR]
    n_mamba = scal[L0 + L_MAMBA]
    n_attn = n_full + n_win + n_sparse            # layers running the attention GEMMs
    n_layers = n_dense + n_moe + scal[L0 + L_NO_MLP]
    n_blocks = 2.0 * n_layers - scal[L0 + L_MIXERLESS] - scal[L0 + L_NO_MLP]   # mixers + MLPs: one all-reduce each
    st_gemm = (n_attn * t_kind[0] + n_lin * t_kind[4] + n_mamba * t_kind[5] + n_dense * t_kind[2]
               + n_moe * (t_kind[1] + t_kind[3]))
    st_attn = n_full * t_attn + n_win * t_win + n_sparse * (t_win + t_idx) + n_lin * t_lin + n_mamba * t_mamba
    st_elem = n_layers * t_elem
    st_comm = 0.5 * n_blocks * t_ar + n_moe * t_a2a
    st_kernels = n_dense * scal[S_KERNELS_DENSE] + n_moe * scal[S_KERNELS_MOE]
    st_attn_flops = (n_full * attn_flops + (n_win + n_sparse) * win_flops + n_sparse * idx_flops + n_lin * lin_flops
                     + n_mamba * mamba_flops)
    st_attn_bytes = (n_full * attn_bytes + (n_win + n_sparse) * win_bytes + n_sparse * idx_bytes + n_lin * lin_bytes
                     + n_mamba * mamba_bytes)

    # --- LM head for sampled rows, logits gather, and the vocab-parallel embedding ---------------
    t_head = 0.0
    head_flops = 0.0
    head_bytes = 0.0
    if n_logits > 0:
        vg = scal[S_VOCAB_GPU]
        head_flops = 2.0 * n_logits * hidden * vg                          # logits GEMM
        head_bytes = hidden * vg * scal[S_HEAD_W_B] + n_logits * vg * 4.0  # LM-head weight + fp32 logits
        t_head = max(head_flops / peak, head_bytes / bw) + 2.0 * klat
        if scal[S_TP] > 1.0:
            t_head += _allreduce_s(scal, n_logits * vg * 4.0)  # gather of the logits shards
    t_embed = _allreduce_s(scal, msg) + 2.0 * m * hidden * act_b / bw + klat  # gather rows + reduce

    pp = scal[S_PP]
    t_p2p = 0.0
    if pp > 1.0:
        t_p2p = (pp - 1.0) * (scal[S_P2P_LAT] + msg / scal[S_P2P_BW])  # activations between stages

    # the largest stage sets the pace of every stage: latency of one pass = pp stages of it
    gpu = pp * (st_gemm + st_attn + st_elem + st_comm) + t_head + t_embed + t_p2p
    launched = host_launched_kernels(scal, tokens, n_decode, n_prefill, st_kernels, eager)
    host_launch = pp * launched * scal[S_EAGER]    # the host enqueues these kernels itself
    busy = max(gpu, host_launch)                   # the GPU cannot run ahead of the launches
    # engine CPU time of the step: fixed + per scheduled sequence + per prefill token
    host = scal[S_STEP_OH] + scal[S_SEQ_OH] * (n_decode + n_prefill) + scal[S_PF_TOK_OH] * (m - n_decode)
    ov = scal[S_OVERLAP]
    wall = max(busy, ov * host) + (1.0 - ov) * host   # overlapped host time hides behind the GPU step
    out[B_GEMM] = pp * st_gemm
    out[B_ATTN] = pp * st_attn
    out[B_COMM] = pp * st_comm + t_p2p
    out[B_ELEM] = pp * st_elem
    out[B_HEAD] = t_head + t_embed
    out[B_HOST] = wall - gpu
    out[B_SCHED] = host
    # per GPU of the largest stage: FLOPs and HBM bytes of this step
    out[B_FLOPS] = (n_attn * f_kind[0] + n_lin * f_kind[4] + n_mamba * f_kind[5] + st_attn_flops + n_dense * f_kind[2]
                    + n_moe * (f_kind[1] + f_kind[3]) + head_flops)
    out[B_BYTES] = (n_attn * b_kind[0] + n_lin * b_kind[4] + n_mamba * b_kind[5] + st_attn_bytes + n_layers * elem_bytes
                    + n_dense * b_kind[2] + n_moe * (b_kind[1] + b_kind[3]) + head_bytes)
    return wall


def new_breakdown() -> np.ndarray:
    """Scratch array for `step_time`'s breakdown output."""
    return np.zeros(B_N, dtype=np.float64)
