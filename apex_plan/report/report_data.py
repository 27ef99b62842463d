"""Adapter: what the HTML report and `--plot` read from a search result or a simulation.

The search internals change often; every access to `SearchResult` / `PlanEval` /
`DeploymentEval` fields is in this module, so a change there is re-wired here only. It only reads:
the deployments carry the runs that verified them (`DeploymentEval.runs`) and the load curves come
from the search layer (`search.curves.load_curves`); nothing here simulates.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np

from apex_plan.report.economics import Economics
from apex_plan.report.search_view import economics
from apex_plan.search.results import SteadyMetrics
from apex_plan.simulate.metrics import at_slo_percentile
from apex_plan.simulate.run import SimResult

TOP_DEPLOYMENTS = 3          # deployments whose latency distributions and breakdowns are drawn
CDF_POINTS = 400             # at most this many points per CDF polyline


@dataclass(frozen=True)
class PlanPoint:
    """One replica plan as the report shows it."""

    key: str
    status: str
    reason: str
    gpus_per_replica: int
    tp: int
    pp: int
    ep: int
    weight_dtype: str
    kv_dtype: str
    goodput_rps: float
    replicas_for_demand: int
    tok_s_per_gpu: float | None          # output tokens/s per GPU at the plan's goodput
    ttft_ms: float | None                # at the SLO percentile, at goodput
    tpot_ms: float | None
    demand_ttft_ms: float | None         # one replica at its share of the demand
    demand_tpot_ms: float | None
    energy_j_per_token: float | None
    memory: dict | None                  # MemoryReport.as_dict()
    engine: dict | None
    deployment_rank: int | None          # best deployment (1 = recommended) using this plan
    curve: tuple[tuple[float, float, float, float], ...] = ()   # (rate, tok/s/GPU, TTFT ms, TPOT ms) by load


@dataclass(frozen=True)
class GroupRun:
    """One plan group of a deployment, as simulated when the search verified it."""

    key: str
    replicas: int
    sim: SimResult


@dataclass(frozen=True)
class DeploymentView:
    rank: int
    label: str                           # "2 x tp4-pp1 bf16/bf16"
    gpus: int
    goodput_rps: float
    rate_rps: float
    cost_per_hour: float | None          # None: no price given
    economics: Economics                 # $/Mtok, power and energy (`report.economics`)
    tok_s_per_gpu: float                 # the whole deployment at the simulated rate
    ttft_ms: float | None                # at the SLO percentile
    tpot_ms: float | None
    metrics: SteadyMetrics               # as the search reported it
    ttft_s: np.ndarray                   # per request, whole deployment
    tpot_s: np.ndarray
    groups: tuple[GroupRun, ...]
    launch: tuple[str, ...]


@dataclass(frozen=True)
class SearchReportData:
    question: dict                       # the CLI's inputs echo (what `--format json` writes)
    percentile: float
    ttft_slo_ms: float | None
    tpot_slo_ms: float | None
    recommendation: str
    plans: tuple[PlanPoint, ...]
    deployments: tuple[DeploymentView, ...]
    rejected: tuple[tuple[str, str], ...]    # (plan label, reason) before costing
    stats: dict
    gpu_source: str
    model_source: str
    calibration: dict = dataclasses.field(default_factory=dict)   # the GPU profile's constants as loaded


# ------------------------------------------------------------------------------------------------
def _pct(m: SteadyMetrics | None, name: str, p: float) -> float | None:
    """A latency at the SLO percentile from steady-state metrics (the SLO block's when judged at `p`)."""
    if not m:
        return None
    return at_slo_percentile(m.ttft_ms if name == "ttft_ms" else m.tpot_ms, m.slo, name == "ttft_ms", p)


def launch_commands(model_source: str, plan, eng: dict | None, replicas: int) -> tuple[str, ...]:
    """A `vllm serve` command for one replica of `plan` (vLLM CLI flags), and how many to start: the
    fallback when a deployment carries no launch commands of its engine (`DeploymentEval.launch`)."""
    parts = [f"vllm serve {model_source}", f"--tensor-parallel-size {plan.tp}"]
    if plan.pp > 1:
        parts.append(f"--pipeline-parallel-size {plan.pp}")
    if plan.ep > 1:
        parts.append("--enable-expert-parallel")
    if plan.weight_dtype == "fp8":
        parts.append("--quantization fp8")
    if plan.kv_dtype == "fp8":
        parts.append("--kv-cache-dtype fp8")
    if eng:
        parts.append(f"--max-model-len {eng['max_model_len']}")
        parts.append(f"--max-num-seqs {eng['max_num_seqs']}")
        parts.append(f"--gpu-memory-utilization {eng['gpu_memory_utilization']:g}")
        if eng["chunked_prefill"]:
            parts.append(f"--enable-chunked-prefill --max-num-batched-tokens {eng['max_batched_tokens']}")
        if not eng["custom_allreduce"]:
            parts.append("--disable-custom-all-reduce")
    cmd = " ".join(parts)
    return (cmd if replicas == 1 else f"{cmd}    # x {replicas} replicas, each on its own "
                                       f"{plan.gpus_per_replica} GPU(s) and port, behind a round-robin router",)


def _runs(dv) -> tuple[np.ndarray, np.ndarray, tuple[GroupRun, ...], float]:
    """A deployment's per-request TTFT and TPOT over the measured window, its group runs and rate, as the
    search verified it."""
    cat = (lambda xs: np.concatenate(xs) if xs else np.zeros(0))
    runs = tuple(GroupRun(r.key, r.replicas, r.sim) for r in dv.runs)
    return cat([r.window.ttft_s for r in dv.runs]), cat([r.window.tpot_s for r in dv.runs]), runs, dv.rate_rps


def from_search(res, inputs: dict, top: int = TOP_DEPLOYMENTS, curves: dict | None = None) -> SearchReportData:
    """Read a `run_search` result (and the CLI's inputs echo) into report data; `curves`: plan key ->
    load curve (`search.curves.load_curves`), none drawn without."""
    from apex_plan.report.search_view import recommendation
    inp = res.inputs
    p = inp.slo.percentile
    dep_rank: dict[str, int] = {}
    for i, d in enumerate(res.deployments):
        for k, _ in d.deployment.replicas:
            dep_rank.setdefault(k, i + 1)
    plans = []
    for e in res.plans:
        g = e.at_goodput
        curve = (curves or {}).get(e.key, ())
        plans.append(PlanPoint(
            key=e.key, status=e.status, reason=e.reason, gpus_per_replica=e.plan.gpus_per_replica,
            tp=e.plan.tp, pp=e.plan.pp, ep=e.plan.ep, weight_dtype=e.plan.weight_dtype, kv_dtype=e.plan.kv_dtype,
            goodput_rps=e.goodput_rps, replicas_for_demand=e.replicas_for_demand,
            # output tokens per second of one replica at its goodput, per GPU of that replica
            tok_s_per_gpu=(g.throughput.output_tokens_per_s / e.plan.gpus_per_replica) if g else None,
            ttft_ms=_pct(g, "ttft_ms", p), tpot_ms=_pct(g, "tpot_ms", p),
            demand_ttft_ms=_pct(e.at_demand, "ttft_ms", p), demand_tpot_ms=_pct(e.at_demand, "tpot_ms", p),
            energy_j_per_token=(e.at_demand or g).energy.j_per_output_token if (e.at_demand or g) else None,
            memory=e.memory.as_dict() if e.memory else None,
            engine=e.engine.as_dict() if e.engine else None,
            deployment_rank=dep_rank.get(e.key), curve=curve))
    by_key = {e.key: e for e in res.plans}
    deps = []
    # aggregated deployments only (a disaggregated one is in the table and JSON)
    for i, dv in enumerate([d for d in res.deployments if d.serving == "agg"][:top]):
        ttft, tpot, runs, rate = _runs(dv)
        launch: list[str] = [f"{item.replicas} x: {item.command}" for item in (dv.launch or [])]
        if not launch:
            for k, n in dv.deployment.replicas:
                ev = by_key[k]
                launch += launch_commands(inp.model.source or inp.model.name, ev.plan,
                                          ev.engine.as_dict() if ev.engine else None, n)
        deps.append(DeploymentView(
            rank=i + 1, label=" + ".join(f"{n} x {k}" for k, n in dv.deployment.replicas), gpus=dv.deployment.gpus,
            goodput_rps=dv.deployment.goodput_rps, rate_rps=rate, cost_per_hour=dv.deployment.cost_per_hour,
            economics=economics(res, dv),
            # output tokens/s of the whole deployment at the simulated rate, per GPU it occupies
            tok_s_per_gpu=dv.metrics.throughput.output_tokens_per_s / dv.deployment.gpus,
            ttft_ms=_dist_pct(ttft, p), tpot_ms=_dist_pct(tpot, p),
            metrics=dv.metrics, ttft_s=ttft, tpot_s=tpot, groups=runs, launch=tuple(launch)))
    return SearchReportData(
        question=inputs, percentile=p,
        ttft_slo_ms=inp.slo.ttft_s * 1e3 if inp.slo.ttft_s else None,
        tpot_slo_ms=inp.slo.tpot_s * 1e3 if inp.slo.tpot_s else None,
        recommendation=recommendation(res), plans=tuple(plans), deployments=tuple(deps),
        rejected=tuple((pl.replica_label(), r) for pl, r in res.rejected), stats=dict(res.stats),
        gpu_source=inp.cluster.gpu.source, model_source=inp.model.source,
        calibration=_as_dict(getattr(inp.cluster.gpu, "calibration", None)))


def _as_dict(obj) -> dict:
    """A dataclass (or mapping) as a dict; anything else as its text."""
    if obj is None:
        return {}
    if dataclasses.is_dataclass(obj):
        return dataclasses.asdict(obj)
    return dict(obj) if isinstance(obj, dict) else {"value": str(obj)}


def _dist_pct(samples_s: np.ndarray, p: float) -> float | None:
    """The p-th percentile of per-request seconds, in ms (None when empty)."""
    return float(np.percentile(samples_s, p)) * 1e3 if samples_s.size else None


def cdf(samples_s: np.ndarray, scale: float = 1e3, points: int = CDF_POINTS) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Empirical CDF (x scaled, e.g. to ms; y in [0, 1]) thinned to at most `points` points."""
    x = np.sort(np.asarray(samples_s, float)) * scale
    n = x.size
    if n == 0:
        return (), ()
    y = np.arange(1, n + 1) / n
    if n > points:
        idx = np.unique(np.linspace(0, n - 1, points).round().astype(int))
        x, y = x[idx], y[idx]
    return tuple(float(v) for v in x), tuple(float(v) for v in y)
