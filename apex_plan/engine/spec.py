"""What the estimator and simulator need to know about one serving engine (family + version range).

A profile is read from `engine_profiles/*.yaml` (see `apex_plan.engine.load`); every value there
names its source (engine source file, docs, or the fit that produced it). GPU physics (peaks,
achievable fractions, collective latencies) live in the GPU profile, not here.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field


@dataclass(frozen=True)
class SchedulerPolicy:
    """Iteration-level batching as the engine's scheduler does it."""

    chunked_prefill: str = "always"       # always | never | long_context (on when max_model_len > long_context_tokens)
    long_context_tokens: int = 32768      # threshold of the long_context rule (vLLM 0.6)
    token_budget: int = 8192              # default max_num_batched_tokens when chunking
    unchunked_min_budget: int = 2048      # without chunking: max(max_model_len, this) ...
    unchunked_budget_covers_max_len: bool = True  # ... or, when false, token_budget (longer prompts refused)
    batching_chunked: str = "mixed"       # with chunking: mixed (decodes first, then prefill chunks in the
                                          # budget left) | prefill_first (prefill-only steps take priority)
    batching_unchunked: str = "mixed"     # the same without chunking (whole prompts only)
    max_num_seqs: int = 256               # default running-batch cap
    block_size: int = 16                  # KV-cache block, tokens
    watermark_fraction: float = 0.01      # KV blocks kept free at admission
    reserve_full_sequence: bool = False   # admission reserves KV for prompt + all output (no preemption)
    held_slots: int = 0                   # batch slots the engine keeps from new requests (of max_num_seqs)
    token_budget_large_gpu: int = 0       # token budget on GPUs of at least large_gpu_gib (0: token_budget everywhere)
    large_gpu_gib: float = 0.0
    budget_per_adp_rank: bool = False     # the budget is split over attention-DP ranks (SGLang: chunk // dp_size)
    adp_balance_steps: int = 0            # attention DP: contexts wait for every rank to have one, at most this
                                          # many steps (TRT-LLM attention_dp_config timeout_iters; 0: off)
    budget_fits_prompt: bool = False      # deployments size the budget to hold the longest prompt beside a full
                                          # batch of decodes: max(token_budget, ceil64(max_num_seqs + prompt + 64))
    closed_loop: str = "desync"           # how a benchmark's closed loop of identical requests evolves:
                                          # desync (requests drift apart) | lockstep (waves stay together)
    new_token_ratio: float = 0.0          # SGLang admission: share of each running request's remaining output (at most
                                          # clip_new_tokens) kept free for it when admitting; 0: none (other engines)
    new_token_ratio_min_factor: float = 0.14  # its floor, as a fraction of the start value
    new_token_ratio_decay_steps: int = 600    # decode steps from the start value to the floor
    clip_new_tokens: int = 4096           # an output counts at most this many tokens in the reservation
    retract_decode_steps: int = 20        # after a preemption the ratio restarts at (decoded + this x running) / outputs
    recv_interval: int = 1                # SGLang --scheduler-recv-interval default: a busy scheduler takes new requests
                                          # every this many decode steps (1: every step; simulate.scheduler._receive)


@dataclass(frozen=True)
class HostModel:
    """CPU time of the engine loop and how much of it hides behind GPU work."""

    step_ms: float = 2.0                  # per step: schedule, prepare inputs, sample, output processing
    per_seq_ms: float = 0.05              # per scheduled sequence per step
    per_prefill_token_us: float = 0.0     # per prefill token per step (input preparation)
    overlap: float = 0.0                  # fraction of the step's host time that overlaps the previous GPU step
    eager_kernel_us: float = 20.0         # host time to launch one kernel outside a CUDA graph
    eager_latent_layer_us: float = 0.0    # host time of one latent-attention (MLA) layer outside a CUDA graph beyond
                                          # its kernels' launches: the Python of its latent projections and routing
    frontend_ms: float = 10.0             # API server, tokenizer, streaming added to TTFT
    frontend_token_us: float = 0.0        # per prompt token, tokenisation in the API server's serial front end, one
                                          # request at a time in send order (simulate.kernels.frontend_ready), us

    def serial_frontend_s(self, prompt_tokens: int) -> float:
        """Seconds one request of `prompt_tokens` spends in the serial front end when it waits for no other."""
        return self.frontend_token_us * prompt_tokens * 1e-6   # tokenise the prompt


@dataclass(frozen=True)
class GraphPolicy:
    """Which steps replay CUDA graphs (no per-kernel host launch)."""

    mode: str = "decode_only"             # decode_only | piecewise | full
    max_batch: int = 256                  # largest captured batch (sequences); larger steps run eager
    eager_kernels_per_layer_mixed: int = 0  # piecewise: kernels launched eagerly per layer in a mixed step (attention)
    max_batch_large: int = 0              # largest captured batch at tp >= large_tp or on GPUs of >= large_gpu_gib
    large_tp: int = 0                     # (0: max_batch everywhere)
    large_gpu_gib: float = 0.0


