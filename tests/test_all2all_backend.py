"""The MoE all-to-all backend options (`engine.all2all`): vLLM `--all2all-backend`, SGLang `--moe-a2a-backend`
and `--deepep-mode` set exactly the layouts the cost model reads, refuse what is not modelled with one line
and exit status 2, restrict attention-DP layouts to what DeepEP runs, and come back in the launch commands."""

from __future__ import annotations

import dataclasses

import pytest

from apex_plan.engine.all2all import launch_flags, with_all2all
from apex_plan.engine.load import resolve_engine_profile
from apex_plan.errors import InputError
from apex_plan.estimate import moe as MOE
from apex_plan.estimate.step_cost import build_step_cost
from apex_plan.hardware.load import load_gpu, make_cluster
from apex_plan.model.load import load_model
from apex_plan.plan.spec import Plan
from apex_plan.search.layouts import profile_caps, supported_layout

from test_cli import run_main  # noqa: E402


@pytest.mark.parametrize("engine,backend,mode,dispatch,kernel", [
    ("vllm", "allgather_reducescatter", None, "allgather", None),
    ("vllm", "deepep_high_throughput", None, "alltoall", "normal"),
    ("vllm", "deepep_low_latency", None, "alltoall", "low_latency"),
    ("sglang", "none", None, "dp_buffer", None),
    ("sglang", "deepep", None, "alltoall", "low_latency"),          # --deepep-mode auto: low latency on decode
    ("sglang", "deepep", "auto", "alltoall", "low_latency"),
    ("sglang", "deepep", "low_latency", "alltoall", "low_latency"),
    ("sglang", "deepep", "normal", "alltoall", "normal"),
    ("sglang", None, "normal", "alltoall", "normal"),                # --deepep-mode alone means DeepEP
])
def test_each_spelling_sets_the_layout(engine, backend, mode, dispatch, kernel):
    prof = resolve_engine_profile(engine)
    got = with_all2all(prof, backend, mode).layouts
    assert got.moe_dispatch == dispatch
    assert got.a2a_decode_kernel == (kernel or prof.layouts.a2a_decode_kernel)
    # DeepEP holds whole experts per rank: every rank of the instance is an expert rank
    assert got.ep_degrees == ("all" if dispatch == "alltoall" else prof.layouts.ep_degrees)
    assert with_all2all(prof, None, None) is prof


@pytest.mark.parametrize("engine,backend,mode,option,words", [
    ("vllm", "pplx", None, "--all2all-backend", "not modelled"),
    ("sglang", "deepep_low_latency", None, "--all2all-backend", "vLLM's spelling"),
    ("vllm", "deepep", None, "--all2all-backend", "SGLang's spelling"),
    ("vllm", None, "auto", "--deepep-mode", "SGLang option"),
    ("sglang", "none", "auto", "--deepep-mode", "needs --moe-a2a-backend deepep"),
    ("sglang", "deepep", "fast", "--deepep-mode", "unknown mode"),
    ("trtllm", "deepep_low_latency", None, "--all2all-backend", "TRT-LLM"),
])
def test_bad_values_name_the_option(engine, backend, mode, option, words):
    with pytest.raises(InputError) as e:
        with_all2all(resolve_engine_profile(engine), backend, mode)
    assert e.value.where == option and words in str(e.value)


def test_bad_value_on_the_cli_is_one_line_and_exit_2(capsys, monkeypatch):
    code, out, err = run_main(["simulate", "--model", "deepseek-v3", "--gpu", "h200-sxm-141gb", "--gpus", "8",
                               "--plan", "tp=1,ep=8,adp=8", "--weight-dtype", "fp8", "--engine", "sglang",
                               "--moe-a2a-backend", "pplx", "--workload", "chat", "--rate", "1"], capsys, monkeypatch)
    assert code == 2 and out == ""
    assert len(err.strip().splitlines()) == 1 and "--all2all-backend" in err and "Traceback" not in err


