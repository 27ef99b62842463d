"""Physics of a tensor-parallel all-reduce that spans several nodes (NVLink domains).

Inside a node the step-cost kernel's ring term, 2(n-1)/n x bytes / link bytes/s at the NVLink bandwidth, holds
as it is. Across nodes NCCL does two things the single-link ring does not:

* it runs one ring per NIC, each entering and leaving a node through its own NIC (NVIDIA/nccl issue #601:
  "creates 4 rings, each using a different NIC"; "we can use NVLink to split the operations in N parts then
  balance the traffic onto the N NICs"), so a GPU's NIC carries 1/g of its ring traffic and NVLink the rest;
* an all-gather or reduce-scatter runs the ring, crossing the network once per further node (tuning.cc:
  nInterSteps = nNodes - 1 of its nRanks - 1 steps);
* for latency-bound all-reduces it takes the tree, whose latency is two passes over its network levels
  (src/graph/tuning.cc ncclTopoTuneModel, NCCL_ALGO_TREE: 2 x (... + log2i(nNodes) x interLat)); here the
  levels are a binary tree's depth, ceil(log2(nodes)), equal to NCCL's log2i on whole powers of two.
"""

from __future__ import annotations

import math


def multi_rail_bus_bytes_per_s(intra_bytes_per_s: float, inter_bytes_per_s: float, gpus_per_node: int) -> float:
    """Bus bytes/s per GPU of a ring all-reduce over whole nodes of `gpus_per_node` GPUs, each GPU with its own
    NIC of `inter_bytes_per_s` (a rail): the ring time is 2(n-1)/n x bytes / this."""
    g = max(int(gpus_per_node), 1)
    if g == 1:
        return inter_bytes_per_s
    # the slower of a GPU's NIC (1/g of its ring traffic) and its NVLink ((g-1)/g of it)
    return min(g * inter_bytes_per_s, g / (g - 1.0) * intra_bytes_per_s)


def multi_node_latency_s(nodes: int, inter_node_latency_s: float) -> float:
    """Latency an all-reduce over `nodes` nodes adds to the in-node one: the tree's network levels crossed up
    (reduce) and down (broadcast), log2 of the nodes each way; 0 inside one node."""
    if nodes <= 1:
        return 0.0
    # 2 passes x ceil(log2(nodes)) network crossings, each one link latency
    return 2.0 * math.ceil(math.log2(nodes)) * inter_node_latency_s


def ring_crossings_latency_s(nodes: int, inter_node_latency_s: float) -> float:
    """Latency an all-gather or reduce-scatter ring over `nodes` nodes adds to the in-node one: one network
    crossing per further node; 0 inside one node."""
    # (nodes - 1) sequential network hops of the ring, each one link latency
    return max(int(nodes) - 1, 0) * inter_node_latency_s
