"""Workload options: --trace, a synthetic preset or explicit lengths, arrivals, closed loop, sessions."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path

from apex_plan.errors import InputError, did_you_mean
from apex_plan.limits import MAX_TOKENS_PER_REQUEST
from apex_plan.model.spec import ModelSpec
from apex_plan.workload.prefix import SessionOptions
from apex_plan.workload.spec import Trace, Workload
from apex_plan.workload.synthetic import PRESETS, LengthDist, closed_loop, preset_trace, synthetic_trace
from apex_plan.workload.trace import read_trace


_LENGTH_FORMS = "512, uniform:64-512, normal:mean=512,std=128 or lognormal:mean=74,std=120"



def parse_length(text: str, option: str) -> LengthDist:
    """'512' (constant), 'uniform:64-512', 'normal:mean=512,std=128', 'lognormal:mean=74,std=120'."""
    t = text.strip()
    number = r"(\d+(?:\.\d*)?(?:[eE][-+]?\d+)?)"
    m = re.fullmatch(number, t)
    if m:
        dist = ("constant", {"mean": float(m.group(1))})
    elif re.fullmatch(r"uniform:(\d+)\s*-\s*(\d+)", t):
        low, high = (int(x) for x in re.fullmatch(r"uniform:(\d+)\s*-\s*(\d+)", t).groups())
        if low > high:
            raise InputError(option, None, f"uniform range {low}-{high} runs backwards", f"write uniform:{high}-{low}")
        dist = ("uniform", {"low": low, "high": high})
    elif re.fullmatch(r"(normal|lognormal):(.*)", t):
        kind, rest = re.fullmatch(r"(normal|lognormal):(.*)", t).groups()
        params: dict[str, float] = {}
        for part in (p.strip() for p in rest.split(",")):
            kv = re.fullmatch(r"(mean|std)\s*=\s*" + r"([-+]?[^,\s]*)", part)
            if not kv:
                raise InputError(option, None, f"cannot read '{part}' in '{text}'", f"use {_LENGTH_FORMS}")
            try:
                value = float(kv.group(2))
            except ValueError:
                raise InputError(option, kv.group(1), f"'{kv.group(2)}' is not a number", f"use {_LENGTH_FORMS}") from None
            if kv.group(1) in params:
                raise InputError(option, kv.group(1), "given twice", "name mean and std once each")
            params[kv.group(1)] = value
        if "mean" not in params:
            raise InputError(option, "mean", "missing", f"use {_LENGTH_FORMS}")
        for key, value in params.items():
            if not math.isfinite(value) or value < 0 or (key == "mean" and value == 0):
                need = "above 0" if key == "mean" else "at least 0"
                raise InputError(option, key, f"must be a finite number of tokens {need}, got {value:g}",
                                 f"e.g. {kind}:mean=512,std=128")
        dist = (kind, params)
    else:
        raise InputError(option, None, f"cannot read length '{text}'", f"use {_LENGTH_FORMS}")
    kind, params = dist
    top = max(params.get("mean", 0.0), float(params.get("high", 0)))
    if top > MAX_TOKENS_PER_REQUEST:
        raise InputError(option, None, f"{top:,.0f} tokens is above the limit of {MAX_TOKENS_PER_REQUEST:,} per request",
                         "give a shorter length")
    if kind == "constant" and params["mean"] < 1:
        raise InputError(option, None, f"a length of {params['mean']:g} tokens", "give at least 1 token")
    if kind in ("normal", "lognormal"):
        # samples are clipped to [1, MAX_TOKENS_PER_REQUEST]
        return LengthDist(kind, mean=params["mean"], std=params.get("std", 0.0), max_tokens=MAX_TOKENS_PER_REQUEST)
    try:
        return LengthDist(kind, **params)
    except InputError as e:        # name the option, not the internal class
        raise InputError(option, e.field, e.problem, e.fix) from None



@dataclass(frozen=True)
class WorkloadOptions:
    """A command's workload options (None: not given): a trace file, or a synthetic draw from a preset
    or explicit lengths, open loop at `rate` or closed loop of `concurrency`; `sessions` (--turns,
    --prefix-tokens, ...) makes the synthetic one multi-turn / shared-prefix."""

    trace: str | None = None
    workload: str | None = None           # preset: chat | summarization | creation
    rate: float | None = None             # requests/s
    num_requests: int = 1000
    prompt_tokens: str | None = None      # a length form (parse_length)
    output_tokens: str | None = None
    concurrency: int | None = None
    arrival: str = "poisson"
    burstiness_cv: float = 1.0
    seed: int = 0
    sessions: SessionOptions | None = None


def workload_from_options(o: WorkloadOptions) -> Workload:
    """`--trace FILE`, or a preset `--workload chat|summarization|creation`, or explicit lengths."""
    sessions = o.sessions or SessionOptions()
    rate, concurrency, workload = o.rate, o.concurrency, o.workload
    if o.trace:
        if workload is not None or o.prompt_tokens is not None or o.output_tokens is not None or sessions.active:
            raise InputError("--trace", None, "given together with a synthetic workload", "use one or the other")
        tr = read_trace(Path(o.trace), sessions.hash_block_tokens)
    elif sessions.active:
        tr = _session_workload(o, sessions)
    else:
        if rate is None and concurrency is None:
            raise InputError("--rate", None, "a synthetic workload needs an arrival rate or a concurrency",
                             "pass --rate 2 (requests/s) or --concurrency 32")
        if o.prompt_tokens is not None or o.output_tokens is not None:
            if workload is not None and workload not in PRESETS:
                raise InputError("--workload", None, f"unknown preset '{workload}'", did_you_mean(workload, PRESETS))
            base = PRESETS[workload] if workload in PRESETS else None
            p = parse_length(o.prompt_tokens, "--prompt-tokens") if o.prompt_tokens is not None else \
                (base.prompt if base else None)
            out = parse_length(o.output_tokens, "--output-tokens") if o.output_tokens is not None else \
                (base.output if base else None)
            if p is None or out is None:
                raise InputError("--prompt-tokens" if p is None else "--output-tokens", None, "missing",
                                 "give both lengths, or a --workload preset")
            tr = synthetic_trace(o.num_requests, p, out, None if concurrency else rate, o.arrival, o.burstiness_cv,
                                 o.seed)
        else:
            name = "chat" if workload is None else workload
            if name not in PRESETS:
                raise InputError("--workload", None, f"unknown preset '{name}'", did_you_mean(name, PRESETS))
            tr = preset_trace(name, None if concurrency else rate, o.num_requests, o.seed, o.arrival, o.burstiness_cv)
    if sessions.prompt_pool:
        if o.trace is not None or sessions.active:
            raise InputError("--prompt-pool", None, "given with a trace or sessions, which carry their own prompts",
                             "drop --prompt-pool, or give a synthetic workload without --turns / --prefix-tokens")
        from apex_plan.workload.prefix import prompt_pool_trace
        tr = prompt_pool_trace(tr, sessions.prompt_pool, sessions.block_tokens)
    if concurrency:
        return closed_loop(tr, concurrency)
    return Workload(tr)


def session_options(turns: int, prefix_tokens: int, num_prefixes: int, think_time: str,
                    hash_block_tokens: int | None, prompt_pool: int = 0) -> SessionOptions:
    """--turns, --prefix-tokens, --num-prefixes, --think-time, --hash-block-tokens, --prompt-pool as one spec."""
    from apex_plan.units import parse_duration_s
    think_s = 0.0 if think_time.strip() in ("0", "0s", "0ms") else parse_duration_s(think_time, "--think-time")
    if think_s > 86_400:
        raise InputError("--think-time", None, f"'{think_time}' is above a day", "e.g. --think-time 10s")
    return SessionOptions(turns, prefix_tokens, num_prefixes, think_s, hash_block_tokens, prompt_pool)



def _session_workload(o: WorkloadOptions, sessions: SessionOptions) -> Trace:
    """Multi-turn sessions behind shared system prompts: new messages from --prompt-tokens (or the
    preset's prompts), replies from --output-tokens (or the preset's outputs)."""
    from apex_plan.workload.prefix import multiturn_trace
    opt = "--turns" if sessions.turns > 1 else "--prefix-tokens"
    if o.concurrency:
        raise InputError(opt, None, "sessions arrive open loop, not as a closed loop", "drop --concurrency; give --rate")
    if o.rate is None:
        raise InputError("--rate", None, "a multi-turn workload needs an arrival rate", "pass --rate 2 (requests/s)")
    name = "chat" if o.workload is None else o.workload
    if name not in PRESETS:
        raise InputError("--workload", None, f"unknown preset '{name}'", did_you_mean(name, PRESETS))
    msg = parse_length(o.prompt_tokens, "--prompt-tokens") if o.prompt_tokens is not None else PRESETS[name].prompt
    out = parse_length(o.output_tokens, "--output-tokens") if o.output_tokens is not None else PRESETS[name].output
    return multiturn_trace(o.num_requests, msg, out, o.rate, sessions, seed=o.seed, name=f"{name}-sessions")


def check_workload_fits(wl: Workload, model: ModelSpec, max_model_len: int | None, trace: str | None) -> None:
    """Every prompt must fit the context (vLLM refuses longer ones): else one line naming the request."""
    limit = max_model_len or model.max_context
    prompts = wl.trace.prompt_tokens
    too_long = prompts >= limit
    if not too_long.any():
        return
    i = int(too_long.argmax())
    opt = "--max-model-len" if max_model_len else None
    fix = (f"raise --max-model-len above {int(prompts.max())} (the model allows {model.max_context})"
           if max_model_len and prompts.max() < model.max_context
           else f"drop requests with prompts of {model.max_context} tokens or more, or use a longer-context model")
    if trace:
        where, what = trace, f"request {i + 1} of {len(prompts)} has a {int(prompts[i]):,}-token prompt, which does"
    else:
        where = "--prompt-tokens" if wl.trace.name not in ("chat", "summarization", "creation") else "--workload"
        what = (f"{int(too_long.sum())} of {len(prompts)} sampled prompts (the longest {int(prompts.max()):,} "
                f"tokens) do")
    ctx = "--max-model-len" if opt else f"the {model.name} context of"
    raise InputError(where, None, f"{what} not fit {ctx} {limit:,} tokens", fix)



def trace_rate(trace: Trace, path: str) -> float:
    """The mean arrival rate of a trace, or an InputError when its arrivals span no time (search finds each
    plan's goodput by time-scaling the arrivals, which needs them spread over time)."""
    if len(trace) < 2 or trace.duration_s <= 0:
        raise InputError(path, None, f"{len(trace)} request(s) arriving at the same time: no arrival rate to scale",
                         "give a trace whose requests arrive over time, or a synthetic workload with "
                         "--workload/--prompt-tokens and --rate")
    return trace.rate_per_s
