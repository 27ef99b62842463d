"""Replica plans (dp=1) of a model on a cluster, with symmetric GPU layouts collapsed.

A replica plan fixes tp, pp, ep and the dtypes; how many replicas to run is decided later
(`apex_plan.rank.deploy`). Engine options are not enumerated here, and memory feasibility
is checked elsewhere.

Shapes considered
    tp: divisors of gpus_per_node, powers of two up to the cluster's GPUs, and (with
        cross-node TP) multiples of gpus_per_node.
    pp: powers of two and divisors of the cluster's GPUs, with tp * pp <= cluster GPUs.
    ep: 1 for dense models; for MoE models the divisors of tp (experts spread over a stage's GPUs).
Rules (violations become `Rejected` with a one-line reason)
    tp must fit in a node unless cross-node TP is allowed (then whole nodes); tp must divide
    the query heads; KV heads are split when tp <= kv heads (tp must divide them) and
    replicated when tp > kv heads (tp must be a multiple of them); pp <= layers; a replica
    larger than a node must be a whole number of nodes; ep must divide the experts; the
    GPU must support the weight and KV dtypes.

Symmetry
    The raw space places each shape's tp x pp grid of (stage, tp-rank) cells on physical
    GPUs in every way listed by `raw_layouts`: every order of the grid axes on the GPU ranks
    (which axis varies fastest), every aligned slot inside a node, every starting node and
    both directions of the stage-to-node order. A layout's canonical key is the node of each
    cell after (a) forgetting the GPU index inside a node -- GPUs in a node are treated as
    interchangeable (uniform all-to-all NVLink/NVSwitch) -- and (b) relabelling nodes in
    order of first use -- nodes are identical. Layouts with equal keys are the same replica.
    Replicas larger than a node are laid out TP-innermost only (a TP group never straddles
    more nodes than it must); pipeline-innermost layouts of such replicas would put every
    TP all-reduce on the inter-node network, and a `Plan` cannot express them.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Iterable, Mapping, Sequence

from apex_plan.errors import InputError
from apex_plan.hardware.spec import ClusterSpec
from apex_plan.model.spec import ModelSpec
from apex_plan.plan.spec import Plan


@dataclass(frozen=True)
class Rejected:
    """A plan that cannot run, and why (one line)."""

    plan: Plan
    reason: str


@dataclass(frozen=True)
class EnumerationStats:
    """Counts of one enumeration; `reasons` maps each rejection reason to how often it occurred."""

    enumerated: int             # raw layouts of the accepted plans, before symmetry pruning
    after_symmetry: int         # canonical (plan, layout) pairs
    rejected_divisibility: int  # heads, kv heads, layers or experts not divisible
    rejected_placement: int     # tp across nodes, replica not a whole number of nodes
    rejected_dtype: int         # dtype not supported by the GPU
    rejected_limit: int         # over --max-gpus-per-replica
    reasons: Mapping[str, int] = field(default_factory=lambda: MappingProxyType({}), hash=False)

    @property
    def rejected(self) -> int:
        return (self.rejected_divisibility + self.rejected_placement
                + self.rejected_dtype + self.rejected_limit)


@dataclass(frozen=True)
class Layout:
    """One physical placement of a replica's grid: a point of the raw (unpruned) space."""

    order: tuple[str, ...]      # grid axes, fastest-varying over GPU ranks first
    nodes: tuple[int, ...]      # node holding the replica's i-th block of gpus_per_node ranks
    first_gpu: int              # first local GPU of a replica smaller than a node


def _divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


def _powers_of_two(limit: int) -> list[int]:
    out, p = [], 1
    while p <= limit:
        out.append(p)
        p *= 2
    return out


def _unique(items: Iterable[str]) -> list[str]:
    return list(dict.fromkeys(items))


def raw_layouts(tp: int, pp: int, num_nodes: int, gpus_per_node: int) -> list[Layout]:
    """Every placement of a tp x pp replica counted in the raw space (see module docstring)."""
    size = tp * pp
    if size <= gpus_per_node:
        orders = [("tp", "pp"), ("pp", "tp")] if tp > 1 and pp > 1 else [("tp", "pp")]
        slots = range(0, gpus_per_node - size + 1, size)
        return [Layout(o, (n,), s) for o in orders for n in range(num_nodes) for s in slots]
    k = size // gpus_per_node
    node_tuples = dict.fromkeys(
        tuple((start + step * i) % num_nodes for i in range(k))
        for start in range(num_nodes) for step in (1, -1))
    return [Layout(("tp", "pp"), nodes, 0) for nodes in node_tuples]


