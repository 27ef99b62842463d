"""Command line: `apex-plan models | hardware | check | simulate | search`.

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
        g = load_gpu(name)
        emit(fmt, output, lambda: {"schema_version": D.SCHEMA_VERSION, **D.gpu_doc(g)},
             lambda: D.gpus_rows([g]), lambda c: D.gpu_table(g, c))
    else:
        gs = [load_gpu(n) for n in list_gpus()]
        emit(fmt, output, lambda: {"schema_version": D.SCHEMA_VERSION, "gpus": [D.gpu_doc(g) for g in gs]},
             lambda: D.gpus_rows(gs), lambda c: D.gpus_table(gs, c))


@app.command(epilog="Example: apex-plan check models/llama-3.1-70b.yaml my-cluster.yaml trace.jsonl")
def check(files: List[Path] = typer.Argument(..., help="model, GPU profile, cluster or trace files")) -> None:
    """Validate model, hardware, cluster and trace files; one line per file, exit 2 if any is bad."""
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
    model: str = typer.Option(..., "--model", "-m", help="built-in model name or path to .yaml / config.json"),
    gpu: Optional[str] = typer.Option(None, "--gpu", help="GPU profile name or path"),
    gpus: Optional[int] = typer.Option(None, "--gpus", help="GPUs in the cluster"),
    gpus_per_node: int = typer.Option(8, "--gpus-per-node"),
    cluster: Optional[str] = typer.Option(None, "--cluster", help="cluster YAML (instead of --gpu/--gpus)"),
    plan: str = typer.Option("dp=1,tp=1,pp=1", "--plan", help="dp=D,tp=T,pp=P[,ep=E][,adp=A] (adp: attention-DP ranks)"),
    weight_dtype: str = typer.Option("bf16", "--weight-dtype"),
    kv_dtype: Optional[str] = typer.Option(None, "--kv-dtype", help="default: the engine's choice for the weight dtype"),
    trace: Optional[str] = typer.Option(None, "--trace", help="trace file: APEX .jsonl, CSV, BurstGPT or Azure CSV"),
    workload: Optional[str] = typer.Option(None, "--workload", help="preset: chat | summarization | creation"),
    rate: Optional[float] = typer.Option(None, "--rate", help="synthetic arrival rate, requests/s"),
    num_requests: Optional[int] = typer.Option(None, "--num-requests",
                                               help="synthetic requests (default: 1000; closed loop: "
                                                    "5 x --concurrency, as a benchmark run)"),
    prompt_tokens: Optional[str] = typer.Option(None, "--prompt-tokens", help="512 | uniform:64-512 | lognormal:mean=74,std=120"),
    output_tokens: Optional[str] = typer.Option(None, "--output-tokens"),
    concurrency: Optional[int] = typer.Option(None, "--concurrency", help="closed loop: requests kept in flight"),
    arrival: str = typer.Option("poisson", "--arrival", help="poisson | gamma"),
    burstiness_cv: float = typer.Option(1.0, "--burstiness-cv"),
    seed: int = typer.Option(0, "--seed"),
    engine: str = typer.Option("vllm", "--engine", help="NAME[@VERSION]: vllm, sglang, trtllm (e.g. vllm@0.6.0), "
                               "a profile name (vllm-v1) or a profile YAML"),
    activation_scales: Optional[str] = typer.Option(None, "--activation-scales",
                                                    help="fp8/int8 weights: dynamic | static (default: the engine's)"),
    gpu_memory_utilization: Optional[float] = typer.Option(None, "--gpu-memory-utilization",
                                                           help="default: the engine's"),
    max_model_len: Optional[int] = typer.Option(None, "--max-model-len"),
    no_custom_allreduce: bool = typer.Option(False, "--no-custom-allreduce"),
    chunked_prefill: Optional[bool] = typer.Option(None, "--chunked-prefill/--no-chunked-prefill",
                                                    help="default: the engine profile's rule"),
    max_num_seqs: Optional[int] = typer.Option(None, "--max-num-seqs", help="default: the engine's"),
    max_batched_tokens: Optional[int] = typer.Option(None, "--max-batched-tokens"),
    routing: str = typer.Option("round_robin", "--routing", help="round_robin | least_loaded (across replicas)"),
    ttft_slo: Optional[str] = typer.Option(None, "--ttft-slo", help="e.g. 500ms"),
    tpot_slo: Optional[str] = typer.Option(None, "--tpot-slo", help="e.g. 50ms"),
    slo_percentile: float = typer.Option(90.0, "--slo-percentile"),
    fmt: str = FormatOpt,
    output: Optional[str] = OutputOpt,
) -> None:
    """Predict what a real server measures for one plan on one workload (latency, memory, energy)."""
    from apex_plan import inputs as I
    from apex_plan.model.load import load_model
    from apex_plan.report import simulate_view as V
    from apex_plan.simulate.run import simulate as run_sim
    from apex_plan.workload.slo import parse_slo
    check_format(fmt)
    m = load_model(model)
    cl = I.cluster_from_options(gpu, gpus, gpus_per_node, cluster)
    eng = I.engine_from_options(engine, gpu_memory_utilization, max_model_len, not no_custom_allreduce,
                                chunked_prefill, max_num_seqs, max_batched_tokens, routing, activation_scales)
    kv_dtype = kv_dtype or eng.profile.default_kv_dtype(weight_dtype)
    p = I.parse_plan(plan, weight_dtype, kv_dtype)
    I.check_plan_fits(p, cl, m.num_heads, m.num_experts)
    if num_requests is None:
        from apex_plan.simulate.run import BENCH_REQUESTS_PER_SLOT
        num_requests = BENCH_REQUESTS_PER_SLOT * concurrency if concurrency and concurrency > 0 else 1000
    wl = I.workload_from_options(trace, workload, rate, num_requests, prompt_tokens, output_tokens, concurrency,
                                 arrival, burstiness_cv, seed)
    slo = parse_slo(ttft_slo, tpot_slo, slo_percentile)
    res = run_sim(m, cl, p, eng, wl, slo)
    inputs = {"model": m.name, "gpu": cl.gpu.name, "gpus": cl.num_gpus, "gpus_per_node": cl.gpus_per_node,
              "plan": plan, "weight_dtype": weight_dtype, "kv_dtype": kv_dtype,
              "engine": engine_doc(eng.profile),
              "workload": {"trace": trace, "preset": workload, "rate_per_s": rate, "requests": len(wl.trace),
                           "mode": wl.mode, "concurrency": wl.concurrency, "seed": seed},
              "slo": _slo_doc(slo)}
    emit(fmt, output, lambda: V.simulate_json(res, inputs), lambda: V.simulate_rows(res, inputs),
         lambda c: V.simulate_table(res, c))


# ------------------------------------------------------------------------------------------------
_SEARCH_EPILOG = ("Example: apex-plan search --model llama-3.1-70b --gpu h100-sxm-80gb --gpus 8 --workload chat "
                  "--rate 2 --ttft-slo 500ms --tpot-slo 50ms")


def _csv_list(text: str, option: str) -> list[str]:
    items = [t.strip() for t in text.split(",") if t.strip()]
    if not items:
        raise InputError(option, None, "empty list", "give one or more values separated by commas")
    return items


def _int_list(text: str | None, option: str) -> list[int | None]:
    if not text:
        return [None]
    out = []
    for t in _csv_list(text, option):
        if not t.isdigit() or int(t) < 1:
            raise InputError(option, None, f"'{t}' is not a positive whole number", "e.g. 128,256")
        out.append(int(t))
    return out


@app.command(epilog=_SEARCH_EPILOG)
def search(
    model: str = typer.Option(..., "--model", "-m", help="built-in model name or path to .yaml / config.json"),
    gpu: Optional[str] = typer.Option(None, "--gpu"),
    gpus: Optional[int] = typer.Option(None, "--gpus"),
    gpus_per_node: int = typer.Option(8, "--gpus-per-node"),
    cluster: Optional[str] = typer.Option(None, "--cluster", help="cluster YAML (instead of --gpu/--gpus)"),
    trace: Optional[str] = typer.Option(None, "--trace", help="request mix and rate from a trace file"),
    workload: Optional[str] = typer.Option(None, "--workload", help="preset: chat | summarization | creation"),
    rate: Optional[float] = typer.Option(None, "--rate", help="demanded arrival rate, requests/s (default: the trace's)"),
    num_requests: int = typer.Option(1000, "--num-requests",
                                     help="synthetic requests in the request mix (at least 40000 are drawn: steady-state "
                                          "runs take as many as they need from it)"),
    prompt_tokens: Optional[str] = typer.Option(None, "--prompt-tokens"),
    output_tokens: Optional[str] = typer.Option(None, "--output-tokens"),
    arrival: str = typer.Option("poisson", "--arrival"),
    burstiness_cv: float = typer.Option(1.0, "--burstiness-cv"),
    seed: int = typer.Option(0, "--seed"),
    weight_dtype: str = typer.Option("bf16", "--weight-dtype", help="list, e.g. bf16,fp8"),
    kv_dtype: str = typer.Option("bf16", "--kv-dtype", help="list, e.g. bf16,fp8"),
    engine: str = typer.Option("vllm", "--engine"),
    gpu_memory_utilization: Optional[float] = typer.Option(None, "--gpu-memory-utilization",
                                                           help="default: the engine's"),
    max_model_len: Optional[int] = typer.Option(None, "--max-model-len",
                                                help="default: the model's, lowered to what the KV cache holds"),
    no_custom_allreduce: bool = typer.Option(False, "--no-custom-allreduce"),
    chunked_prefill: str = typer.Option("auto", "--chunked-prefill", help="auto | on | off | both"),
    max_num_seqs: Optional[str] = typer.Option(None, "--max-num-seqs", help="list, e.g. 128,256 (default: the engine's)"),
    max_batched_tokens: Optional[str] = typer.Option(None, "--max-batched-tokens", help="list, e.g. 512,2048"),
    ttft_slo: Optional[str] = typer.Option("1s", "--ttft-slo"),
    tpot_slo: Optional[str] = typer.Option("100ms", "--tpot-slo"),
    slo_percentile: float = typer.Option(90.0, "--slo-percentile"),
    objective: str = typer.Option("gpus", "--objective", help="gpus | energy | cost | latency | throughput"),
    homogeneous: bool = typer.Option(False, "--homogeneous", help="one plan for all replicas"),
    top: int = typer.Option(3, "--top", help="deployments to show"),
    show_all: bool = typer.Option(False, "--all", help="also list infeasible and rejected plans with reasons"),
    allow_cross_node_tp: bool = typer.Option(False, "--allow-cross-node-tp"),
    max_gpus_per_replica: Optional[int] = typer.Option(None, "--max-gpus-per-replica"),
    no_symmetry_pruning: bool = typer.Option(False, "--no-symmetry-pruning", help="evaluate every raw layout"),
    no_bound_pruning: bool = typer.Option(False, "--no-bound-pruning",
                                          help="simulate plans whose analytic bound cannot beat a plan already found"),
    fmt: str = FormatOpt,
    output: Optional[str] = OutputOpt,
) -> None:
    """Find the parallel plan and deployment that meet the SLOs at the demanded rate.

    Exit status: 0 a deployment meets the SLO, 1 none does (the closest is still printed), 2 bad input."""
    import dataclasses

    from apex_plan import inputs as I
    from apex_plan.model.load import load_model
    from apex_plan.report import search_view as V
    from apex_plan.search.pipeline import OBJECTIVES, SearchInputs, run_search
    from apex_plan.workload.slo import parse_slo
    check_format(fmt)
    if objective not in OBJECTIVES:
        from apex_plan.errors import did_you_mean
        raise InputError("--objective", None, f"unknown objective '{objective}'", did_you_mean(objective, OBJECTIVES))
    if top < 1:
        raise InputError("--top", None, "must be at least 1", "e.g. --top 3")
    m = load_model(model)
    cl = I.cluster_from_options(gpu, gpus, gpus_per_node, cluster)
    base = I.engine_from_options(engine, gpu_memory_utilization, max_model_len, not no_custom_allreduce, None, None,
                                 None, "round_robin")
    chunk_opts = {"auto": [None], "on": [True], "off": [False], "both": [True, False]}
    if chunked_prefill not in chunk_opts:
        raise InputError("--chunked-prefill", None, f"unknown value '{chunked_prefill}'", "use auto, on, off or both")
    engines = tuple(dataclasses.replace(base, max_num_seqs=s, max_batched_tokens=b, chunked_prefill=c)
                    for s in _int_list(max_num_seqs, "--max-num-seqs") for b in _int_list(max_batched_tokens, "--max-batched-tokens")
                    for c in chunk_opts[chunked_prefill])
    from apex_plan.search.steady import MAX_HORIZON_REQUESTS
    # a synthetic workload is a distribution: draw enough of it that its tail is represented
    wl = I.workload_from_options(trace, workload if (workload or trace or prompt_tokens) else "chat",
                                 None if trace else (rate or 1.0), num_requests if trace else max(num_requests, MAX_HORIZON_REQUESTS),
                                 prompt_tokens, output_tokens, None, arrival, burstiness_cv, seed)
    demand = rate if rate is not None else (wl.trace.rate_per_s if trace else None)
    if demand is not None and demand <= 0:
        raise InputError("--rate", None, "must be positive", "e.g. --rate 2")
    if demand is None and objective != "throughput":
        objective = "throughput"
    slo = parse_slo(ttft_slo, tpot_slo, slo_percentile)
    from apex_plan.units import DTYPE_BYTES
    from apex_plan.errors import did_you_mean
    for opt, lst in (("--weight-dtype", weight_dtype), ("--kv-dtype", kv_dtype)):
        for dt in _csv_list(lst, opt):
            if dt not in DTYPE_BYTES:
                raise InputError(opt, None, f"unknown dtype '{dt}'", did_you_mean(dt, DTYPE_BYTES))
    inp = SearchInputs(m, cl, wl.trace, demand, slo, tuple(_csv_list(weight_dtype, "--weight-dtype")),
                       tuple(_csv_list(kv_dtype, "--kv-dtype")), engines, objective, homogeneous, top,
                       allow_cross_node_tp, not no_symmetry_pruning, max_gpus_per_replica, not no_bound_pruning)
    from apex_plan.report.search_view import progress_reporter
    with progress_reporter() as report:
        res = run_search(inp, report)
    inputs = {"model": m.name, "gpu": cl.gpu.name, "gpus": cl.num_gpus, "gpus_per_node": cl.gpus_per_node,
              "workload": {"trace": trace, "preset": workload if not trace else None, "requests": len(wl.trace),
                           "seed": seed},
              "demand_rps": demand, "objective": objective, "homogeneous": homogeneous, "top": top,
              "weight_dtypes": list(inp.weight_dtypes), "kv_dtypes": list(inp.kv_dtypes),
              "slo": _slo_doc(slo)}
    emit(fmt, output, lambda: V.search_json(res, inputs, show_all), lambda: V.search_rows(res, show_all),
         lambda c: V.search_table(res, c, show_all))
    return 0 if res.meets_slo else 1   # exit status 1: no deployment meets the SLO (the closest is shown)


def engine_doc(profile) -> dict:
    """The engine profile as echoed in every output: name, version asked for, file, calibration."""
    return {"profile": profile.name, "family": profile.family, "version": profile.version,
            "versions": f"[{profile.min_version}, {profile.max_version})", "calibration": profile.calibration}


def _slo_doc(slo) -> dict:
    """The SLO as echoed in JSON inputs, in milliseconds."""
    return {"ttft_ms": slo.ttft_s * 1e3 if slo.ttft_s else None,
            "tpot_ms": slo.tpot_s * 1e3 if slo.tpot_s else None, "percentile": slo.percentile}


def main() -> None:
    """Console entry point: run the app; bad input is one line on stderr and exit status 2."""
    try:
        import click  # typer < 0.2x uses click itself
    except ImportError:
        from typer import _click as click  # newer typer vendors it
    exc = click.exceptions
    no_args = getattr(exc, "NoArgsIsHelpError", ())
    try:
        rv = app(standalone_mode=False)
    except InputError as e:
        print(f"apex-plan: error: {e}", file=sys.stderr)
        sys.exit(2)
    except no_args as e:   # bare `apex-plan` / `apex-plan search`: help (rich prints it while raising)
        msg = e.format_message()
        if msg.strip():
            print(msg)
        sys.exit(0)
    except exc.UsageError as e:                      # bad flags: one line naming the option
        cmd = e.ctx.command_path if e.ctx else "apex-plan"
        print(f"apex-plan: error: {e.format_message()} (see '{cmd} --help')".replace("\n", " "), file=sys.stderr)
        sys.exit(2)
    except exc.Exit as e:
        sys.exit(e.exit_code)
    except (exc.Abort, KeyboardInterrupt):
        sys.exit(130)
    sys.exit(rv if isinstance(rv, int) else 0)


if __name__ == "__main__":
    main()