def test_the_cost_model_reads_the_backend_exactly():
    """The step cost's token movement is the backend's: DeepEP all-to-all with the low-latency decode kernels
    (auto), with the normal ones, or SGLang's default global buffer; and a low-latency decode-only step moves a
    copy per routed expert, a normal one a copy per destination rank (`estimate.moe.comm_s`)."""
    model = load_model("deepseek-v3")
    gpu = load_gpu("h200-sxm-141gb")
    cl = make_cluster(gpu, 8)
    plan = Plan(tp=1, ep=8, adp=8, weight_dtype="fp8", kv_dtype="fp8")
    base = resolve_engine_profile("sglang")
    from apex_plan.simulate.engine import resolve_engine
    from apex_plan.plan.spec import EngineConfig

    def params(backend, mode):
        prof = with_all2all(base, backend, mode)
        eng = resolve_engine(EngineConfig(name="sglang", profile=prof), model)
        return build_step_cost(model, gpu, plan, cl, engine=eng).params
    auto, normal, none = params("deepep", "auto"), params("deepep", "normal"), params("none", None)
    assert auto["a2a_kind"][0] == normal["a2a_kind"][0] == MOE.A2A_ALLTOALL
    assert none["a2a_kind"][0] == MOE.A2A_DP_BUFFER
    assert (auto["a2a_ll_decode"][0], normal["a2a_ll_decode"][0]) == (1.0, 0.0)
    # DeepSeek-V3: 256 experts, 8 routed per token, over 8 ranks of 32 experts each: the normal kernels send
    # one copy per rank holding a routed expert, E[ranks hit] = 8 (1 - C(224, 8) / C(256, 8))
    from math import comb
    assert normal["a2a_rank_copies"][0] == pytest.approx(8 * (1 - comb(224, 8) / comb(256, 8)), rel=1e-12)
    assert auto["experts_per_token"][0] == 8


def test_deepep_layouts_and_launch_flags():
    """With DeepEP, an attention-DP layout must put experts on every rank (SGLang sets ep_size = tp_size);
    its launch command carries the backend, and replicas without attention DP or EP launch with the default."""
    prof = with_all2all(resolve_engine_profile("sglang"), "deepep", "normal")
    caps = profile_caps(prof)
    assert supported_layout(caps, Plan(tp=2, ep=8, adp=4)) is None
    assert "ep must equal tp x adp" in supported_layout(caps, Plan(tp=2, ep=2, adp=4))
    assert supported_layout(caps, Plan(tp=8, ep=2)) is None               # no attention DP: no DeepEP dispatch
    assert supported_layout(profile_caps(resolve_engine_profile("sglang")), Plan(tp=2, ep=2, adp=4)) is None
    assert launch_flags("sglang", prof.layouts, 8, 4) == ["--moe-a2a-backend", "deepep", "--deepep-mode", "normal"]
    assert launch_flags("sglang", prof.layouts, 8, 1) == [] and launch_flags("sglang", prof.layouts, 1, 8) == []
    vll = with_all2all(resolve_engine_profile("vllm"), "deepep_low_latency")
    assert launch_flags("vllm", vll.layouts, 8, 8) == ["--all2all-backend", "deepep_low_latency"]
    hi = dataclasses.replace(vll.layouts, a2a_decode_kernel="normal")
    assert launch_flags("vllm", hi, 8, 8) == ["--all2all-backend", "deepep_high_throughput"]
    assert launch_flags("vllm", resolve_engine_profile("vllm").layouts, 8, 8) == []


def test_search_launches_what_it_modelled(capsys, monkeypatch):
    """`search --moe-a2a-backend deepep`: every attention-DP plan it ranks has ep = tp x adp, its launch
    command carries DeepEP, and the echo says which token movement was modelled."""
    import json
    code, out, err = run_main(["search", "--model", "deepseek-v3", "--gpu", "h200-sxm-141gb", "--gpus", "16",
                               "--gpus-per-node", "8", "--weight-dtype", "fp8", "--kv-dtype", "fp8", "--engine",
                               "sglang", "--moe-a2a-backend", "deepep", "--prompt-tokens", "1024", "--output-tokens",
                               "256", "--rate", "4", "--ttft-slo", "2s", "--tpot-slo", "50ms", "--serving", "disagg",
                               "--format", "json"], capsys, monkeypatch)
    doc = json.loads(out)
    assert code == 0 and doc["inputs"]["engine"]["moe_all2all"] == {"dispatch": "alltoall", "decode_kernel": "low_latency"}
    roles = doc["disaggregated"]["role_plans"]
    assert roles and all(r["plan"]["ep"] == r["plan"]["tp"] * r["plan"]["adp"] for r in roles if r["plan"]["adp"] > 1)
    for d in doc["deployments"]:
        for entry, pool in zip(d["launch"], (d["disagg"]["prefill"], d["disagg"]["decode"])):
            assert ("--moe-a2a-backend deepep" in entry["command"]) == (pool["adp"] > 1 and pool["ep"] > 1)