@dataclass(frozen=True)
class AttentionBackend:
    """The attention kernels chosen for one KV-cache dtype."""

    name: str = "flash-attn"
    gqa_shared_kv: bool = True            # decode reads each KV head once for its query-head group
    # prefill by a FlashAttention-2-generation kernel (no Hopper wgmma/TMA): the GPU's attention_efficiency;
    # else the engine's measured prefill-attention kernel on the chip (Calibration.prefill_attention_for)
    fa2_prefill: bool = False
    prefill_efficiency_scale: float = 1.0  # x the GPU's prefill attention efficiency for fresh prefill
    prefix_efficiency_scale: float = 1.0   # x the same for chunks attending to cached context


@dataclass(frozen=True)
class Quantization:
    """fp8/int8 W8A8 activation quantisation kernels."""

    activation_scales: str = "static"     # dynamic (per-step scale: reduce + quantise) | static (quantise only)
    kernels_per_gemm_dynamic: int = 2     # extra kernels per weight GEMM with dynamic scales
    kernels_per_gemm_static: int = 1      # extra kernels per weight GEMM with static scales
    fused_activation_quant: bool = False  # quantisation fused into every producing kernel (no extra pass)
    # or only into these producers of a GEMM input: norm (RMSNorm -> qkv, gate_up, router), activation
    # (SiLU-and-mul -> down), attention (attention output -> o); the other inputs keep their quant kernels
    fused_quant_producers: tuple[str, ...] = ()


@dataclass(frozen=True)
class Collectives:
    """The engine's all-reduce choice."""

    custom_allreduce_max_bytes: float = 8 * 1024 * 1024   # messages strictly below go to the custom kernel
    custom_allreduce_tp: tuple[int, ...] = (2, 4, 6, 8)   # world sizes it supports
    # engine family whose measured custom kernel runs those messages ("": the profile's own family), e.g. vLLM's
    # fused AllReduce + RMSNorm pass calling FlashInfer's port of TRT-LLM's kernel
    allreduce_kernel: str = ""


@dataclass(frozen=True)
class MemoryPolicy:
    """How the engine sizes its KV-cache pool."""

    accounting: str = "profile"           # profile: util*total - weights - activations - reserve
                                          # static_fraction: util*total - weights - reserve (activations outside)
                                          # free_fraction: util*(total - weights - activations - reserve)
    gpu_memory_utilization: float = 0.9   # default fraction (vLLM gpu_memory_utilization, SGLang
                                          # mem_fraction_static, TRT-LLM free_gpu_memory_fraction)
    reserve_gib: float = 1.0              # CUDA context, NCCL, workspaces outside the pool
    cuda_graph_gib: float = 0.0           # CUDA-graph memory pool
    caps_max_model_len: bool = False      # a pool smaller than max_model_len lowers it (SGLang, TRT-LLM)
                                          # instead of refusing to start (vLLM)
    # default fraction from reserved memory (SGLang >= 0.5.3 mem_fraction_static = (gpu_mem - reserved) / gpu_mem,
    # MiB); reserved_base_mib = 0 keeps gpu_memory_utilization fixed
    reserved_base_mib: float = 0.0        # constant metadata
    reserved_mib_per_chunk_token: float = 0.0   # x max(token budget, reserved_min_chunk_tokens): prefill activations
    reserved_min_chunk_tokens: int = 0
    reserved_mib_per_graph_seq: float = 0.0     # x largest captured batch: CUDA-graph buffers
    reserved_mib_per_gpu: float = 0.0           # x tp x pp GPUs of the engine
    reserved_mib_per_graph_seq_rank: float = 0.0  # x largest captured batch x attention-DP ranks
    reserved_mib_per_graph_seq_rank_large: float = 0.0  # the same again above reserved_large_graph_batch
    reserved_large_graph_batch: int = 0
    reserved_floor_mib: float = 0.0             # at least this on GPUs above reserved_floor_gpu_mib
    reserved_floor_gpu_mib: float = 0.0


