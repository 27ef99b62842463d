"""Engine profiles: selection by NAME[@VERSION], errors, YAML round trip, provenance in every output,
and the GPU-pair property (more bandwidth and compute never predicts slower, nor beyond physics)."""

from __future__ import annotations

import csv
import dataclasses
import io
import itertools
import json
from functools import lru_cache

import numpy as np
import pytest
import yaml
from typer.testing import CliRunner

from apex_plan.cli import app
from apex_plan.engine.load import (list_engine_profiles, profile_from_dict, profile_to_dict, release,
                                   resolve_engine_profile)
from apex_plan.errors import InputError
from apex_plan.hardware.load import list_gpus, load_gpu, make_cluster
from apex_plan.model.load import load_model
from apex_plan.plan.spec import EngineConfig, Plan
from apex_plan.simulate.run import simulate
from apex_plan.workload.spec import Workload
from apex_plan.workload.synthetic import preset_trace


@pytest.mark.parametrize("text,name", [
    ("vllm", "vllm-v1"), ("vllm@0.6.0", "vllm-0.6"), ("vllm@0.7.3", "vllm-0.6"), ("vllm@0.8.0", "vllm-v1"),
    ("vllm@0.11.2", "vllm-v1"), ("vllm@0.18.0", "vllm-v1"), ("sglang@0.5.1.post1", "sglang-0.5"),
    ("sglang@0.5.3", "sglang-0.5.3"), ("sglang@0.5.9", "sglang-0.5.3"), ("sglang", "sglang-0.5.3"), ("trtllm@1.0.0rc3", "trtllm-1"), ("tensorrt-llm@1.2.0rc6.post1", "trtllm-1"),
    ("vllm-0.6", "vllm-0.6"), ("TRTLLM", "trtllm-1"),
])
def test_engine_selection(text, name):
    p = resolve_engine_profile(text)
    assert p.name == name
    if "@" in text:
        assert p.version == text.split("@")[1] and p.label == f"{name}@{p.version}"
        assert release(p.min_version) <= release(p.version) < release(p.max_version)


def test_release_ignores_pre_and_post_tags():
    assert release("1.0.0rc3") == (1,) and release("0.5.1.post1") == (0, 5, 1) and release("v0.18") == (0, 18)


@pytest.mark.parametrize("text,needle", [
    ("vlm", "did you mean 'vllm'"), ("lmdeploy", "built-in profiles: sglang-0.5, sglang-0.5.3, trtllm-1, vllm-0.6, vllm-v1"),
    ("vllm@0.5.4", "no vllm profile covers version 0.5.4"), ("trtllm@0.8.1", "trtllm-1 [0.20.0, 2.0.0)"),
    ("vllm@", "empty version after '@'"), ("sglang@ ", "empty version after '@'"),
])
def test_engine_errors_name_the_option_and_the_choices(text, needle):
    with pytest.raises(InputError) as e:
        resolve_engine_profile(text)
    assert str(e.value).startswith("--engine") and needle in str(e.value)


@pytest.mark.parametrize("text,name", [("vllm@nightly-5b8c30d6", "vllm-v1"), ("sglang@nightly-dev", "sglang-0.5.3"),
                                       ("trtllm@gpt-oss-dev", "trtllm-1"), ("sglang@glm5-hopper", "sglang-0.5.3"),
                                       ("vllm@latest", "vllm-v1")])
def test_unnumbered_build_tags_take_the_newest_profile_and_say_so(text, name):
    p = resolve_engine_profile(text)
    family = p.family
    assert p.name == name and p == dataclasses.replace(
        [q for q in list_engine_profiles() if q.family == family][-1], version=p.version, version_note=p.version_note)
    assert p.version == text.split("@")[1] and p.label == f"{name}@{p.version}"
    assert p.version in p.version_note and name in p.version_note and "development build" in p.version_note
    assert not resolve_engine_profile(f"{family}@0.5.1" if family == "sglang" else family).version_note
    doc = json.loads(CliRunner().invoke(app, SIM + ["--engine", text, "--format", "json"]).stdout)
    assert doc["inputs"]["engine"]["version_note"] == p.version_note
    table = CliRunner().invoke(app, SIM + ["--engine", text]).stdout
    assert "engine version:" in table and "development build" in table


def test_cli_unknown_engine_is_one_line_exit_2():
    r = CliRunner().invoke(app, ["simulate", "--model", "llama-3.1-8b", "--gpu", "h100-sxm-80gb", "--gpus", "1",
                                 "--engine", "vllm@0.1", "--workload", "chat", "--rate", "1"])
    assert r.exit_code != 0 and "no vllm profile covers version 0.1" in str(r.exception or r.output)


@pytest.mark.parametrize("profile", list_engine_profiles(), ids=lambda p: p.name)
def test_profile_round_trip(profile, tmp_path):
    doc = profile_to_dict(profile)
    path = tmp_path / f"{profile.name}.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    back = resolve_engine_profile(str(path))
    assert profile_to_dict(back) == doc
    assert back.scheduler == profile.scheduler and back.host == profile.host and back.attention == profile.attention


