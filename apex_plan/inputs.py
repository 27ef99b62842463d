"""Turn command-line options into specs: model, cluster, plan, engine settings, workload, SLO."""

from __future__ import annotations

import re
from pathlib import Path

from apex_plan.errors import InputError, did_you_mean
from apex_plan.hardware.load import load_cluster, load_gpu, make_cluster
from apex_plan.hardware.spec import ClusterSpec
from apex_plan.plan.spec import EngineConfig, Plan
from apex_plan.units import DTYPE_BYTES
from apex_plan.workload.spec import Workload
from apex_plan.workload.synthetic import PRESETS, LengthDist, closed_loop, preset_trace, synthetic_trace
from apex_plan.workload.trace import read_trace

ENGINES = ("vllm",)


def cluster_from_options(gpu: str | None, gpus: int | None, gpus_per_node: int, cluster: str | None) -> ClusterSpec:
    """`--cluster FILE` or `--gpu NAME --gpus N [--gpus-per-node G]`."""
    if cluster:
        if gpu or gpus:
            raise InputError("--cluster", None, "given together with --gpu/--gpus", "use one or the other")
        return load_cluster(cluster)
    if not gpu:
        raise InputError("--gpu", None, "no GPU given", "pass --gpu NAME --gpus N, or --cluster FILE")
    if gpus is None:
        raise InputError("--gpus", None, "number of GPUs missing", "e.g. --gpus 8")
    return make_cluster(load_gpu(gpu), gpus, gpus_per_node)


def parse_plan(text: str, weight_dtype: str, kv_dtype: str) -> Plan:
    """'dp=2,tp=4,pp=1[,ep=1]' -> Plan."""
    vals = {"dp": 1, "tp": 1, "pp": 1, "ep": 1}
    for part in (p.strip() for p in text.split(",") if p.strip()):
        m = re.fullmatch(r"(dp|tp|pp|ep)\s*=\s*(\d+)", part)
        if not m:
            raise InputError("--plan", None, f"cannot read '{part}' in '{text}'", "write it as dp=1,tp=8,pp=1")
        vals[m.group(1)] = int(m.group(2))
    for k, v in vals.items():
        if v < 1:
            raise InputError("--plan", k, f"must be at least 1, got {v}", "use positive degrees")
    for opt, dt in (("--weight-dtype", weight_dtype), ("--kv-dtype", kv_dtype)):
        if dt not in DTYPE_BYTES:
            raise InputError(opt, None, f"unknown dtype '{dt}'", did_you_mean(dt, DTYPE_BYTES))
    return Plan(vals["dp"], vals["tp"], vals["pp"], vals["ep"], weight_dtype, kv_dtype)


def check_plan_fits(plan: Plan, cluster: ClusterSpec, num_heads: int, num_experts: int) -> None:
    """Structural checks a plan must pass before it is costed."""
    if plan.num_gpus > cluster.num_gpus:
        raise InputError("--plan", None, f"needs dp*tp*pp = {plan.num_gpus} GPUs but the cluster has {cluster.num_gpus}",
                         "lower the degrees or raise --gpus")
    if num_heads % plan.tp:
        raise InputError("--plan", "tp", f"tp={plan.tp} does not divide the model's {num_heads} attention heads",
                         "choose a tp that divides the head count")
    if plan.ep > 1 and (not num_experts or num_experts % plan.ep or plan.tp % plan.ep):
        raise InputError("--plan", "ep", f"ep={plan.ep} must divide tp={plan.tp} and the expert count ({num_experts})",
                         "use ep=1 for dense models")
    for opt, dt in (("--weight-dtype", plan.weight_dtype),):
        if dt in ("fp8", "fp4") and not cluster.gpu.supports_weights(dt):   # 4-bit weights may run weight-only
            raise InputError(opt, None, f"{cluster.gpu.name} has no {dt} tensor cores",
                             "use " + ", ".join(k for k in cluster.gpu.peak_tflops if k in ("bf16", "fp16", "fp8", "fp4")))


def parse_length(text: str, option: str) -> LengthDist:
    """'512' (constant), 'uniform:64-512', 'normal:mean=512,std=128', 'lognormal:mean=74,std=120'."""
    t = text.strip()
    if re.fullmatch(r"\d+", t):
        return LengthDist("constant", mean=float(t))
    m = re.fullmatch(r"uniform:(\d+)-(\d+)", t)
    if m:
        return LengthDist("uniform", low=int(m.group(1)), high=int(m.group(2)))
    m = re.fullmatch(r"(normal|lognormal):(.*)", t)
    if m:
        kv = dict(re.findall(r"(mean|std)\s*=\s*([0-9.]+)", m.group(2)))
        if "mean" in kv:
            return LengthDist(m.group(1), mean=float(kv["mean"]), std=float(kv.get("std", 0.0)))
    raise InputError(option, None, f"cannot read length '{text}'",
                     "use 512, uniform:64-512, normal:mean=512,std=128 or lognormal:mean=74,std=120")


def workload_from_options(trace: str | None, workload: str | None, rate: float | None, num_requests: int,
                          prompt_tokens: str | None, output_tokens: str | None, concurrency: int | None,
                          arrival: str, burstiness_cv: float, seed: int) -> Workload:
    """`--trace FILE`, or a preset `--workload chat|summarization|creation`, or explicit lengths."""
    if trace:
        if workload or prompt_tokens or output_tokens:
            raise InputError("--trace", None, "given together with a synthetic workload", "use one or the other")
        tr = read_trace(Path(trace))
    else:
        if rate is None and concurrency is None:
            raise InputError("--rate", None, "a synthetic workload needs an arrival rate or a concurrency",
                             "pass --rate 2 (requests/s) or --concurrency 32")
        if prompt_tokens or output_tokens:
            base = PRESETS[workload] if workload in PRESETS else None
            p = parse_length(prompt_tokens, "--prompt-tokens") if prompt_tokens else (base.prompt if base else None)
            o = parse_length(output_tokens, "--output-tokens") if output_tokens else (base.output if base else None)
            if p is None or o is None:
                raise InputError("--prompt-tokens" if p is None else "--output-tokens", None, "missing",
                                 "give both lengths, or a --workload preset")
            tr = synthetic_trace(num_requests, p, o, None if concurrency else rate, arrival, burstiness_cv, seed)
        else:
            name = workload or "chat"
            if name not in PRESETS:
                raise InputError("--workload", None, f"unknown preset '{name}'", did_you_mean(name, PRESETS))
            tr = preset_trace(name, None if concurrency else rate, num_requests, seed, arrival, burstiness_cv)
    if concurrency:
        return closed_loop(tr, concurrency)
    return Workload(tr)


def engine_from_options(engine: str, gpu_memory_utilization: float, max_model_len: int | None,
                        custom_allreduce: bool, chunked_prefill: bool | None, max_num_seqs: int,
                        max_batched_tokens: int | None, routing: str) -> EngineConfig:
    if engine not in ENGINES:
        raise InputError("--engine", None, f"unknown engine '{engine}'", did_you_mean(engine, ENGINES))
    return EngineConfig(max_num_seqs=max_num_seqs, max_batched_tokens=max_batched_tokens,
                        chunked_prefill=chunked_prefill, gpu_memory_utilization=gpu_memory_utilization,
                        max_model_len=max_model_len, custom_allreduce=custom_allreduce,
                        routing=routing.replace("-", "_"), name=engine)
