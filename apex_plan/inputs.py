"""Turn command-line options into specs: model, cluster, plan, engine settings, workload, SLO."""

from __future__ import annotations

import dataclasses

import math
import re
from pathlib import Path

from apex_plan.errors import InputError, did_you_mean
from apex_plan.hardware.load import load_cluster, load_gpu, make_cluster
from apex_plan.hardware.spec import ClusterSpec
from apex_plan.limits import MAX_BATCHED_TOKENS, MAX_GPUS, MAX_NUM_SEQS, MAX_SEARCH_GPUS, MAX_TOKENS_PER_REQUEST, check_count
from apex_plan.model.spec import ModelSpec
from apex_plan.plan.spec import EngineConfig, Plan
from apex_plan.units import DTYPE_BYTES
from apex_plan.workload.spec import Trace, Workload
from apex_plan.workload.synthetic import PRESETS, LengthDist, closed_loop, preset_trace, synthetic_trace
from apex_plan.workload.trace import read_trace
from apex_plan.workload.prefix import SessionOptions



def cluster_from_options(gpu: str | None, gpus: int | None, gpus_per_node: int | None, cluster: str | None,
                         partial_last_node: bool = False) -> ClusterSpec:
    """`--cluster FILE` or `--gpu NAME --gpus N [--gpus-per-node G]`. `partial_last_node`: N GPUs may
    leave part of the last node unused (a disaggregated deployment of 7 x 4 + 2 x 8 GPUs): the
    cluster is the whole nodes that hold them."""
    if cluster:
        if gpu or gpus:
            raise InputError("--cluster", None, "given together with --gpu/--gpus", "use one or the other")
        return load_cluster(cluster)
    if not gpu:
        raise InputError("--gpu", None, "no GPU given", "pass --gpu NAME --gpus N, or --cluster FILE")
    if gpus is None:
        raise InputError("--gpus", None, "number of GPUs missing", "e.g. --gpus 8")
    g = load_gpu(gpu)
    per = g.gpus_per_node if gpus_per_node is None else gpus_per_node
    if partial_last_node and isinstance(per, int) and per > 0 and gpus > per:
        gpus = -(-gpus // per) * per
    return make_cluster(g, gpus, gpus_per_node)


def fleet_from_options(gpu: str | None, gpus: int | None, gpus_per_node: int, cluster: str | None,
                       prices: str | None):
    """`search`'s cluster: a cluster file (node groups or one), or `--gpu/--gpus`; `--prices FILE`
    prices the groups whose file gives no `price_per_gpu_hour`."""
    from apex_plan.hardware.fleet import load_fleet, load_prices, priced, single_group
    if cluster:
        if gpu or gpus:
            raise InputError("--cluster", None, "given together with --gpu/--gpus", "use one or the other")
        fleet = load_fleet(cluster)
    else:
        fleet = single_group(cluster_from_options(gpu, gpus, gpus_per_node, None))
    return priced(fleet, load_prices(prices) if prices else None)


_POWER_UNITS = {"w": 1.0, "kw": 1e3}
_CLOCK_UNITS = {"mhz": 1.0, "ghz": 1e3}


def _unit_list(text: str | None, option: str, units: dict[str, float], example: str) -> list[float]:
    """'500W,0.7kW' -> [500.0, 700.0] in the first unit of `units` (a bare number is in that unit)."""
    if text is None:
        return []
    out = []
    for item in csv_list(text, option):
        low = item.strip().lower()
        unit = next((u for u in sorted(units, key=len, reverse=True) if low.endswith(u)), None)
        num = low[: -len(unit)] if unit else low
        try:
            value = float(num) * (units[unit] if unit else 1.0)
        except ValueError:
            raise InputError(option, None, f"cannot read '{item}'", f"e.g. {option} {example}") from None
        if not value > 0 or value != value or value == float("inf"):
            raise InputError(option, None, f"must be positive, got '{item}'", f"e.g. {option} {example}")
        out.append(value)
    return out


def operating_points(power_caps: str | None, sm_clocks: str | None) -> tuple:
    """The operating points a search tries per plan: each `--power-cap` (W per GPU) and each
    `--sm-clock` (MHz, locked); neither: the datasheet clock only."""
    from apex_plan.hardware.power import DEFAULT_POINT, OperatingPoint
    caps = _unit_list(power_caps, "--power-cap", _POWER_UNITS, "500W,700W")
    clocks = _unit_list(sm_clocks, "--sm-clock", _CLOCK_UNITS, "1410MHz,1980MHz")
    points = [OperatingPoint(power_cap_w=c) for c in dict.fromkeys(caps)]
    points += [OperatingPoint(sm_clock_mhz=f) for f in dict.fromkeys(clocks)]
    return tuple(points) or (DEFAULT_POINT,)


def default_weight_dtype(model: ModelSpec, cluster: ClusterSpec) -> str:
    """Without --weight-dtype: the checkpoint's own format (DeepSeek-V3 and '-FP8' repos fp8, '-NVFP4' fp4),
    or bf16 when the GPU cannot run it (what an engine then loads: the dequantised weights)."""
    dt = model.checkpoint_dtype
    return dt if dt in ("bf16", "fp16") or cluster.gpu.supports_weights(dt) else "bf16"


def parse_plan(text: str | None, weight_dtype: str, kv_dtype: str, tp: int | None = None, pp: int | None = None) -> Plan:
    """'dp=2,tp=4,pp=1[,ep=1][,adp=1]' -> Plan; unnamed degrees are 1; `tp`/`pp` (vLLM's
    --tensor-parallel-size, --pipeline-parallel-size) set those degrees when --plan does not name them
    differently."""
    vals = {"dp": 1, "tp": 1, "pp": 1, "ep": 1, "adp": 1}
    text = "dp=1" if text is None else text
    parts = [p.strip() for p in text.split(",")]
    if not text.strip() or not all(parts):
        raise InputError("--plan", None, f"'{text}' has an empty part", "write it as dp=1,tp=8,pp=1")
    named: set[str] = set()
    for part in parts:
        m = re.fullmatch(r"(dp|tp|pp|ep|adp)\s*=\s*(\d{1,7})", part)
        if not m:
            raise InputError("--plan", None, f"cannot read '{part}' in '{text}'",
                             "write it as dp=1,tp=8,pp=1 (degrees dp, tp, pp, ep, adp; whole numbers)")
        if m.group(1) in named:
            raise InputError("--plan", m.group(1), f"given twice in '{text}'", "name each degree once")
        named.add(m.group(1))
        vals[m.group(1)] = int(m.group(2))
    for key, opt, value in (("tp", "--tensor-parallel-size", tp), ("pp", "--pipeline-parallel-size", pp)):
        if value is None:
            continue
        if key in named and vals[key] != value:
            raise InputError(opt, None, f"{value} contradicts {key}={vals[key]} in --plan", "give the degree once")
        vals[key] = value
    for k, v in vals.items():
        if v < 1:
            raise InputError("--plan", k, f"must be at least 1, got {v}", "use positive degrees")
    if vals["dp"] * vals["tp"] * vals["pp"] > MAX_GPUS:
        raise InputError("--plan", None, f"needs {vals['dp'] * vals['tp'] * vals['pp']:,} GPUs, above the limit of "
                         f"{MAX_GPUS:,}", "lower the degrees")
    for opt, dt in (("--weight-dtype", weight_dtype), ("--kv-dtype", kv_dtype)):
        if dt not in DTYPE_BYTES:
            raise InputError(opt, None, f"unknown dtype '{dt}'", did_you_mean(dt, DTYPE_BYTES))
    return Plan(vals["dp"], vals["tp"], vals["pp"], vals["ep"], weight_dtype, kv_dtype, adp=vals["adp"])


def check_plan_fits(plan: Plan, cluster: ClusterSpec, model: ModelSpec, where: str = "--plan") -> None:
    """A given plan must pass the rules `search` enumerates with (`plan.enumerate.plan_reason`); an explicit
    plan may span nodes with tensor parallelism (whole nodes only)."""
    from apex_plan.plan.enumerate import plan_reason
    why = plan_reason(model, cluster, plan, allow_cross_node_tp=True)
    if why is None:
        return
    kind, reason = why
    fix = {"limit": "lower the degrees or raise --gpus", "dtype": "choose a dtype the GPU supports"}.get(
        kind, "choose degrees that divide the model's heads, layers and experts and fill whole nodes")
    if kind == "dtype" and where == "--plan":         # name the dtype option the user gave
        where = "--weight-dtype" if "weight dtype" in reason else "--kv-dtype"
        fix = "use " + ", ".join(k for k in cluster.gpu.peak_tflops if k in ("bf16", "fp16", "fp8", "fp4"))
    raise InputError(where, None, f"{plan.label()} on {model.name}: {reason}", fix)


def parse_disagg_plan(prefill_plan: str | None, prefill_replicas: int | None, decode_plan: str | None,
                      decode_replicas: int | None, decode_max_num_seqs: int | None, weight_dtype: str, kv_dtype: str,
                      cluster: ClusterSpec, model: ModelSpec, gpus: int | None = None):
    """`--prefill-plan tp=..,pp=..[,ep=..][,adp=..] --prefill-replicas NP --decode-plan ... --decode-replicas ND`
    -> DisaggPlan (each role's Plan with dp = its replica count), checked against the model and the GPUs."""
    from apex_plan.plan.disagg import DisaggPlan
    roles = {}
    for role, text, reps in (("prefill", prefill_plan, prefill_replicas), ("decode", decode_plan, decode_replicas)):
        opt = f"--{role}-plan"
        if text is None:
            raise InputError(opt, None, "missing: a disaggregated deployment needs both roles' layouts",
                             f"e.g. {opt} tp=8,pp=1 --{role}-replicas 1")
        try:
            p = parse_plan(text, weight_dtype, kv_dtype)
            if p.dp != 1:
                raise InputError(opt, "dp", f"dp={p.dp}: instances of a role are counted by --{role}-replicas",
                                 f"drop dp and pass --{role}-replicas {p.dp}")
            p = dataclasses.replace(p, dp=reps or 1)
            check_plan_fits(dataclasses.replace(p, dp=1), cluster, model, where=opt)
        except InputError as e:
            raise InputError(opt, e.field, e.problem, e.fix) from None
        roles[role] = p
    dplan = DisaggPlan(roles["prefill"], roles["decode"], decode_max_num_seqs)
    gpus = gpus or cluster.num_gpus
    if dplan.num_gpus > gpus:
        raise InputError("--gpus", None, f"{dplan.prefill_replicas} prefill x {roles['prefill'].gpus_per_replica} + "
                         f"{dplan.decode_replicas} decode x {roles['decode'].gpus_per_replica} GPUs = {dplan.num_gpus}, "
                         f"the cluster has {gpus}", f"raise --gpus to {dplan.num_gpus} or use fewer replicas")
    return dplan


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


def workload_from_options(trace: str | None, workload: str | None, rate: float | None, num_requests: int,
                          prompt_tokens: str | None, output_tokens: str | None, concurrency: int | None,
                          arrival: str, burstiness_cv: float, seed: int,
                          sessions: SessionOptions | None = None) -> Workload:
    """`--trace FILE`, or a preset `--workload chat|summarization|creation`, or explicit lengths;
    `sessions` (--turns, --prefix-tokens, ...) makes the synthetic one multi-turn / shared-prefix."""
    sessions = sessions or SessionOptions()
    if trace:
        if workload is not None or prompt_tokens is not None or output_tokens is not None or sessions.active:
            raise InputError("--trace", None, "given together with a synthetic workload", "use one or the other")
        tr = read_trace(Path(trace), sessions.hash_block_tokens)
    elif sessions.active:
        tr = _session_workload(workload, rate, num_requests, prompt_tokens, output_tokens, concurrency, seed, sessions)
    else:
        if rate is None and concurrency is None:
            raise InputError("--rate", None, "a synthetic workload needs an arrival rate or a concurrency",
                             "pass --rate 2 (requests/s) or --concurrency 32")
        if prompt_tokens is not None or output_tokens is not None:
            if workload is not None and workload not in PRESETS:
                raise InputError("--workload", None, f"unknown preset '{workload}'", did_you_mean(workload, PRESETS))
            base = PRESETS[workload] if workload in PRESETS else None
            p = parse_length(prompt_tokens, "--prompt-tokens") if prompt_tokens is not None else (base.prompt if base else None)
            o = parse_length(output_tokens, "--output-tokens") if output_tokens is not None else (base.output if base else None)
            if p is None or o is None:
                raise InputError("--prompt-tokens" if p is None else "--output-tokens", None, "missing",
                                 "give both lengths, or a --workload preset")
            tr = synthetic_trace(num_requests, p, o, None if concurrency else rate, arrival, burstiness_cv, seed)
        else:
            name = "chat" if workload is None else workload
            if name not in PRESETS:
                raise InputError("--workload", None, f"unknown preset '{name}'", did_you_mean(name, PRESETS))
            tr = preset_trace(name, None if concurrency else rate, num_requests, seed, arrival, burstiness_cv)
    if concurrency:
        return closed_loop(tr, concurrency)
    return Workload(tr)


def speculative_option(speculative: str | None, acceptance: str | None):
    """--speculative mtp:K|eagle3:K and --speculative-acceptance as a Speculative spec (or None)."""
    from apex_plan.engine.speculative import parse_speculative
    return parse_speculative(speculative, acceptance)


def session_options(turns: int, prefix_tokens: int, num_prefixes: int, think_time: str,
                    hash_block_tokens: int | None) -> SessionOptions:
    """--turns, --prefix-tokens, --num-prefixes, --think-time, --hash-block-tokens as one spec."""
    from apex_plan.units import parse_duration_s
    think_s = 0.0 if think_time.strip() in ("0", "0s", "0ms") else parse_duration_s(think_time, "--think-time")
    if think_s > 86_400:
        raise InputError("--think-time", None, f"'{think_time}' is above a day", "e.g. --think-time 10s")
    return SessionOptions(turns, prefix_tokens, num_prefixes, think_s, hash_block_tokens)


def _session_workload(workload: str | None, rate: float | None, num_requests: int, prompt_tokens: str | None,
                      output_tokens: str | None, concurrency: int | None, seed: int, sessions: SessionOptions) -> Trace:
    """Multi-turn sessions behind shared system prompts: new messages from --prompt-tokens (or the
    preset's prompts), replies from --output-tokens (or the preset's outputs)."""
    from apex_plan.workload.prefix import multiturn_trace
    opt = "--turns" if sessions.turns > 1 else "--prefix-tokens"
    if concurrency:
        raise InputError(opt, None, "sessions arrive open loop, not as a closed loop", "drop --concurrency; give --rate")
    if rate is None:
        raise InputError("--rate", None, "a multi-turn workload needs an arrival rate", "pass --rate 2 (requests/s)")
    name = "chat" if workload is None else workload
    if name not in PRESETS:
        raise InputError("--workload", None, f"unknown preset '{name}'", did_you_mean(name, PRESETS))
    msg = parse_length(prompt_tokens, "--prompt-tokens") if prompt_tokens is not None else PRESETS[name].prompt
    out = parse_length(output_tokens, "--output-tokens") if output_tokens is not None else PRESETS[name].output
    return multiturn_trace(num_requests, msg, out, rate, turns=sessions.turns, prefix_tokens=sessions.prefix_tokens,
                           num_prefixes=sessions.num_prefixes, think_time_s=sessions.think_time_s,
                           hash_block_tokens=sessions.block_tokens, seed=seed, name=f"{name}-sessions")


def engine_from_options(engine: str, gpu_memory_utilization: float | None, max_model_len: int | None,
                        custom_allreduce: bool, chunked_prefill: bool | None, max_num_seqs: int | None,
                        max_batched_tokens: int | None, routing: str,
                        activation_scales: str | None = None, prefix_caching: bool | None = None,
                        speculative=None) -> EngineConfig:
    """`--engine NAME[@VERSION]` resolved to its profile, plus the settings given (None: the profile's)."""
    from apex_plan.engine.load import resolve_engine_profile
    profile = resolve_engine_profile(engine)
    if activation_scales is not None and activation_scales not in ("dynamic", "static"):
        raise InputError("--activation-scales", None, f"unknown value '{activation_scales}'", "use dynamic or static")
    return EngineConfig(max_num_seqs=max_num_seqs, max_batched_tokens=max_batched_tokens,
                        chunked_prefill=chunked_prefill, gpu_memory_utilization=gpu_memory_utilization,
                        max_model_len=max_model_len, custom_allreduce=custom_allreduce,
                        routing=routing.replace("-", "_"), name=engine, activation_scales=activation_scales,
                        profile=profile, prefix_caching=prefix_caching, speculative=speculative)


# ------------------------------------------------------------------------------------------------
# checks that need more than one option, and search's sweep lists

def check_engine(cfg: EngineConfig, model: ModelSpec) -> None:
    """Engine settings vLLM itself would refuse for this model, as one InputError."""
    from apex_plan.simulate.engine import resolve_engine
    eng = resolve_engine(cfg, model)
    if eng.max_batched_tokens < eng.max_num_seqs:   # vLLM SchedulerConfig._verify_args refuses this
        raise InputError("--max-batched-tokens", None,
                         f"{eng.max_batched_tokens} is below --max-num-seqs {eng.max_num_seqs}",
                         f"raise it to at least {eng.max_num_seqs} or lower --max-num-seqs")


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


def check_search_cluster(cluster: ClusterSpec, cluster_file: str | None, total_gpus: int | None = None) -> None:
    """`search` covers at most MAX_SEARCH_GPUS GPUs (its time grows with the cluster)."""
    if (total_gpus or cluster.num_gpus) > MAX_SEARCH_GPUS:
        raise InputError(cluster_file or "--gpus", "nodes" if cluster_file else None,
                         f"search covers at most {MAX_SEARCH_GPUS:,} GPUs, the cluster has {total_gpus or cluster.num_gpus:,}",
                         f"search one pod of up to {MAX_SEARCH_GPUS:,} GPUs and replicate its deployment")


def trace_rate(trace: Trace, path: str) -> float:
    """The mean arrival rate of a trace, or an InputError when its arrivals span no time (search finds each
    plan's goodput by time-scaling the arrivals, which needs them spread over time)."""
    if len(trace) < 2 or trace.duration_s <= 0:
        raise InputError(path, None, f"{len(trace)} request(s) arriving at the same time: no arrival rate to scale",
                         "give a trace whose requests arrive over time, or a synthetic workload with "
                         "--workload/--prompt-tokens and --rate")
    return trace.rate_per_s


def csv_list(text: str, option: str) -> list[str]:
    """'a,b' -> ['a', 'b']; an empty list or an empty item is an InputError."""
    items = [t.strip() for t in text.split(",")]
    if not text.strip() or not all(items):
        raise InputError(option, None, f"'{text}' has an empty item", "give one or more values separated by commas")
    return items


def int_list(text: str | None, option: str, high: int) -> list[int | None]:
    """'128,256' -> [128, 256]; None -> [None] (the default)."""
    if text is None:
        return [None]
    out: list[int | None] = []
    for t in csv_list(text, option):
        if not t.isdigit():
            raise InputError(option, None, f"'{t}' is not a positive whole number", "e.g. 128,256")
        out.append(check_count(option, None, int(t), 1, high, "e.g. 128,256"))
    return out


_CHUNKED = {"auto": None, "on": True, "off": False, "true": True, "false": False}


def chunked_prefill_modes(text: str, sweep: bool) -> list[bool | None]:
    """--chunked-prefill: auto | on | off (None/True/False); a search sweep also takes lists and 'both'."""
    words = csv_list(text.lower(), "--chunked-prefill")
    if sweep:
        words = [w for word in words for w in (("on", "off") if word == "both" else (word,))]
    if len(words) > 1 and not sweep:
        raise InputError("--chunked-prefill", None, f"one value only in simulate, got '{text}'", "use auto, on or off")
    out: list[bool | None] = []
    for w in words:
        if w not in _CHUNKED:
            raise InputError("--chunked-prefill", None, f"unknown value '{w}'",
                             "use auto, on or off" + (" (or a list, or both)" if sweep else ""))
        if _CHUNKED[w] not in out:
            out.append(_CHUNKED[w])
    return out


def prefix_caching_modes(text: str | None) -> list[bool | None]:
    """search --prefix-caching: auto | on | off | both (or a list): None (the profile's default), True, False."""
    if text is None:
        return [None]
    words = [w for word in csv_list(text.lower(), "--prefix-caching")
             for w in (("on", "off") if word == "both" else (word,))]
    out: list[bool | None] = []
    for w in words:
        if w not in _CHUNKED:
            raise InputError("--prefix-caching", None, f"unknown value '{w}'", "use auto, on, off or both")
        if _CHUNKED[w] not in out:
            out.append(_CHUNKED[w])
    return out


def prefix_caching_mode(text: str) -> bool | None:
    """simulate --prefix-caching auto | on | off."""
    modes = prefix_caching_modes(text)
    if len(modes) > 1:
        raise InputError("--prefix-caching", None, f"one value only in simulate, got '{text}'", "use auto, on or off")
    return modes[0]


def speculative_list(text: str | None, acceptance: str | None) -> list:
    """search --speculative none,mtp:1,mtp:3 (each with --speculative-acceptance) -> [None, Speculative, ...]."""
    from apex_plan.engine.speculative import parse_speculative
    if text is None:
        if acceptance is not None:
            raise InputError("--speculative-acceptance", None, "given without --speculative", "add e.g. --speculative mtp:1")
        return [None]
    out = []
    for word in csv_list(text, "--speculative"):
        spec = parse_speculative(word, acceptance if word.lower() not in ("none", "off") else None)
        if spec not in out:
            out.append(spec)
    return out


def _setting_label(cfg: EngineConfig) -> str:
    budget = cfg.max_batched_tokens if cfg.max_batched_tokens is not None else "default"
    if cfg.max_num_seqs is None and cfg.profile is not None:
        cfg = dataclasses.replace(cfg, max_num_seqs=cfg.profile.scheduler.max_num_seqs)
    chunk = {None: "auto", True: "on", False: "off"}[cfg.chunked_prefill]
    extra = "" if cfg.prefix_caching is None else f" prefix_caching={'on' if cfg.prefix_caching else 'off'}"
    extra += "" if cfg.speculative is None else f" speculative={cfg.speculative.label}"
    return f"max_num_seqs={cfg.max_num_seqs} max_batched_tokens={budget} chunked_prefill={chunk}" + extra


def engine_sweep(base: EngineConfig, model: ModelSpec, max_num_seqs: str, max_batched_tokens: str | None,
                 chunked_prefill: str, prefix_caching: str | None = None, speculative: str | None = None,
                 acceptance: str | None = None) -> tuple[tuple[EngineConfig, ...], list[tuple[str, str]]]:
    """Every combination of search's engine lists; combinations vLLM would refuse (or the engine or
    model cannot run, as a speculative method) are skipped and returned as (setting, reason). All of
    them refused is an InputError with the first reason."""
    import dataclasses
    import itertools
    seqs = int_list(max_num_seqs, "--max-num-seqs", MAX_NUM_SEQS)
    budgets = int_list(max_batched_tokens, "--max-batched-tokens", MAX_BATCHED_TOKENS)
    modes = chunked_prefill_modes(chunked_prefill, sweep=True)
    caching = prefix_caching_modes(prefix_caching)
    specs = speculative_list(speculative, acceptance)
    kept: list[EngineConfig] = []
    rejected: list[tuple[str, str]] = []
    first: InputError | None = None
    for s, b, c, pc, sp in itertools.product(seqs, budgets, modes, caching, specs):
        cfg = dataclasses.replace(base, max_num_seqs=s, max_batched_tokens=b, chunked_prefill=c,
                                  prefix_caching=pc, speculative=sp)
        try:
            check_engine(cfg, model)
        except InputError as e:
            first = first or e
            rejected.append((_setting_label(cfg), e.render()))
            continue
        kept.append(cfg)
    if not kept:
        assert first is not None
        if len(rejected) == 1:
            raise first
        raise InputError(first.where, first.field, f"all {len(rejected)} engine settings are invalid; first: "
                         f"{first.problem}", first.fix)
    return tuple(kept), rejected
