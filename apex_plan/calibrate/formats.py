"""Measured benchmark runs in the formats people have, as simulation cases.

Formats, told apart by their content:
- `vllm bench serve --save-result` JSON (vllm/benchmarks/serve.py: model_id, num_prompts,
  request_rate ("inf" when unthrottled), max_concurrency, completed, total_input_tokens,
  total_output_tokens, mean_ttft_ms, mean_tpot_ms, and input_lens / output_lens when saved
  with --save-detailed);
- SGLang `bench_serving --output-file` JSON lines (python/sglang/bench_serving.py: one object a
  run with backend, request_rate, max_concurrency, completed, total_input_tokens,
  total_output_tokens, mean_ttft_ms, mean_tpot_ms; input_lens / output_lens with
  --output-details);
- aiperf `profile_export_aiperf.json` and genai-perf `profile_export_genai_perf.json` (metric
  objects {unit, avg, p50, ...}: time_to_first_token, inter_token_latency, input_sequence_length,
  output_sequence_length, request_count; input_config.endpoint.model_names, input_config.loadgen
  .concurrency / request_rate, or genai-perf's input_config.model / concurrency / request_rate);
- CSV: the silicon columns or trace-replay rows (apex_plan.calibrate.runs).

JSON runs do not say the GPU, the plan or (aiperf) the engine: `RunDefaults` gives them, as the
options of `simulate` do.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from apex_plan.calibrate import fields as F
from apex_plan.calibrate.runs import Case, read_runs
from apex_plan.engine.spec import EngineProfile
from apex_plan.errors import InputError
from apex_plan.limits import MAX_REQUESTS
from apex_plan.plan.spec import EngineConfig

FORMATS = ("vllm-bench", "sglang-bench", "aiperf", "genai-perf", "csv")


@dataclass(frozen=True)
class RunDefaults:
    """What a run file may not say, from the command's options."""

    engine: str | None = None          # --engine NAME[@VERSION] or a profile YAML
    gpu: str | None = None             # --gpu
    plan: str | None = None            # --plan dp=..,tp=..,pp=..
    model: str | None = None           # --model, when the file names none (or to override it)
    weight_dtype: str = "bf16"         # --weight-dtype
    requests_per_slot: int = 5         # closed loop: simulated requests per concurrency slot
    max_requests: int = 1000           # at most this many simulated requests per run (fitting speed)


@dataclass(frozen=True)
class Summary:
    """The figures one measured run gives, whatever its format."""

    id: str
    fmt: str
    model: str | None
    engine: str | None                 # engine family the file names (vllm, sglang), if any
    requests: int
    concurrency: int | None            # closed loop: requests in flight
    rate_per_s: float | None           # open loop: Poisson arrivals per second
    prompt_tokens: np.ndarray          # per-request lengths, or one mean repeated
    output_tokens: np.ndarray
    ttft_ms: float                     # measured mean
    tpot_ms: float                     # measured mean


# `--backend` of vllm bench serve (vllm/benchmarks/lib/endpoint_request_func.py ASYNC_REQUEST_FUNCS) and
# SGLang bench_serving (python/sglang/bench_serving.py ASYNC_REQUEST_FUNCS) -> engine family; the
# OpenAI-compatible clients say nothing about the server behind them
BACKEND_FAMILY = {"vllm": "vllm", "vllm-chat": "vllm", "sglang": "sglang", "sglang-native": "sglang",
                  "sglang-oai": "sglang", "sglang-oai-chat": "sglang", "tensorrt-llm": "trtllm", "trt": "trtllm",
                  "trtllm": "trtllm"}
GENERIC_BACKENDS = ("openai", "openai-chat", "openai-completions", "openai-audio")


