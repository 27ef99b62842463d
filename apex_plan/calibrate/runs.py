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
from apex_plan.errors import InputError
from apex_plan.hardware.load import load_gpu, make_cluster
from apex_plan.hardware.spec import ClusterSpec
from apex_plan.model.load import load_model
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


def _int(text: str | None, default: int = 0) -> int:
    try:
        return int(float(text))
    except (TypeError, ValueError):
        return default


def case_from_row(r: dict, requests_per_slot: int, seed: int = 0) -> Case:
    """A silicon-CSV row (closed loop: `concurrency` requests of isl/osl tokens in flight)."""
    tp, pp = _int(r.get("tp_size"), 1) or 1, _int(r.get("pp_size"), 1) or 1
    adp = _int(r.get("attention_dp_size"), 1) or 1
    mtp, mep = _int(r.get("moe_tp_size")), _int(r.get("moe_ep_size"))
    if adp <= 1 and mtp * mep > tp:
        adp = mtp * mep // tp
    conc = _int(r.get("concurrency")) or _int(r.get("batch_size"))
    seqs = _int(r.get("batch_size")) or conc
    if conc < 1:
        raise InputError(r.get("id", "row"), "concurrency", "missing", "give concurrency or batch_size")
    model = load_model(r["model_path"])
    gpu = load_gpu(SYSTEM_GPU.get(r["system"], r["system"]), where="system")
    engine_text = r["backend"] + (f"@{r['backend_version']}" if r.get("backend_version") else "")
    profile = resolve_engine_profile(engine_text, where="backend")
    wd = PRECISION.get(r.get("precision", ""), r.get("precision", ""))
    plan = Plan(1, tp, pp, mep if mep > 1 else 1, wd, profile.default_kv_dtype(wd), adp=adp)
    eng = EngineConfig(max_num_seqs=seqs, name=engine_text, profile=profile)
    n = max(conc * requests_per_slot, conc)
    tr = synthetic_trace(n, LengthDist("constant", mean=float(r["isl"])), LengthDist("constant", mean=float(r["osl"])),
                         None, "poisson", 1.0, seed)
    group = (r["system"], r["backend"], r["model_path"].split("/")[-1], wd)
    return Case(r.get("id", ""), group, model, make_cluster(gpu, plan.num_gpus), plan, eng, closed_loop(tr, conc),
                float(r.get("silicon_ttft_ms") or "nan"), float(r.get("silicon_tpot_ms") or "nan"))


def read_silicon_csv(path: str | Path, requests_per_slot: int = 8) -> tuple[list[Case], list[tuple[str, str]]]:
    """Aggregated rows of a silicon-format CSV as cases, and (id, reason) of rows that cannot be run."""
    cases, skipped = [], []
    for r in csv.DictReader(open(path)):
        if r.get("mode", "agg") != "agg":
            skipped.append((r.get("id", ""), "disaggregated serving"))
            continue
        try:
            cases.append(case_from_row(r, requests_per_slot))
        except InputError as e:
            skipped.append((r.get("id", ""), str(e)))
    return cases, skipped
