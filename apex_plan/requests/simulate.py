"""`SimulateRequest`: one plan (or one disaggregated deployment) on one workload, and `run_simulate`,
which checks it against the model, cluster and engine and returns what the output needs."""

from __future__ import annotations

import dataclasses
import warnings
from dataclasses import dataclass
from typing import Any, Mapping, Optional

from apex_plan import limits as L
from apex_plan.errors import InputError
from apex_plan.requests import common as C
from apex_plan.requests.options import build, option

_ROLE_LAYOUT = "layout tp=T,pp=P[,ep=E][,adp=A]"


@dataclass(frozen=True)
class SimulateRequest:
    """The options of `apex-plan simulate`; field metadata holds each one's CLI spellings and limits."""
    model: str = C.model_opt()
    gpu: Optional[str] = C.gpu_opt()
    gpus: Optional[int] = C.gpus_opt()
    gpus_per_node: Optional[int] = C.gpus_per_node_opt()
    cluster: Optional[str] = C.cluster_opt()
    plan: Optional[str] = option(None, "--plan", help="dp=D,tp=T,pp=P[,ep=E][,adp=A] (adp: attention-DP ranks); "
                                                      "unnamed degrees are 1 (default dp=1,tp=1,pp=1)")
    tp_size: Optional[int] = option(None, "--tensor-parallel-size", "-tp", help="tp of --plan (vLLM spelling)",
                                    count=(1, L.MAX_GPUS, "e.g. --tensor-parallel-size 8"))
    pp_size: Optional[int] = option(None, "--pipeline-parallel-size", "-pp", help="pp of --plan (vLLM spelling)",
                                    count=(1, L.MAX_GPUS, "e.g. --pipeline-parallel-size 2"))
    weight_dtype: Optional[str] = option(None, "--weight-dtype",
                                         help="weight dtype: bf16 | fp16 | fp8 | int8 | fp4 | int4 (default: the "
                                              "checkpoint's own, e.g. fp8 for DeepSeek-V3 or a -FP8 repo)")
    kv_dtype: Optional[str] = option(None, "--kv-dtype", "--kv-cache-dtype",
                                     help="KV-cache dtype: bf16 | fp8 (default: the engine's for the weights)")
    trace: Optional[str] = option(None, "--trace", help=C.HELP["trace"])
    workload: Optional[str] = option(None, "--workload", help=C.HELP["workload"])
    rate: Optional[float] = C.rate_opt("synthetic arrival rate, requests/s")
    num_requests: Optional[int] = C.num_requests_opt(
        None, C.HELP["num_requests"] + " (default 1000; closed loop: 5 x --concurrency)")
    prompt_tokens: Optional[str] = C.text_opt(None, "--prompt-tokens", help=C.HELP["prompt_tokens"])
    output_tokens: Optional[str] = C.text_opt(None, "--output-tokens", help=C.HELP["output_tokens"])
    concurrency: Optional[int] = option(None, "--concurrency", help="closed loop: requests kept in flight",
                                        count=(1, L.MAX_REQUESTS, "e.g. --concurrency 32"))
    arrival: str = C.arrival_opt()
    burstiness_cv: float = C.burstiness_opt()
    seed: int = C.seed_opt()
    turns: int = C.turns_opt()
    prefix_tokens: int = C.prefix_tokens_opt()
    num_prefixes: int = C.num_prefixes_opt()
    prompt_pool: int = C.prompt_pool_opt()
    think_time: str = C.think_time_opt()
    hash_block_tokens: Optional[int] = C.hash_block_opt()
    engine: str = C.engine_opt()
    activation_scales: Optional[str] = option(None, "--activation-scales",
                                              help="fp8/int8 weights: dynamic | static (default: the engine's)")
    gpu_memory_utilization: Optional[float] = C.gmu_opt()
    max_model_len: Optional[int] = C.max_model_len_opt(C.HELP["max_model_len"])
    no_custom_allreduce: bool = C.no_car_opt()
    all2all_backend: Optional[str] = C.all2all_opt()
    deepep_mode: Optional[str] = C.deepep_mode_opt()
    chunked_prefill: str = option("auto", "--chunked-prefill", help="auto | on | off; auto: the engine profile's "
                                                                    "rule (vLLM: --enable-chunked-prefill)")
    max_num_seqs: Optional[int] = option(None, "--max-num-seqs", help="most sequences in one batch (default: the "
                                                                      "engine's)",
                                         count=(1, L.MAX_NUM_SEQS, "e.g. --max-num-seqs 256"))
    max_batched_tokens: Optional[int] = option(None, "--max-batched-tokens", "--max-num-batched-tokens",
                                               help="token budget of one step; default: vLLM's rule",
                                               count=(1, L.MAX_BATCHED_TOKENS, "e.g. --max-batched-tokens 2048"))
    batch_wait_iters: int = option(0, "--batch-wait-iters",
                                           help="TRT-LLM: while generations run, new contexts wait up to this many "
                                                "iterations to batch (batch_wait_timeout_iters; default 0: off)",
                                           count=(0, 100000, "e.g. --batch-wait-iters 20"))
    batch_wait_ratio: float = option(0.0, "--batch-wait-ratio",
                                                help="TRT-LLM: ... or until the iteration holds this fraction of "
                                                     "max_num_tokens (batch_wait_max_tokens_ratio; default 0)",
                                                real=(0.0, 1.0, "e.g. --batch-wait-ratio 0.9"),
                                                low_open=False)
    recv_interval: Optional[int] = C.recv_interval_opt()
    routing: str = option("round_robin", "--routing",
                          help="across replicas: round_robin | least_loaded | session (a session's turns stay on one "
                               "replica) | prefix (longest cached prefix); disaggregated: in both pools")
    prefix_caching: str = option("auto", "--prefix-caching", help="auto | on | off; " + C.HELP["prefix_caching"])
    speculative: Optional[str] = option(None, "--speculative", help=C.HELP["speculative"])
    speculative_acceptance: Optional[str] = option(None, "--speculative-acceptance", help=C.HELP["acceptance"])
    prefill_plan: Optional[str] = option(None, "--prefill-plan", help="disaggregated: each prefill instance's "
                                         + _ROLE_LAYOUT + " (with --decode-plan, instead of --plan)")
    prefill_replicas: Optional[int] = option(None, "--prefill-replicas", help="disaggregated: prefill instances",
                                             count=(1, L.MAX_GPUS, "e.g. --prefill-replicas 1"))
    decode_plan: Optional[str] = option(None, "--decode-plan", help="disaggregated: each decode instance's "
                                        + _ROLE_LAYOUT)
    decode_replicas: Optional[int] = option(None, "--decode-replicas", help="disaggregated: decode instances",
                                            count=(1, L.MAX_GPUS, "e.g. --decode-replicas 3"))
    decode_max_num_seqs: Optional[int] = option(None, "--decode-max-num-seqs",
                                                help="disaggregated: batch cap of each decode attention rank (default: "
                                                     "the engine's; --max-num-seqs sets the prefill's)",
                                                count=(1, L.MAX_NUM_SEQS, "e.g. --decode-max-num-seqs 64"))
    ttft_slo: Optional[str] = C.text_opt(None, "--ttft-slo", help=C.HELP["ttft"])
    tpot_slo: Optional[str] = C.text_opt(None, "--tpot-slo", help=C.HELP["tpot"])
    slo_percentile: float = C.slo_percentile_opt()

    @classmethod
    def from_mapping(cls, options: Mapping[str, Any]) -> "SimulateRequest":
        """The request from field name -> value, every value checked (`requests.options.build`)."""
        return build(cls, options)

    @property
    def roles(self) -> tuple:
        """The disaggregated options: prefill plan and replicas, decode plan, replicas and batch cap."""
        return (self.prefill_plan, self.prefill_replicas, self.decode_plan, self.decode_replicas,
                self.decode_max_num_seqs)

    @property
    def disaggregated(self) -> bool:
        return any(x is not None for x in self.roles)