def test_profile_fields_refused_with_fix():
    doc = profile_to_dict(resolve_engine_profile("vllm-v1"))
    doc["host"]["step_msec"] = 1.0
    with pytest.raises(InputError) as e:
        profile_from_dict(doc, "my.yaml")
    assert "my.yaml: field 'host.step_msec': unknown field" in str(e.value) and "step_ms" in str(e.value)
    doc = profile_to_dict(resolve_engine_profile("vllm-v1"))
    doc["scheduler"]["batching_chunked"] = "fifo"
    with pytest.raises(InputError, match="batching_chunked"):
        profile_from_dict(doc, "my.yaml")


SIM = ["simulate", "--model", "Qwen/Qwen3-32B", "--gpu", "h100-sxm-80gb", "--gpus", "2", "--plan", "tp=2",
       "--prompt-tokens", "512", "--output-tokens", "64", "--concurrency", "8"]


@pytest.mark.parametrize("engine,label", [("sglang@0.5.1", "sglang-0.5@0.5.1"), ("trtllm@1.0.0", "trtllm-1@1.0.0"),
                                          ("vllm", "vllm-v1")])
def test_every_output_names_the_profile(engine, label):
    run = lambda fmt: CliRunner().invoke(app, SIM + ["--engine", engine, "--format", fmt])  # noqa: E731
    doc = json.loads(run("json").stdout)
    assert doc["inputs"]["engine"]["profile"] == label.split("@")[0]
    assert doc["engine"]["engine_profile"] == label
    assert doc["inputs"]["engine"]["calibration"]
    rows = list(csv.reader(io.StringIO(run("csv").stdout)))
    assert dict(zip(*rows))["engine.engine_profile"] == label
    assert label in run("table").stdout


def test_engines_differ_where_their_schedulers_do():
    """Same plan and closed loop: SGLang's prefill-first lock-step loop gives the longest TTFT."""
    out = {}
    for e in ("vllm@0.12.0", "sglang@0.5.1", "trtllm@1.0.0"):
        doc = json.loads(CliRunner().invoke(app, SIM + ["--engine", e, "--format", "json"]).stdout)
        out[e] = doc["metrics"]["ttft_ms"]["mean"]
    assert out["sglang@0.5.1"] == max(out.values())


# ---- GPU pairs ------------------------------------------------------------------------------------

@lru_cache(maxsize=None)
def _predict(gpu_name: str, engine: str):
    g = load_gpu(gpu_name)
    tr = preset_trace("chat", 4.0, 120, seed=2)
    # the host platform's constants fitted per GPU (host_by_gpu: CPUs, API server) are not GPU physics: held equal
    prof = dataclasses.replace(resolve_engine_profile(engine), host_by_gpu={})
    res = simulate(load_model("llama-3.1-8b"), make_cluster(g, 8), Plan(1, 2, 1), EngineConfig(name=engine,
                   max_model_len=8192, profile=prof), Workload(tr))
    return res.metrics.latency.ttft_ms.mean, res.metrics.latency.tpot_ms.mean


def _physics(name: str):
    g = load_gpu(name)
    c = g.calibration
    return dict(flops=g.peak_tflops["bf16"] * c.compute_efficiency, attn=g.peak_tflops["bf16"] * c.attention_efficiency,
                **{f"prefill_attn_{fam}": g.peak_tflops["bf16"] * c.prefill_attention_for(fam)
                   for fam in ("vllm", "sglang", "trtllm")},
                bw=g.mem_bw_gbps * c.bandwidth_efficiency, link=g.intra_node_bw_gbps * c.link_efficiency,
                mem=g.memory_bytes, lat=-c.kernel_latency_us, ar=-c.custom_allreduce_latency_us,
                nccl=-c.allreduce_latency_us, sms=g.num_sms,
                # an under-filled kernel (a short prefill's attention) runs on part of the SMs: per-SM speed counts
                per_sm=g.peak_tflops["bf16"] * min(c.attention_efficiency, *(c.prefill_attention_for(fam) for fam in
                                                        ("vllm", "sglang", "trtllm"))) / g.num_sms)


def _dominates(a, b):
    pa, pb = _physics(a), _physics(b)
    return all(pa[k] >= pb[k] for k in pa)


PAIRS = [(a, b) for a, b in itertools.permutations(list_gpus(), 2)
         if load_gpu(a).vendor == load_gpu(b).vendor == "nvidia" and _dominates(a, b)]


def test_datasheet_dominance_survives_calibration():
    """Where one chip's datasheet peaks (bf16, HBM bandwidth, NVLink) all match or beat another's, its
    calibrated achievable figures do too: calibration never inverts a GPU comparison."""
    for a, b in itertools.permutations(list_gpus(), 2):
        ga, gb = load_gpu(a), load_gpu(b)
        if ga.vendor != gb.vendor or ga.vendor != "nvidia":
            continue
        if (ga.peak_tflops["bf16"] >= gb.peak_tflops["bf16"] and ga.mem_bw_gbps >= gb.mem_bw_gbps
                and ga.intra_node_bw_gbps >= gb.intra_node_bw_gbps and ga.num_sms >= gb.num_sms):
            pa, pb = _physics(a), _physics(b)
            assert pa["flops"] >= pb["flops"] and pa["bw"] >= pb["bw"], (a, b)


