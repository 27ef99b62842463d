"""What `search` hands a planner: launch commands that round-trip, the engine's plan space, exit
statuses, CSV deployments, plain progress lines off a terminal."""

from __future__ import annotations

import csv
import io
import json
import subprocess
import sys
from types import SimpleNamespace

import pytest

from apex_plan.plan.spec import Plan
from apex_plan.report.launch import launch_command, parse_launch
from apex_plan.search.layouts import engine_caps, supported_layout

ENGINE = SimpleNamespace(max_num_seqs=128, max_batched_tokens=2048, chunked_prefill=True, block_size=16,
                         gpu_memory_utilization=0.85, max_model_len=33696, custom_allreduce=False)


@pytest.mark.parametrize("family", ["vllm", "sglang", "trtllm"])
@pytest.mark.parametrize("plan", [Plan(1, 4, 1), Plan(1, 2, 4), Plan(1, 8, 2, 8, "fp8", "fp8")])
def test_launch_command_round_trips_plan_and_engine(family, plan):
    cmd = launch_command(family, "org/model", plan, ENGINE)
    assert cmd.split()[0] == {"vllm": "vllm", "sglang": "python", "trtllm": "trtllm-serve"}[family]
    got = parse_launch(cmd)
    assert (got["tp"], got["pp"], got["ep"]) == (plan.tp, plan.pp, plan.ep)
    assert got["max_num_seqs"] == ENGINE.max_num_seqs
    assert got["max_model_len"] == ENGINE.max_model_len
    assert got["gpu_memory_utilization"] == pytest.approx(ENGINE.gpu_memory_utilization)
    if family != "trtllm":
        assert got["block_size"] == ENGINE.block_size
        assert got["chunked_prefill"] is True and got["max_batched_tokens"] == 2048
        assert got["custom_allreduce"] is False
        assert (got["kv_cache_dtype"] is not None) == (plan.kv_dtype == "fp8")
        assert got["quantization"] == ("fp8" if plan.weight_dtype == "fp8" else None)
    else:
        assert got["max_batched_tokens"] == 2048


@pytest.mark.parametrize("family", ["vllm", "sglang"])
def test_launch_command_round_trips_attention_dp(family):
    plan = Plan(1, 2, 1, 8, adp=4)
    got = parse_launch(launch_command(family, "org/model", plan, ENGINE))
    assert (got["tp"], got["adp"], got["pp"], got["ep"]) == (2, 4, 1, 8)


def test_vllm_launch_without_chunking():
    e = SimpleNamespace(**{**ENGINE.__dict__, "chunked_prefill": False, "custom_allreduce": True})
    got = parse_launch(launch_command("vllm", "m", Plan(1, 2, 1), e))
    assert got["chunked_prefill"] is False and got["custom_allreduce"] is True


def test_engine_decides_the_plan_space():
    from apex_plan.engine.load import resolve_engine_profile
    from apex_plan.search.layouts import profile_caps
    old, new = profile_caps(resolve_engine_profile("vllm@0.6.0")), profile_caps(resolve_engine_profile("vllm-v1"))
    assert "expert parallelism" in supported_layout(old, Plan(1, 8, 1, 8))
    assert supported_layout(new, Plan(1, 8, 1, 8)) is None
    v060 = engine_caps("vllm@0.6.0")
    assert v060.family == "vllm" and not v060.supports_ep
    assert "expert parallelism" in supported_layout(v060, Plan(1, 8, 1, 8))
    assert supported_layout(v060, Plan(1, 8, 2)) is None
    sg = engine_caps("sglang")
    assert sg.supports_ep and supported_layout(sg, Plan(1, 8, 1, 4)) is None
    newer = SimpleNamespace(family="vllm", name="vllm-v1", supports_ep=True, supports_pp=True,
                            supports_attention_dp=True)
    assert supported_layout(newer, Plan(1, 8, 1, 8)) is None
    assert "ep must equal tp" in supported_layout(newer, Plan(1, 8, 1, 2))
    assert engine_caps("vllm").supports_ep                    # a bare 'vllm' is the newest vLLM
    no_pp = SimpleNamespace(family="trtllm", name="x", supports_ep=True, supports_pp=False, supports_attention_dp=True)
    assert "pipeline" in supported_layout(no_pp, Plan(1, 4, 2))


BASE = [sys.executable, "-m", "apex_plan", "search", "--model", "llama-3.1-8b", "--gpu", "h100-sxm-80gb",
        "--gpus", "2", "--workload", "chat", "--max-model-len", "8192", "--ttft-slo", "500ms", "--tpot-slo", "30ms"]


def _run(*extra):
    return subprocess.run(BASE + list(extra), capture_output=True, text=True, timeout=300)


def test_exit_status_csv_and_progress_lines():
    ok = _run("--rate", "5", "--format", "csv")
    assert ok.returncode == 0, ok.stderr
    rows = list(csv.DictReader(io.StringIO(ok.stdout)))
    deps = [r for r in rows if r["kind"] == "deployment"]
    assert deps and all(r["launch"].count("vllm serve") >= 1 for r in deps)
    assert "--max-model-len 8192" in deps[0]["launch"]
    assert any(r["kind"] == "plan" for r in rows)
    # stderr is not a terminal here: progress comes as plain lines, not a live bar
    assert "plans simulated" in ok.stderr and "\r" not in ok.stderr
    none = _run("--rate", "100000", "--format", "json")
    assert none.returncode == 1, none.stderr                  # nothing meets the SLO: 1, closest printed
    doc = json.loads(none.stdout)
    assert doc["deployments"] == [] and doc["closest"] and doc["exit_status"] == 1
    assert "Closest" in doc["recommendation"]
    bad = _run("--rate", "5", "--top", "0")
    assert bad.returncode == 2 and "--top" in bad.stderr and "Traceback" not in bad.stderr
