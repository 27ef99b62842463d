"""Plan options: --plan dp=,tp=,pp=,ep=,adp= (and -tp/-pp), disaggregated pools, default weight dtype."""

from __future__ import annotations

import dataclasses
import re

from apex_plan.errors import InputError, did_you_mean
from apex_plan.hardware.spec import ClusterSpec
from apex_plan.limits import MAX_GPUS
from apex_plan.model.spec import ModelSpec
from apex_plan.plan.spec import Plan
from apex_plan.units import DTYPE_BYTES


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



def check_plan_fits(plan: Plan, cluster: ClusterSpec, model: ModelSpec, where: str = "--plan",
                    redundant_experts: bool = False) -> None:
    """A given plan must pass the rules `search` enumerates with (`plan.enumerate.plan_reason`); an explicit
    plan may span nodes with tensor parallelism (whole nodes only). `redundant_experts`: the engine pads the
    experts to a multiple of ep (its profile's layouts.redundant_experts)."""
    from apex_plan.plan.enumerate import plan_reason
    why = plan_reason(model, cluster, plan, allow_cross_node_tp=True, redundant_experts=redundant_experts)
    if why is None:
        return
    kind, reason = why
    fix = {"limit": "lower the degrees or raise --gpus", "dtype": "choose a dtype the GPU supports"}.get(
        kind, "choose degrees that divide the model's heads, layers and experts and fill whole nodes")
    if kind == "dtype" and where == "--plan":         # name the dtype option the user gave
        where = "--weight-dtype" if "weight dtype" in reason else "--kv-dtype"
        fix = "use " + ", ".join(k for k in cluster.gpu.peak_tflops if k in ("bf16", "fp16", "fp8", "fp4"))
    raise InputError(where, None, f"{plan.label()} on {model.name}: {reason}", fix)



def parse_disagg_plan(options: tuple, weight_dtype: str, kv_dtype: str, cluster: ClusterSpec, model: ModelSpec,
                      gpus: int | None = None, redundant_experts: bool = False):
    """`--prefill-plan tp=..,pp=..[,ep=..][,adp=..] --prefill-replicas NP --decode-plan ... --decode-replicas ND`
    -> DisaggPlan (each role's Plan with dp = its replica count), checked against the model and the GPUs.
    `options`: (prefill plan, prefill replicas, decode plan, decode replicas, decode max_num_seqs), as given;
    `redundant_experts`: as in check_plan_fits."""
    from apex_plan.plan.disagg import DisaggPlan
    prefill_plan, prefill_replicas, decode_plan, decode_replicas, decode_max_num_seqs = options
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
            check_plan_fits(dataclasses.replace(p, dp=1), cluster, model, where=opt, redundant_experts=redundant_experts)
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