@dataclass(frozen=True)
class SimulateOutcome:
    """What `simulate` prints: the simulation (`SimResult`, or `DisaggResult` when disaggregated), the
    echo of its inputs, and the model and GPU profile sources the HTML report cites."""
    result: Any
    inputs: dict
    disaggregated: bool
    model_source: str
    gpu_source: str


def _workload_doc(req: SimulateRequest, wl) -> dict:
    return {"trace": req.trace, "preset": req.workload, "rate_per_s": req.rate, "requests": len(wl.trace),
            "mode": wl.mode, "concurrency": wl.concurrency, "seed": req.seed}


def _workload(req: SimulateRequest, m):
    """The workload of the request: a trace or a synthetic draw, refused when a request cannot fit."""
    from apex_plan import inputs as I
    num_requests = req.num_requests
    if num_requests is None:
        from apex_plan.simulate.run import BENCH_REQUESTS_PER_SLOT
        num_requests = BENCH_REQUESTS_PER_SLOT * req.concurrency if req.concurrency else 1000
    wl = I.workload_from_options(I.WorkloadOptions(
        req.trace, req.workload, req.rate, num_requests, req.prompt_tokens, req.output_tokens, req.concurrency,
        req.arrival, req.burstiness_cv, req.seed, C.session_options(req)))
    I.check_workload_fits(wl, m, req.max_model_len, req.trace)
    return wl


