"""What `simulate` and `search` share: option help, the option fields both requests declare (cluster,
synthetic workload, sessions, engine), and the echo of inputs every output carries."""

from __future__ import annotations

from apex_plan import limits as L
from apex_plan.requests.options import REQUIRED, option

# option help shared by simulate and search
HELP = {
    "model": "built-in model name (see 'apex-plan models') or path to a .yaml / config.json",
    "gpu": "GPU profile name (see 'apex-plan hardware') or path to a profile YAML",
    "gpus": "GPUs in the cluster (with --gpu)",
    "gpus_per_node": "GPUs per node (with --gpu; default: the GPU profile's, 8 on HGX boards, 4 per NVL72 tray); "
                     "--gpus must fill whole nodes",
    "cluster": "cluster YAML (instead of --gpu/--gpus); see examples/cluster.yaml",
    "trace": "trace file: APEX .jsonl, plain CSV, BurstGPT or Azure CSV (see examples/)",
    "workload": "synthetic preset: chat | summarization | creation",
    "num_requests": f"synthetic requests (at most {L.MAX_REQUESTS:,})",
    "prompt_tokens": "prompt lengths: 512 | uniform:64-512 | normal:mean=512,std=128 | lognormal:mean=74,std=120",
    "output_tokens": "output lengths, same forms as --prompt-tokens",
    "arrival": "synthetic arrival process: poisson | gamma",
    "burstiness_cv": "gamma arrivals: coefficient of variation of the gaps (1 = Poisson-like, > 1 burstier)",
    "seed": "random seed of the synthetic workload",
    "engine": "serving engine",
    "gmu": "fraction of GPU memory the engine may use, in (0, 1] (vLLM: --gpu-memory-utilization)",
    "max_model_len": "longest request (prompt + output) in tokens; default: the model's (vLLM: --max-model-len)",
    "no_car": "no custom all-reduce kernel (vLLM: --disable-custom-all-reduce)",
    "a2a": "MoE all-to-all backend with attention DP: vLLM allgather_reducescatter | deepep_high_throughput | "
           "deepep_low_latency; SGLang (--moe-a2a-backend) none | deepep (default: the engine's)",
    "deepep": "SGLang --deepep-mode with --moe-a2a-backend deepep: auto | normal | low_latency",
    "ttft": "time-to-first-token target, with a unit: 500ms, 0.5s",
    "tpot": "time-per-output-token target, with a unit: 50ms",
    "pct": "percentile of TTFT and TPOT that must meet the targets, in (0, 100]",
    "turns": "synthetic sessions of this many turns; each turn resends the conversation so far plus a new "
             "message (--prompt-tokens: the new message)",
    "prefix_tokens": "shared system prompt ahead of every synthetic session, tokens",
    "num_prefixes": "distinct system prompts the sessions are spread over",
    "prompt_pool": "synthetic prompts drawn in turn from this many distinct ones (benchmark clients that reuse a "
                   "dataset: genai-perf --num-dataset-entries, default 100); 0: every prompt distinct",
    "think_time": "mean think time between a session's turns (exponential), e.g. 10s",
    "prefix_caching": "automatic prefix caching (auto: the engine profile's default, on for vLLM V1, SGLang, "
                      "TRT-LLM, off for vLLM 0.6; vLLM: --[no-]enable-prefix-caching)",
    "speculative": "speculative decoding: mtp:K (the model's MTP module) or eagle3:K, K draft tokens per step",
    "acceptance": "draft acceptance: one conditional rate (0.8) or vLLM's per-position rates (0.9,0.7,0.5); "
                  "default only for mtp:1 (0.85, DeepSeek-V3 report)",
    "hash_block_tokens": "tokens per prefix block of synthetic and session traces (default 64; Mooncake: 512)",
}


def model_opt():
    return option(REQUIRED, "--model", "-m", help=HELP["model"])


def gpu_opt(suffix: str = ""):
    return option(None, "--gpu", help=HELP["gpu"] + suffix)


def gpus_opt():
    return option(None, "--gpus", help=HELP["gpus"], count=(1, L.MAX_GPUS, "e.g. --gpus 8"))


def gpus_per_node_opt():
    return option(None, "--gpus-per-node", help=HELP["gpus_per_node"],
                  count=(1, L.MAX_GPUS_PER_NODE, "e.g. --gpus-per-node 8"))


def cluster_opt():
    return option(None, "--cluster", help=HELP["cluster"])


def rate_opt(help: str):
    return option(None, "--rate", help=help, real=(L.MIN_RATE_PER_S, L.MAX_RATE_PER_S, "e.g. --rate 2"),
                  low_open=False)