@dataclass(frozen=True)
class Layouts:
    """Parallel layouts the engine supports, and how its MoE layers move tokens (see
    `apex_plan.plan.moe_layout`, which enumerates and defaults layouts from these)."""

    expert_parallel: bool = True
    attention_dp: bool = False
    pipeline_parallel: bool = True
    ep_degrees: str = "divisors"          # expert-parallel degrees it accepts: divisors (ep divides the
                                          # instance's tp x adp GPUs) | all (ep = every GPU: vLLM --enable-expert-parallel)
    default_ep: str = "none"              # MoE layout when none is asked for: none (experts TP-sharded over the
                                          # instance) | all (ep = tp x adp)
    moe_dispatch: str = "allgather"       # with attention DP, tokens reach the experts by: allgather (every rank's
                                          # tokens gathered, the output reduce-scattered) | alltoall (each token
                                          # sent to its experts' ranks and combined back: DeepEP-style) |
                                          # dp_buffer (SGLang: a global buffer all-reduced, or all-gathered
                                          # padded and reduce-scattered, estimate.moe)
    a2a_decode_kernel: str = "low_latency"  # alltoall: kernels of decode-only steps: low_latency (a copy per routed
                                          # expert, point to point) | normal (a copy per destination rank, NVLink-
                                          # forwarded); prefill steps run the normal (high-throughput) kernels
    adp_routing: str = "round_robin"      # attention DP: how an instance hands a new request to one of its ranks:
                                          # round_robin (in turn) | least_loaded (the rank with the fewest unfinished)
    adp_routing_prefill: str = ""         # the same on a disaggregated prefill instance ('': as adp_routing) |
                                          # bootstrap_room (the router's random room for the request, modulo the ranks)
    adp_padding: str = "none"             # attention DP: none (each rank runs its own tokens) | every_step (every rank
                                          # padded to the busiest rank's token count, the padding through the experts) |
                                          # graph_steps (the same, only in steps every rank replays as a CUDA graph)
    adp_padding_graph_steps_from: str = ""  # release from which every_step becomes graph_steps ('' never)
    moe_dispatch_mnnvl: str = ""          # attention DP on a multi-node NVLink domain (NVL72: the domain spans more GPUs
                                          # than a tray) with ep above the experts per token: the dispatch there ('' as
                                          # moe_dispatch); its all-to-all sends a copy per destination rank
    redundant_experts: bool = False       # an ep that does not divide the experts runs with redundant expert slots
                                          # (EPLB), the fewest that make them a multiple of ep (plan.spec.expert_slots)

    def dispatch(self, ep: int, experts_per_token: int, mnnvl: bool) -> tuple[str, str]:
        """(moe_dispatch, a2a_decode_kernel) of an attention-DP replica with `ep`-way experts, `mnnvl` when its
        GPUs share a multi-node NVLink domain: moe_dispatch_mnnvl there when ep > the experts per token."""
        if self.moe_dispatch_mnnvl and mnnvl and ep > experts_per_token:
            return self.moe_dispatch_mnnvl, "normal"
        return self.moe_dispatch, self.a2a_decode_kernel

    def adp_pad_tokens(self, version: str, graph_max_tokens: int) -> int:
        """Busiest-rank tokens up to which a lock-step attention-DP step pads every rank to them (SCHED.adp_pad_tokens):
        0 without padding, every step's tokens with every_step, the largest CUDA-graph step with graph_steps."""
        from apex_plan.engine.load import release
        mode = self.adp_padding
        if mode == "every_step" and self.adp_padding_graph_steps_from:
            try:                              # no version, or a development build: the newest behaviour
                newer = not version or release(version) >= release(self.adp_padding_graph_steps_from)
            except ValueError:
                newer = True
            mode = "graph_steps" if newer else mode
        return {"none": 0, "every_step": 1 << 40, "graph_steps": graph_max_tokens}[mode]


@dataclass(frozen=True)
class Features:
    """Optional engine features and their defaults."""

    prefix_caching: bool = False          # automatic prefix caching on unless turned off
    speculative: tuple[str, ...] = ()     # speculative-decoding methods the engine runs: mtp, eagle3
    gpu_vendors: tuple[str, ...] = ()     # GPU vendors the engine's builds run on (empty: any)


def widen(band: dict[str, float], other: dict[str, float]) -> dict[str, float]:
    """`band` (a calibration_error block) with each interval end moved out to cover `other`'s too."""
    out = dict(band) or dict(other)
    for key in ("ttft", "tpot"):
        lo, hi = f"{key}_low", f"{key}_high"
        if lo in other and hi in other:
            out[lo] = min(out.get(lo, other[lo]), other[lo])
            out[hi] = max(out.get(hi, other[hi]), other[hi])
    return out


