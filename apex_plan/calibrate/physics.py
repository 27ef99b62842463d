"""What a measured closed-loop run asks of the GPUs: the prefill arithmetic its throughput implies.

In a closed loop of C requests of `isl` prompt and `osl` output tokens, each request lives
TTFT + (osl - 1) x TPOT, so the loop completes C / lifetime requests per second (Little's law) and
the engine prefills isl x C / lifetime prompt tokens per second. Each prompt token costs
2 x (active matmul parameters) FLOPs in the projections plus the causal attention over the tokens
before it; against the GPUs' dense tensor-core peak in the run's weight format that is a lower bound
on the share of the GPU time prefill alone takes. A run that needs more than ~80 % of the peak for its
prefills (the fitted GEMM tables reach about half of it) cannot have computed every prompt token:
its prompts hit a prefix cache, or ran shorter than declared.

The same count gives the requests decoding (`host_bounds.decoding_requests`) and the tokens the loop
holds in KV, against the pool the engine allocates (`simulate.fit.engine_memory`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from apex_plan.calibrate.host_bounds import decoding_requests
from apex_plan.calibrate.runs import Case
from apex_plan.estimate.shard import build_shard
from apex_plan.hardware.formats import gemm_fit
from apex_plan.model.quant import component_format
from apex_plan.model.params import param_counts
from apex_plan.model.spec import ATTENTION_MIXERS, CHUNKED, MLA, SLIDING, SPARSE, ModelSpec

ATTN_PEAK_DTYPE = "bf16"     # prefill attention runs in bf16 on the tensor cores (FA3 / FlashInfer)


@dataclass(frozen=True)
class RunPhysics:
    """What one measured closed-loop run asks of its GPUs."""

    id: str
    gpus: int
    concurrency: int
    isl: int
    osl: int
    ttft_ms: float
    tpot_ms: float
    requests_per_s: float          # closed-loop throughput C / lifetime
    prefill_tflop_per_req: float   # projections + causal attention of one prompt
    prefill_peak_share: float      # prefill FLOP/s over the GPUs' dense peak (matmuls: format's, attention: bf16)
    prefill_fit_share: float       # the same at the GPU profile's fitted GEMM and prefill-attention efficiencies
    decode_peak_share: float       # the decode tokens' FLOP/s over the same peak
    decoding: float                # requests decoding (Little's law)
    cap: int                       # declared max batch
    kv_tokens_held: float          # tokens the loop keeps in KV: C x (isl + mean generated)
    kv_pool_tokens: int            # tokens the engine's KV pool holds per replica

    @property
    def ttft_steps(self) -> float:
        """The measured TTFT in decode steps (TPOTs)."""
        return self.ttft_ms / self.tpot_ms if self.tpot_ms > 0 else math.inf


def causal_pairs(isl: int, seen: int = 0) -> float:
    """(query, key) pairs of a causal prompt of `isl` tokens, each query seeing at most `seen` keys (0: all)."""
    if seen <= 0 or seen >= isl:
        return isl * (isl + 1) / 2.0                     # query p sees p keys
    return isl * seen - seen * (seen - 1) / 2.0          # the first `seen` queries ramp up, the rest see `seen`


def prompt_flops(model: ModelSpec, isl: int) -> tuple[float, float]:
    """(matmul, attention) FLOPs of prefilling one prompt of `isl` tokens, no cached prefix."""
    pc = param_counts(model)
    # 2 FLOPs per active matmul weight per prompt token; the lm_head only on the last token
    matmul = 2.0 * isl * (pc.active_matmul - pc.lm_head) + 2.0 * pc.lm_head
    attn = 0.0
    for kind, n in model.kind_counts().items():
        if kind.mixer not in ATTENTION_MIXERS:
            continue
        hd, _ = model.attention_dims(kind.mixer, kind.kv_heads)
        qk = model.qk_nope_head_dim + model.qk_rope_head_dim if kind.mixer == MLA else hd
        v = model.v_head_dim if kind.mixer == MLA else hd
        seen = kind.window if kind.mixer in (SLIDING, CHUNKED) else model.index_topk if kind.mixer == SPARSE else 0
        # QK^T and PV: 2 x heads x (qk + v) FLOPs per (query, key) pair over the causal pairs
        attn += n * 2.0 * model.num_heads * (qk + v) * causal_pairs(isl, seen)
    return matmul, attn


def decode_flops(model: ModelSpec, isl: int, osl: int) -> float:
    """FLOPs of the osl - 1 decode tokens of one request (projections, lm_head and attention)."""
    pc = param_counts(model)
    toks = max(osl - 1, 0)
    ctx = isl + osl / 2.0                                  # mean context a decode token attends to
    attn = model.n_attention_layers * 2.0 * model.num_heads * 2 * model.head_dim * ctx
    return toks * (2.0 * pc.active_matmul + attn)          # 2 FLOPs per weight + attention per token


def run_physics(case: Case, cap: int = 0) -> RunPhysics:
    """The physics of one measured case (a silicon row as `calibrate.runs.case_from_row` reads it)."""
    from apex_plan.simulate.fit import fit_engine
    gpu, plan, model = case.cluster.gpu, case.plan, case.model
    tr = case.workload.trace
    isl, osl = int(tr.prompt_tokens[0]), int(tr.output_tokens[0])
    conc = int(case.workload.concurrency)
    life_s = (case.ttft_ms + max(osl - 1, 0) * case.tpot_ms) / 1000.0     # one request's lifetime
    rate = conc / life_s if life_s > 0 else 0.0                          # requests per second (Little)
    mm, attn = prompt_flops(model, isl)
    fit = gemm_fit(gpu, component_format(dict(model.weight_formats), "mlp", plan.weight_dtype, "bf16"), "bf16")
    fmt_peak, attn_peak = gpu.peak_flops(fit.peak_dtype), gpu.peak_flops(ATTN_PEAK_DTYPE)
    gpus = plan.tp * plan.pp * plan.adp * plan.dp
    # seconds of the whole GPU group per prompt at dense peak (matmuls at the format's, attention at bf16) ...
    peak_s = mm / (fmt_peak * gpus) + attn / (attn_peak * gpus)
    # ... and at the efficiencies the profile's kernel fits reach
    attn_eff = gpu.calibration.prefill_attention_for(case.engine.profile.family if case.engine.profile else "")
    fit_s = mm / (fmt_peak * fit.compute_efficiency * gpus) + attn / (attn_peak * attn_eff * gpus)
    dec_s = decode_flops(model, isl, osl) / (fmt_peak * gpus)
    # the KV pool as simulate sizes it
    _, mem, _ = fit_engine(model, plan, build_shard(model, plan), case.engine, gpu, isl + osl, isl)
    dec = decoding_requests(case.ttft_ms, case.tpot_ms, osl, conc, max(plan.adp, 1))
    return RunPhysics(
        id=case.id, gpus=gpus, concurrency=conc, isl=isl, osl=osl, ttft_ms=case.ttft_ms, tpot_ms=case.tpot_ms,
        requests_per_s=rate, prefill_tflop_per_req=(mm + attn) / 1e12, prefill_peak_share=rate * peak_s,
        prefill_fit_share=rate * fit_s,
        decode_peak_share=rate * dec_s, decoding=dec * max(plan.adp, 1), cap=cap,
        kv_tokens_held=conc * (isl + osl / 2.0), kv_pool_tokens=int(mem.kv_tokens) * max(plan.adp, 1))
