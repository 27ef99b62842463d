"""Expert load and token movement of MoE layers under expert parallelism and attention DP.

Expert load (`busiest_rank_load`, used by the expert rows of `estimate.kernels`): a step routes T
tokens through a MoE layer, each to top-k of E experts; an expert-parallel rank holds E / ep of them.
The step waits for the busiest rank. Its share of the T x k expert-token copies is the mean times
    imbalance(T) = c + z(ep) x sd1 / (mean1 x sqrt(T)),
where mean1 = k / ep and sd1^2 = k (1/ep)(1 - 1/ep)(E - k)/(E - 1) are the mean and variance of the
copies one token sends to a given rank (a hypergeometric draw of k experts without replacement),
z(ep) is the expected maximum of ep standard normals (Blom's approximation
Phi^-1((ep - 0.375) / (ep + 0.25)); Blom 1958) and c is the skew of expert popularity that remains
with many tokens per step (`popularity_skew`). So few tokens give a large statistical imbalance, and
many tokens tend to the constant c.

The skew grows with ep: the fewer experts a rank holds, the less their popularities average out.
aiconfigurator-core 0.12.0 measures its MoE kernels (systems/data/<gpu>/moe/<engine>/<version>/
moe_perf.parquet) under balanced routing and under the power-law expert popularity it assumes for
DeepSeek-family models (alpha 1.01, sdk/models/deepseek.py). Their latency ratio at >= 4096 tokens,
median over every GPU, engine and shape, is 1.105 / 1.187 / 1.261 / 1.327 / 1.401 at ep 2 / 4 / 8 /
16 / 32 and 1.43-1.45 at ep 64-128: c(ep) = 1 + s log2(min(ep, 32)), s = 0.083 per doubling (least
squares on those medians; 0.079-0.087 leaving any one of the 9 GPUs out; per engine SGLang 0.051,
TRT-LLM 0.108, vLLM 0.080; `scripts/fit_moe_skew.py`). The GPU profile's `moe_imbalance` is c at
ep = 8 (1 + 3 s = 1.25).

The distinct experts the busiest rank reads whole are e_local x (1 - (1 - k/E)^(T x imbalance)); at
ep = 1 that is E (1 - (1 - k/E)^T), the expected number of experts touched by T tokens under uniform
top-k routing.

Kernel (`expert_rates`): the routed-expert rows run at the fit of the fused-MoE kernel the serving engine
itself runs for the experts' weight format on this GPU (the GPU profile's `moe_kernels:` section,
scripts/fit_moe_kernels.py, which names each engine's kernel and its source): its compute and bandwidth
efficiency, its grouped-GEMM row tile and its fixed time per layer (`latency_us` + `latency_per_expert_us` x
experts held), split evenly over the layer's two grouped-GEMM rows (gate/up and down), never below the
calibrated kernel latency. The section holds only the kernels whose measured tables, fixed time included,
match the served runs: the Hopper Triton fused-MoE paths (vLLM fused_moe.py `fused_experts`, SGLang
fused_moe_triton, TRT-LLM `moe_config.backend: TRITON`), whose layer is a chain of separately launched
kernels (align/sort, two grouped GEMMs, activation, reduction; block fp8 adds its activation quantisation),
each paying its own fixed time inside the CUDA graph. H200 TRT-LLM gpt-oss-120b at 4 requests runs
4.8-6.9 ms a token where the calibrated dense kernels give 3.1-4.6 ms; the Triton table's 125 us per layer at
4 tokens (against 60 us by the dense calibration) is the 36-layer difference (scripts/fit_moe_kernels.py
docstring: what is left off and why). An engine x format x GPU without a written kernel keeps the
dense-GEMM calibration (estimate.step_cost.gemm_rates), except for the compute rate where the profile's
`moe_compute_kernels:` section names the engine's kernel: from ~1K tokens a DeepSeek MoE layer's grouped GEMMs
are compute-bound, and Blackwell's block-fp8 kernels run them at 14-15 % of the fp8 peak (B200 SGLang
FlashInfer TRT-LLM-gen 1.20 ms, TRT-LLM DeepGEMM 1.44 ms a layer at 8,192 tokens, tp 8; the dense calibration
0.59 ms), while their bandwidth and fixed-time terms are those the served decode steps already match
(`scripts/check_prefill_ops.py`).

Token movement (`comm_s`), when attention-DP ranks hold different tokens (COST.a2a_kind):
* allgather (TRT-LLM AllGather + ReduceScatter, vLLM
  allgather_reducescatter): every GPU receives every other rank's tokens before the MoE and the
  reduce-scatter sends the output back: (all tokens - own) x hidden x bytes each way.
* dp_buffer (SGLang --enable-dp-attention without DeepEP: srt/layers/dp_attention.py `_dp_gather`,
  `dp_scatter`, DpPaddingMode): the ranks fill one global buffer of hidden states in the activation
  dtype. A step with a prefill in it (SUM_LEN) all-reduces the zeroed sum-of-tokens buffer before
  the MoE and all-reduces the MoE output before each rank copies its rows back: two all-reduces of
  S x hidden x bytes (S: every rank's tokens), each GPU sending 2 (G - 1) / G of it per all-reduce
  (a ring). A decode-only step takes the cheaper mode, as SGLang picks it: MAX_LEN (every rank
  padded to the busiest rank's tokens M, all-gathered and reduce-scattered: (G - 1) / G x adp x M
  rows each way) when 2 S > adp x M, else SUM_LEN.
* alltoall (DeepEP dispatch/combine): a token goes to each rank holding one of its experts:
  one copy per destination rank with the high-throughput ("normal") kernels, one per routed expert
  with the low-latency kernels that decode-only steps use (SGLang --deepep-mode auto).
Of a GPU's peers, those inside its NVLink domain are reached at NVLink bandwidth, the rest over
RDMA; the two run concurrently (DeepEP forwards NVLink and RDMA traffic at once), so a phase takes
latency + max(NVLink bytes / NVLink bandwidth, RDMA bytes / RDMA bandwidth).
Figures for scale (deepseek-ai/DeepEP README, H800 + CX7 400 Gb/s): normal kernels reach 153 GB/s
over NVLink at EP8 and 43-58 GB/s over RDMA at EP16-64; low-latency dispatch of 128 tokens takes
77 us at EP8.
"""

