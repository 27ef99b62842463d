"""Command line: `apex-plan models | hardware | check | simulate | search | calibrate | validate | sweep`.

Every bad input ends as one line on stderr naming the file or option, the field and the fix, and
exit status 2 (see `apex_plan.errors.InputError`); results go to stdout (or --output), progress
bars to stderr.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import List, Optional

import typer

from apex_plan.errors import InputError
from apex_plan.report.output import check_format, emit

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
    help="Pick the parallel execution plan for serving an LLM on a GPU cluster, and predict its latency, "
         "memory and energy.\n\nExample: apex-plan search --model llama-3.1-70b --gpu h100-sxm-80gb --gpus 8 "
         "--workload chat --rate 2 --ttft-slo 500ms --tpot-slo 50ms",
)

FormatOpt = typer.Option("table", "--format", "-f", help="table | json | csv")
OutputOpt = typer.Option(None, "--output", "-o", help="write the result to FILE instead of stdout")
ReportOpt = typer.Option(None, "--report", help="also write a self-contained HTML report to FILE.html")


def _check_outputs(report: str | None, plot: str | None) -> None:
    from apex_plan.report.html import check_outputs
    check_outputs(report, plot)


def _count(low: int, high: int, example: str):
    """Option callback: a whole number in [low, high] (limits in apex_plan/limits.py), else one line."""
    def callback(param: typer.CallbackParam, value: Optional[int]) -> Optional[int]:
        from apex_plan.limits import check_count
        return None if value is None else check_count(param.opts[0], None, value, low, high, example)
    return callback


def _real(low: float, high: float, example: str, low_open: bool = True):
    """Option callback: a finite number in (low, high] ([low, high] unless low_open), else one line."""
    def callback(param: typer.CallbackParam, value: Optional[float]) -> Optional[float]:
        from apex_plan.limits import check_real
        return None if value is None else check_real(param.opts[0], None, value, low, high, example, low_open)
    return callback


def _version(value: bool) -> None:
    if value:
        from apex_plan import __version__
        typer.echo(f"apex-plan {__version__}")
        raise typer.Exit(0)


@app.callback()
def _root(version: bool = typer.Option(False, "--version", is_eager=True, callback=_version,
                                       help="print the version and exit")) -> None:
    """Pick the parallel execution plan for serving an LLM on a GPU cluster."""


from apex_plan import limits as L  # noqa: E402  (light: constants only)

# option help shared by simulate and search
_H = {
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
    "ttft": "time-to-first-token target, with a unit: 500ms, 0.5s",
    "tpot": "time-per-output-token target, with a unit: 50ms",
    "pct": "percentile of TTFT and TPOT that must meet the targets, in (0, 100]",
    "turns": "synthetic sessions of this many turns; each turn resends the conversation so far plus a new "
             "message (--prompt-tokens: the new message)",
    "prefix_tokens": "shared system prompt ahead of every synthetic session, tokens",
    "num_prefixes": "distinct system prompts the sessions are spread over",
    "think_time": "mean think time between a session's turns (exponential), e.g. 10s",
    "prefix_caching": "automatic prefix caching (auto: the engine profile's default, on for vLLM V1, SGLang, "
                      "TRT-LLM, off for vLLM 0.6; vLLM: --[no-]enable-prefix-caching)",
    "speculative": "speculative decoding: mtp:K (the model's MTP module) or eagle3:K, K draft tokens per step",
    "acceptance": "draft acceptance: one conditional rate (0.8) or vLLM's per-position rates (0.9,0.7,0.5); "
                  "default only for mtp:1 (0.85, DeepSeek-V3 report)",
    "hash_block_tokens": "tokens per prefix block of synthetic and session traces (default 64; Mooncake: 512)",
}


# ------------------------------------------------------------------------------------------------
@app.command(epilog="Example: apex-plan models llama-3.1-70b --format json")
def models(name: Optional[str] = typer.Argument(None, help="built-in name or path to .yaml / config.json"),
           fmt: str = FormatOpt, output: Optional[str] = OutputOpt) -> None:
    """List built-in models, or show one with its exact parameter counts and KV-cache size."""
    from apex_plan.model.load import list_models, load_model
    from apex_plan.report import describe as D
    check_format(fmt)
    if name:
        m = load_model(name)
        emit(fmt, output, lambda: {"schema_version": D.SCHEMA_VERSION, **D.model_doc(m)},
             lambda: D.models_rows([m]), lambda c: D.model_table(m, c))
    else:
        ms = [load_model(n) for n in list_models()]
        emit(fmt, output, lambda: D.models_list_doc(ms), lambda: D.models_rows(ms), lambda c: D.models_table(ms, c))


@app.command(epilog="Example: apex-plan hardware h100-sxm-80gb")
def hardware(name: Optional[str] = typer.Argument(None, help="built-in GPU profile or path to a profile YAML"),
             fmt: str = FormatOpt, output: Optional[str] = OutputOpt) -> None:
    """List GPU profiles, or show one with its calibration constants."""
    from apex_plan.hardware.load import list_gpus, load_gpu
    from apex_plan.report import describe as D
    check_format(fmt)
    if name:
        g = load_gpu(name, where="hardware NAME")
        emit(fmt, output, lambda: {"schema_version": D.SCHEMA_VERSION, **D.gpu_doc(g)},
             lambda: D.gpus_rows([g]), lambda c: D.gpu_table(g, c))
    else:
        gs = [load_gpu(n) for n in list_gpus()]
        emit(fmt, output, lambda: {"schema_version": D.SCHEMA_VERSION, "gpus": [D.gpu_doc(g) for g in gs]},
             lambda: D.gpus_rows(gs), lambda c: D.gpus_table(gs, c))


@app.command(epilog="Example: apex-plan check models/llama-3.1-70b.yaml examples/cluster.yaml examples/chat.jsonl")
def check(files: List[Path] = typer.Argument(..., help="model, GPU profile, cluster, trace, engine profile, sweep or "
                                                         "measured-run files")) -> None:
    """Validate input files with the readers every command uses; one line per file, exit 2 if any is bad."""
    from apex_plan.checkfiles import check_file
    bad = 0
    for f in files:
        try:
            typer.echo(f"ok  {f}: {check_file(f)}")
        except InputError as e:
            bad += 1
            typer.echo(f"bad {e}", err=True)
    if bad:
        raise typer.Exit(2)


# ------------------------------------------------------------------------------------------------
_SIM_EPILOG = ("Example: apex-plan simulate --model llama-3.1-70b --gpu h100-sxm-80gb --gpus 8 --plan dp=1,tp=8,pp=1 "
               "--workload chat --rate 1 --num-requests 500 --ttft-slo 500ms --tpot-slo 50ms")


@app.command(epilog=_SIM_EPILOG)
def simulate(
    model: str = typer.Option(..., "--model", "-m", help=_H["model"]),
    gpu: Optional[str] = typer.Option(None, "--gpu", help=_H["gpu"]),
    gpus: Optional[int] = typer.Option(None, "--gpus", help=_H["gpus"], callback=_count(1, L.MAX_GPUS, "e.g. --gpus 8")),
    gpus_per_node: Optional[int] = typer.Option(None, "--gpus-per-node", help=_H["gpus_per_node"],
                                      callback=_count(1, L.MAX_GPUS_PER_NODE, "e.g. --gpus-per-node 8")),
    cluster: Optional[str] = typer.Option(None, "--cluster", help=_H["cluster"]),
    plan: Optional[str] = typer.Option(None, "--plan", help="dp=D,tp=T,pp=P[,ep=E][,adp=A] (adp: attention-DP "
                                                             "ranks); unnamed degrees are 1 (default dp=1,tp=1,pp=1)"),
    tp_size: Optional[int] = typer.Option(None, "--tensor-parallel-size", "-tp", help="tp of --plan (vLLM spelling)",
                                          callback=_count(1, L.MAX_GPUS, "e.g. --tensor-parallel-size 8")),
    pp_size: Optional[int] = typer.Option(None, "--pipeline-parallel-size", "-pp", help="pp of --plan (vLLM spelling)",
                                          callback=_count(1, L.MAX_GPUS, "e.g. --pipeline-parallel-size 2")),
    weight_dtype: Optional[str] = typer.Option(None, "--weight-dtype",
                                               help="weight dtype: bf16 | fp16 | fp8 | int8 | fp4 | int4 (default: "
                                                    "the checkpoint's own, e.g. fp8 for DeepSeek-V3 or a -FP8 repo)"),
    kv_dtype: Optional[str] = typer.Option(None, "--kv-dtype", "--kv-cache-dtype",
                                           help="KV-cache dtype: bf16 | fp8 (default: the engine's for the weights)"),
    trace: Optional[str] = typer.Option(None, "--trace", help=_H["trace"]),
    workload: Optional[str] = typer.Option(None, "--workload", help=_H["workload"]),
    rate: Optional[float] = typer.Option(None, "--rate", help="synthetic arrival rate, requests/s",
                                         callback=_real(L.MIN_RATE_PER_S, L.MAX_RATE_PER_S, "e.g. --rate 2", False)),
    num_requests: Optional[int] = typer.Option(None, "--num-requests",
                                               help=_H["num_requests"] + " (default 1000; closed loop: 5 x --concurrency)",
                                               callback=_count(1, L.MAX_REQUESTS, "e.g. --num-requests 1000")),
    prompt_tokens: Optional[str] = typer.Option(None, "--prompt-tokens", help=_H["prompt_tokens"]),
    output_tokens: Optional[str] = typer.Option(None, "--output-tokens", help=_H["output_tokens"]),
    concurrency: Optional[int] = typer.Option(None, "--concurrency", help="closed loop: requests kept in flight",
                                              callback=_count(1, L.MAX_REQUESTS, "e.g. --concurrency 32")),
    arrival: str = typer.Option("poisson", "--arrival", help=_H["arrival"]),
    burstiness_cv: float = typer.Option(1.0, "--burstiness-cv", help=_H["burstiness_cv"],
                                        callback=_real(0.0, 100.0, "e.g. --burstiness-cv 2")),
    seed: int = typer.Option(0, "--seed", help=_H["seed"], callback=_count(0, L.MAX_SEED, "e.g. --seed 0")),
    turns: int = typer.Option(1, "--turns", help=_H["turns"], callback=_count(1, 10_000, "e.g. --turns 8")),
    prefix_tokens: int = typer.Option(0, "--prefix-tokens", help=_H["prefix_tokens"],
                                      callback=_count(0, L.MAX_TOKENS_PER_REQUEST, "e.g. --prefix-tokens 2000")),
    num_prefixes: int = typer.Option(1, "--num-prefixes", help=_H["num_prefixes"],
                                     callback=_count(1, 1 << 20, "e.g. --num-prefixes 4")),
    think_time: str = typer.Option("0s", "--think-time", help=_H["think_time"]),
    hash_block_tokens: Optional[int] = typer.Option(None, "--hash-block-tokens", help=_H["hash_block_tokens"],
                                                    callback=_count(1, 1 << 16, "e.g. --hash-block-tokens 64")),
    engine: str = typer.Option("vllm", "--engine", help=_H["engine"]),
    activation_scales: Optional[str] = typer.Option(None, "--activation-scales",
                                                    help="fp8/int8 weights: dynamic | static (default: the engine's)"),
    gpu_memory_utilization: Optional[float] = typer.Option(None, "--gpu-memory-utilization",
                                                           help=_H["gmu"] + " (default: the engine's)",
                                                           callback=_real(0.0, 1.0, "e.g. --gpu-memory-utilization 0.9")),
    max_model_len: Optional[int] = typer.Option(None, "--max-model-len", help=_H["max_model_len"],
                                                callback=_count(1, L.MAX_TOKENS_PER_REQUEST, "e.g. --max-model-len 8192")),
    no_custom_allreduce: bool = typer.Option(False, "--no-custom-allreduce", "--disable-custom-all-reduce",
                                             help=_H["no_car"]),
    chunked_prefill: str = typer.Option("auto", "--chunked-prefill",
                                        help="auto | on | off; auto: the engine profile's rule "
                                             "(vLLM: --enable-chunked-prefill)"),
    max_num_seqs: Optional[int] = typer.Option(None, "--max-num-seqs",
                                               help="most sequences in one batch (default: the engine's)",
                                               callback=_count(1, L.MAX_NUM_SEQS, "e.g. --max-num-seqs 256")),
    max_batched_tokens: Optional[int] = typer.Option(None, "--max-batched-tokens", "--max-num-batched-tokens",
                                                     help="token budget of one step; default: vLLM's rule",
                                                     callback=_count(1, L.MAX_BATCHED_TOKENS,
                                                                     "e.g. --max-batched-tokens 2048")),
    routing: str = typer.Option("round_robin", "--routing",
                                help="across replicas: round_robin | least_loaded | session (a session's turns "
                                     "stay on one replica) | prefix (longest cached prefix); disaggregated: in both pools"),
    prefix_caching: str = typer.Option("auto", "--prefix-caching", help="auto | on | off; " + _H["prefix_caching"]),
    speculative: Optional[str] = typer.Option(None, "--speculative", help=_H["speculative"]),
    speculative_acceptance: Optional[str] = typer.Option(None, "--speculative-acceptance", help=_H["acceptance"]),
    prefill_plan: Optional[str] = typer.Option(None, "--prefill-plan", help="disaggregated: each prefill instance's "
                                               "layout tp=T,pp=P[,ep=E][,adp=A] (with --decode-plan, instead of --plan)"),
    prefill_replicas: Optional[int] = typer.Option(None, "--prefill-replicas", help="disaggregated: prefill instances",
                                                   callback=_count(1, L.MAX_GPUS, "e.g. --prefill-replicas 1")),
    decode_plan: Optional[str] = typer.Option(None, "--decode-plan", help="disaggregated: each decode instance's "
                                              "layout tp=T,pp=P[,ep=E][,adp=A]"),
    decode_replicas: Optional[int] = typer.Option(None, "--decode-replicas", help="disaggregated: decode instances",
                                                  callback=_count(1, L.MAX_GPUS, "e.g. --decode-replicas 3")),
    decode_max_num_seqs: Optional[int] = typer.Option(None, "--decode-max-num-seqs",
                                                      help="disaggregated: batch cap of each decode attention rank "
                                                           "(default: the engine's; --max-num-seqs sets the prefill's)",
                                                      callback=_count(1, L.MAX_NUM_SEQS, "e.g. --decode-max-num-seqs 64")),
    ttft_slo: Optional[str] = typer.Option(None, "--ttft-slo", help=_H["ttft"]),
    tpot_slo: Optional[str] = typer.Option(None, "--tpot-slo", help=_H["tpot"]),
    slo_percentile: float = typer.Option(90.0, "--slo-percentile", help=_H["pct"]),
    fmt: str = FormatOpt,
    output: Optional[str] = OutputOpt,
    report: Optional[str] = ReportOpt,
    plot: Optional[str] = typer.Option(None, "--plot", help="also draw the TTFT/TPOT CDFs to FILE.svg or FILE.png"),
) -> None:
    """Predict what a real server measures for one plan on one workload (latency, memory, energy)."""
    from apex_plan import inputs as I
    from apex_plan.model.load import load_model
    from apex_plan.report import simulate_view as V
    from apex_plan.simulate.run import simulate as run_sim
    from apex_plan.workload.slo import parse_slo
    check_format(fmt, output)
    _check_outputs(report, plot)
    m = load_model(model)
    roles = (prefill_plan, prefill_replicas, decode_plan, decode_replicas, decode_max_num_seqs)
    disagg = any(x is not None for x in roles)
    cl = I.cluster_from_options(gpu, gpus, gpus_per_node, cluster, partial_last_node=disagg)
    (chunked,) = I.chunked_prefill_modes(chunked_prefill, sweep=False)
    eng = I.engine_from_options(engine, gpu_memory_utilization, max_model_len, not no_custom_allreduce,
                                chunked, max_num_seqs, max_batched_tokens, routing, activation_scales,
                                I.prefix_caching_mode(prefix_caching),
                                I.speculative_option(speculative, speculative_acceptance))
    I.check_engine(eng, m)
    weight_dtype = weight_dtype if weight_dtype is not None else I.default_weight_dtype(m, cl)
    kv_dtype = kv_dtype if kv_dtype is not None else eng.profile.default_kv_dtype(weight_dtype)
    if disagg:
        if plan is not None or tp_size is not None or pp_size is not None:
            raise InputError("--plan", None, "given together with --prefill-plan/--decode-plan",
                             "use --plan for aggregated serving, or the two role plans for disaggregated serving")
        if report or plot:
            raise InputError("--report" if report else "--plot", None, "not drawn for disaggregated deployments yet",
                             "drop it (the JSON has every figure)")
        dplan = I.parse_disagg_plan(*roles, weight_dtype, kv_dtype, cl, m, gpus or cl.num_gpus)
    else:
        p = I.parse_plan(plan, weight_dtype, kv_dtype, tp_size, pp_size)
        I.check_plan_fits(p, cl, m)
        if p.num_gpus < cl.num_gpus:                       # say so: the other GPUs are not simulated
            import warnings
            warnings.warn(f"--plan {p.label().split()[0]} uses {p.num_gpus} of the {cl.num_gpus} GPUs; the figures are "
                          f"for those only (give --plan dp=..,tp=..,pp=.. to use all {cl.num_gpus})")
    if num_requests is None:
        from apex_plan.simulate.run import BENCH_REQUESTS_PER_SLOT
        num_requests = BENCH_REQUESTS_PER_SLOT * concurrency if concurrency else 1000
    wl = I.workload_from_options(trace, workload, rate, num_requests, prompt_tokens, output_tokens, concurrency,
                                 arrival, burstiness_cv, seed,
                                 I.session_options(turns, prefix_tokens, num_prefixes, think_time, hash_block_tokens))
    I.check_workload_fits(wl, m, max_model_len, trace)
    slo = parse_slo(ttft_slo, tpot_slo, slo_percentile)
    if disagg:
        from apex_plan.report.disagg_view import emit_disagg
        return emit_disagg(m, cl, dplan, eng, wl, slo, fmt, output,
                           {"model": m.name, "gpu": cl.gpu.name, "gpus": gpus or cl.num_gpus,
                            "gpus_per_node": cl.gpus_per_node, "prefill_plan": prefill_plan, "prefill_replicas": dplan.prefill_replicas,
                            "decode_plan": decode_plan, "decode_replicas": dplan.decode_replicas,
                            "decode_max_num_seqs": decode_max_num_seqs, "weight_dtype": weight_dtype,
                            "kv_dtype": kv_dtype, "engine": engine_doc(eng.profile), "routing": eng.routing,
                            "workload": {"trace": trace, "preset": workload, "rate_per_s": rate,
                                         "requests": len(wl.trace), "mode": wl.mode, "concurrency": wl.concurrency,
                                         "seed": seed},
                            "slo": _slo_doc(slo)})
    res = run_sim(m, cl, p, eng, wl, slo)
    if res.feasible and wl.trace.has_prefix_hashes:      # what caching buys: the same run with it flipped
        import dataclasses
        from apex_plan.simulate.features import attach_caching_comparison
        other = run_sim(m, cl, p, dataclasses.replace(eng, prefix_caching=not res.engine.prefix_caching), wl, slo)
        if other.feasible:
            attach_caching_comparison(res.metrics, other.metrics)
    inputs = {"model": m.name, "gpu": cl.gpu.name, "gpus": cl.num_gpus, "gpus_per_node": cl.gpus_per_node,
              "plan": plan if plan is not None else f"dp={p.dp},tp={p.tp},pp={p.pp}", "weight_dtype": weight_dtype,
              "kv_dtype": kv_dtype, "engine": engine_doc(eng.profile),
              "workload": {"trace": trace, "preset": workload, "rate_per_s": rate, "requests": len(wl.trace),
                           "mode": wl.mode, "concurrency": wl.concurrency, "seed": seed},
              "slo": _slo_doc(slo)}
    emit(fmt, output, lambda: V.simulate_json(res, inputs), lambda: V.simulate_rows(res, inputs),
         lambda c: V.simulate_table(res, c))
    if report or plot:
        from apex_plan.report.html import simulate_outputs
        simulate_outputs(res, inputs, report, plot, m.source, cl.gpu.source)
    if not res.feasible:                 # exit status 1: the plan does not run, or no request completes
        print(f"apex-plan simulate: {res.reason}", file=sys.stderr)
        return 1
    return 0


# ------------------------------------------------------------------------------------------------
_SEARCH_EPILOG = ("Example: apex-plan search --model llama-3.1-70b --gpu h100-sxm-80gb --gpus 8 --workload chat "
                  "--rate 2 --ttft-slo 500ms --tpot-slo 50ms")


@app.command(epilog=_SEARCH_EPILOG)
def search(
    model: str = typer.Option(..., "--model", "-m", help=_H["model"]),
    gpu: Optional[str] = typer.Option(None, "--gpu", help=_H["gpu"]),
    gpus: Optional[int] = typer.Option(None, "--gpus", help=_H["gpus"], callback=_count(1, L.MAX_GPUS, "e.g. --gpus 8")),
    gpus_per_node: Optional[int] = typer.Option(None, "--gpus-per-node", help=_H["gpus_per_node"],
                                      callback=_count(1, L.MAX_GPUS_PER_NODE, "e.g. --gpus-per-node 8")),
    cluster: Optional[str] = typer.Option(None, "--cluster", help=_H["cluster"]),
    trace: Optional[str] = typer.Option(None, "--trace", help="request mix and rate from a trace file (see examples/)"),
    workload: Optional[str] = typer.Option(None, "--workload", help=_H["workload"]),
    rate: Optional[float] = typer.Option(None, "--rate", help="demanded arrival rate, requests/s (default: the trace's)",
                                         callback=_real(L.MIN_RATE_PER_S, L.MAX_RATE_PER_S, "e.g. --rate 2", False)),
    num_requests: int = typer.Option(1000, "--num-requests",
                                     help="synthetic requests in the request mix (at least 40000 are drawn: steady-state "
                                          "runs take as many as they need from it)",
                                     callback=_count(1, L.MAX_REQUESTS, "e.g. --num-requests 1000")),
    prompt_tokens: Optional[str] = typer.Option(None, "--prompt-tokens", help=_H["prompt_tokens"]),
    output_tokens: Optional[str] = typer.Option(None, "--output-tokens", help=_H["output_tokens"]),
    arrival: str = typer.Option("poisson", "--arrival", help=_H["arrival"]),
    burstiness_cv: float = typer.Option(1.0, "--burstiness-cv", help=_H["burstiness_cv"],
                                        callback=_real(0.0, 100.0, "e.g. --burstiness-cv 2")),
    seed: int = typer.Option(0, "--seed", help=_H["seed"], callback=_count(0, L.MAX_SEED, "e.g. --seed 0")),
    turns: int = typer.Option(1, "--turns", help=_H["turns"], callback=_count(1, 10_000, "e.g. --turns 8")),
    prefix_tokens: int = typer.Option(0, "--prefix-tokens", help=_H["prefix_tokens"],
                                      callback=_count(0, L.MAX_TOKENS_PER_REQUEST, "e.g. --prefix-tokens 2000")),
    num_prefixes: int = typer.Option(1, "--num-prefixes", help=_H["num_prefixes"],
                                     callback=_count(1, 1 << 20, "e.g. --num-prefixes 4")),
    think_time: str = typer.Option("0s", "--think-time", help=_H["think_time"]),
    hash_block_tokens: Optional[int] = typer.Option(None, "--hash-block-tokens", help=_H["hash_block_tokens"],
                                                    callback=_count(1, 1 << 16, "e.g. --hash-block-tokens 64")),
    weight_dtype: Optional[str] = typer.Option(None, "--weight-dtype",
                                               help="weight dtypes to try, e.g. bf16,fp8 (default: the checkpoint's own)"),
    kv_dtype: str = typer.Option("bf16", "--kv-dtype", "--kv-cache-dtype", help="KV-cache dtypes to try, e.g. bf16,fp8"),
    engine: str = typer.Option("vllm", "--engine", help=_H["engine"]),
    gpu_memory_utilization: Optional[float] = typer.Option(None, "--gpu-memory-utilization",
                                                           help=_H["gmu"] + " (default: the engine's)",
                                                           callback=_real(0.0, 1.0, "e.g. --gpu-memory-utilization 0.9")),
    max_model_len: Optional[int] = typer.Option(None, "--max-model-len",
                                                help="longest request in tokens; default: the model's, lowered to "
                                                     "what the KV cache holds",
                                                callback=_count(1, L.MAX_TOKENS_PER_REQUEST, "e.g. --max-model-len 8192")),
    no_custom_allreduce: bool = typer.Option(False, "--no-custom-allreduce", "--disable-custom-all-reduce",
                                             help=_H["no_car"]),
    chunked_prefill: str = typer.Option("auto", "--chunked-prefill",
                                        help="auto | on | off, or a list to sweep (on,off; 'both' = on,off)"),
    max_num_seqs: Optional[str] = typer.Option(None, "--max-num-seqs",
                                               help="most sequences in one batch; list, e.g. 128,256 (default: the engine's)"),
    max_batched_tokens: Optional[str] = typer.Option(None, "--max-batched-tokens", "--max-num-batched-tokens",
                                                     help="step token budgets to try, e.g. 512,2048"),
    prefix_caching: Optional[str] = typer.Option(None, "--prefix-caching",
                                                 help="auto | on | off, or a list to compare (both = on,off); "
                                                      + _H["prefix_caching"]),
    speculative: Optional[str] = typer.Option(None, "--speculative",
                                              help="speculative settings to compare, e.g. none,mtp:1,mtp:3 "
                                                   "(each with --speculative-acceptance)"),
    speculative_acceptance: Optional[str] = typer.Option(None, "--speculative-acceptance", help=_H["acceptance"]),
    ttft_slo: Optional[str] = typer.Option("1s", "--ttft-slo", help=_H["ttft"]),
    tpot_slo: Optional[str] = typer.Option("100ms", "--tpot-slo", help=_H["tpot"]),
    slo_percentile: float = typer.Option(90.0, "--slo-percentile", help=_H["pct"]),
    slo_margin: bool = typer.Option(False, "--slo-margin", help="meet the SLOs at the pessimistic end of the "
                                    "engine profile's 80% error interval (needs a calibrated profile)"),
    headroom: float = typer.Option(0.0, "--headroom", help="capacity kept above the demand, as a fraction: the "
                                   "deployment must sustain demand x (1 + headroom) within the SLO (default 0: "
                                   "just the demand)", callback=_real(0.0, 10.0, "e.g. --headroom 0.2", False)),
    objective: str = typer.Option("gpus", "--objective", help="gpus | energy | cost | latency | throughput"),
    prices: Optional[str] = typer.Option(None, "--prices", help="USD per GPU-hour by GPU profile (see "
                                         "examples/prices.yaml); a cluster file's price_per_gpu_hour wins"),
    power_cap: Optional[str] = typer.Option(None, "--power-cap", help="power caps per GPU to try, e.g. 500W,700W"),
    sm_clock: Optional[str] = typer.Option(None, "--sm-clock", help="locked SM clocks to try, e.g. 1410MHz,1980MHz"),
    max_power_kw: Optional[float] = typer.Option(None, "--max-power-kw", help="budget on the deployment's mean "
                                                 "power at its capacity, kW", callback=_real(0.0, 1e6, "e.g. --max-power-kw 20")),
    homogeneous: bool = typer.Option(False, "--homogeneous", help="one plan for all replicas"),
    top: int = typer.Option(3, "--top", help="deployments to show", callback=_count(1, 100, "e.g. --top 3")),
    show_all: bool = typer.Option(False, "--all", help="also list infeasible and rejected plans with reasons"),
    allow_cross_node_tp: bool = typer.Option(False, "--allow-cross-node-tp", help="let tensor parallelism span nodes"),
    max_gpus_per_replica: Optional[int] = typer.Option(None, "--max-gpus-per-replica", help="largest tp*pp to try",
                                                       callback=_count(1, L.MAX_GPUS, "e.g. --max-gpus-per-replica 8")),
    no_symmetry_pruning: bool = typer.Option(False, "--no-symmetry-pruning", help="evaluate every raw layout"),
    no_bound_pruning: bool = typer.Option(False, "--no-bound-pruning",
                                          help="simulate plans whose analytic bound cannot beat a plan already found"),
    fmt: str = FormatOpt,
    output: Optional[str] = OutputOpt,
    report: Optional[str] = ReportOpt,
    plot: Optional[str] = typer.Option(None, "--plot", help="also draw the Pareto charts to FILE.svg or FILE.png"),
) -> None:
    """Find the parallel plan and deployment that meet the SLOs at the demanded rate.

    Exit status: 0 a deployment meets the SLO, 1 none does (the closest is still printed), 2 bad input."""

    from apex_plan import inputs as I
    from apex_plan.model.load import load_model
    from apex_plan.report import search_view as V
    from apex_plan.search.pipeline import OBJECTIVES, SearchInputs, run_search
    from apex_plan.workload.slo import parse_slo
    check_format(fmt, output)
    _check_outputs(report, plot)
    if objective not in OBJECTIVES:
        from apex_plan.errors import did_you_mean
        raise InputError("--objective", None, f"unknown objective '{objective}'", did_you_mean(objective, OBJECTIVES))
    if top < 1:
        raise InputError("--top", None, "must be at least 1", "e.g. --top 3")
    m = load_model(model)
    fleet = I.fleet_from_options(gpu, gpus, gpus_per_node, cluster, prices)
    from apex_plan.hardware.fleet import require_prices
    require_prices(fleet, objective)
    cl = fleet.groups[0].cluster
    I.check_search_cluster(cl, cluster, fleet.num_gpus)
    points = I.operating_points(power_cap, sm_clock)
    weight_dtype = weight_dtype if weight_dtype is not None else I.default_weight_dtype(m, cl)
    base = I.engine_from_options(engine, gpu_memory_utilization, max_model_len, not no_custom_allreduce, None, None,
                                 None, "round_robin")
    engines, rejected_engines = I.engine_sweep(base, m, max_num_seqs, max_batched_tokens, chunked_prefill,
                                               prefix_caching, speculative, speculative_acceptance)
    from apex_plan.search.steady import MAX_HORIZON_REQUESTS
    # a synthetic workload is a distribution: draw enough of it that its tail is represented
    wl = I.workload_from_options(trace, workload if (workload is not None or trace or prompt_tokens is not None) else "chat",
                                 None if trace else (rate or 1.0),
                                 num_requests if trace else max(num_requests, MAX_HORIZON_REQUESTS),
                                 prompt_tokens, output_tokens, None, arrival, burstiness_cv, seed,
                                 I.session_options(turns, prefix_tokens, num_prefixes, think_time, hash_block_tokens))
    I.check_workload_fits(wl, m, max_model_len, trace)
    trace_rps = I.trace_rate(wl.trace, trace) if trace else None    # also refuses traces with no arrival spread
    demand = rate if rate is not None else trace_rps
    if demand is not None and demand <= 0:
        raise InputError("--rate", None, "must be positive", "e.g. --rate 2")
    if demand is None and objective != "throughput":
        objective = "throughput"
    if headroom and demand is None:
        raise InputError("--headroom", None, "needs a demanded rate (--rate, or a trace's)", "give --rate or drop --headroom")
    asked_demand = demand
    if demand is not None:
        demand = demand * (1.0 + headroom)             # the rate every deployment must sustain within the SLO
    slo = parse_slo(ttft_slo, tpot_slo, slo_percentile)
    asked_slo, margin = slo, None
    if slo_margin:
        from apex_plan.calibrate.interval import margin_slo
        slo, margin = margin_slo(slo, base.profile)
    from apex_plan.units import DTYPE_BYTES
    from apex_plan.errors import did_you_mean
    for opt, lst in (("--weight-dtype", weight_dtype), ("--kv-dtype", kv_dtype)):
        for dt in I.csv_list(lst, opt):
            if dt not in DTYPE_BYTES:
                raise InputError(opt, None, f"unknown dtype '{dt}'", did_you_mean(dt, DTYPE_BYTES))
    inp = SearchInputs(m, cl, wl.trace, demand, slo, tuple(I.csv_list(weight_dtype, "--weight-dtype")),
                       tuple(I.csv_list(kv_dtype, "--kv-dtype")), engines, objective, homogeneous, top,
                       allow_cross_node_tp, not no_symmetry_pruning, max_gpus_per_replica, not no_bound_pruning,
                       fleet=fleet, points=points, max_power_w=max_power_kw * 1e3 if max_power_kw else None)
    from apex_plan.report.search_view import progress_reporter
    with progress_reporter() as report_progress:
        res = run_search(inp, report_progress)
    from apex_plan.hardware.fleet import group_doc
    inputs = {"model": m.name, "gpu": "+".join(dict.fromkeys(g.cluster.gpu.name for g in fleet.groups)),
              "gpus": fleet.num_gpus, "gpus_per_node": cl.gpus_per_node,
              "groups": [group_doc(g) for g in fleet.groups], "prices_file": prices,
              "operating_points": [{"power_cap_w": p.power_cap_w, "sm_clock_mhz": p.sm_clock_mhz} for p in points],
              "max_power_kw": max_power_kw,
              "workload": {"trace": trace, "preset": workload if not trace else None, "requests": len(wl.trace),
                           "seed": seed},
              "demand_rps": asked_demand, "headroom": headroom, "searched_rps": demand, "objective": objective, "homogeneous": homogeneous, "top": top,
              "weight_dtypes": list(inp.weight_dtypes), "kv_dtypes": list(inp.kv_dtypes),
              "slo": _slo_doc(asked_slo), "slo_margin": margin and {**margin, "searched_slo": _slo_doc(slo)},
              "engine": engine_doc(base.profile),
              "rejected_engine_settings": [{"setting": k, "reason": r} for k, r in rejected_engines]}
    emit(fmt, output, lambda: V.search_json(res, inputs, show_all), lambda: V.search_rows(res, show_all),
         lambda c: V.search_table(res, c, show_all))
    if report or plot:
        from apex_plan.report.html import search_outputs
        search_outputs(res, inputs, report, plot)
    return 0 if res.meets_slo else 1   # exit status 1: no deployment meets the SLO (the closest is shown)


# ------------------------------------------------------------------------------------------------
_RUNS_H = ("measured runs: 'vllm bench serve --save-result' JSON, SGLang bench_serving JSON lines, "
           "aiperf / genai-perf profile export JSON, silicon or trace-replay CSV")


# options of `calibrate` and `validate`: what a measured run's file does not say
_RunGpuOpt = typer.Option(None, "--gpu", help=_H["gpu"] + " (runs whose file does not say it)")
_RunPlanOpt = typer.Option(None, "--plan", help="dp=D,tp=T,pp=P of runs whose file does not say it")
_RunModelOpt = typer.Option(None, "--model", "-m", help=_H["model"] + " (when the file names none)")
_RunDtypeOpt = typer.Option("bf16", "--weight-dtype", help="weight dtype of runs whose file does not say it")
_RunSlotsOpt = typer.Option(5, "--requests-per-slot", help="closed loop: simulated requests per slot",
                            callback=_count(1, 100, "e.g. --requests-per-slot 5"))


def _run_defaults(engine, gpu, plan, model, weight_dtype, requests_per_slot):
    from apex_plan.calibrate.formats import RunDefaults
    return RunDefaults(engine, gpu, plan, model, weight_dtype, requests_per_slot)


@app.command(epilog="Example: apex-plan calibrate runs/*.json --engine vllm@0.11.0 --gpu h100-sxm-80gb "
                    "--plan tp=1 --output vllm-h100.yaml")
def calibrate(
    runs: List[str] = typer.Argument(..., help=_RUNS_H),
    engine: Optional[str] = typer.Option(None, "--engine", help=_H["engine"] + " whose constants to fit "
                                         "(NAME or NAME@VERSION or a profile YAML; CSV rows of other engines are skipped)"),
    gpu: Optional[str] = _RunGpuOpt,
    plan: Optional[str] = _RunPlanOpt,
    model: Optional[str] = _RunModelOpt,
    weight_dtype: str = _RunDtypeOpt,
    fit: Optional[str] = typer.Option(None, "--fit", help="constants to fit, comma separated (default: the host.* "
                                      "times and overlap); any of host.*, gpu.* (gpu.* are reported, not written)"),
    rounds: int = typer.Option(2, "--rounds", help="coordinate-search rounds", callback=_count(1, 10, "e.g. --rounds 2")),
    requests_per_slot: int = _RunSlotsOpt,
    folds: int = typer.Option(3, "--folds", help="cross-validation folds with >= 6 runs (fold j holds out every "
                              "k-th run from j); 0: none", callback=_count(0, 20, "e.g. --folds 3")),
    overlay: Optional[str] = typer.Option(None, "--output", "-o", help="write the calibrated engine profile (YAML) here"),
    fmt: str = FormatOpt,
) -> None:
    """Fit an engine x GPU pair's constants to measured runs, cross-validate, write a profile overlay."""
    from apex_plan.calibrate import command as C
    from apex_plan.calibrate.formats import read_measured
    from apex_plan.report import calibrate_view as V
    from apex_plan.report.output import emit
    check_format(fmt)
    names = C.parse_fit(fit)
    if folds == 1:
        raise InputError("--folds", None, "one fold holds every run out and fits on none",
                         "use --folds 0 (no cross-validation) or 2 or more")
    if overlay is not None and not overlay.endswith((".yaml", ".yml")):
        raise InputError("--output", None, f"'{overlay}' is not a .yaml path", "e.g. --output vllm-h100.yaml")
    check_format(fmt, overlay)
    cases, _ = read_measured(runs, _run_defaults(engine, gpu, plan, model, weight_dtype, requests_per_slot))
    cal = C.calibrate(cases, names, runs, rounds, progress=lambda s: typer.echo("  " + s, err=True), folds=folds)
    if overlay:
        C.write_overlay(cal, overlay)
    doc = C.calibrate_doc(cal, runs, overlay)
    emit(fmt, None, lambda: V.calibrate_json(doc), lambda: V.calibrate_rows(doc), lambda c: V.calibrate_table(doc, c))


