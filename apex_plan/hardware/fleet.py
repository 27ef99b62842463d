"""Fleets: node groups of different GPU types (a cluster file's `groups:`), and price files.

A replica lives inside one group. A cluster file without `groups:` is one group, read exactly as
before (`load_cluster`). Disaggregated serving (prefill and decode pools on different groups) is
not planned here: `FleetSpec.groups` is where a prefill/decode split would pick its two groups.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from apex_plan.errors import InputError, did_you_mean
from apex_plan.hardware.load import _CLUSTER_FIELDS, _number, _read_yaml, _text, cluster_from_dict
from apex_plan.hardware.spec import ClusterSpec
from apex_plan.limits import MAX_GPUS


@dataclass(frozen=True)
class NodeGroup:
    """Identical nodes of one GPU type with their links and price; optionally power-capped."""

    name: str
    cluster: ClusterSpec                 # the group's nodes, GPU profile, links, price (None: unknown)
    power_cap_w: float | None = None     # per GPU, set by the operator for every plan on this group


@dataclass(frozen=True)
class FleetSpec:
    name: str
    groups: tuple[NodeGroup, ...]

    @property
    def num_gpus(self) -> int:
        return sum(g.cluster.num_gpus for g in self.groups)

    @property
    def mixed(self) -> bool:
        return len(self.groups) > 1


_GROUP_FIELDS = {**_CLUSTER_FIELDS, "power_cap_w": "W per GPU"}


def single_group(cluster: ClusterSpec) -> FleetSpec:
    """A one-group fleet around a plain cluster (`--gpu/--gpus` or an old cluster file)."""
    return FleetSpec(cluster.name, (NodeGroup(cluster.gpu.name, cluster),))


def load_fleet(path: str | Path) -> FleetSpec:
    """A cluster file: with `groups:` (a list of node groups, each with the cluster fields plus an
    optional `power_cap_w`), or without (one group, as `load_cluster` reads it)."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise InputError(str(path), None, "cluster file not found", "check the path")
    where = str(path)
    doc = _read_yaml(path)
    if "groups" not in doc:
        return single_group(cluster_from_dict(doc, path))
    for key in doc:
        if key not in ("name", "groups"):
            raise InputError(where, key, "unknown field beside 'groups'",
                             "put GPU, nodes, links and price inside each group; top level: name, groups")
    raw = doc["groups"]
    if not isinstance(raw, list) or not raw or not all(isinstance(g, dict) for g in raw):
        raise InputError(where, "groups", "expected a list of node groups",
                         "write 'groups:' then '- name: h100' entries with gpu, nodes, gpus_per_node")
    groups, names = [], set()
    for j, g in enumerate(raw):
        field = f"groups[{j}]"
        for key in g:
            if key not in _GROUP_FIELDS:
                raise InputError(where, f"{field}.{key}", "unknown field", did_you_mean(str(key), _GROUP_FIELDS))
        name = _text(g, "name", where, default=f"group{j}")
        if name in names:
            raise InputError(where, f"{field}.name", f"group name '{name}' is used twice", "give each group its own name")
        names.add(name)
        sub = {k: v for k, v in g.items() if k != "power_cap_w"}
        cluster = cluster_from_dict(sub, path, prefix=f"{field}.", default_name=name)
        cap = _number(g, "power_cap_w", where, "W per GPU", required=False, field=f"{field}.power_cap_w")
        groups.append(NodeGroup(name, cluster, cap))
    fleet = FleetSpec(_text(doc, "name", where, default=path.stem), tuple(groups))
    if fleet.num_gpus > MAX_GPUS:
        raise InputError(where, "groups", f"{fleet.num_gpus:,} GPUs in all, above the limit of {MAX_GPUS:,}",
                         "use fewer nodes")
    return fleet


def load_prices(path: str | Path) -> dict[str, float]:
    """A price file: `prices:` mapping GPU profile names to USD per GPU-hour (see examples/prices.yaml)."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise InputError(str(path), None, "price file not found", "check the path, e.g. --prices examples/prices.yaml")
    where = str(path)
    doc = _read_yaml(path)
    for key in doc:
        if key not in ("prices", "source", "date", "currency"):
            raise InputError(where, key, "unknown field", "a price file has prices: (and optional source, date, currency)")
    if doc.get("currency", "USD") != "USD":
        raise InputError(where, "currency", f"only USD is supported, got '{doc['currency']}'", "convert to USD")
    raw = doc.get("prices")
    if not isinstance(raw, dict) or not raw:
        raise InputError(where, "prices", "expected a mapping of GPU profile name to USD per GPU-hour",
                         "e.g. 'prices: {h100-sxm-80gb: 2.99}'")
    return {str(k).lower(): float(_number(raw, k, where, "USD per GPU-hour", allow_min=True, field=f"prices.{k}"))
            for k in raw}


def priced(fleet: FleetSpec, prices: dict[str, float] | None) -> FleetSpec:
    """Groups without their own `price_per_gpu_hour` take the price file's price for their GPU."""
    if not prices:
        return fleet
    groups = []
    for g in fleet.groups:
        c = g.cluster
        if c.price_per_gpu_hour is None and c.gpu.name.lower() in prices:
            c = dataclasses.replace(c, price_per_gpu_hour=prices[c.gpu.name.lower()])
        groups.append(dataclasses.replace(g, cluster=c))
    return dataclasses.replace(fleet, groups=tuple(groups))


def require_prices(fleet: FleetSpec, objective: str) -> None:
    """`--objective cost` needs every group priced: refused at once, before any work."""
    unpriced = [g.name for g in fleet.groups if g.cluster.price_per_gpu_hour is None]
    if objective == "cost" and unpriced:
        raise InputError("--objective", None, f"cost needs a price per GPU-hour; none for {', '.join(unpriced)}",
                         "add price_per_gpu_hour to the cluster file or pass --prices FILE (see examples/prices.yaml)")


def describe_price(cluster: ClusterSpec) -> str:
    return "no price" if cluster.price_per_gpu_hour is None else f"${cluster.price_per_gpu_hour:g}/GPU-h"


def group_doc(g: NodeGroup) -> dict[str, Any]:
    """One group as the JSON `inputs.groups` lists it."""
    c = g.cluster
    return {"name": g.name, "gpu": c.gpu.name, "nodes": c.num_nodes, "gpus_per_node": c.gpus_per_node,
            "price_per_gpu_hour": c.price_per_gpu_hour, "power_cap_w": g.power_cap_w}