def _backend_family(where: str, d: dict, fmt: str) -> str | None:
    """The engine family a bench result's `backend` names; None for an OpenAI-compatible client (the
    file does not say the engine); an engine without a profile is an InputError."""
    raw = d.get("backend")
    if raw is None:
        return "sglang" if fmt == "sglang-bench" else None
    b = str(raw).strip().lower()
    if b in BACKEND_FAMILY:
        return BACKEND_FAMILY[b]
    if b in GENERIC_BACKENDS:
        return None
    raise InputError(where, "backend", f"'{raw}' is an engine apex-plan has no profile for",
                     "give runs served by vLLM, SGLang or TensorRT-LLM (backend " + ", ".join(sorted(BACKEND_FAMILY))
                     + ", or an OpenAI-compatible client with --engine)")


def _lengths(where: str, d: dict, lens_key: str, total_key: str, n: int) -> np.ndarray:
    """Per-request token counts from `lens_key`, else the mean `total_key` / n repeated."""
    lens = d.get(lens_key)
    if isinstance(lens, list) and lens:
        if len(lens) > MAX_REQUESTS:
            raise InputError(where, lens_key, f"{len(lens):,} lengths, above the limit of {MAX_REQUESTS:,}",
                             "give a run of fewer requests")
        return np.asarray([F.tokens_per_request(where, lens_key, F.number(where, lens_key, v)) for v in lens],
                          dtype=np.int64)
    total = F.number(where, total_key, d.get(total_key))
    return np.full(n, F.tokens_per_request(where, total_key, total / n), dtype=np.int64)


def _bench_summary(where: str, d: dict, fmt: str, idx: str = "") -> Summary:
    """A vllm bench serve result or one SGLang bench_serving line."""
    n = F.requests(where, "completed", d.get("completed"), False) or F.requests(where, "num_prompts", d.get("num_prompts"))
    rate = F.number(where, "request_rate", d.get("request_rate"), False, allow_inf=True)
    if rate is not None and rate == 0:
        raise InputError(where, "request_rate", "a rate of 0 requests/s", "give the measured rate, or 'inf'")
    conc = F.concurrency(where, "max_concurrency", d.get("max_concurrency"))
    model = d.get("model_id") or d.get("model") or d.get("tokenizer_id")
    engine = _backend_family(where, d, fmt)
    return Summary(Path(where).stem + idx, fmt, str(model) if model else None, engine, n, conc,
                   None if rate is None or math.isinf(rate) else rate,
                   _lengths(where, d, "input_lens", "total_input_tokens", n),
                   _lengths(where, d, "output_lens", "total_output_tokens", n),
                   F.measured_ms(where, "mean_ttft_ms", d.get("mean_ttft_ms")),
                   F.measured_ms(where, "mean_tpot_ms", d.get("mean_tpot_ms")))


_UNIT_MS = {"ms": 1.0, "": 1.0, "s": 1e3, "sec": 1e3, "us": 1e-3, "ns": 1e-6}


def _metric(where: str, d: dict, key: str, required: bool = True, latency: bool = False) -> float | None:
    """The mean ('avg') of an aiperf / genai-perf metric object; latencies converted to ms."""
    m = d.get(key)
    if not isinstance(m, dict) or m.get("avg") is None:
        if required:
            raise InputError(where, f"{key}.avg", "missing", "export the run with streaming on (TTFT and ITL need it)")
        return None
    unit = str(m.get("unit", "")).lower()
    if not latency:
        return F.number(where, f"{key}.avg", m["avg"])
    if unit not in _UNIT_MS:
        raise InputError(where, f"{key}.unit", f"unknown time unit '{m.get('unit')}'", "use ms, s, us or ns")
    return F.measured_ms(where, f"{key}.avg", m["avg"], _UNIT_MS[unit])


def _dig(d, *keys):
    """d[k1][k2]... or None where a level is missing or not a mapping."""
    for k in keys:
        if not isinstance(d, dict):
            return None
        d = d.get(k)
    return d


