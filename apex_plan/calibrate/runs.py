"""Measured runs as simulation cases: closed-loop benchmark rows (the silicon CSV columns).

A case holds everything `simulate` needs plus the measured means, so a fit can re-simulate it
with other constants without re-reading files.
"""

from __future__ import annotations

import csv
import dataclasses
from dataclasses import dataclass
from pathlib import Path

from apex_plan.engine.load import resolve_engine_profile
from apex_plan.engine.spec import EngineProfile
from apex_plan.calibrate import fields as F
from apex_plan.errors import InputError, did_you_mean
from apex_plan.limits import MAX_GPUS, MAX_NUM_SEQS, MAX_TOKENS_PER_REQUEST
from apex_plan.hardware.load import load_gpu, make_cluster
from apex_plan.hardware.spec import ClusterSpec
from apex_plan.model.load import load_model
from apex_plan.model.quant import component_format
from apex_plan.model.spec import ModelSpec
from apex_plan.plan.spec import EngineConfig, Plan
from apex_plan.simulate.run import SimResult, simulate
from apex_plan.workload.spec import Workload
from apex_plan.workload.synthetic import LengthDist, closed_loop, synthetic_trace

SYSTEM_GPU = {"h100_sxm": "h100-sxm-80gb", "h200_sxm": "h200-sxm-141gb", "b200_sxm": "b200-sxm-180gb",
              "b300_sxm": "b300-sxm-288gb", "gb200": "gb200-nvl72", "gb300": "gb300-nvl72"}
PRECISION = {"": "bf16", "bf16": "bf16", "fp8": "fp8", "fp4": "fp4", "int4": "int4"}


@dataclass(frozen=True, eq=False)
class Case:
    """One measured run ready to simulate."""

    id: str
    group: tuple[str, ...]           # (system, engine family, model, precision)
    model: ModelSpec
    cluster: ClusterSpec
    plan: Plan
    engine: EngineConfig
    workload: Workload
    ttft_ms: float                   # measured mean
    tpot_ms: float                   # measured mean

    def run(self, profile: EngineProfile | None = None, cluster: ClusterSpec | None = None) -> SimResult:
        """Simulate with another engine profile / cluster (for fitting)."""
        eng = dataclasses.replace(self.engine, profile=profile) if profile is not None else self.engine
        return simulate(self.model, cluster or self.cluster, self.plan, eng, self.workload)


def _row_plan(where: str, r: dict, keys: tuple[str, str, str], weight_dtype: str, kv_dtype: str | None,
              profile: EngineProfile, adp: int = 1, ep: int = 1, weight_format: str = "", gpu_name: str = "") -> Plan:
    """The plan of one row from its (dp, tp, pp) columns: whole numbers of at least 1."""
    dp, tp, pp = (F.count(where, k, r.get(k), 1, MAX_GPUS, f"write '{k}' as a whole number of at least 1",
                          default=1) for k in keys)
    from apex_plan.units import DTYPE_BYTES
    for key, dt in (("weight_dtype", weight_dtype), ("kv_dtype", kv_dtype)):
        if dt is not None and dt not in DTYPE_BYTES:
            raise InputError(where, key, f"unknown dtype '{dt}'", did_you_mean(dt, DTYPE_BYTES))
    return Plan(dp, tp, pp, ep, weight_dtype, kv_dtype or profile.default_kv_dtype(weight_dtype, weight_format, gpu_name),
                adp=adp)


