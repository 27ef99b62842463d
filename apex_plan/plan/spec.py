"""A parallel execution plan and the serving-engine settings it runs with."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True, order=True)
class Plan:
    """dp replicas, each on tp * adp * pp GPUs. Inside a replica, attention runs on adp data-parallel
    ranks of tp GPUs each (attention-DP, each rank with its own batch and KV cache); a MoE model's
    experts spread over ep of the tp * adp GPUs of a stage (expert TP = tp * adp / ep)."""

    dp: int = 1
    tp: int = 1
    pp: int = 1
    ep: int = 1
    weight_dtype: str = "bf16"
    kv_dtype: str = "bf16"
    act_dtype: str = "bf16"
    adp: int = 1

    @property
    def gpus_per_replica(self) -> int:
        return self.tp * self.adp * self.pp

    @property
    def num_gpus(self) -> int:
        return self.dp * self.gpus_per_replica

    def replica_label(self) -> str:
        """Short name of one replica's layout and dtypes, e.g. 'tp4-pp1 bf16/bf16' (weights/KV)."""
        s = f"tp{self.tp}-pp{self.pp}" + (f"-ep{self.ep}" if self.ep > 1 else "") + (f"-adp{self.adp}" if self.adp > 1 else "")
        return s + f" {self.weight_dtype}/{self.kv_dtype}"

    def label(self) -> str:
        s = f"dp{self.dp}-tp{self.tp}-pp{self.pp}"
        if self.ep > 1:
            s += f"-ep{self.ep}"
        if self.adp > 1:
            s += f"-adp{self.adp}"
        return s + f" w:{self.weight_dtype} kv:{self.kv_dtype}"


def expert_slots(num_experts: int, ep: int) -> int:
    """Routed-expert slots of a MoE layer spread ep-way: the experts themselves when ep divides them, else
    the fewest slots that are a multiple of ep, the extra ones redundant copies (EPLB): vLLM's
    EPLBConfig.num_redundant_experts = -1 computes that count (tests/distributed/test_eplb_*: 256 experts at
    ep 10 take 4), and TRT-LLM's wide-EP configs set moe_load_balancer num_slots 288 for DeepSeek's 256 at
    ep 36, 48 or 72 (examples/wide_ep). Each slot serves its share of its logical expert's tokens."""
    if ep <= 1 or num_experts <= 0 or num_experts % ep == 0:
        return num_experts
    return -(-num_experts // ep) * ep                  # experts rounded up to a multiple of ep


@dataclass(frozen=True)
class EngineConfig:
    """Settings a user gives a serving engine; None takes the engine profile's default
    (see `apex_plan.simulate.engine.resolve_engine` and `engine_profiles/*.yaml`)."""

    max_num_seqs: int | None = None
    max_batched_tokens: int | None = None   # None: the profile's token budget rule
    chunked_prefill: bool | None = None     # None: the profile's rule
    block_size: int | None = None           # KV-cache block, tokens
    gpu_memory_utilization: float | None = None
    max_model_len: int | None = None        # None: the model's max context
    custom_allreduce: bool = True
    routing: str = "round_robin"            # across replicas: round_robin | least_loaded | session | prefix
    name: str = "vllm"                      # --engine NAME[@VERSION]; resolved to a profile
    activation_scales: str | None = None    # fp8/int8 W8A8: dynamic | static (None: the profile's)
    profile: Any = None                     # an EngineProfile already resolved from `name` (optional)
    prefix_caching: bool | None = None      # None: the profile's default (vLLM --[no-]enable-prefix-caching)
    speculative: Any = None                 # an engine.speculative.Speculative, or None (no speculation)
    batch_wait_iters: int = 0               # TRT-LLM batch_wait_timeout_iters (0: off, llm_args.py default)
    batch_wait_tokens_ratio: float = 0.0    # TRT-LLM batch_wait_max_tokens_ratio (0: off, llm_args.py default)
    recv_interval: int | None = None        # SGLang --scheduler-recv-interval (None: the profile's, 1 by default)