def _aggregated_plan(req: SimulateRequest, weight_dtype: str, kv_dtype: str, cl, m, redundant_experts: bool):
    """--plan (with -tp/-pp), refused when it does not fit the cluster; a warning when it leaves GPUs idle."""
    from apex_plan import inputs as I
    p = I.parse_plan(req.plan, weight_dtype, kv_dtype, req.tp_size, req.pp_size)
    I.check_plan_fits(p, cl, m, redundant_experts=redundant_experts)
    if p.num_gpus < cl.num_gpus:                       # say so: the other GPUs are not simulated
        warnings.warn(f"--plan {p.label().split()[0]} uses {p.num_gpus} of the {cl.num_gpus} GPUs; the figures are "
                      f"for those only (give --plan dp=..,tp=..,pp=.. to use all {cl.num_gpus})")
    return p


def _disaggregated(req: SimulateRequest, m, cl, dplan, eng, wl, slo, weight_dtype: str, kv_dtype: str):
    from apex_plan.simulate.disagg import simulate_disagg
    res = simulate_disagg(m, cl, dplan, eng, wl, slo)
    inputs = {"model": m.name, "gpu": cl.gpu.name, "gpus": req.gpus or cl.num_gpus,
              "gpus_per_node": cl.gpus_per_node, "prefill_plan": req.prefill_plan,
              "prefill_replicas": dplan.prefill_replicas, "decode_plan": req.decode_plan,
              "decode_replicas": dplan.decode_replicas, "decode_max_num_seqs": req.decode_max_num_seqs,
              "weight_dtype": weight_dtype, "kv_dtype": kv_dtype, "engine": C.engine_doc(eng.profile),
              "routing": eng.routing, "workload": _workload_doc(req, wl), "slo": C.slo_doc(slo),
              "model_source": m.source or m.name}
    return SimulateOutcome(res, inputs, True, m.source, cl.gpu.source)


