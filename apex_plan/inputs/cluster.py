"""Cluster options: --gpu/--gpus/--gpus-per-node or --cluster, price groups, GPU operating points."""

from __future__ import annotations

from apex_plan.errors import InputError
from apex_plan.hardware.load import load_cluster, load_gpu, make_cluster
from apex_plan.hardware.spec import ClusterSpec
from apex_plan.inputs.lists import csv_list
from apex_plan.limits import MAX_SEARCH_GPUS


def cluster_from_options(gpu: str | None, gpus: int | None, gpus_per_node: int | None, cluster: str | None,
                         partial_last_node: bool = False) -> ClusterSpec:
    """`--cluster FILE` or `--gpu NAME --gpus N [--gpus-per-node G]`. `partial_last_node`: N GPUs may
    leave part of the last (or only) node unused (a disaggregated deployment of 7 x 4 + 2 x 8 GPUs, or of
    3 x 1 + 1 x 4 on one node of 8): the
    cluster is the whole nodes that hold them."""
    if cluster:
        if gpu or gpus:
            raise InputError("--cluster", None, "given together with --gpu/--gpus", "use one or the other")
        return load_cluster(cluster)
    if not gpu:
        raise InputError("--gpu", None, "no GPU given", "pass --gpu NAME --gpus N, or --cluster FILE")
    if gpus is None:
        raise InputError("--gpus", None, "number of GPUs missing", "e.g. --gpus 8")
    g = load_gpu(gpu)
    per = g.gpus_per_node if gpus_per_node is None else gpus_per_node
    if partial_last_node and isinstance(per, int) and per > 0 and gpus % per:
        gpus = -(-gpus // per) * per
    return make_cluster(g, gpus, gpus_per_node)



def fleet_from_options(gpu: str | None, gpus: int | None, gpus_per_node: int, cluster: str | None,
                       prices: str | None):
    """`search`'s cluster: a cluster file (node groups or one), or `--gpu/--gpus`; `--prices FILE`
    prices the groups whose file gives no `price_per_gpu_hour`."""
    from apex_plan.hardware.fleet import load_fleet, load_prices, priced, single_group
    if cluster:
        if gpu or gpus:
            raise InputError("--cluster", None, "given together with --gpu/--gpus", "use one or the other")
        fleet = load_fleet(cluster)
    else:
        fleet = single_group(cluster_from_options(gpu, gpus, gpus_per_node, None))
    return priced(fleet, load_prices(prices) if prices else None)



_POWER_UNITS = {"w": 1.0, "kw": 1e3}

_CLOCK_UNITS = {"mhz": 1.0, "ghz": 1e3}



def _unit_list(text: str | None, option: str, units: dict[str, float], example: str) -> list[float]:
    """'500W,0.7kW' -> [500.0, 700.0] in the first unit of `units` (a bare number is in that unit)."""
    if text is None:
        return []
    out = []
    for item in csv_list(text, option):
        low = item.strip().lower()
        unit = next((u for u in sorted(units, key=len, reverse=True) if low.endswith(u)), None)
        num = low[: -len(unit)] if unit else low
        try:
            value = float(num) * (units[unit] if unit else 1.0)
        except ValueError:
            raise InputError(option, None, f"cannot read '{item}'", f"e.g. {option} {example}") from None
        if not value > 0 or value != value or value == float("inf"):
            raise InputError(option, None, f"must be positive, got '{item}'", f"e.g. {option} {example}")
        out.append(value)
    return out



def operating_points(power_caps: str | None, sm_clocks: str | None) -> tuple:
    """The operating points a search tries per plan: each `--power-cap` (W per GPU) and each
    `--sm-clock` (MHz, locked); neither: the datasheet clock only."""
    from apex_plan.hardware.power import DEFAULT_POINT, OperatingPoint
    caps = _unit_list(power_caps, "--power-cap", _POWER_UNITS, "500W,700W")
    clocks = _unit_list(sm_clocks, "--sm-clock", _CLOCK_UNITS, "1410MHz,1980MHz")
    points = [OperatingPoint(power_cap_w=c) for c in dict.fromkeys(caps)]
    points += [OperatingPoint(sm_clock_mhz=f) for f in dict.fromkeys(clocks)]
    return tuple(points) or (DEFAULT_POINT,)



def check_search_cluster(cluster: ClusterSpec, cluster_file: str | None, total_gpus: int | None = None) -> None:
    """`search` covers at most MAX_SEARCH_GPUS GPUs (its time grows with the cluster)."""
    if (total_gpus or cluster.num_gpus) > MAX_SEARCH_GPUS:
        raise InputError(cluster_file or "--gpus", "nodes" if cluster_file else None,
                         f"search covers at most {MAX_SEARCH_GPUS:,} GPUs, the cluster has {total_gpus or cluster.num_gpus:,}",
                         f"search one pod of up to {MAX_SEARCH_GPUS:,} GPUs and replicate its deployment")
