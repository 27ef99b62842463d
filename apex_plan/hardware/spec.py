"""GPU profiles and clusters."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Calibration:
    """Achievable fractions of datasheet peaks and fixed latencies of one chip: physics only.

    Engine behaviour (host time per step, launch cost, memory reserves) lives in the engine profile
    (`apex_plan.engine.spec.EngineProfile`). Each value's source is written beside it in the GPU
    profile YAML.
    """

    compute_efficiency: float = 0.70        # achievable fraction of dense peak FLOP/s on large GEMMs
    bandwidth_efficiency: float = 0.80      # achievable fraction of HBM bandwidth on streaming kernels
    attention_efficiency: float = 0.50      # achievable fraction of peak FLOP/s in attention (full SMs)
    # fresh causal prefill attention of the current engines' kernels (FlashAttention-3, FlashInfer, TRT-LLM FMHA),
    # fraction of the bf16 peak with full SMs (a profile without it takes its attention_efficiency: hardware.load);
    # the same per engine family whose own context-attention kernel was measured on this chip
    prefill_attention_efficiency: float = 0.50
    prefill_attention_efficiency_by_engine: tuple[tuple[str, float], ...] = ()
    link_efficiency: float = 0.70           # achievable fraction of link bandwidth in collectives
    kernel_latency_us: float = 4.0          # fixed GPU cost per kernel (launch gap + tail), CUDA graphs on
    allreduce_latency_us: float = 20.0      # NCCL all-reduce latency for a small message
    custom_allreduce_latency_us: float = 8.0  # one-shot custom all-reduce (vLLM/SGLang/TRT-LLM) latency, small message
    # the same per engine family whose own all-reduce kernel was measured on this chip (vllm, sglang, trtllm:
    # each engine ships its own one-shot kernel); a family not listed takes custom_allreduce_latency_us
    custom_allreduce_latency_us_by_engine: tuple[tuple[str, float], ...] = ()
    # the same kernels' bandwidth per strategy (scripts/fit_engine_allreduce.py): one-shot reads (n-1) x the
    # message at this fraction of NVLink, two-shot moves 2 (n-1)/n of it at its own fraction after an extra
    # latency; an engine listed in all three takes the faster, one not listed the ring term at link_efficiency
    allreduce_1shot_efficiency_by_engine: tuple[tuple[str, float], ...] = ()
    allreduce_2shot_latency_us_by_engine: tuple[tuple[str, float], ...] = ()
    allreduce_2shot_efficiency_by_engine: tuple[tuple[str, float], ...] = ()
    p2p_latency_us: float = 10.0            # pipeline send/recv latency
    alltoall_latency_us: float = 25.0       # expert-parallel all-to-all latency
    moe_imbalance: float = 1.25             # busiest EP rank's load over the mean at ep 8 (estimate.moe.popularity_skew)

    def prefill_attention_for(self, family: str) -> float:
        """Achievable fraction of the bf16 peak in fresh causal prefill attention by engine `family`'s own kernel
        on this chip (prefill_attention_efficiency when that engine's was not measured)."""
        return dict(self.prefill_attention_efficiency_by_engine).get(family, self.prefill_attention_efficiency)

    def custom_allreduce_us(self, family: str) -> float:
        """Small-message latency of `family`'s own custom all-reduce kernel on this chip."""
        return dict(self.custom_allreduce_latency_us_by_engine).get(family, self.custom_allreduce_latency_us)

    def custom_allreduce_shots(self, family: str) -> tuple[float, float, float] | None:
        """(one-shot link fraction, two-shot extra latency us, two-shot link fraction) of `family`'s custom
        all-reduce on this chip, or None when its tables were not fitted."""
        one = dict(self.allreduce_1shot_efficiency_by_engine).get(family)
        lat = dict(self.allreduce_2shot_latency_us_by_engine).get(family)
        two = dict(self.allreduce_2shot_efficiency_by_engine).get(family)
        return None if one is None or lat is None or two is None else (one, lat, two)


@dataclass(frozen=True)
class Clocks:
    """Clock and power-limit ranges of one GPU (`apex_plan.hardware.power` uses them)."""

    sm_peak_mhz: float          # SM clock the datasheet's peak FLOP/s hold at (and the chip sustains at TDP)
    sm_max_mhz: float           # highest SM clock the driver accepts (nvidia-smi max clocks)
    sm_min_mhz: float           # lowest supported SM clock
    mem_mhz: float              # memory clock (HBM); power caps leave it unchanged
    power_limit_min_w: float    # lowest settable power limit (the highest is tdp_w)
    dvfs_power_exponent: float = 3.0   # k in P_dyn ~ (f / f_peak)^k; source in the profile YAML
    hbm_pj_per_bit: float = 0.0        # HBM access energy: the dynamic power an SM clock change leaves alone


@dataclass(frozen=True)
class KernelFit:
    """Achievable figures of one kernel family in one weight format, fitted to measured per-op tables:
    time = max(FLOPs / (peak(peak_dtype) x compute_efficiency), bytes / (HBM x bandwidth_efficiency))
    + latency_us. Written by scripts/fit_gpu_constants.py (sources beside each value in the YAML)."""

    peak_dtype: str                  # tensor-core dtype whose dense peak the FLOPs run at ("bf16" for weight-only)
    compute_efficiency: float        # achievable fraction of that peak
    bandwidth_efficiency: float      # achievable fraction of HBM bandwidth
    latency_us: float                # fixed GPU time per call (a GEMM; a whole fused-MoE layer)
    error_pct: float = 0.0           # rms log error of the fit against its table, as a percentage
    latency_per_expert_us: float = 0.0   # fused-MoE layers: fixed time per expert held (moe_kernels)
    tile_rows: float = 0.0           # fused-MoE layers: grouped-GEMM row tile each expert's tokens pad to (0: none)


@dataclass(frozen=True)
class GemmShape:
    """A dense GEMM's size dependence in one weight format, fitted to measured GEMM tables (the profile's
    `gemm_shapes:`, scripts/fit_gemm_shapes.py): compute time 2 M N (K + k_overhead) / (peak x
    compute_efficiency); weight bytes at the calibration's bytes/s x bandwidth_ratio; the fixed time per
    call stays the calibration's."""

    compute_efficiency: float        # achievable fraction of the format's dense peak, deep-K limit
    k_overhead: float                # K-depth each output tile costs beyond its own (fill/drain, epilogue), elements
    error_pct: float = 0.0           # rms log error of the fit against its tables, as a percentage
    bandwidth_ratio: float = 1.0     # the format's memory-bound (small-M) bytes/s over bf16's on the same tables


@dataclass(frozen=True)
class MlaFit:
    """Multi-head latent attention (DeepSeek-V2/V3, Kimi K2) fitted to measured MLA tables.
    Prefill runs the expanded (MHA) form: per query x key pair and head, QK^T over qk_nope + rope and
    PV over v_head_dim; decode runs the absorbed form over the latent cache."""

    prefill_efficiency: float        # fraction of bf16 peak in expanded prefill attention (full SMs)
    decode_compute_efficiency: float  # fraction of bf16 peak in absorbed decode attention
    decode_bandwidth_efficiency: float  # fraction of HBM bandwidth reading the latent cache
    latency_us: float                # fixed GPU time per attention call
    prefill_error_pct: float = 0.0
    decode_error_pct: float = 0.0


@dataclass(frozen=True)
class KernelFormats:
    """Per-format GEMM and fused-MoE fits, and MLA attention, of one GPU (absent: the calibration's bf16
    figures at the format's own peak, as before these fits)."""

    gemm: dict[str, KernelFit] = field(default_factory=dict)   # weight format name (apex_plan.model.quant) -> fit
    moe: dict[str, KernelFit] = field(default_factory=dict)
    mla: MlaFit | None = None
    moe_by_engine: dict[str, dict[str, KernelFit]] = field(default_factory=dict)  # `moe_kernels:`: engine family -> format -> fit
    # `moe_compute_kernels:`: engine family -> format -> fit whose compute rate alone is taken (estimate/moe.py expert_rates)
    moe_compute_by_engine: dict[str, dict[str, KernelFit]] = field(default_factory=dict)
    gemm_shapes: dict[str, GemmShape] = field(default_factory=dict)   # `gemm_shapes:`: weight format -> shape term


@dataclass(frozen=True)
class GpuSpec:
    """One GPU's datasheet figures (dense, not sparse, FLOP/s) plus its calibration."""

    name: str
    vendor: str
    memory_bytes: float                  # HBM capacity
    mem_bw_gbps: float                   # HBM bandwidth, GB/s (1e9 bytes/s)
    peak_tflops: dict[str, float]        # dense peak per dtype: {"bf16": 989.4, "fp8": 1978.9, ...}
    intra_node_bw_gbps: float            # NVLink / Infinity Fabric per GPU per direction, GB/s
    pcie_gbps: float                     # host link per direction, GB/s
    tdp_w: float
    idle_w: float
    num_sms: int                         # streaming multiprocessors / compute units
    calibration: Calibration = field(default_factory=Calibration)
    source: str = ""                     # datasheet reference
    calibrated_with: str = ""            # measured runs the calibration was fitted to ("": datasheet defaults)
    nvlink_domain_gpus: int = 0          # GPUs one NVLink/NVSwitch fabric joins at intra_node_bw (NVL72: 72); 0: the node
    clocks: Clocks | None = None         # SM clock and power-limit ranges; None: the profile gives none
    operating_point: str = ""            # "" at the datasheet clock; else e.g. "cap 500 W: SM 1605 MHz"
    kernel_formats: KernelFormats = field(default_factory=KernelFormats)
    gpus_per_node: int = 8               # GPUs of one node / compute tray, the default of --gpus-per-node
                                         # (HGX boards: 8; GB200/GB300 NVL72 trays: 4)

    def supports(self, dtype: str) -> bool:
        """True if the GPU has tensor-core support (a peak figure) for `dtype`."""
        return dtype in self.peak_tflops

    def supports_weights(self, dtype: str) -> bool:
        """True if weights in `dtype` can run: on tensor cores of that dtype, or 4-bit weights
        dequantised on the fly to the activation dtype (weight-only kernels: Marlin / Machete on
        NVIDIA Ampere and later, as vLLM runs MXFP4 gpt-oss on H100)."""
        return self.supports(dtype) or (dtype in ("int4", "fp4") and "bf16" in self.peak_tflops)

    def peak_flops(self, dtype: str) -> float:
        """Dense peak FLOP/s for matrix math in `dtype` (falls back to bf16 when absent)."""
        return 1e12 * self.peak_tflops.get(dtype, self.peak_tflops["bf16"])


@dataclass(frozen=True)
class ClusterSpec:
    """Nodes of identical GPUs."""

    gpu: GpuSpec
    num_nodes: int
    gpus_per_node: int
    intra_node_bw_gbps: float            # per GPU per direction inside a node
    intra_node_latency_us: float
    inter_node_bw_gbps: float            # per GPU per direction across nodes (NIC)
    inter_node_latency_us: float
    price_per_gpu_hour: float | None = None   # USD per GPU-hour; None when unknown (never a silent 0)
    name: str = ""
    nvlink_domain_gpus: int = 0          # GPUs joined by one NVLink fabric across nodes (GB200/GB300 NVL72: 72); 0: a node

    @property
    def nvlink_gpus(self) -> int:
        """GPUs a tensor- or expert-parallel group can span at NVLink speed: the NVLink domain
        (at least a node, at most the cluster)."""
        return min(self.num_gpus, max(self.gpus_per_node, self.nvlink_domain_gpus))

    @property
    def num_gpus(self) -> int:
        return self.num_nodes * self.gpus_per_node