def _perf_summary(where: str, d: dict) -> Summary:
    """An aiperf or genai-perf aggregated export."""
    cfg = d.get("input_config") if isinstance(d.get("input_config"), dict) else {}
    fmt = "aiperf" if "aiperf_version" in d or isinstance(cfg.get("loadgen"), dict) else "genai-perf"
    m = d.get("records") if isinstance(d.get("records"), dict) else d       # older aiperf nests metrics
    load = cfg.get("loadgen") if isinstance(cfg.get("loadgen"), dict) else cfg
    names = _dig(cfg, "endpoint", "model_names") or cfg.get("model") or []
    model = names[0] if isinstance(names, list) and names else (names or None)
    n_metric = _metric(where, m, "request_count", False)
    if n_metric is not None:
        n = F.requests(where, "request_count.avg", n_metric)
    else:
        n = F.requests(where, "input_config.loadgen.request_count", load.get("request_count"), False)
    if not n:
        raise InputError(where, "request_count.avg", "missing", "export the aggregated profile of a finished run")
    isl = _metric(where, m, "input_sequence_length", False)
    if isl is None:
        isl = F.number(where, "input_sequence_length.avg", _dig(cfg, "input", "prompt", "input_tokens", "mean"))
    osl = _metric(where, m, "output_sequence_length")
    conc = F.concurrency(where, "input_config.loadgen.concurrency", load.get("concurrency"))
    rate = F.number(where, "input_config.loadgen.request_rate", load.get("request_rate"), False, allow_inf=True)
    rate = rate if rate and math.isfinite(rate) else None
    return Summary(Path(where).stem, fmt, str(model) if model else None, None, n,
                   conc if rate is None else None, rate,
                   np.full(n, F.tokens_per_request(where, "input_sequence_length.avg", isl), dtype=np.int64),
                   np.full(n, F.tokens_per_request(where, "output_sequence_length.avg", osl), dtype=np.int64),
                   _metric(where, m, "time_to_first_token", latency=True),
                   _metric(where, m, "inter_token_latency", latency=True))


def read_summaries(path: str | Path) -> list[Summary]:
    """Every run in one JSON / JSON-lines file."""
    where = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as e:
        raise InputError(where, None, f"cannot read: {e.strerror}", "give a benchmark result file") from None
    except UnicodeDecodeError as e:
        raise InputError(where, None, f"not UTF-8 text (byte {e.start}: {e.reason})",
                         "save the result file as UTF-8 JSON, as the benchmark writes it") from None
    try:
        docs = [json.loads(text)]
    except json.JSONDecodeError:
        docs = []
        for i, line in enumerate(text.splitlines(), 1):
            if line.strip():
                try:
                    docs.append(json.loads(line))
                except json.JSONDecodeError as e:
                    raise InputError(f"{where}:{i}", None, f"not JSON ({e.msg})",
                                     "give a vllm/SGLang bench result, an aiperf export or a CSV") from None
    out = []
    for i, d in enumerate(docs):
        if not isinstance(d, dict):
            raise InputError(where, None, "expected a JSON object", "give a vllm/SGLang bench result or aiperf export")
        idx = f"#{i + 1}" if len(docs) > 1 else ""
        if "time_to_first_token" in d or "time_to_first_token" in (d.get("records") or {}):
            out.append(_perf_summary(where, d))
        elif "mean_ttft_ms" in d:
            sgl = "total_output_tokens_retokenized" in d or "mean_e2e_latency_ms" in d or len(docs) > 1
            out.append(_bench_summary(where, d, "sglang-bench" if sgl else "vllm-bench", idx))
        else:
            raise InputError(where, "mean_ttft_ms", "not a benchmark result this tool reads",
                             "give a 'vllm bench serve --save-result' JSON, SGLang bench_serving output, "
                             "an aiperf/genai-perf profile export, or a silicon/trace CSV")
    return out


