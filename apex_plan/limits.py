"""Size limits on inputs, checked before any work so that an absurd input is refused at once.

Each limit is far above any real deployment or trace, and far below what would exhaust memory or
time: a bad input is one line and exit status 2, never an hour of work, a MemoryError or an
integer overflow deep inside numpy or numba.
"""

from __future__ import annotations

import math

from apex_plan.errors import InputError

# Requests in one trace or synthetic workload. A 10M-row trace simulates in about 1-2 GB
# (scripts/bench_trace_load.py --rows 10000000); 20M keeps peak memory within a laptop's.
MAX_REQUESTS = 20_000_000
# Trace file size, checked from the file system before reading: ~25M APEX JSON lines of ~85 bytes.
MAX_TRACE_BYTES = 2 * 2**30
# Tokens in one request: 2^24, above the longest context window of any released model (Llama 4 Scout,
# max_position_embeddings 10,485,760 in its config.json).
MAX_TOKENS_PER_REQUEST = 2**24
# Span of a trace's arrival times: ten years, in seconds.
MAX_TRACE_SPAN_S = 10 * 365 * 86400.0
# Cluster size: the largest NVLink domain announced is 576 GPUs (NVIDIA Rubin Ultra NVL576); the
# largest single training clusters are ~10^5 GPUs, so 2^20 GPUs in total is generous.
MAX_GPUS_PER_NODE = 576
MAX_NODES = 2**20
MAX_GPUS = 2**20
# `search` enumerates plans and packs deployments over the whole cluster, and its time grows with it:
# 4096 H100s take ~30 s of CPU for llama-3.1-70b on a 2-core machine (scripts/bench_search.py style run).
MAX_SEARCH_GPUS = 4096
# Engine settings: vLLM has no hard caps; these are 64x its default (256 sequences) and, for the token
# budget, any model's context.
MAX_NUM_SEQS = 16_384
MAX_BATCHED_TOKENS = MAX_TOKENS_PER_REQUEST
# Arrival rates: one request a day to a million per second.
MIN_RATE_PER_S = 1.0 / 86400.0
MAX_RATE_PER_S = 1e6
# numpy's Generator takes any non-negative seed; keep it to 64 bits so every engine can repeat it.
MAX_SEED = 2**64 - 1
# Latency targets: at most a day.
MAX_SLO_S = 86400.0


def check_count(where: str, field: str | None, value: object, low: int, high: int, example: str) -> int:
    """A whole number in [low, high], or an InputError naming `where`/`field`, the limit and a fix."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (
            isinstance(value, float) and not (math.isfinite(value) and value.is_integer())):
        raise InputError(where, field, f"must be a whole number, got {value!r}", example)
    v = int(value)
    if v < low:
        raise InputError(where, field, f"must be at least {low:,}, got {v:,}", example)
    if v > high:
        raise InputError(where, field, f"{v:,} is above the limit of {high:,}", example)
    return v


def check_real(where: str, field: str | None, value: object, low: float, high: float, example: str,
               low_open: bool = False) -> float:
    """A finite number in [low, high] ((low, high] when low_open), or an InputError with the limit."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(float(value)):
        raise InputError(where, field, f"must be a finite number, got {value!r}", example)
    v = float(value)
    if v < low or (low_open and v == low):
        raise InputError(where, field, f"must be {'above' if low_open else 'at least'} {low:g}, got {v:g}", example)
    if v > high:
        raise InputError(where, field, f"{v:g} is above the limit of {high:g}", example)
    return v


def check_cluster_size(where: str, nodes: int | None, gpus_per_node: int, total: int | None = None) -> tuple[int, int]:
    """Nodes, GPUs per node and their product within MAX_NODES, MAX_GPUS_PER_NODE, MAX_GPUS."""
    field = None if where.startswith("--") else "gpus_per_node"
    per_node = check_count("--gpus-per-node" if field is None else where, field, gpus_per_node, 1, MAX_GPUS_PER_NODE,
                           "e.g. 8 GPUs per node")
    if nodes is not None:
        nodes = check_count(where, None if field is None else "nodes", nodes, 1, MAX_NODES, "e.g. 'nodes: 2'")
        total = nodes * per_node
    if total is not None and total > MAX_GPUS:
        raise InputError(where, None if field is None else "nodes",
                         f"{total:,} GPUs in all, above the limit of {MAX_GPUS:,}", "describe a smaller cluster")
    return (nodes if nodes is not None else 0), per_node


# Largest value of a model config field (Hugging Face names). Today's largest models are far below:
# hidden_size 16,384 and 126 layers (Llama-3.1-405B), vocab 262,144 (Gemma 3), 256 routed experts
# (DeepSeek-V3), context 10,485,760 (Llama 4 Scout). Anything above is a typo or a unit slip, and
# would overflow the estimator's arithmetic.
MODEL_FIELD_MAX: dict[str, int] = {
    "num_hidden_layers": 10_000,
    "hidden_size": 2**20,
    "intermediate_size": 2**22,
    "moe_intermediate_size": 2**22,
    "shared_expert_intermediate_size": 2**22,
    "num_attention_heads": 2**16,
    "num_key_value_heads": 2**16,
    "head_dim": 2**16,
    "vocab_size": 2**24,
    "max_position_embeddings": MAX_TOKENS_PER_REQUEST,
}
MODEL_FIELD_DEFAULT_MAX = 2**20          # expert counts, LoRA ranks, rope dims, layer strides


def check_model_field(where: str, field: str, value: int) -> int:
    """A model config count within MODEL_FIELD_MAX (or MODEL_FIELD_DEFAULT_MAX), else an InputError."""
    high = MODEL_FIELD_MAX.get(field, MODEL_FIELD_DEFAULT_MAX)
    if value > high:
        raise InputError(where, field, f"{value:.4g} is above the limit of {high:,}",
                         f"copy '{field}' from the model's Hugging Face config.json")
    return value


# Largest value of a GPU-profile or cluster field, by the unit its name ends in. The largest real
# figures are orders of magnitude below (B200: 180 GB HBM, 8 TB/s, 4.5 PFLOP/s fp8 dense, 1 kW).
_HARDWARE_MAX_BY_SUFFIX: tuple[tuple[str, float], ...] = (
    ("_gib", 2.0**20),          # 1 PiB of memory per GPU
    ("_gbps", 1e6),             # 1 PB/s
    ("peak_tflops", 1e6),       # 1 EFLOP/s per GPU
    ("_w", 1e6),                # 1 MW per GPU
    ("_us", 1e7),               # 10 s of link latency
    ("_ms", 1e7),
    ("num_sms", 1e6),
    ("price_per_gpu_hour", 1e6),
)
HARDWARE_FIELD_DEFAULT_MAX = 1e9


def check_hardware_field(where: str, field: str, value: float) -> float:
    """A GPU-profile or cluster number below the limit for its unit, else an InputError."""
    key = field.split(".")[0] if field.startswith("peak_tflops") else field
    high = next((m for suffix, m in _HARDWARE_MAX_BY_SUFFIX if key.endswith(suffix)), HARDWARE_FIELD_DEFAULT_MAX)
    if value > high:
        raise InputError(where, field, f"{value:.4g} is above the limit of {high:g}",
                         "check the unit in the field name (GB/s, TFLOP/s, W, GiB, us)")
    return value
