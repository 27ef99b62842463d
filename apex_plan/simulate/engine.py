"""Engine settings as the chosen engine profile resolves them (cf. vLLM's vllm/config)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from apex_plan.engine.load import resolve_engine_profile
from apex_plan.engine.spec import EngineProfile
from apex_plan.errors import InputError
from apex_plan.estimate.memory import MemoryReport, memory_report
from apex_plan.estimate.shard import Shard
from apex_plan.model.spec import ModelSpec
from apex_plan.plan.spec import EngineConfig, Plan


@dataclass(frozen=True)
class ResolvedEngine:
    """Concrete settings after applying the engine profile's defaults."""

    max_num_seqs: int
    max_batched_tokens: int
    chunked_prefill: bool
    block_size: int
    gpu_memory_utilization: float
    max_model_len: int
    custom_allreduce: bool
    routing: str
    profile: EngineProfile
    activation_scales: str

    @property
    def watermark_fraction(self) -> float:
        return self.profile.scheduler.watermark_fraction

    def as_dict(self) -> dict:
        d = {k: v for k, v in self.__dict__.items() if k != "profile"}
        d["engine_profile"] = self.profile.label
        return d


def engine_profile(cfg: EngineConfig) -> EngineProfile:
    """The profile `cfg` names (resolved once; a profile object passes through)."""
    return cfg.profile if cfg.profile is not None else resolve_engine_profile(cfg.name)


def resolve_engine(cfg: EngineConfig, model: ModelSpec) -> ResolvedEngine:
    """Fill the profile's defaults: chunking rule, token budget, batch cap, block size, memory fraction."""
    prof = engine_profile(cfg)
    sch = prof.scheduler
    max_len = cfg.max_model_len or model.max_context
    if max_len > model.max_context:
        raise InputError("--max-model-len", None, f"{max_len} exceeds the model's max context {model.max_context}",
                         f"use at most {model.max_context}")
    if cfg.chunked_prefill is not None:
        chunked = cfg.chunked_prefill
    else:
        chunked = {"always": True, "never": False}.get(sch.chunked_prefill, max_len > sch.long_context_tokens)
    # budget: the profile's chunked budget, else max(max_model_len, the unchunked minimum)
    if chunked or not sch.unchunked_budget_covers_max_len:
        default_budget = sch.token_budget
    else:
        default_budget = max(max_len, sch.unchunked_min_budget)
    budget = cfg.max_batched_tokens or default_budget
    if not chunked and budget < max_len and cfg.max_batched_tokens:
        raise InputError("--max-batched-tokens", None,
                         f"{budget} is below max_model_len {max_len} without chunked prefill",
                         "raise it, lower --max-model-len, or pass --chunked-prefill")
    util = cfg.gpu_memory_utilization if cfg.gpu_memory_utilization is not None else prof.memory.gpu_memory_utilization
    if not 0 < util <= 1:
        raise InputError("--gpu-memory-utilization", None, f"{util} is outside (0, 1]", "give a fraction such as 0.9")
    seqs = cfg.max_num_seqs if cfg.max_num_seqs is not None else sch.max_num_seqs
    seqs = max(1, seqs - sch.held_slots)           # slots new requests can actually take
    block = cfg.block_size if cfg.block_size is not None else sch.block_size
    if seqs < 1 or block < 1:
        raise InputError("--max-num-seqs", None, "must be at least 1", "give a positive count")
    if cfg.routing not in ("round_robin", "least_loaded"):
        raise InputError("--routing", None, f"unknown routing '{cfg.routing}'", "use round_robin or least_loaded")
    scales = cfg.activation_scales or prof.quantization.activation_scales
    if scales not in ("dynamic", "static"):
        raise InputError("--activation-scales", None, f"unknown value '{scales}'", "use dynamic or static")
    return ResolvedEngine(int(seqs), int(budget), bool(chunked), int(block), float(util), int(max_len),
                          cfg.custom_allreduce, cfg.routing, prof, scales)


def engine_memory(model: ModelSpec, plan: Plan, shard: Shard, cfg: EngineConfig, gpu) -> tuple[ResolvedEngine, MemoryReport]:
    """The engine settings `cfg` resolves to and the memory (KV pool) they leave on `plan`."""
    eng = resolve_engine(cfg, model)
    mem = memory_report(model, gpu, plan, shard, gpu_memory_utilization=eng.gpu_memory_utilization,
                        max_batched_tokens=eng.max_batched_tokens, max_num_seqs=eng.max_num_seqs,
                        block_size=eng.block_size, max_model_len=eng.max_model_len, policy=eng.profile.memory)
    return eng, mem


LEN_STEP = 16   # a lowered max_model_len is a multiple of 16 tokens (one vLLM KV block)


def fit_max_model_len(model: ModelSpec, plan: Plan, shard: Shard, cfg: EngineConfig, gpu, need_len: int
                      ) -> tuple[ResolvedEngine | None, MemoryReport, str]:
    """Engine settings for `plan` with max_model_len fitted to the KV pool: the one rule of `simulate`
    and `search`. Without --max-model-len, a pool that cannot hold the model's context lowers
    max_model_len to what it holds (a multiple of 16), as an operator of vLLM does by hand and SGLang
    and TRT-LLM do themselves, but never below `need_len` (the workload's longest request). A given
    --max-model-len is kept: vLLM then refuses to start, while an engine whose profile says
    `caps_max_model_len` (SGLang, TRT-LLM) cuts it to its pool. Returns (engine or None, memory,
    reason when None)."""
    eng, mem = engine_memory(model, plan, shard, cfg, gpu)
    if mem.feasible or mem.kv_tokens <= 0 or (cfg.max_model_len is not None and not eng.profile.memory.caps_max_model_len):
        return (eng if mem.feasible else None), mem, mem.reason
    length = mem.kv_tokens
    for _ in range(3):                    # the pool shrinks a little with max_model_len (per-sequence state)
        length = (min(length, model.max_context) // LEN_STEP) * LEN_STEP
        if length < need_len:
            break
        eng2, mem2 = engine_memory(model, plan, shard, dataclasses.replace(cfg, max_model_len=length), gpu)
        if mem2.feasible:
            return eng2, mem2, ""
        length = mem2.kv_tokens
    reason = (f"KV cache holds {mem.kv_tokens} tokens per replica, fewer than the longest request "
              f"({need_len} tokens)" if mem.kv_tokens < need_len else mem.reason)
    return None, mem, reason


def lowered_max_model_len(eng: ResolvedEngine | None, cfg: EngineConfig, model: ModelSpec) -> int | None:
    """max_model_len when `fit_max_model_len` lowered it below the asked (or the model's) context, else None."""
    asked = cfg.max_model_len or model.max_context
    return eng.max_model_len if eng is not None and eng.max_model_len < asked else None