def case_from_summary(s: Summary, opts: RunDefaults, where: str) -> Case:
    """Simulate a run as it was measured: its lengths, its concurrency or rate, the options' GPU/plan/engine."""
    from apex_plan import inputs as I
    from apex_plan.engine.load import resolve_engine_profile
    from apex_plan.hardware.load import load_gpu, make_cluster
    from apex_plan.model.load import load_model
    from apex_plan.workload.spec import Trace, Workload
    from apex_plan.workload.synthetic import _arrivals_s
    if not opts.gpu:
        raise InputError("--gpu", None, f"{where} does not say the GPU", "give --gpu, e.g. --gpu h100-sxm-80gb")
    model_name = opts.model or s.model
    if not model_name:
        raise InputError("--model", None, f"{where} does not name the model", "give --model")
    engine_text = opts.engine or s.engine or "vllm"
    profile = resolve_engine_profile(engine_text, where="--engine")
    if opts.engine and s.engine and profile.family != s.engine:
        raise InputError("--engine", None, f"{profile.label} is a {profile.family} profile but {where} was measured "
                         f"on {s.engine}", f"give a {s.engine} profile, or leave --engine out")
    try:
        model = load_model(model_name)
    except InputError as e:
        if opts.model:
            raise
        raise InputError(where, "model_id", e.problem, "give --model NAME for the model the run served") from None
    gpu = load_gpu(opts.gpu)
    plan = I.parse_plan(opts.plan, opts.weight_dtype, profile.default_kv_dtype(opts.weight_dtype))
    cluster = make_cluster(gpu, plan.num_gpus, min(8, plan.num_gpus))
    I.check_plan_fits(plan, cluster, model, redundant_experts=profile.layouts.redundant_experts)
    # the simulated requests: the measured lengths (or means), at most max_requests of them
    n = s.requests
    if s.concurrency:
        n = min(n, max(s.concurrency * opts.requests_per_slot, s.concurrency))
    n = max(1, min(n, opts.max_requests))
    rng = np.random.default_rng(0)
    arrival = np.zeros(n) if s.rate_per_s is None else _arrivals_s(n, s.rate_per_s, "poisson", 1.0, rng)
    trace = Trace(arrival, s.prompt_tokens[:n].copy(), s.output_tokens[:n].copy(), name=s.id)
    if s.rate_per_s is not None:
        wl = Workload(trace)                                       # open loop at the measured rate
    else:
        wl = Workload(trace, "closed", min(s.concurrency or s.requests, n))   # unthrottled: all in flight
    eng = EngineConfig(name=engine_text, profile=profile)
    group = (gpu.name, profile.family, model.name, plan.weight_dtype)
    return Case(s.id, group, model, cluster, plan, eng, wl, s.ttft_ms, s.tpot_ms)


def _matches(case: Case, profile: EngineProfile) -> bool:
    p = case.engine.profile
    return p.family == profile.family and p.name == profile.name


def read_measured(paths, opts: RunDefaults) -> tuple[list[Case], list[tuple[str, str]]]:
    """Cases of every file (CSV rows filtered to --engine's profile when given), and skipped (id, reason)."""
    from apex_plan.engine.load import resolve_engine_profile
    want = resolve_engine_profile(opts.engine, where="--engine") if opts.engine else None
    cases, skipped = [], []
    for path in paths:
        p = Path(path)
        if not p.is_file():
            raise InputError(str(path), None, "not found", "give the path of a benchmark result file")
        if p.suffix.lower() == ".csv":
            got, skip = read_runs(p, opts.requests_per_slot)
            skipped += skip
            if want is not None:
                keep = [c for c in got if _matches(c, want)]
                skipped += [(c.id, f"engine {c.engine.profile.name}, not {want.name}") for c in got if not _matches(c, want)]
                got = [dataclasses.replace(c, engine=dataclasses.replace(c.engine, profile=want)) for c in keep]
            cases += got
            continue
        for s in read_summaries(p):
            cases.append(case_from_summary(s, opts, str(path)))
    return cases, skipped
