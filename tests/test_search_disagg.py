"""`search --serving disagg|both`: pools cover the demand within the cluster, CP-SAT sizes them as
enumeration does, more demand never takes fewer GPUs, both kinds rank in one list, the JSON
validates and is reproducible, a bad --serving value is one line and exit 2."""

from __future__ import annotations

import dataclasses
import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from apex_plan.hardware.load import load_gpu, make_cluster
from apex_plan.model.load import load_model
from apex_plan.plan.spec import EngineConfig
from apex_plan.rank.disagg import RoleCandidate, brute_force_pools, nested, size_pools
from apex_plan.search.disagg import rank_key
from apex_plan.search.disagg_roles import halfin_whitt_beta, offered_load, role_evals
from apex_plan.search.pipeline import SearchInputs, run_search
from apex_plan.search.steady import request_mix
from apex_plan.search.variants import enumerate_group
from apex_plan.workload.spec import Slo
from apex_plan.workload.synthetic import preset_trace
from test_cli import assert_one_line_error, run_main

SCHEMA = Path(__file__).resolve().parents[1] / "apex_plan" / "report" / "search_schema.json"


def _inputs(rate=20.0, serving="disagg", slo=Slo(0.5, 0.05, 90.0), top_k=3):
    model = load_model("llama-3.1-8b")
    cluster = make_cluster(load_gpu("h100-sxm-80gb"), 8, 4)        # 2 nodes of 4
    trace = preset_trace("chat", 1.0, num_requests=300, seed=3)
    return SearchInputs(model, cluster, trace, rate, slo, ("bf16",), ("bf16",),
                        (EngineConfig(gpu_memory_utilization=0.9, max_model_len=8192, name="vllm@0.6.0"),), "gpus",
                        False, top_k, serving=serving)


@pytest.fixture(scope="module")
def disagg():
    return run_search(_inputs())


def test_pools_cover_the_demand_within_the_cluster(disagg):
    inp = disagg.inputs
    assert disagg.deployments, disagg.binding
    for d in disagg.deployments:
        assert d.serving == "disagg" and d.verified and d.metrics.slo.met
        x = d.disagg
        pre, dec = x.prefill, x.decode
        assert pre.rate_rps >= inp.demand_rps * (1 - 1e-9) and dec.rate_rps >= inp.demand_rps * (1 - 1e-9)
        gpus = pre.instances * pre.gpus_per_instance + dec.instances * dec.gpus_per_instance
        assert gpus == d.deployment.gpus <= inp.cluster.num_gpus
        g = inp.cluster.gpus_per_node     # pools share a node only when one instance size divides the other
        if not nested(pre.gpus_per_instance, dec.gpus_per_instance):
            assert math.ceil(pre.instances * pre.gpus_per_instance / g) + \
                math.ceil(dec.instances * dec.gpus_per_instance / g) <= inp.cluster.num_nodes
        c = x.run.conservation            # each transferred request decoded once (one-token outputs end at prefill)
        assert 0 < c.transferred == c.decoded <= c.prefilled
        roles = [item.plan for item in d.launch]
        assert roles[-1] == "router" and "prefill" in roles[0] and "decode" in roles[1]
    assert [rank_key("gpus", d) for d in disagg.deployments] == sorted(rank_key("gpus", d) for d in disagg.deployments)