@dataclass(frozen=True)
class EngineProfile:
    """One engine family over a range of versions [min_version, max_version)."""

    name: str                              # e.g. vllm-v1
    family: str                            # vllm | sglang | trtllm
    min_version: str
    max_version: str
    source: str = ""
    scheduler: SchedulerPolicy = field(default_factory=SchedulerPolicy)
    host: HostModel = field(default_factory=HostModel)
    host_by_gpu: dict[str, HostModel] = field(default_factory=dict)  # GPU profile name -> the host constants
                                           # fitted on that platform (its CPUs, drivers); others take `host`
    graphs: GraphPolicy = field(default_factory=GraphPolicy)
    attention: dict[str, AttentionBackend] = field(default_factory=lambda: {"bf16": AttentionBackend()})
    quantization: Quantization = field(default_factory=Quantization)
    collectives: Collectives = field(default_factory=Collectives)
    kv_cache_dtype: dict[str, str] = field(default_factory=dict)   # weight dtype or format -> default KV dtype ('' = activation dtype)
    kv_cache_dtype_by_gpu: dict[str, str] = field(default_factory=dict)  # GPU profile name -> the KV dtype the engine's
                                           # deployments on that GPU pass for every checkpoint (--kv-cache-dtype), over
                                           # kv_cache_dtype
    memory: MemoryPolicy = field(default_factory=MemoryPolicy)
    layouts: Layouts = field(default_factory=Layouts)
    features: Features = field(default_factory=Features)
    calibration: str = ""                  # provenance of the fitted constants (rows, date, error)
    calibration_error: dict[str, float] = field(default_factory=dict)  # held-out relative error quantiles of
                                           # (pred - measured) / measured: level, ttft_low/high, tpot_low/high, runs
                                           # (the band of a GPU without its own entry below)
    calibration_error_by_gpu: dict[str, dict[str, float]] = field(default_factory=dict)  # GPU profile name ->
                                           # the same block from that GPU's held-out runs
    calibration_error_new_model: dict[str, float] = field(default_factory=dict)  # the same block for a model the
                                           # bands did not see: leave-one-model-out errors pooled over GPUs
    calibrated_models: tuple[str, ...] = ()  # the built-in models whose runs the bands came from
    version: str | None = None             # the version asked for (set by resolve_engine_profile)
    version_note: str = ""                 # how an unnumbered build tag was resolved (set by resolve_engine_profile)
    path: str = ""

    def adp_pad_tokens(self) -> int:
        """SCHED.adp_pad_tokens at this profile's version (`Layouts.adp_pad_tokens`; graphs up to graphs.max_batch)."""
        return self.layouts.adp_pad_tokens(self.version or "", self.graphs.max_batch)

    def on_gpu(self, gpu_name: str) -> "EngineProfile":
        """The profile with the host constants fitted on `gpu_name`'s platform and the error band measured
        there (each kept from the profile's own when that GPU has none)."""
        host = self.host_by_gpu.get(gpu_name)
        band = self.calibration_error_by_gpu.get(gpu_name)
        if host is None and band is None:
            return self
        return dataclasses.replace(self, host=host or self.host,
                                   calibration_error=dict(band) if band is not None else self.calibration_error)

    def for_model(self, model_name: str) -> "EngineProfile":
        """The profile whose error bands fit a run of `model_name`: as stored for a calibrated model; for another
        one (a new model) the new-model band on every calibrated GPU (a new model's runs share a bias that the
        per-GPU bands, set by new configurations of the calibrated models, do not show), and on any other GPU
        the default band widened to cover it (a new model on a GPU nobody calibrated). Unchanged without a
        new-model band."""
        band = self.calibration_error_new_model
        if not band or not self.calibrated_models or model_name in self.calibrated_models:
            return self
        mark = {"new_model": 1.0}                     # read by calibrate.interval for the basis it states
        return dataclasses.replace(self, calibration_error={**widen(self.calibration_error, band), **mark},
                                   calibration_error_by_gpu={g: {**band, **mark} for g in self.calibration_error_by_gpu})

    def attention_backend(self, kv_dtype: str) -> AttentionBackend:
        """Backend for a KV dtype (falls back to the bf16 entry)."""
        return self.attention.get(kv_dtype) or self.attention.get("bf16") or AttentionBackend()

    def default_kv_dtype(self, weight_dtype: str, weight_format: str = "", gpu_name: str = "") -> str:
        """KV-cache dtype the engine picks for `weight_dtype` weights when none is given: the one its deployments
        on GPU `gpu_name` pass (kv_cache_dtype_by_gpu), else an entry for the attention weights' format (e.g.
        nvfp4, apex_plan.model.quant.FORMATS), which wins over one for the dtype."""
        return (self.kv_cache_dtype_by_gpu.get(gpu_name) or self.kv_cache_dtype.get(weight_format)
                or self.kv_cache_dtype.get(weight_dtype) or "bf16")

    def prefill_first(self, chunked: bool) -> bool:
        """True when waiting prompts run in prefill-only steps ahead of decodes."""
        return (self.scheduler.batching_chunked if chunked else self.scheduler.batching_unchunked) == "prefill_first"

    @property
    def label(self) -> str:
        return self.name + (f"@{self.version}" if self.version else "")
