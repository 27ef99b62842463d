"""Memory per GPU: weights, activation workspace, engine reserve, and the KV-cache pool.

Follows vLLM 0.6.0's accounting: after a profiling forward pass of `max_batched_tokens` tokens,
KV pool = total memory * gpu_memory_utilization - (weights + peak activations + non-torch
allocations such as NCCL and cuBLAS workspaces); the pool is cut into blocks of `block_size` tokens.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from apex_plan.engine.spec import MemoryPolicy
from apex_plan.estimate.shard import Shard, Stage
from apex_plan.hardware.spec import GpuSpec
from apex_plan.model.spec import ModelSpec
from apex_plan.plan.spec import Plan
from apex_plan.units import dtype_bytes

GIB = 1024.0 ** 3


@dataclass(frozen=True)
class MemoryReport:
    """Bytes on the fullest GPU of a replica, and the KV-cache capacity of the replica."""

    total_bytes: float              # memory the driver reports
    budget_bytes: float             # total * gpu_memory_utilization
    weights_bytes: float
    activation_bytes: float
    reserve_bytes: float
    kv_pool_bytes: float            # left for the KV cache (may be negative: infeasible)
    kv_bytes_per_token: float       # on the fullest stage's GPU, all its layers
    kv_blocks: int                  # blocks per GPU (whole replica: every stage holds them)
    kv_tokens: int                  # kv_blocks * block_size
    feasible: bool
    reason: str = ""

    def as_dict(self) -> dict:
        return {
            "total_gib": self.total_bytes / GIB,
            "budget_gib": self.budget_bytes / GIB,
            "weights_gib": self.weights_bytes / GIB,
            "activation_gib": self.activation_bytes / GIB,
            "reserve_gib": self.reserve_bytes / GIB,
            "kv_pool_gib": self.kv_pool_bytes / GIB,
            "kv_cache_tokens": self.kv_tokens,
            "kv_cache_blocks": self.kv_blocks,
            "feasible": self.feasible,
            "reason": self.reason,
        }


def stage_weight_bytes(model: ModelSpec, plan: Plan, shard: Shard, stage: Stage) -> float:
    """Weight bytes on one GPU of `stage`: each layer kind's GEMM weights in their format (scales
    included, see `Gemm.w_bytes`); norms, embedding and LM head in the activation dtype (vLLM
    quantises only the linear layers)."""
    ab = dtype_bytes(plan.act_dtype)
    gemm_bytes = sum(stage.gemm_layers(g) * g.weight_bytes for g in shard.gemms)   # each GEMM in the layers running it
    b = gemm_bytes + stage.layers * shard.norm_params_per_layer * ab                 # layers
    table = shard.vocab_per_gpu * model.hidden_size * ab                             # one vocab shard
    if stage.has_embedding:
        b += table
    if stage.has_lm_head and not (model.tie_word_embeddings and stage.has_embedding):
        b += table
    if stage.has_lm_head:
        b += model.hidden_size * ab                                                  # final norm
    return b


def activation_bytes(model: ModelSpec, plan: Plan, shard: Shard, max_batched_tokens: int, max_num_seqs: int) -> float:
    """Peak activation bytes of vLLM's profiling pass: `max_batched_tokens` tokens through one layer
    (hidden states, residual, q/k/v, MLP intermediates) plus fp32 logits and probabilities of the
    sampled rows."""
    ab = dtype_bytes(plan.act_dtype)
    t = max_batched_tokens
    widest = max(g.n for g in shard.gemms)                                  # largest GEMM output per token
    per_token = (4 * model.hidden_size + 2 * widest) * ab                  # live tensors at the peak
    if model.is_moe:
        per_token += model.experts_per_token * 3 * model.expert_intermediate_size / plan.tp * ab  # fused-MoE caches
    logits = min(max_num_seqs, t) * shard.vocab_per_gpu * plan.tp * 4.0 * 2  # gathered fp32 logits + probs
    return t * per_token + logits


def memory_report(model: ModelSpec, gpu: GpuSpec, plan: Plan, shard: Shard, *, gpu_memory_utilization: float,
                  max_batched_tokens: int, max_num_seqs: int, block_size: int, max_model_len: int,
                  policy: MemoryPolicy | None = None) -> MemoryReport:
    """Memory of the fullest GPU of one replica and the KV-cache blocks the engine would allocate.

    `policy` (the engine profile's): profile -> util x total - weights - activations - reserve
    (vLLM); static_fraction -> util x total - weights - reserve (SGLang mem_fraction_static, the
    activations live outside it); free_fraction -> util x (total - weights - activations - reserve)
    (TRT-LLM free_gpu_memory_fraction)."""
    policy = policy or MemoryPolicy(accounting="profile", reserve_gib=0.5)
    total = gpu.memory_bytes
    budget = total * gpu_memory_utilization
    reserve = (policy.reserve_gib + policy.cuda_graph_gib) * GIB
    act = activation_bytes(model, plan, shard, max_batched_tokens, max_num_seqs)
    worst = None
    for st in shard.stages:
        w = stage_weight_bytes(model, plan, shard, st)
        if policy.accounting == "static_fraction":
            pool = budget - w - reserve                                       # bytes left for KV
        elif policy.accounting == "free_fraction":
            pool = gpu_memory_utilization * (total - w - act - reserve)      # bytes left for KV
        else:
            pool = budget - w - act - reserve                                 # bytes left for KV
        kv_tok = shard.kv_bytes_per_token_stage(st)
        # windowed layers' KV, compressed layers' raw windows and compressor states, and linear-attention /
        # Mamba states take a fixed size per sequence: set aside for max_num_seqs sequences; the rest holds
        # the per-token KV (compressed layers: a row's share per token) in blocks
        seq_b = shard.seq_bytes_stage(st, max_model_len, block_size)
        token_pool = pool - seq_b * max_num_seqs
        if kv_tok > 0:
            blocks = int(math.floor(token_pool / (kv_tok * block_size))) if token_pool > 0 else 0
        else:                                           # no layer keeps per-token KV: any length fits
            blocks = max_num_seqs * math.ceil(max_model_len / block_size) if token_pool > 0 else 0
        cand = (blocks, w, pool, kv_tok)
        if worst is None or cand[0] < worst[0] or (cand[0] == worst[0] and w > worst[1]):
            worst = cand
    blocks, w, pool, kv_tok = worst
    tokens = blocks * block_size
    reason = ""
    if w >= total:
        reason = f"weights {w / GIB:.1f} GiB per GPU exceed the GPU's {total / GIB:.1f} GiB"
    elif pool <= 0:
        reason = (f"weights {w / GIB:.1f} GiB + activations {act / GIB:.1f} GiB + reserve {reserve / GIB:.1f} GiB "
                  f"exceed {gpu_memory_utilization:.2f} x {total / GIB:.1f} GiB = {budget / GIB:.1f} GiB per GPU")
    elif tokens < max_model_len:
        reason = (f"KV cache holds {tokens} tokens ({pool / GIB:.1f} GiB) but max_model_len is {max_model_len}: "
                  f"lower --max-model-len or use more GPUs per replica")
    return MemoryReport(total, budget, w, act, reserve, pool, kv_tok, blocks, tokens, not reason, reason)