def case_from_row(r: dict, requests_per_slot: int, seed: int = 0, where: str | None = None) -> Case:
    """A silicon-CSV row (closed loop: `concurrency` requests of isl/osl tokens in flight)."""
    from apex_plan import inputs as I
    where = where or str(r.get("id") or "row")
    opt = lambda key, low=1, default=0: F.count(where, key, r.get(key), low, MAX_GPUS,  # noqa: E731
                                                f"write '{key}' as a whole number", default=default)
    adp = opt("attention_dp_size", default=1)
    mtp, mep = opt("moe_tp_size", 0), opt("moe_ep_size", 0)
    conc = F.concurrency(where, "concurrency", r.get("concurrency")) or F.concurrency(where, "batch_size",
                                                                                      r.get("batch_size"))
    if not conc:
        raise InputError(where, "concurrency", "missing", "give concurrency or batch_size")
    seqs = F.count(where, "batch_size", r.get("batch_size"), 1, MAX_NUM_SEQS, "give the engine's batch size",
                   default=conc)
    for key in ("model_path", "system", "backend"):
        if not (r.get(key) or "").strip():
            raise InputError(where, key, "missing", f"give the run's {key}")
    model = load_model(r["model_path"])
    gpu = load_gpu(SYSTEM_GPU.get(r["system"], r["system"]), where=where, field="system")
    engine_text = r["backend"] + (f"@{r['backend_version']}" if r.get("backend_version") else "")
    profile = resolve_engine_profile(engine_text, where=f"{where}: field 'backend'")
    wd = PRECISION.get(r.get("precision", ""), r.get("precision", ""))
    plan = _row_plan(where, {"tp_size": r.get("tp_size"), "pp_size": r.get("pp_size")},
                     ("dp_size", "tp_size", "pp_size"), wd, None, profile, adp=1, ep=1,
                     weight_format=component_format(dict(model.weight_formats), "attention", wd, "bf16"),
                     gpu_name=gpu.name)
    tp = plan.tp
    if adp <= 1 and mtp * mep > tp:
        adp = mtp * mep // tp
    plan = dataclasses.replace(plan, ep=mep if mep > 1 else 1, adp=adp)
    cluster = row_cluster(where, "tp_size", gpu, plan.num_gpus)
    I.check_plan_fits(plan, cluster, model, where=where, redundant_experts=profile.layouts.redundant_experts)
    eng = EngineConfig(max_num_seqs=seqs, name=engine_text, profile=profile)
    isl = F.count(where, "isl", r.get("isl"), 1, MAX_TOKENS_PER_REQUEST, "give the prompt length in tokens")
    osl = F.count(where, "osl", r.get("osl"), 1, MAX_TOKENS_PER_REQUEST, "give the output length in tokens")
    ttft = F.measured_ms(where, "silicon_ttft_ms", r.get("silicon_ttft_ms"))
    tpot = F.measured_ms(where, "silicon_tpot_ms", r.get("silicon_tpot_ms"))
    n = max(conc * requests_per_slot, conc)
    tr = synthetic_trace(n, LengthDist("constant", mean=float(isl)), LengthDist("constant", mean=float(osl)),
                         None, "poisson", 1.0, seed)
    group = (r["system"], r["backend"], r["model_path"].split("/")[-1], wd)
    return Case(r.get("id", ""), group, model, cluster, plan, eng, closed_loop(tr, conc), ttft, tpot)


def row_cluster(where: str, field: str, gpu, gpus: int) -> ClusterSpec:
    """The cluster a run ran on (nodes of 8 GPUs, or one smaller node); errors name the run's field."""
    try:
        return make_cluster(gpu, gpus, min(8, gpus))
    except InputError as e:
        raise InputError(where, field, e.problem, "give the run's own GPU count and plan degrees") from None


def _rows(path: Path, required: tuple[str, ...]):
    """(where, row) of each CSV row, `where` naming the file and line; a missing column or an
    undecodable file is an InputError."""
    try:
        f = open(path, newline="", encoding="utf-8")
        rows = list(csv.DictReader(f))
    except UnicodeDecodeError as e:
        raise InputError(str(path), None, f"not UTF-8 text (byte {e.start})", "save the CSV as UTF-8") from None
    except (OSError, csv.Error) as e:
        raise InputError(str(path), None, f"cannot read the CSV: {e}", "give a silicon or trace-replay CSV") from None
    header = rows[0].keys() if rows else []
    for col in required:
        if rows and col not in header:
            raise InputError(str(path), col, "missing column", "give the measured and run columns of the format")
    for i, r in enumerate(rows, 2):
        if None in r or any(v is None for v in r.values()):
            raise InputError(f"{path}:{i}", None, "the row does not have the header's number of fields",
                             "give every row exactly the header's fields")
        yield f"{path}:{i}", r


SILICON_COLUMNS = ("backend", "model_path", "system", "isl", "osl", "silicon_ttft_ms", "silicon_tpot_ms")
TRACE_RUN_COLUMNS = ("experiment", "model", "weight_dtype", "kv_dtype", "gpu", "gpus", "dp", "tp", "pp", "engine",
                     "trace", "ttft_mean_s", "tpot_mean_s")