@app.command(epilog="Example: apex-plan validate runs/*.json --engine vllm-h100.yaml --gpu h100-sxm-80gb --plan tp=1")
def validate(
    runs: List[str] = typer.Argument(..., help=_RUNS_H),
    engine: Optional[str] = typer.Option(None, "--engine", help=_H["engine"] + " (NAME or NAME@VERSION or a profile "
                                         "YAML; default: each CSV row's own, vllm for JSON runs)"),
    gpu: Optional[str] = _RunGpuOpt,
    plan: Optional[str] = _RunPlanOpt,
    model: Optional[str] = _RunModelOpt,
    weight_dtype: str = _RunDtypeOpt,
    requests_per_slot: int = _RunSlotsOpt,
    fmt: str = FormatOpt,
    output: Optional[str] = OutputOpt,
) -> None:
    """Predict each measured run and print its error, MAPE, bias and interval coverage per group."""
    from apex_plan.calibrate.command import validate_doc
    from apex_plan.calibrate.formats import read_measured
    from apex_plan.report import calibrate_view as V
    check_format(fmt, output)
    cases, skipped = read_measured(runs, _run_defaults(engine, gpu, plan, model, weight_dtype, requests_per_slot))
    if not cases:
        raise InputError("RUNS", None, "no run to validate", "give result files (CSV rows of --engine's profile)")
    doc = validate_doc(cases, skipped)
    emit(fmt, output, lambda: V.validate_json(doc), lambda: V.validate_rows(doc), lambda c: V.validate_table(doc, c))