@pytest.mark.parametrize("engine", ["vllm@0.6.0", "vllm", "sglang", "trtllm"])
def test_faster_gpu_never_predicts_slower_nor_beyond_physics(engine):
    assert PAIRS, "no dominating NVIDIA GPU pair among the built-in profiles"
    for a, b in PAIRS:
        (ta, pa), (tb, pb) = _predict(a, engine), _predict(b, engine)
        # 0.1% slack: a faster step can regroup a batch (an earlier step boundary), the one discrete effect
        assert ta <= tb * (1 + 1e-3) and pa <= pb * (1 + 1e-3), (engine, a, b, ta, tb, pa, pb)
        phys_a, phys_b = _physics(a), _physics(b)
        fam = engine.split("@")[0]
        bound = max(phys_a[k] / phys_b[k] for k in ("flops", "bw", "attn", f"prefill_attn_{fam}", "link"))
        assert tb / ta <= bound * (1 + 1e-6) and pb / pa <= bound * (1 + 1e-6), (engine, a, b)


def test_host_by_gpu_overrides_only_its_platform(tmp_path):
    doc = profile_to_dict(resolve_engine_profile("vllm-v1"))
    doc["host_by_gpu"] = {"h200-sxm-141gb": {"per_seq_ms": 0.03, "step_ms": 0.9}}
    p = profile_from_dict(doc, "mine.yaml")
    h200, h100 = p.on_gpu("h200-sxm-141gb"), p.on_gpu("h100-sxm-80gb")
    assert (h200.host.per_seq_ms, h200.host.step_ms) == (0.03, 0.9)
    assert h200.host.frontend_ms == p.host.frontend_ms          # fields it does not name stay the joint values
    assert h100.host == p.host
    path = tmp_path / "mine.yaml"
    path.write_text(yaml.safe_dump(profile_to_dict(p), sort_keys=False))
    assert resolve_engine_profile(str(path)).host_by_gpu == p.host_by_gpu
    doc["host_by_gpu"] = {"h200-sxm-141gb": {"per_seq_msec": 0.03}}
    with pytest.raises(InputError, match="host_by_gpu.h200-sxm-141gb.per_seq_msec"):
        profile_from_dict(doc, "mine.yaml")


BAND = {"level": 0.8, "runs": 40.0, "ttft_low": -0.3, "ttft_high": 0.5, "tpot_low": -0.1, "tpot_high": 0.2}


def test_error_band_by_gpu_is_the_interval_of_that_gpu_only(tmp_path):
    from apex_plan.calibrate.interval import interval
    doc = profile_to_dict(resolve_engine_profile("trtllm-1"))
    doc["host_by_gpu"] = {}
    doc["calibration_error"] = dict(BAND, ttft_low=-0.6, ttft_high=1.0)
    doc["calibration_error_by_gpu"] = {"h200-sxm-141gb": BAND}
    p = profile_from_dict(doc, "mine.yaml")
    h200, other = p.on_gpu("h200-sxm-141gb"), p.on_gpu("a100-sxm-80gb")
    assert h200.calibration_error == BAND and other.calibration_error == doc["calibration_error"]
    assert h200.host == p.host                                  # a band alone leaves the host constants
    # measured = pred / (1 + e): 100 ms predicted on H200 -> [100 / 1.5, 100 / 0.7]
    iv = interval(h200, "ttft", 100.0)
    assert iv["low"] == pytest.approx(100 / 1.5) and iv["high"] == pytest.approx(100 / 0.7)
    iv = interval(other, "ttft", 100.0)                         # the default band is wider
    assert iv["low"] == pytest.approx(50.0) and iv["high"] == pytest.approx(250.0)
    path = tmp_path / "mine.yaml"
    path.write_text(yaml.safe_dump(profile_to_dict(p), sort_keys=False))
    assert resolve_engine_profile(str(path)).calibration_error_by_gpu == p.calibration_error_by_gpu


@pytest.mark.parametrize("band, field", [
    (dict(BAND, ttft_low=0.6), "calibration_error_by_gpu.h200-sxm-141gb.ttft_low"),     # low above high
    (dict(BAND, tpot_low=-1.0), "calibration_error_by_gpu.h200-sxm-141gb.tpot_low"),    # a zero prediction
    (dict(BAND, level=80), "calibration_error_by_gpu.h200-sxm-141gb.level"),            # a percent, not a fraction
    (dict(BAND, ttft_p10=-0.1), "calibration_error_by_gpu.h200-sxm-141gb.ttft_p10"),    # unknown key
    ("wide", "calibration_error_by_gpu.h200-sxm-141gb"),
])
def test_bad_error_band_names_its_field(band, field):
    doc = profile_to_dict(resolve_engine_profile("trtllm-1"))
    doc["calibration_error_by_gpu"] = {"h200-sxm-141gb": band}
    with pytest.raises(InputError) as e:
        profile_from_dict(doc, "mine.yaml")
    assert e.value.field == field
