"""`SearchRequest`: the model, cluster, workload, SLOs and search space of `apex-plan search`, and
`run_search_request`, which holds the rules between the options and the search (the horizon draw,
the no-demand objective, the headroom, `--slo-margin`, the dtype lists) and the JSON echo. The CLI
and the sweep both call it; neither parses the other's output."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Mapping, Optional

from apex_plan import limits as L
from apex_plan.errors import InputError, did_you_mean
from apex_plan.requests import common as C
from apex_plan.requests.options import build, option


@dataclass(frozen=True)
class SearchRequest:
    """The options of `apex-plan search`; field metadata holds each one's CLI spellings and limits."""
    model: str = C.model_opt()
    gpu: Optional[str] = C.gpu_opt()
    gpus: Optional[int] = C.gpus_opt()
    gpus_per_node: Optional[int] = C.gpus_per_node_opt()
    cluster: Optional[str] = C.cluster_opt()
    trace: Optional[str] = option(None, "--trace", help="request mix and rate from a trace file (see examples/)")
    workload: Optional[str] = option(None, "--workload", help=C.HELP["workload"])
    rate: Optional[float] = C.rate_opt("demanded arrival rate, requests/s (default: the trace's)")
    num_requests: int = C.num_requests_opt(1000, "synthetic requests in the request mix (at least 40000 are drawn: "
                                                 "steady-state runs take as many as they need from it)")
    prompt_tokens: Optional[str] = C.text_opt(None, "--prompt-tokens", help=C.HELP["prompt_tokens"])
    output_tokens: Optional[str] = C.text_opt(None, "--output-tokens", help=C.HELP["output_tokens"])
    arrival: str = C.arrival_opt()
    burstiness_cv: float = C.burstiness_opt()
    seed: int = C.seed_opt()
    turns: int = C.turns_opt()
    prefix_tokens: int = C.prefix_tokens_opt()
    num_prefixes: int = C.num_prefixes_opt()
    prompt_pool: int = C.prompt_pool_opt()
    think_time: str = C.think_time_opt()
    hash_block_tokens: Optional[int] = C.hash_block_opt()
    weight_dtype: Optional[str] = option(None, "--weight-dtype",
                                         help="weight dtypes to try, e.g. bf16,fp8 (default: the checkpoint's own)")
    kv_dtype: str = option("bf16", "--kv-dtype", "--kv-cache-dtype", help="KV-cache dtypes to try, e.g. bf16,fp8")
    engine: str = C.engine_opt()
    gpu_memory_utilization: Optional[float] = C.gmu_opt()
    max_model_len: Optional[int] = C.max_model_len_opt("longest request in tokens; default: the model's, lowered to "
                                                       "what the KV cache holds")
    no_custom_allreduce: bool = C.no_car_opt()
    all2all_backend: Optional[str] = C.all2all_opt()
    deepep_mode: Optional[str] = C.deepep_mode_opt()
    recv_interval: Optional[int] = C.recv_interval_opt()
    chunked_prefill: str = option("auto", "--chunked-prefill",
                                  help="auto | on | off, or a list to sweep (on,off; 'both' = on,off)")
    max_num_seqs: Optional[str] = option(None, "--max-num-seqs", help="most sequences in one batch; list, e.g. "
                                                                      "128,256 (default: the engine's)")
    max_batched_tokens: Optional[str] = option(None, "--max-batched-tokens", "--max-num-batched-tokens",
                                               help="step token budgets to try, e.g. 512,2048")
    prefix_caching: Optional[str] = option(None, "--prefix-caching", help="auto | on | off, or a list to compare "
                                                                          "(both = on,off); " + C.HELP["prefix_caching"])
    speculative: Optional[str] = option(None, "--speculative", help="speculative settings to compare, e.g. "
                                                                    "none,mtp:1,mtp:3 (each with --speculative-acceptance)")
    speculative_acceptance: Optional[str] = option(None, "--speculative-acceptance", help=C.HELP["acceptance"])
    ttft_slo: Optional[str] = C.text_opt("1s", "--ttft-slo", help=C.HELP["ttft"])
    tpot_slo: Optional[str] = C.text_opt("100ms", "--tpot-slo", help=C.HELP["tpot"])
    slo_percentile: float = C.slo_percentile_opt()
    slo_margin: bool = option(False, "--slo-margin", help="meet the SLOs at the pessimistic end of the engine "
                                                          "profile's 80% error interval (needs a calibrated profile)")
    headroom: float = option(0.0, "--headroom", help="capacity kept above the demand, as a fraction: the deployment "
                             "must sustain demand x (1 + headroom) within the SLO (default 0: just the demand)",
                             real=(0.0, 10.0, "e.g. --headroom 0.2"), low_open=False)
    objective: str = option("gpus", "--objective", help="gpus | energy | cost | latency | throughput")
    prices: Optional[str] = option(None, "--prices", help="USD per GPU-hour by GPU profile (see examples/prices.yaml); "
                                                          "a cluster file's price_per_gpu_hour wins")
    power_cap: Optional[str] = option(None, "--power-cap", help="power caps per GPU to try, e.g. 500W,700W")
    sm_clock: Optional[str] = option(None, "--sm-clock", help="locked SM clocks to try, e.g. 1410MHz,1980MHz")
    max_power_kw: Optional[float] = option(None, "--max-power-kw", help="budget on the deployment's mean power at its "
                                           "capacity, kW", real=(0.0, 1e6, "e.g. --max-power-kw 20"))
    homogeneous: bool = option(False, "--homogeneous", help="one plan for all replicas")
    serving: str = option("agg", "--serving", help="agg | disagg (prefill and decode pools) | both, ranked in one list")
    top: int = option(3, "--top", help="deployments to show", count=(1, 100, "e.g. --top 3"))
    show_all: bool = option(False, "--all", help="also list infeasible and rejected plans with reasons")
    allow_cross_node_tp: bool = option(False, "--allow-cross-node-tp", help="let tensor parallelism span nodes")
    max_gpus_per_replica: Optional[int] = option(None, "--max-gpus-per-replica", help="largest tp*pp to try",
                                                 count=(1, L.MAX_GPUS, "e.g. --max-gpus-per-replica 8"))
    no_symmetry_pruning: bool = option(False, "--no-symmetry-pruning", help="evaluate every raw layout")
    no_bound_pruning: bool = option(False, "--no-bound-pruning",
                                    help="simulate plans whose analytic bound cannot beat a plan already found")

    @classmethod
    def from_mapping(cls, options: Mapping[str, Any]) -> "SearchRequest":
        """The request from field name -> value, every value checked (`requests.options.build`)."""
        return build(cls, options)