# ------------------------------------------------------------------------------------------------
@app.command(epilog="Example: apex-plan sweep scenarios.yaml --output results.jsonl --report sweep.html")
def sweep(
    scenarios: Path = typer.Argument(..., help="sweep YAML: base options, a grid and/or a list of scenarios"),
    output: Optional[str] = typer.Option(None, "--output", "-o",
                                         help="JSON lines, one search result per scenario (default: STEM.jsonl here)"),
    executor: str = typer.Option("local", "--executor", help="local (process pool) | ray"),
    ray_address: Optional[str] = typer.Option(None, "--ray-address", help="existing Ray cluster (default: a local Ray)"),
    jobs: Optional[int] = typer.Option(None, "--jobs", "-j", help="parallel searches (default: the CPUs)"),
    retry_failed: bool = typer.Option(False, "--retry-failed", help="run failed scenarios again"),
    report: Optional[str] = ReportOpt,
    fmt: str = FormatOpt,
) -> None:
    """Run many searches (a grid or list of scenarios), resumable; print a summary table."""
    from apex_plan.sweep.command import sweep_command
    check_format(fmt)
    _check_outputs(report, None)
    raise typer.Exit(sweep_command(scenarios, output, executor, ray_address, jobs, retry_failed, report, fmt))


def engine_doc(profile) -> dict:
    """The engine profile as echoed in every output: name, version asked for, file, calibration."""
    return {"profile": profile.name, "family": profile.family, "version": profile.version,
            "versions": f"[{profile.min_version}, {profile.max_version})", "version_note": profile.version_note or None,
            "calibration": profile.calibration,
            "calibration_error": profile.calibration_error or "uncalibrated (no measured error stored)"}