def _aggregated(req: SimulateRequest, m, cl, p, eng, wl, slo, weight_dtype: str, kv_dtype: str):
    from apex_plan.simulate.run import simulate
    res = simulate(m, cl, p, eng, wl, slo)
    if res.feasible and wl.trace.has_prefix_hashes:      # what caching buys: the same run with it flipped
        from apex_plan.simulate.features import with_caching_comparison
        other = simulate(m, cl, p, dataclasses.replace(eng, prefix_caching=not res.engine.prefix_caching), wl, slo)
        if other.feasible:
            res = dataclasses.replace(res, metrics=with_caching_comparison(res.metrics, other.metrics))
    inputs = {"model": m.name, "gpu": cl.gpu.name, "gpus": cl.num_gpus, "gpus_per_node": cl.gpus_per_node,
              "plan": req.plan if req.plan is not None else f"dp={p.dp},tp={p.tp},pp={p.pp}",
              "weight_dtype": weight_dtype, "kv_dtype": kv_dtype, "engine": C.engine_doc(eng.profile),
              "workload": _workload_doc(req, wl), "slo": C.slo_doc(slo)}
    return SimulateOutcome(res, inputs, False, m.source, cl.gpu.source)


def run_simulate(req: SimulateRequest, drawn_by: str | None = None) -> SimulateOutcome:
    """Check the request against its model, cluster and engine, simulate it, and echo its inputs.
    `drawn_by`: the option asking for an HTML report or chart (--report, --plot), if any; not drawn
    for disaggregated deployments yet."""
    from apex_plan import inputs as I
    from apex_plan.model.load import load_model
    from apex_plan.model.quant import component_format
    from apex_plan.plan.spec import EngineConfig
    from apex_plan.workload.slo import parse_slo
    m = load_model(req.model)
    cl = I.cluster_from_options(req.gpu, req.gpus, req.gpus_per_node, req.cluster, partial_last_node=req.disaggregated)
    (chunked,) = I.chunked_prefill_modes(req.chunked_prefill, sweep=False)
    eng = I.engine_from_options(EngineConfig(
        name=req.engine, gpu_memory_utilization=req.gpu_memory_utilization, max_model_len=req.max_model_len,
        custom_allreduce=not req.no_custom_allreduce, chunked_prefill=chunked, max_num_seqs=req.max_num_seqs,
        max_batched_tokens=req.max_batched_tokens, routing=req.routing, activation_scales=req.activation_scales,
        prefix_caching=I.prefix_caching_mode(req.prefix_caching),
        speculative=I.speculative_option(req.speculative, req.speculative_acceptance),
        batch_wait_iters=req.batch_wait_iters, batch_wait_tokens_ratio=req.batch_wait_ratio,
        recv_interval=req.recv_interval))
    eng = C.with_all2all(eng, req)
    I.check_engine(eng, m)
    I.check_engine_gpu(eng, cl.gpu)
    weight_dtype = req.weight_dtype if req.weight_dtype is not None else I.default_weight_dtype(m, cl)
    kv_dtype = req.kv_dtype if req.kv_dtype is not None else eng.profile.default_kv_dtype(
        weight_dtype, component_format(dict(m.weight_formats), "attention", weight_dtype, "bf16"), cl.gpu.name)
    if req.disaggregated:
        if req.plan is not None or req.tp_size is not None or req.pp_size is not None:
            raise InputError("--plan", None, "given together with --prefill-plan/--decode-plan",
                             "use --plan for aggregated serving, or the two role plans for disaggregated serving")
        if req.recv_interval is not None:
            raise InputError("--scheduler-recv-interval", None, "modelled for aggregated serving only",
                             "drop it, or use --plan")
        if drawn_by:
            raise InputError(drawn_by, None, "not drawn for disaggregated deployments yet",
                             "drop it (the JSON has every figure)")
        plan = I.parse_disagg_plan(req.roles, weight_dtype, kv_dtype, cl, m, req.gpus or cl.num_gpus,
                                   eng.profile.layouts.redundant_experts)
    else:
        plan = _aggregated_plan(req, weight_dtype, kv_dtype, cl, m, eng.profile.layouts.redundant_experts)
    wl = _workload(req, m)
    slo = parse_slo(req.ttft_slo, req.tpot_slo, req.slo_percentile)
    run = _disaggregated if req.disaggregated else _aggregated
    return run(req, m, cl, plan, eng, wl, slo, weight_dtype, kv_dtype)