from __future__ import annotations

import math
from statistics import NormalDist

from apex_plan.hardware.formats import engine_moe_compute_fit, engine_moe_fit
from apex_plan.jit import kernel

A2A_NONE, A2A_ALLGATHER, A2A_ALLTOALL, A2A_DP_BUFFER = 0.0, 1.0, 2.0, 3.0   # values of COST.a2a_kind
A2A_KINDS = {"allgather": A2A_ALLGATHER, "alltoall": A2A_ALLTOALL, "dp_buffer": A2A_DP_BUFFER}
FP8_BLOCK_SCALE_BYTES = 4.0 / 128.0   # DeepEP FP8 dispatch: one fp32 scale per 128 hidden elements


MOE_GEMM_ROWS = 2.0      # grouped-GEMM rows of one MoE layer (estimate.gemms: experts_gate_up, experts_down)


def expert_rates(gpu, family: str, g) -> dict | None:
    """OP-row rates of the routed-expert GEMM `g` (estimate.gemms.Gemm) on `gpu` under engine `family`'s own
    fused-MoE kernel (module docstring); None where that kernel was not measured."""
    fit = engine_moe_fit(gpu, family, g.fmt)
    if fit is None:
        return _compute_rates(gpu, family, g)
    # fixed time per grouped-GEMM row: the layer's measured fixed time (its experts held included) over its
    # two grouped GEMMs, at least the calibrated kernel latency (module docstring)
    layer_us = fit.latency_us + fit.latency_per_expert_us * g.experts
    lat_us = max(gpu.calibration.kernel_latency_us, layer_us / MOE_GEMM_ROWS)
    return dict(peak_flops_per_s=gpu.peak_flops(fit.peak_dtype), efficiency=fit.compute_efficiency,
                bytes_per_s=gpu.mem_bw_gbps * 1e9 * fit.bandwidth_efficiency,
                latency_s=lat_us * 1e-6, tile_rows=fit.tile_rows)