def _slo_doc(slo) -> dict:
    """The SLO as echoed in JSON inputs, in milliseconds."""
    return {"ttft_ms": slo.ttft_s * 1e3 if slo.ttft_s else None,
            "tpot_ms": slo.tpot_s * 1e3 if slo.tpot_s else None, "percentile": slo.percentile}


_COMMAND = []


def _command():
    """The click command typer builds from `app`, built once per process (it takes ~10-20 ms)."""
    if not _COMMAND:
        import typer.main
        _COMMAND.append(typer.main.get_command(app))
    return _COMMAND[0]


def main() -> None:
    """Console entry point: bad input is one line on stderr and exit status 2; any other failure is
    one line and status 1; a closed stdout ends quietly."""
    from apex_plan import console as C
    C.one_line_warnings()
    try:
        rv = _command().main(args=C.vllm_spellings(sys.argv[1:]), prog_name="apex-plan", standalone_mode=False)
        sys.stdout.flush()
    except SystemExit as e:            # click's own handling of a closed pipe exits here
        try:
            sys.stdout.flush()
        except (OSError, ValueError):
            C.stdout_closed()
        raise SystemExit(e.code) from None
    except BaseException as e:  # noqa: BLE001 -- the one place every failure becomes one line
        sys.exit(C.exit_status(e))
    sys.exit(rv if isinstance(rv, int) else 0)


if __name__ == "__main__":
    main()
