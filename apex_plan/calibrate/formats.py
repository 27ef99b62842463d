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

from apex_plan.calibrate.runs import Case, read_runs
from apex_plan.engine.spec import EngineProfile
from apex_plan.errors import InputError
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


def _num(where: str, field: str, value, required: bool = True) -> float | None:
    """A finite number from a JSON field (None when absent and not required)."""
    if value is None or value == "":
        if required:
            raise InputError(where, field, "missing", "the run file must carry this measured figure")
        return None
    if isinstance(value, str) and value.strip().lower() in ("inf", "infinity"):
        return math.inf
    try:
        x = float(value)
    except (TypeError, ValueError):
        raise InputError(where, field, f"expected a number, got '{value}'", "write a number") from None
    if x != x or x < 0:
        raise InputError(where, field, f"expected a non-negative number, got {value}", "write a number")
    return x


def _lengths(where: str, d: dict, lens_key: str, total_key: str, n: int) -> np.ndarray:
    """Per-request token counts from `lens_key`, else the mean `total_key` / n repeated."""
    lens = d.get(lens_key)
    if isinstance(lens, list) and lens:
        arr = np.asarray([_num(where, lens_key, v) for v in lens], dtype=float)
        return np.maximum(np.rint(arr), 1).astype(np.int64)
    total = _num(where, total_key, d.get(total_key))
    mean = max(1, int(round(total / max(n, 1))))
    return np.full(n, mean, dtype=np.int64)


def _bench_summary(where: str, d: dict, fmt: str, idx: str = "") -> Summary:
    """A vllm bench serve result or one SGLang bench_serving line."""
    n = int(_num(where, "completed", d.get("completed"), False) or _num(where, "num_prompts", d.get("num_prompts")))
    if n < 1:
        raise InputError(where, "completed", "no request completed", "re-run the benchmark")
    rate = _num(where, "request_rate", d.get("request_rate"), False)
    conc = d.get("max_concurrency")
    conc = int(_num(where, "max_concurrency", conc)) if conc is not None else None
    model = d.get("model_id") or d.get("model") or d.get("tokenizer_id")
    engine = "sglang" if fmt == "sglang-bench" and str(d.get("backend") or "sglang").startswith("sglang") else None
    if fmt == "vllm-bench" and str(d.get("backend") or "vllm").startswith(("vllm", "openai")):
        engine = "vllm"
    return Summary(Path(where).stem + idx, fmt, str(model) if model else None, engine, n, conc,
                   None if rate is None or math.isinf(rate) else rate,
                   _lengths(where, d, "input_lens", "total_input_tokens", n),
                   _lengths(where, d, "output_lens", "total_output_tokens", n),
                   float(_num(where, "mean_ttft_ms", d.get("mean_ttft_ms"))),
                   float(_num(where, "mean_tpot_ms", d.get("mean_tpot_ms"))))


def _metric(where: str, d: dict, key: str, required: bool = True) -> float | None:
    """The mean ('avg') of an aiperf / genai-perf metric object, converted to ms or plain units."""
    m = d.get(key)
    if not isinstance(m, dict) or m.get("avg") is None:
        if required:
            raise InputError(where, f"{key}.avg", "missing", "export the run with streaming on (TTFT and ITL need it)")
        return None
    x = float(_num(where, f"{key}.avg", m["avg"]))
    unit = str(m.get("unit", "")).lower()
    return x * {"s": 1e3, "sec": 1e3, "us": 1e-3, "ns": 1e-6}.get(unit, 1.0)   # latencies to ms


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
    n = _metric(where, m, "request_count", False) or _num(where, "input_config.loadgen.request_count",
                                                           load.get("request_count"), False)
    if not n or n < 1:
        raise InputError(where, "request_count.avg", "missing", "export the aggregated profile of a finished run")
    n = int(n)
    isl = _metric(where, m, "input_sequence_length", False)
    if isl is None:
        isl = _num(where, "input_sequence_length.avg", _dig(cfg, "input", "prompt", "input_tokens", "mean"))
    osl = _metric(where, m, "output_sequence_length")
    conc = _num(where, "input_config.loadgen.concurrency", load.get("concurrency"), False)
    rate = _num(where, "input_config.loadgen.request_rate", load.get("request_rate"), False)
    rate = rate if rate and math.isfinite(rate) else None
    return Summary(Path(where).stem, fmt, str(model) if model else None, None, n,
                   int(conc) if conc and rate is None else None, rate,
                   np.full(n, max(1, int(round(isl))), dtype=np.int64),
                   np.full(n, max(1, int(round(osl))), dtype=np.int64),
                   float(_metric(where, m, "time_to_first_token")), float(_metric(where, m, "inter_token_latency")))


def read_summaries(path: str | Path) -> list[Summary]:
    """Every run in one JSON / JSON-lines file."""
    where = str(path)
    try:
        text = Path(path).read_text()
    except OSError as e:
        raise InputError(where, None, f"cannot read: {e.strerror}", "give a benchmark result file") from None
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
    model = load_model(model_name)
    gpu = load_gpu(opts.gpu)
    plan = I.parse_plan(opts.plan, opts.weight_dtype, profile.default_kv_dtype(opts.weight_dtype))
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
    return Case(s.id, group, model, make_cluster(gpu, plan.num_gpus), plan, eng, wl, s.ttft_ms, s.tpot_ms)


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
            try:
                got, skip = read_runs(p, opts.requests_per_slot)
            except KeyError as e:
                raise InputError(str(path), str(e).strip("'"), "missing column",
                                 "give the silicon or trace-replay CSV columns") from None
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