def _compute_rates(gpu, family: str, g) -> dict | None:
    """Expert-row rates under a `moe_compute_kernels:` fit (module docstring): the kernel's own achievable FLOP/s
    (what its tables show from ~1K tokens, where the grouped GEMMs are compute-bound), the dense calibration's
    bytes/s and time per call (what the served decode steps, bandwidth-bound, match); None without such a fit."""
    fit = engine_moe_compute_fit(gpu, family, g.fmt)
    if fit is None:
        return None
    c = gpu.calibration
    return dict(peak_flops_per_s=gpu.peak_flops(fit.peak_dtype), efficiency=fit.compute_efficiency,
                bytes_per_s=gpu.mem_bw_gbps * 1e9 * c.bandwidth_efficiency, latency_s=c.kernel_latency_us * 1e-6)


def expected_max_z(n: int) -> float:
    """Expected maximum of n independent standard normals (Blom's approximation; 0 for n <= 1)."""
    if n <= 1:
        return 0.0
    return NormalDist().inv_cdf((n - 0.375) / (n + 0.25))


SKEW_REF_EP = 8          # the ep at which the GPU profile's `moe_imbalance` is stated
SKEW_MAX_EP = 32         # the measured skew stops growing past ep 32 (1.40 at 32, 1.43-1.45 at 64-128)


def popularity_skew(imbalance_at_ref: float, ep: int) -> float:
    """Busiest EP rank's load over the mean with many tokens per step, from the skew at ep = 8:
    1 + (c8 - 1) log2(min(ep, 32)) / log2(8) (see the module docstring); 1 without EP."""
    if ep <= 1:
        return 1.0
    return 1.0 + (imbalance_at_ref - 1.0) * math.log2(min(ep, SKEW_MAX_EP)) / math.log2(SKEW_REF_EP)


def expected_distinct_experts(num_experts: int, top_k: int, tokens: float) -> float:
    """Experts touched by `tokens` tokens each routed uniformly to top_k of num_experts:
    E (1 - (1 - k/E)^T) (each expert is missed by a token with probability 1 - k/E)."""
    return num_experts * (1.0 - (1.0 - top_k / num_experts) ** tokens)


def expected_rank_copies(num_experts: int, top_k: int, ep: int) -> float:
    """Distinct expert-parallel ranks one token's top_k experts land on (E/ep experts per rank):
    ep x (1 - C(E - E/ep, k) / C(E, k)), the chance a rank holds none of the k being that ratio."""
    if ep <= 1:
        return 1.0
    per_rank = num_experts // ep
    miss = 1.0
    for i in range(top_k):           # C(E - E/ep, k) / C(E, k) as a product of k ratios
        miss *= max(num_experts - per_rank - i, 0) / (num_experts - i)
    return ep * (1.0 - miss)


@kernel(cache=True, inline="always")
def busiest_rank_load(p, o, tokens):
    """Busiest expert-parallel rank's expert-token copies over the mean when `tokens` tokens pass
    one MoE layer (see the module docstring); 1 without expert parallelism."""
    ep = p.ep
    if ep <= 1.0 or tokens <= 0.0:
        return 1.0
    k = p.experts_per_token
    e_all = o.experts * ep                              # experts of the layer
    f = 1.0 / ep
    mean1 = k * f                                       # copies one token sends a given rank
    var1 = k * f * (1.0 - f) * (e_all - k) / (e_all - 1.0) if e_all > 1.0 else 0.0
    imb = p.moe_imbalance + p.ep_max_z * math.sqrt(var1 / tokens) / mean1
    cap = min(k, o.experts) * ep / k                    # every token's copies on the one rank
    return min(imb, cap)