def _assert_placed(c, cands, num_nodes: int, gpn: int) -> None:
    """The choice's instances sit on disjoint GPUs of the cluster, none straddling a node (an instance smaller
    than a node inside one, a larger one on whole nodes), and pools share a node only when sizes nest."""
    size = {x.key: x.gpus_per_instance for x in cands}
    used: set[int] = set()
    nodes = {}
    for key, n, first in ((c.prefill, c.prefill_instances, c.prefill_first_gpu),
                          (c.decode, c.decode_instances, c.decode_first_gpu)):
        s = size[key]
        for k in range(n):
            g0 = first + k * s
            gpus = set(range(g0, g0 + s))
            assert not gpus & used and max(gpus) < num_nodes * gpn
            assert (g0 // gpn == (g0 + s - 1) // gpn) if s <= gpn else g0 % gpn == 0
            used |= gpus
        nodes[key] = {g // gpn for g in range(first, first + n * s)}
    assert (c.prefill_nodes, c.decode_nodes) == (len(nodes[c.prefill]), len(nodes[c.decode]))
    if nodes[c.prefill] & nodes[c.decode]:
        assert nested(size[c.prefill], size[c.decode])


def test_pools_share_a_node_only_when_sizes_nest():
    """Two 2-GPU prefill instances and one 4-GPU decode instance share one node of 8 (prefill on GPUs 0-3,
    decode on 4-7); three prefill and two decode instances on two nodes go decode first (after 6 prefill
    GPUs a 4-GPU instance would straddle a node); 2- and 3-GPU instances on nodes of 6 do not nest, so each
    pool takes nodes of its own and one node is too few."""
    pre, dec = [RoleCandidate("p", 2, 1.0)], [RoleCandidate("d", 4, 2.0)]
    (c,) = size_pools(pre, dec, num_nodes=1, gpus_per_node=8, demand_rps=2.0)
    assert (c.prefill_instances, c.decode_instances, c.gpus) == (2, 1, 8)
    assert (c.prefill_first_gpu, c.decode_first_gpu, c.prefill_nodes, c.decode_nodes) == (0, 4, 1, 1)
    _assert_placed(c, pre + dec, 1, 8)
    (c3,) = size_pools(pre, dec, num_nodes=2, gpus_per_node=8, demand_rps=3.0)
    assert (c3.prefill_instances, c3.decode_instances, c3.decode_first_gpu, c3.prefill_first_gpu) == (3, 2, 0, 8)
    _assert_placed(c3, pre + dec, 2, 8)
    _assert_placed(c, pre + dec, 1, 8)
    assert brute_force_pools(pre, dec, num_nodes=1, gpus_per_node=8, demand_rps=2.0).gpus == 8
    # on the shared node every prefill rank reaches every decode rank over NVLink; on nodes of their own, RDMA
    from apex_plan.plan.disagg import DisaggPlan
    from apex_plan.plan.spec import Plan
    from apex_plan.simulate.transfer import rank_links
    dplan = DisaggPlan(Plan(tp=2, dp=2), Plan(tp=4, dp=1))
    cl = make_cluster(load_gpu("h100-sxm-80gb"), 16, 8)
    assert rank_links(cl, dplan, decode_first_gpu=c.decode_first_gpu, prefill_first_gpu=c.prefill_first_gpu).over_nvlink.all()
    assert not rank_links(cl, dplan, decode_first_gpu=8).over_nvlink.any()
    odd_p, odd_d = [RoleCandidate("p", 2, 1.0)], [RoleCandidate("d", 3, 2.0)]
    assert size_pools(odd_p, odd_d, num_nodes=1, gpus_per_node=6, demand_rps=1.0) == []
    (c,) = size_pools(odd_p, odd_d, num_nodes=2, gpus_per_node=6, demand_rps=1.0)
    assert (c.prefill_first_gpu, c.decode_first_gpu, c.gpus) == (0, 6, 5)
    _assert_placed(c, odd_p + odd_d, 2, 6)


def _random_candidates(rng, n, role):
    sizes = (1, 2, 4, 8, 16)
    return [RoleCandidate(f"{role}{i}", int(rng.choice(sizes)), float(rng.uniform(0.2, 6.0))) for i in range(n)]


@pytest.mark.parametrize("seed", range(6))
def test_cp_sat_sizes_pools_as_enumeration_does(seed):
    rng = np.random.default_rng(seed)
    pre, dec = _random_candidates(rng, 4, "p"), _random_candidates(rng, 4, "d")
    for demand, objective in ((float(rng.uniform(1, 12)), "gpus"), (None, "throughput")):
        got = size_pools(pre, dec, num_nodes=3, gpus_per_node=8, demand_rps=demand, objective=objective)
        ref = brute_force_pools(pre, dec, num_nodes=3, gpus_per_node=8, demand_rps=demand, objective=objective)
        assert (got[0] if got else None) is None if ref is None else got
        if ref is not None:
            assert got[0].gpus == ref.gpus and math.isclose(got[0].capacity_rps, ref.capacity_rps, rel_tol=1e-6)
            _assert_placed(got[0], pre + dec, 3, 8)
            if demand:
                assert got[0].prefill_rps >= demand * (1 - 1e-9) and got[0].decode_rps >= demand * (1 - 1e-9)


def test_top_k_pairs_are_distinct_and_no_better_than_the_first():
    rng = np.random.default_rng(7)
    pre, dec = _random_candidates(rng, 5, "p"), _random_candidates(rng, 5, "d")
    got = size_pools(pre, dec, num_nodes=4, gpus_per_node=8, demand_rps=3.0, top_k=4)
    assert len({(c.prefill, c.decode) for c in got}) == len(got) >= 2
    assert all(c.gpus >= got[0].gpus for c in got)


def test_more_demand_never_needs_fewer_gpus():
    rng = np.random.default_rng(11)
    pre, dec = _random_candidates(rng, 5, "p"), _random_candidates(rng, 5, "d")
    gpus = []
    for demand in (0.5, 2.0, 5.0, 9.0, 14.0, 20.0):
        got = size_pools(pre, dec, num_nodes=4, gpus_per_node=8, demand_rps=demand)
        gpus.append(got[0].gpus if got else math.inf)
    assert gpus == sorted(gpus)


def test_more_demand_never_needs_fewer_gpus_end_to_end():
    a = run_search(_inputs(rate=5.0, top_k=1))
    b = run_search(_inputs(rate=40.0, top_k=1))
    assert a.deployments and b.deployments
    assert b.deployments[0].deployment.gpus >= a.deployments[0].deployment.gpus


@pytest.mark.parametrize("top_k", [1, 8])
def test_both_ranks_aggregated_and_disaggregated_in_one_list(top_k):
    r = run_search(_inputs(serving="both", top_k=top_k))
    assert {d.serving for d in r.deployments} == {"agg", "disagg"}        # both are feasible here
    keys = [rank_key("gpus", d) for d in r.deployments]
    assert keys[:top_k] == sorted(keys[:top_k]) and len(keys) <= top_k + 1
    for extra in r.deployments[top_k:]:           # beyond the top K: only the best of a kind missing from it
        assert all(d.serving != extra.serving for d in r.deployments[:top_k])
    agg_only = run_search(_inputs(serving="agg", top_k=top_k))
    mine = [d.deployment.replicas for d in r.deployments if d.serving == "agg"]
    assert mine == [d.deployment.replicas for d in agg_only.deployments][:len(mine)]


def test_halfin_whitt_load_and_waiting_share():
    beta = halfin_whitt_beta(0.1)
    phi = math.exp(-beta * beta / 2) / math.sqrt(2 * math.pi)
    cdf = 0.5 * (1 + math.erf(beta / math.sqrt(2)))
    assert math.isclose(1 / (1 + beta * cdf / phi), 0.1, rel_tol=1e-9)
    for c in (1, 8, 256, 4096):
        r = offered_load(c, beta)
        assert math.isclose(r + beta * math.sqrt(r), c, rel_tol=1e-9) and r < c


def test_looser_slos_never_lower_a_role_rate():
    inp = _inputs()
    mix = request_mix(inp.trace)
    plans, _, _ = enumerate_group(inp, inp.cluster)
    tight = role_evals(inp, plans, mix)
    loose = role_evals(dataclasses.replace(inp, slo=Slo(1.0, 0.08, 90.0)), plans, mix)
    for a_list, b_list in zip(tight, loose):
        for a, b in zip(a_list, b_list):
            assert b.rate_rps >= a.rate_rps * (1 - 1e-9), (a.key, a.rate_rps, b.rate_rps)


def _cli_json(tmp_path: Path, name: str) -> bytes:
    out = tmp_path / name
    cmd = [sys.executable, "-m", "apex_plan", "search", "--model", "llama-3.1-8b", "--gpu", "h100-sxm-80gb",
           "--gpus", "8", "--gpus-per-node", "4", "--workload", "chat", "--rate", "20", "--num-requests", "200",
           "--max-model-len", "8192", "--ttft-slo", "500ms", "--tpot-slo", "50ms", "--serving", "both", "--top", "6",
           "--format", "json", "--output", str(out)]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    return out.read_bytes()


def test_json_validates_and_round_trips(tmp_path):
    jsonschema = pytest.importorskip("jsonschema")
    a, b = _cli_json(tmp_path, "a.json"), _cli_json(tmp_path, "b.json")
    assert a == b
    doc = json.loads(a)
    jsonschema.validate(doc, json.loads(SCHEMA.read_text()))
    assert json.loads(json.dumps(doc)) == doc
    dis = [d for d in doc["deployments"] if d["serving"] == "disagg"]
    assert dis and all(d["disagg"]["launch"]["router"] and d["launch"] for d in dis)
    assert all(d["disagg"] is None for d in doc["deployments"] if d["serving"] == "agg")
    assert doc["inputs"]["serving"] == "both" and doc["disaggregated"]["role_plans"]


def test_bad_serving_value_is_one_line_exit_2(capsys, monkeypatch):
    code, out, err = run_main(["search", "--model", "llama-3.1-8b", "--gpu", "h100-sxm-80gb", "--gpus", "8",
                               "--workload", "chat", "--rate", "1", "--serving", "disaggregated"], capsys, monkeypatch)
    assert_one_line_error(code, out, err, "--serving", "disagg")