def num_requests_opt(default, help: str):
    return option(default, "--num-requests", help=help, count=(1, L.MAX_REQUESTS, "e.g. --num-requests 1000"))


def text_opt(default, *flags: str, help: str):
    """An option read as text and parsed by its reader (lengths, durations, SLOs, lists)."""
    return option(default, *flags, help=help)


def arrival_opt():
    return option("poisson", "--arrival", help=HELP["arrival"])


def burstiness_opt():
    return option(1.0, "--burstiness-cv", help=HELP["burstiness_cv"], real=(0.0, 100.0, "e.g. --burstiness-cv 2"))


def seed_opt():
    return option(0, "--seed", help=HELP["seed"], count=(0, L.MAX_SEED, "e.g. --seed 0"))


def turns_opt():
    return option(1, "--turns", help=HELP["turns"], count=(1, 10_000, "e.g. --turns 8"))


def prefix_tokens_opt():
    return option(0, "--prefix-tokens", help=HELP["prefix_tokens"],
                  count=(0, L.MAX_TOKENS_PER_REQUEST, "e.g. --prefix-tokens 2000"))


def num_prefixes_opt():
    return option(1, "--num-prefixes", help=HELP["num_prefixes"], count=(1, 1 << 20, "e.g. --num-prefixes 4"))


def prompt_pool_opt():
    return option(0, "--prompt-pool", help=HELP["prompt_pool"], count=(0, L.MAX_REQUESTS, "e.g. --prompt-pool 100"))


def think_time_opt():
    return option("0s", "--think-time", help=HELP["think_time"])


def hash_block_opt():
    return option(None, "--hash-block-tokens", help=HELP["hash_block_tokens"],
                  count=(1, 1 << 16, "e.g. --hash-block-tokens 64"))


def engine_opt():
    return option("vllm", "--engine", help=HELP["engine"])


def gmu_opt():
    return option(None, "--gpu-memory-utilization", help=HELP["gmu"] + " (default: the engine's)",
                  real=(0.0, 1.0, "e.g. --gpu-memory-utilization 0.9"))


def max_model_len_opt(help: str):
    return option(None, "--max-model-len", help=help,
                  count=(1, L.MAX_TOKENS_PER_REQUEST, "e.g. --max-model-len 8192"))


def no_car_opt():
    return option(False, "--no-custom-allreduce", "--disable-custom-all-reduce", help=HELP["no_car"])


def all2all_opt():
    return option(None, "--all2all-backend", "--moe-a2a-backend", help=HELP["a2a"])


def deepep_mode_opt():
    return option(None, "--deepep-mode", help=HELP["deepep"])


def recv_interval_opt():
    return option(None, "--scheduler-recv-interval",
                  help="SGLang: a busy scheduler takes new requests every N decode steps (and after each prefill "
                       "step); default: the engine profile's (SGLang's own: 1, every step)",
                  count=(1, 100000, "e.g. --scheduler-recv-interval 10"))


def with_all2all(cfg, req):
    """Engine settings `cfg` (profile resolved) with the request's --all2all-backend / --deepep-mode applied."""
    import dataclasses
    from apex_plan.engine.all2all import with_all2all as apply
    return dataclasses.replace(cfg, profile=apply(cfg.profile, req.all2all_backend, req.deepep_mode))


def slo_percentile_opt():
    return option(90.0, "--slo-percentile", help=HELP["pct"])


def engine_doc(profile) -> dict:
    """The engine profile as echoed in every output: name, version asked for, file, calibration."""
    return {"profile": profile.name, "family": profile.family, "version": profile.version,
            "versions": f"[{profile.min_version}, {profile.max_version})", "version_note": profile.version_note or None,
            "calibration": profile.calibration,
            "calibration_error": profile.calibration_error or "uncalibrated (no measured error stored)",
            # how attention-DP ranks' MoE tokens move (--all2all-backend / --moe-a2a-backend, engine.all2all)
            "moe_all2all": {"dispatch": profile.layouts.moe_dispatch, "decode_kernel": profile.layouts.a2a_decode_kernel}}


def slo_doc(slo) -> dict:
    """The SLO as echoed in JSON inputs, in milliseconds."""
    return {"ttft_ms": slo.ttft_s * 1e3 if slo.ttft_s else None,
            "tpot_ms": slo.tpot_s * 1e3 if slo.tpot_s else None, "percentile": slo.percentile}


def session_options(req):
    """The multi-turn session settings of a request (`inputs.session_options`)."""
    from apex_plan import inputs as I
    return I.session_options(req.turns, req.prefix_tokens, req.num_prefixes, req.think_time, req.hash_block_tokens,
                             req.prompt_pool)