@dataclass(frozen=True)
class SearchOutcome:
    """What `search` prints and reports: the search result, the echo of its inputs, and whether to list
    infeasible and rejected plans too."""
    result: Any                  # search.pipeline.SearchResult
    inputs: dict
    show_all: bool

    @property
    def meets_slo(self) -> bool:
        return bool(self.result.meets_slo)


def _check_dtypes(weight_dtype: str, kv_dtype: str) -> None:
    from apex_plan import inputs as I
    from apex_plan.units import DTYPE_BYTES
    for opt, lst in (("--weight-dtype", weight_dtype), ("--kv-dtype", kv_dtype)):
        for dt in I.csv_list(lst, opt):
            if dt not in DTYPE_BYTES:
                raise InputError(opt, None, f"unknown dtype '{dt}'", did_you_mean(dt, DTYPE_BYTES))


def _workload(req: SearchRequest, m):
    """The request mix: a trace, or a synthetic distribution drawn large enough that its tail is
    represented (at least MAX_HORIZON_REQUESTS requests)."""
    from apex_plan import inputs as I
    from apex_plan.search.steady import MAX_HORIZON_REQUESTS
    preset = req.workload if (req.workload is not None or req.trace or req.prompt_tokens is not None) else "chat"
    wl = I.workload_from_options(I.WorkloadOptions(
        req.trace, preset, None if req.trace else (req.rate or 1.0),
        req.num_requests if req.trace else max(req.num_requests, MAX_HORIZON_REQUESTS),
        req.prompt_tokens, req.output_tokens, None, req.arrival, req.burstiness_cv, req.seed, C.session_options(req)))
    I.check_workload_fits(wl, m, req.max_model_len, req.trace)
    return wl


def _demand(req: SearchRequest, wl) -> float | None:
    """The demanded rate: --rate, else the trace's (also refusing a trace with no arrival spread)."""
    from apex_plan import inputs as I
    trace_rps = I.trace_rate(wl.trace, req.trace) if req.trace else None
    demand = req.rate if req.rate is not None else trace_rps
    if demand is not None and demand <= 0:
        raise InputError("--rate", None, "must be positive", "e.g. --rate 2")
    if req.headroom and demand is None:
        raise InputError("--headroom", None, "needs a demanded rate (--rate, or a trace's)",
                         "give --rate or drop --headroom")
    return demand


def _check_request(req: SearchRequest) -> None:
    from apex_plan.search.pipeline import OBJECTIVES
    if req.objective not in OBJECTIVES:
        raise InputError("--objective", None, f"unknown objective '{req.objective}'",
                         did_you_mean(req.objective, OBJECTIVES))
    if req.top < 1:
        raise InputError("--top", None, "must be at least 1", "e.g. --top 3")
    from apex_plan.search.disagg import check_serving
    check_serving(req.serving)