def read_silicon_csv(path: str | Path, requests_per_slot: int = 8) -> tuple[list[Case], list[tuple[str, str]]]:
    """Aggregated rows of a silicon-format CSV as cases, and (id, reason) of disaggregated rows (not
    simulated here). Any other bad row is an InputError naming the line and the field."""
    cases, skipped = [], []
    for where, r in _rows(Path(path), SILICON_COLUMNS):
        if r.get("mode", "agg") != "agg":
            skipped.append((r.get("id", ""), "disaggregated serving"))
            continue
        cases.append(case_from_row(r, requests_per_slot, where=where))
    return cases, skipped


def read_trace_runs(path: str | Path) -> list[Case]:
    """Rows of a trace-replay CSV (the vllm-h100 bench columns: model, gpu, dp/tp/pp, dtypes, trace,
    engine settings, measured ttft_mean_s / tpot_mean_s) as cases; traces relative to the CSV."""
    from apex_plan import inputs as I
    from apex_plan.workload.trace import read_trace
    path = Path(path)
    cases = []
    for where, r in _rows(path, TRACE_RUN_COLUMNS):
        eng_col = r.get("engine", "")
        if eng_col.startswith("vllm-"):
            engine_text = "vllm@" + eng_col.split("-", 1)[1]
        elif eng_col in ("", "vllm"):
            engine_text = "vllm"
        else:
            raise InputError(where, "engine", f"'{eng_col}' is not a vLLM engine (trace-replay rows are vLLM runs)",
                             "write it as vllm-VERSION, e.g. vllm-0.6.0")
        profile = resolve_engine_profile(engine_text, where=f"{where}: field 'engine'")
        plan = _row_plan(where, r, ("dp", "tp", "pp"), r["weight_dtype"], r["kv_dtype"], profile)
        gmu = F.number(where, "gpu_memory_utilization", r.get("gpu_memory_utilization"), required=False)
        if gmu is not None and not 0 < gmu <= 1:
            raise InputError(where, "gpu_memory_utilization", f"must be in (0, 1], got {gmu:g}", "e.g. 0.9")
        max_len = F.count(where, "max_model_len", r.get("max_model_len"), 1, MAX_TOKENS_PER_REQUEST,
                          "give max_model_len in tokens, or leave it empty", required=False)
        eng = EngineConfig(gpu_memory_utilization=gmu, max_model_len=max_len,
                           custom_allreduce=r.get("custom_allreduce") != "False", name=engine_text, profile=profile,
                           activation_scales=r.get("activation_scales") or None)
        model = load_model(r["model"])
        gpus = F.count(where, "gpus", r.get("gpus"), 1, MAX_GPUS, "give the run's GPU count")
        cluster = row_cluster(where, "gpus", load_gpu(r["gpu"], where=where, field="gpu"), gpus)
        I.check_plan_fits(plan, cluster, model, where=where)
        ttft = F.measured_ms(where, "ttft_mean_s", r.get("ttft_mean_s"), 1e3)
        tpot = F.measured_ms(where, "tpot_mean_s", r.get("tpot_mean_s"), 1e3)
        trace_path = path.parent / (r.get("trace") or "")
        if not r.get("trace") or not trace_path.is_file():
            raise InputError(where, "trace", f"trace file '{trace_path}' not found", "give a path relative to the CSV")
        wl = Workload(read_trace(trace_path))
        group = (r["gpu"], "vllm", r["model"], r["weight_dtype"])
        cases.append(Case(r["experiment"], group, model, cluster, plan, eng, wl, ttft, tpot))
    return cases


def read_runs(path: str | Path, requests_per_slot: int = 5) -> tuple[list[Case], list[tuple[str, str]]]:
    """Either CSV format, told apart by its columns."""
    try:
        with open(path, encoding="utf-8") as f:
            header = f.readline()
    except UnicodeDecodeError as e:
        raise InputError(str(path), None, f"not UTF-8 text (byte {e.start})", "save the CSV as UTF-8") from None
    if "silicon_ttft_ms" in header:
        return read_silicon_csv(path, requests_per_slot)
    return read_trace_runs(path), []