def canonical_key(tp: int, pp: int, layout: Layout, gpus_per_node: int) -> tuple[int, ...]:
    """Node class of each (stage, tp-rank) cell, nodes relabelled by first use, GPU index dropped."""
    relabel: dict[int, int] = {}
    key = []
    for s in range(pp):
        for t in range(tp):
            rank = s * tp + t if layout.order[0] == "tp" else t * pp + s
            node = layout.nodes[(layout.first_gpu + rank) // gpus_per_node]
            key.append(relabel.setdefault(node, len(relabel)))
    return tuple(key)


def _tp_reason(model: ModelSpec, cluster: ClusterSpec, tp: int, cross: bool) -> tuple[str, str] | None:
    g, domain = cluster.gpus_per_node, cluster.nvlink_gpus
    if tp > domain and not cross:
        where = f"{g} GPUs per node" if domain == g else f"its {domain}-GPU NVLink domain"
        return "placement", f"tp={tp} exceeds {where} (pass --allow-cross-node-tp)"
    if tp > g and tp % g:
        return "placement", f"tp={tp} spans nodes but is not a whole number of {g}-GPU nodes"
    if tp <= g and g % tp:
        return "placement", f"tp={tp} does not divide {g} GPUs per node"
    if model.num_heads % tp:
        return "divisibility", f"tp={tp} does not divide {model.num_heads} attention heads"
    # linear-attention and Mamba heads are split over tp too (vLLM GatedDeltaNet / MambaMixer2)
    for heads, what in ((model.linear_num_key_heads, "linear-attention key"),
                        (model.linear_num_value_heads, "linear-attention value"), (model.mamba_num_heads, "Mamba")):
        if heads and heads % tp:
            return "divisibility", f"tp={tp} does not divide {heads} {what} heads"
    kv = model.num_kv_heads
    if model.attention != "mla" and kv > 0:
        if tp <= kv and kv % tp:
            return "divisibility", f"tp={tp} does not divide {kv} KV heads"
        if tp > kv and tp % kv:
            return "divisibility", f"tp={tp} is not a multiple of {kv} KV heads (needed to replicate them)"
    return None


def _pp_reason(model: ModelSpec, cluster: ClusterSpec, tp: int, pp: int,
               max_gpus: int | None, adp: int = 1) -> tuple[str, str] | None:
    g, size = cluster.gpus_per_node, tp * adp * pp
    if pp > model.num_layers:
        return "divisibility", f"pp={pp} exceeds {model.num_layers} layers"
    if size > g and size % g:
        return "placement", (f"replica of {size} GPUs (tp={tp}{f' x adp={adp}' if adp > 1 else ''} x pp={pp}) "
                             f"spans nodes but is not "
                             f"a whole number of {g}-GPU nodes")
    if max_gpus is not None and size > max_gpus:
        return "limit", f"replica of {size} GPUs exceeds --max-gpus-per-replica {max_gpus}"
    return None


def _ep_reason(model: ModelSpec, tp: int, ep: int, adp: int = 1,
               redundant_experts: bool = False) -> tuple[str, str] | None:
    """Experts spread over ep of a stage's tp x adp GPUs (expert TP = tp x adp / ep): ep must divide both
    those GPUs and the expert count, unless the engine adds redundant expert slots (`redundant_experts`,
    plan.spec.expert_slots); a dense model has ep = 1."""
    if ep == 1:
        return None
    if not model.is_moe:
        return "divisibility", f"ep={ep} on a dense model (it has no experts to spread)"
    if model.num_experts % ep and not redundant_experts:
        return "divisibility", f"ep={ep} does not divide {model.num_experts} experts"
    if (tp * adp) % ep:
        return "divisibility", f"ep={ep} does not divide the tp x adp = {tp * adp} GPUs of a stage"
    return None


def plan_reason(model: ModelSpec, cluster: ClusterSpec, plan: Plan, allow_cross_node_tp: bool = False,
                max_gpus_per_replica: int | None = None, redundant_experts: bool = False) -> tuple[str, str] | None:
    """Why `plan` cannot run `model` on `cluster` as (kind, one-line reason), or None. The one set of
    rules: `search` enumerates with it, `simulate`, `validate` and `calibrate` check a given plan with it.
    `redundant_experts`: the engine pads the experts to a multiple of ep with redundant slots (its profile's
    layouts.redundant_experts)."""
    if plan.num_gpus > cluster.num_gpus:
        return "limit", (f"needs dp x tp x pp{' x adp' if plan.adp > 1 else ''} = {plan.num_gpus} GPUs but the "
                         f"cluster has {cluster.num_gpus}")
    why = (_tp_reason(model, cluster, plan.tp, allow_cross_node_tp)
           or _pp_reason(model, cluster, plan.tp, plan.pp, max_gpus_per_replica, plan.adp)
           or _ep_reason(model, plan.tp, plan.ep, plan.adp, redundant_experts))
    if why:
        return why
    dtype = _dtype_reason(cluster, plan.weight_dtype, plan.kv_dtype)
    return ("dtype", dtype) if dtype else None


def _dtype_reason(cluster: ClusterSpec, weight_dtype: str, kv_dtype: str) -> str | None:
    gpu = cluster.gpu
    missing = [f"{what} dtype {d}" for what, d in (("weight", weight_dtype), ("KV", kv_dtype))
               if not (gpu.supports_weights(d) if what == "weight" else gpu.supports(d))]
    if not missing:
        return None
    return f"{gpu.name} does not support " + " or ".join(missing)


def enumerate_replica_plans(
    model: ModelSpec,
    cluster: ClusterSpec,
    weight_dtypes: Sequence[str],
    kv_dtypes: Sequence[str],
    *,
    allow_cross_node_tp: bool = False,
    max_gpus_per_replica: int | None = None,
    prune_symmetry: bool = True,
) -> tuple[list[Plan], list[Rejected], EnumerationStats]:
    """All replica plans (dp=1) of `model` on `cluster`, the rejected ones, and counts.

    With `prune_symmetry` each canonical layout yields one plan; without it every raw layout
    yields its plan, so the same `Plan` repeats once per equivalent layout.
    """
    weight_dtypes, kv_dtypes = _unique(weight_dtypes), _unique(kv_dtypes)
    if not weight_dtypes:
        raise InputError("--weight-dtype", None, "no weight dtype given", "pass at least one, e.g. bf16")
    if not kv_dtypes:
        raise InputError("--kv-dtype", None, "no KV-cache dtype given", "pass at least one, e.g. bf16")
    if max_gpus_per_replica is not None and max_gpus_per_replica < 1:
        raise InputError("--max-gpus-per-replica", None, f"must be >= 1, got {max_gpus_per_replica}")
    g, n_gpus = cluster.gpus_per_node, cluster.num_gpus
    w0, k0 = weight_dtypes[0], kv_dtypes[0]

    tps = set(_divisors(g)) | set(_powers_of_two(n_gpus))
    tps |= {g * m for m in range(1, cluster.nvlink_gpus // g + 1)}   # whole nodes inside an NVLink domain
    if allow_cross_node_tp:
        tps |= {g * m for m in range(1, cluster.num_nodes + 1)}
    tps = sorted(t for t in tps if t <= n_gpus)

    plans: list[Plan] = []
    rejected: list[Rejected] = []
    kinds: Counter[str] = Counter()
    reasons: Counter[str] = Counter()
    raw = canonical = 0

    def reject(plan: Plan, kind: str, reason: str) -> None:
        rejected.append(Rejected(plan, reason))
        kinds[kind] += 1
        reasons[reason] += 1

    for tp in tps:
        bad = _tp_reason(model, cluster, tp, allow_cross_node_tp)
        if bad:
            reject(Plan(tp=tp, weight_dtype=w0, kv_dtype=k0), *bad)
            continue
        pps = sorted(p for p in set(_powers_of_two(n_gpus)) | set(_divisors(n_gpus)) if tp * p <= n_gpus)
        for pp in pps:
            bad = _pp_reason(model, cluster, tp, pp, max_gpus_per_replica)
            if bad:
                reject(Plan(tp=tp, pp=pp, weight_dtype=w0, kv_dtype=k0), *bad)
                continue
            layouts = raw_layouts(tp, pp, cluster.num_nodes, g)
            keys = {canonical_key(tp, pp, lay, g) for lay in layouts}
            for ep in (_divisors(tp) if model.is_moe else [1]):
                bad = _ep_reason(model, tp, ep)
                if bad:
                    reject(Plan(tp=tp, pp=pp, ep=ep, weight_dtype=w0, kv_dtype=k0), *bad)
                    continue
                for wd in weight_dtypes:
                    for kd in kv_dtypes:
                        plan = Plan(tp=tp, pp=pp, ep=ep, weight_dtype=wd, kv_dtype=kd)
                        why = _dtype_reason(cluster, wd, kd)
                        if why:
                            reject(plan, "dtype", why)
                            continue
                        raw += len(layouts)
                        canonical += len(keys)
                        plans.extend([plan] * (len(keys) if prune_symmetry else len(layouts)))

    stats = EnumerationStats(
        enumerated=raw,
        after_symmetry=canonical,
        rejected_divisibility=kinds["divisibility"],
        rejected_placement=kinds["placement"],
        rejected_dtype=kinds["dtype"],
        rejected_limit=kinds["limit"],
        reasons=MappingProxyType(dict(reasons)),
    )
    return sorted(plans), rejected, stats


def layer_shard_key(plan: Plan) -> tuple[int, int, str, str, str]:
    """Key under which one layer's cost can be memoised across plans (pp does not change it)."""
    return (plan.tp, plan.ep, plan.weight_dtype, plan.kv_dtype, plan.act_dtype)