def prepare_search(req: SearchRequest):
    """Check the request against its model, cluster and engine: the `SearchInputs` to search and the
    echo of what was asked and what is searched (the `inputs` of the output)."""
    from apex_plan import inputs as I
    from apex_plan.hardware.fleet import group_doc, require_prices
    from apex_plan.model.load import load_model
    from apex_plan.plan.spec import EngineConfig
    from apex_plan.search.pipeline import SearchInputs
    from apex_plan.workload.slo import parse_slo
    _check_request(req)
    m = load_model(req.model)
    fleet = I.fleet_from_options(req.gpu, req.gpus, req.gpus_per_node, req.cluster, req.prices)
    require_prices(fleet, req.objective)
    cl = fleet.groups[0].cluster
    I.check_search_cluster(cl, req.cluster, fleet.num_gpus)
    points = I.operating_points(req.power_cap, req.sm_clock)
    weight_dtype = req.weight_dtype if req.weight_dtype is not None else I.default_weight_dtype(m, cl)
    base = I.engine_from_options(EngineConfig(name=req.engine, gpu_memory_utilization=req.gpu_memory_utilization,
                                              max_model_len=req.max_model_len,
                                              custom_allreduce=not req.no_custom_allreduce,
                                              recv_interval=req.recv_interval))
    base = C.with_all2all(base, req)
    for group in fleet.groups:
        I.check_engine_gpu(base, group.cluster.gpu)
    engines, rejected_engines = I.engine_sweep(base, m, req.max_num_seqs, req.max_batched_tokens, req.chunked_prefill,
                                               req.prefix_caching, req.speculative, req.speculative_acceptance)
    wl = _workload(req, m)
    asked_demand = _demand(req, wl)
    objective = req.objective if asked_demand is not None else "throughput"   # no demand: the most it sustains
    # the rate every deployment must sustain within the SLO
    demand = asked_demand * (1.0 + req.headroom) if asked_demand is not None else None
    asked_slo = slo = parse_slo(req.ttft_slo, req.tpot_slo, req.slo_percentile)
    margin = None
    if req.slo_margin:
        from apex_plan.calibrate.interval import margin_slo
        slo, margin = margin_slo(asked_slo, base.profile)
    _check_dtypes(weight_dtype, req.kv_dtype)
    inp = SearchInputs(m, cl, wl.trace, demand, slo, tuple(I.csv_list(weight_dtype, "--weight-dtype")),
                       tuple(I.csv_list(req.kv_dtype, "--kv-dtype")), engines, objective, req.homogeneous, req.top,
                       req.allow_cross_node_tp, not req.no_symmetry_pruning, req.max_gpus_per_replica,
                       not req.no_bound_pruning, fleet=fleet, points=points,
                       max_power_w=req.max_power_kw * 1e3 if req.max_power_kw else None, serving=req.serving)
    echo = {"model": m.name, "gpu": "+".join(dict.fromkeys(g.cluster.gpu.name for g in fleet.groups)),
            "gpus": fleet.num_gpus, "gpus_per_node": cl.gpus_per_node,
            "groups": [group_doc(g) for g in fleet.groups], "prices_file": req.prices,
            "operating_points": [{"power_cap_w": p.power_cap_w, "sm_clock_mhz": p.sm_clock_mhz} for p in points],
            "max_power_kw": req.max_power_kw,
            "workload": {"trace": req.trace, "preset": req.workload if not req.trace else None,
                         "requests": len(wl.trace), "seed": req.seed},
            "demand_rps": asked_demand, "headroom": req.headroom, "searched_rps": demand, "objective": objective,
            "homogeneous": req.homogeneous, "top": req.top, "serving": req.serving,
            "weight_dtypes": list(inp.weight_dtypes), "kv_dtypes": list(inp.kv_dtypes),
            "slo": C.slo_doc(asked_slo), "slo_margin": margin and {**margin, "searched_slo": C.slo_doc(slo)},
            "engine": C.engine_doc(base.profile),
            "rejected_engine_settings": [{"setting": k, "reason": r} for k, r in rejected_engines]}
    return inp, echo


def run_search_request(req: SearchRequest, progress: Callable[[int, int], None] | None = None) -> SearchOutcome:
    """Check the request, run the search (`progress(i, n)` after each plan), and echo its inputs."""
    from apex_plan.search.pipeline import run_search
    inp, echo = prepare_search(req)
    return SearchOutcome(run_search(inp, progress), echo, req.show_all)