@kernel(cache=True, fastmath=False)
def _phase_s(p, msg_bytes):
    """One dispatch or combine phase moving `msg_bytes` out of (or into) one GPU, spread evenly over
    its peers: the NVLink-domain share and the RDMA share run concurrently, after the latency."""
    ranks = p.a2a_ranks
    dom = p.a2a_domain_gpus
    nvl = msg_bytes * (dom - 1.0) / (ranks - 1.0)       # bytes to peers inside the NVLink domain
    rdma = msg_bytes - nvl                              # bytes to peers in other domains
    t = nvl / p.a2a_bytes_per_s
    if rdma > 0.0:
        t = max(t, rdma / p.a2a_rdma_bytes_per_s)
    return p.a2a_latency_s + t


@kernel(cache=True, fastmath=False)
def _dp_buffer_s(p, m_own, m_mean, decode_only):
    """SGLang's DP-attention gather and scatter of one MoE layer (module docstring, dp_buffer): two
    all-reduces of every rank's tokens after a prefill; the cheaper of that and the padded
    all-gather + reduce-scatter (the busiest rank's tokens, here this rank's or the mean) when every
    rank decodes."""
    g = p.a2a_ranks
    adp = g / p.tp                                      # attention-DP ranks
    row = p.hidden * p.act_bytes                        # bytes of one token's hidden state
    total = adp * m_mean                                # S: rows of the sum-of-tokens buffer
    share = (g - 1.0) / g
    # SUM_LEN: two ring all-reduces of S rows, each sending 2 (G - 1) / G of the buffer per GPU
    sum_len = 2.0 * _phase_s(p, 2.0 * share * total * row)
    longest = max(m_own, m_mean)                        # M: the busiest rank's rows
    if decode_only and 2.0 * total > adp * longest:
        # MAX_LEN: all-gather then reduce-scatter of adp x M padded rows, (G - 1) / G of them each way
        return 2.0 * _phase_s(p, share * adp * longest * row)
    return sum_len


@kernel(cache=True, fastmath=False)
def comm_s(p, m_own, m_mean, decode_only, imbalance):
    """Seconds of one MoE layer's token movement on the busiest GPU (dispatch + combine): m_own tokens
    on this attention rank, m_mean the mean over the replica's attention-DP ranks."""
    kind = p.a2a_kind
    ranks = p.a2a_ranks
    if kind == A2A_NONE or ranks <= 1.0:
        return 0.0
    h = p.hidden
    if kind == A2A_ALLGATHER:
        adp = ranks / p.tp                              # attention-DP ranks
        others = max(adp * m_mean - m_own, 0.0)         # token rows gathered from the other ranks
        gather = others * h * p.a2a_dispatch_bytes      # received before the MoE
        scatter = others * h * p.act_bytes              # the output's reduce-scatter back
        return _phase_s(p, gather) + _phase_s(p, scatter)
    if kind == A2A_DP_BUFFER:
        return _dp_buffer_s(p, m_own, m_mean, decode_only)
    # alltoall: copies per token, one per destination rank (normal) or per routed expert (low latency)
    copies = p.experts_per_token if (decode_only and p.a2a_ll_decode > 0.0) else p.a2a_rank_copies
    remote = (ranks - 1.0) / ranks                      # share of the copies leaving this GPU
    load = max(m_own, m_mean * imbalance)               # the busiest sender / receiver
    dispatch = load * copies * remote * h * p.a2a_dispatch_bytes
    combine = load * copies * remote * h * p.act_bytes
    return _phase_s(p, dispatch) + _phase_s(p, combine)
