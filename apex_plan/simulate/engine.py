"""Engine settings as the chosen engine profile resolves them (cf. vLLM's vllm/config)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from apex_plan.engine.load import resolve_engine_profile
from apex_plan.engine.spec import EngineProfile
from apex_plan.errors import InputError
from apex_plan.model.spec import ModelSpec
from apex_plan.plan.spec import EngineConfig


# routing of arrivals across replicas: round robin; fewest unfinished requests; session affinity (a
# session's turns go where its first went: llm-d's session-affinity scorer); longest cached prefix
# (SGLang router cache_aware policy: the replica holding the longest prefix when it covers at least
# half the prompt, else the least loaded one)
ROUTINGS = ("round_robin", "least_loaded", "session", "prefix")


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
    notes: tuple[str, ...] = ()           # settings fitted to the plan's memory (max_model_len lowered, fraction raised)
    prefix_caching: bool = False
    speculative: Any = None          # engine.speculative.Speculative or None
    batch_wait_iters: int = 0        # TRT-LLM batch waiting (simulate.scheduler._batch_wait_holds); 0 and 0.0: off
    batch_wait_tokens_ratio: float = 0.0
    recv_interval: int = 1           # SGLang receive interval (simulate.scheduler._receive); 1: every step
    recv_interval_asked: bool = False  # given by the user (--scheduler-recv-interval), not the profile's default

    @property
    def watermark_fraction(self) -> float:
        return self.profile.scheduler.watermark_fraction

    def as_dict(self) -> dict:
        d = {k: v for k, v in self.__dict__.items() if k not in ("profile", "speculative")}
        d["notes"] = list(self.notes)
        d["engine_profile"] = self.profile.label
        d["speculative"] = self.speculative.as_dict() if self.speculative is not None else None
        return d


def engine_profile(cfg: EngineConfig) -> EngineProfile:
    """The profile `cfg` names (resolved once; a profile object passes through)."""
    return cfg.profile if cfg.profile is not None else resolve_engine_profile(cfg.name)


def resolve_engine(cfg: EngineConfig, model: ModelSpec) -> ResolvedEngine:
    """Fill the profile's defaults: chunking rule, token budget, batch cap, block size, memory fraction."""
    prof = engine_profile(cfg).for_model(model.name)   # the error bands of this model (a new one's: wider)
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
    # vLLM refuses an unchunked budget below max_model_len; TRT-LLM runs it (longer prompts are refused)
    if not chunked and budget < max_len and cfg.max_batched_tokens and sch.unchunked_budget_covers_max_len:
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
    if cfg.routing not in ROUTINGS:
        raise InputError("--routing", None, f"unknown routing '{cfg.routing}'", "use " + ", ".join(ROUTINGS))
    scales = cfg.activation_scales or prof.quantization.activation_scales
    if scales not in ("dynamic", "static"):
        raise InputError("--activation-scales", None, f"unknown value '{scales}'", "use dynamic or static")
    from apex_plan.engine.speculative import check_supported
    check_supported(cfg.speculative, prof, model)
    caching = prof.features.prefix_caching if cfg.prefix_caching is None else bool(cfg.prefix_caching)
    _check_batch_wait(cfg, prof)
    recv = _recv_interval(cfg, prof)
    return ResolvedEngine(int(seqs), int(budget), bool(chunked), int(block), float(util), int(max_len),
                          cfg.custom_allreduce, cfg.routing, prof, scales, prefix_caching=caching,
                          speculative=cfg.speculative, batch_wait_iters=int(cfg.batch_wait_iters),
                          batch_wait_tokens_ratio=float(cfg.batch_wait_tokens_ratio), recv_interval=recv,
                          recv_interval_asked=cfg.recv_interval is not None)


def _recv_interval(cfg: EngineConfig, prof: EngineProfile) -> int:
    """SGLang's --scheduler-recv-interval: the one given (at least 1, an SGLang profile only), else the profile's."""
    if cfg.recv_interval is None:
        return int(prof.scheduler.recv_interval)
    if cfg.recv_interval < 1:
        raise InputError("--scheduler-recv-interval", None, f"{cfg.recv_interval} is below 1",
                         "give 1 (every step, the default) or a step count such as 10")
    if cfg.recv_interval > 1 and prof.family != "sglang":
        raise InputError("--scheduler-recv-interval", None, f"a receive interval is an SGLang setting, not "
                         f"{prof.family}'s", "drop it, or use --engine sglang")
    return int(cfg.recv_interval)


def _check_batch_wait(cfg: EngineConfig, prof: EngineProfile) -> None:
    """TRT-LLM's batch waiting settings: whole steps >= 0, a ratio in [0, 1], and only on a TRT-LLM profile."""
    if cfg.batch_wait_iters < 0:
        raise InputError("--batch-wait-iters", None, f"{cfg.batch_wait_iters} is negative",
                         "give 0 (off) or a step count such as 20")
    if not 0.0 <= cfg.batch_wait_tokens_ratio <= 1.0:
        raise InputError("--batch-wait-ratio", None, f"{cfg.batch_wait_tokens_ratio} is outside [0, 1]",
                         "give a fraction of the token budget such as 0.9")
    if (cfg.batch_wait_iters or cfg.batch_wait_tokens_ratio) and prof.family != "trtllm":
        flag = "--batch-wait-iters" if cfg.batch_wait_iters else "--batch-wait-ratio"
        raise InputError(flag, None, f"batch waiting is a TRT-LLM setting, not {prof.family}'s",
                         "drop it, or use --engine trtllm")
