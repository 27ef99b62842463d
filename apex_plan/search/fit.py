"""Engine settings per plan: the label of a settings variant, and fitting max_model_len to the KV cache."""

from __future__ import annotations

import dataclasses

from apex_plan.estimate.memory import MemoryReport, memory_report
from apex_plan.estimate.shard import Shard
from apex_plan.model.spec import ModelSpec
from apex_plan.plan.spec import EngineConfig, Plan
from apex_plan.simulate.engine import ResolvedEngine, resolve_engine


def engine_label(cfg: EngineConfig, base: EngineConfig) -> str:
    parts = []
    if cfg.max_num_seqs != base.max_num_seqs:
        parts.append(f"seqs{cfg.max_num_seqs}")
    if cfg.max_batched_tokens:
        parts.append(f"budget{cfg.max_batched_tokens}")
    if cfg.chunked_prefill is not None:
        parts.append("chunked" if cfg.chunked_prefill else "nochunk")
    return ("+" + ",".join(parts)) if parts else ""


def fit_engine(model: ModelSpec, plan: Plan, shard: Shard, cfg: EngineConfig, gpu, need_len: int
               ) -> tuple[ResolvedEngine | None, MemoryReport, str]:
    """Resolve engine settings for a plan; without --max-model-len, lower it (as a vLLM operator
    would) to what the KV cache holds, but never below the longest request of the workload."""
    def resolve(c: EngineConfig):
        eng = resolve_engine(c, model)
        mem = memory_report(model, gpu, plan, shard, gpu_memory_utilization=eng.gpu_memory_utilization,
                            max_batched_tokens=eng.max_batched_tokens, max_num_seqs=eng.max_num_seqs,
                            block_size=eng.block_size, max_model_len=eng.max_model_len,
                            policy=eng.profile.memory)
        return eng, mem

    eng, mem = resolve(cfg)
    if mem.feasible or cfg.max_model_len is not None or mem.kv_tokens <= 0:
        return (eng if mem.feasible else None), mem, mem.reason
    length = mem.kv_tokens
    for _ in range(3):
        length = (min(length, model.max_context) // 16) * 16
        if length < need_len:
            break
        c2 = dataclasses.replace(cfg, max_model_len=length)
        eng2, mem2 = resolve(c2)
        if mem2.feasible:
            return eng2, mem2, ""
        length = mem2.kv_tokens
    reason = (f"KV cache holds {mem.kv_tokens} tokens per replica, fewer than the longest request "
              f"({need_len} tokens)" if mem.kv_tokens < need_len else mem.reason)
    return None, mem, reason
