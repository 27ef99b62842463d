"""What a new user reads: the answer first, tables at 80 columns that never cut a value, summary lines
broken only between phrases, units on figures, what binds a plan, the checkpoint's own format and the
launch flags each format needs, and --headroom."""

from __future__ import annotations

import io
import json
import re

import pytest

from rich.console import Console

from apex_plan.model.load import load_model
from apex_plan.plan.spec import EngineConfig, Plan
from apex_plan.report.launch import launch_command, parse_launch
from apex_plan.report.search_view import print_phrases
from apex_plan.search import results as R
from apex_plan.search.capacity import binding_constraint, find_goodput
from apex_plan.simulate.metrics import Distribution
from apex_plan.workload.slo import parse_slo
from test_cli import run_main

SEARCH = ["search", "--model", "llama-3.1-8b", "--gpu", "h100-sxm-80gb", "--gpus", "2", "--workload", "chat",
          "--rate", "5", "--max-model-len", "8192"]


def test_search_table_at_80_columns(capsys, monkeypatch):
    # vllm@0.6.0 stores no error band: the uncalibrated line is printed too
    code, out, err = run_main(SEARCH + ["--engine", "vllm@0.6.0"], capsys, monkeypatch, env={"COLUMNS": "80"})
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0].startswith("Deploy "), lines[0]                    # the answer first
    for line in lines:
        if "vllm serve" not in line:                                     # launch lines stay whole for copying
            assert len(line) <= 80, line
        assert "\u2026" not in line, line                                # no value cut with an ellipsis
    text = "\n".join(lines)
    for needle in ("capacity", "req/s", "demand", "tok/s", "binds", "chat preset prompt", "mean prompt",
                   "uncalibrated"):
        assert needle in text, needle
    assert "scripts/calibrate.py" in text                                # the calibration text is not cut


@pytest.mark.parametrize("width", [50, 60, 70])
def test_search_below_70_columns_cuts_no_value(capsys, monkeypatch, width):
    """Narrower than the tables: each row becomes a record of 'header value' phrases; no line is wider than
    the terminal (launch lines stay whole for copying), no value is cut or split from its unit, every
    plan and what binds it is printed."""
    code, out, err = run_main(SEARCH, capsys, monkeypatch, env={"COLUMNS": str(width)})
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0].startswith("Deploy ")
    for line in lines:
        if "vllm serve" not in line:
            assert len(line) <= width, line
        assert "\u2026" not in line, line
    for a, b in zip(lines, lines[1:]):                                  # no figure left without its unit
        assert not (re.search(r"\d$", a) and re.match(r"\s*(ms|req/s|W|J|GiB|%|tokens)\b", b)), (a, b)
    text = " ".join(" ".join(lines).split())
    for plan in ("tp1-pp1", "tp2-pp1", "tp1-pp2"):
        assert plan in text
    assert "binds" in text and text.count("TPOT SLO") + text.count("compute") + text.count("rate ceiling") >= 3


SIMULATE = ["simulate", "--model", "llama-3.1-8b", "--gpu", "h100-sxm-80gb", "--gpus", "1", "--plan", "tp=1",
            "--workload", "chat", "--rate", "2", "--num-requests", "40", "--max-model-len", "8192"]


@pytest.mark.parametrize("argv", [SIMULATE, ["models", "llama-3.1-8b"], ["hardware", "h100-sxm-80gb"]],
                         ids=["simulate", "models", "hardware"])
@pytest.mark.parametrize("width", [40, 60, 80])
def test_every_table_fits_or_becomes_records(capsys, monkeypatch, argv, width):
    """simulate's latency and step tables, a model's parameter table, a GPU's calibration table: no line
    wider than the terminal, and no word of a row label folded across lines (each label whole)."""
    code, out, err = run_main(argv, capsys, monkeypatch, env={"COLUMNS": str(width)})
    assert code == 0, err
    lines = out.splitlines()
    assert all(len(line) <= width for line in lines), [line for line in lines if len(line) > width]
    words = {w for line in lines for w in re.findall(r"[A-Za-z_][A-Za-z_-]{3,}", line)}
    labels = {"simulate": ("communication", "elementwise", "end-to-end", "queueing"),
              "models": ("attention_per_layer", "dense_mlp_per_layer", "embedding"),
              "hardware": ("kernel_latency_us", "compute_efficiency")}[argv[0]]
    for label in labels:
        assert label in words, label


def test_phrases_break_only_between_phrases():
    buf = io.StringIO()
    phrases = [f"phrase number {i} with words" for i in range(12)]
    print_phrases(Console(file=buf, width=50, color_system=None), "head: ", phrases)
    out = buf.getvalue().splitlines()
    assert all(len(line) <= 50 for line in out)
    for ph in phrases:
        assert any(ph in line for line in out), ph                       # every phrase on one line


def _steady(stable=True, miss_ttft=0.0, miss_tpot=0.0, preemptions=0, peak=0.3, completed=100, met=False):
    """Steady-state metrics of a run that missed (or met) the SLO; binding_constraint reads the backlog test,
    completion, KV use and the miss shares."""
    d = Distribution(1.0, 1.0, 1.0, 1.0)
    return R.SteadyMetrics(
        1.0, 100, completed, d, d, d, R.WindowThroughput(1.0, 1.0, 1.0), R.WindowEnergy(1.0, 1.0, 1.0),
        R.KvPeak(peak, preemptions), R.PrefixSaving(False, 0.0, 0), None,
        R.WindowSlo(1000.0, 100.0, 90.0, 1.0, 1.0, 1.0, miss_ttft, miss_tpot, met),
        R.WindowTest(100, 100, 100, 1.0, 0.0, stable, 0.03))


def test_binds_names_the_constraint_that_failed_above_capacity():
    """The run just above the goodput says what binds: the SLO whose misses exceed the allowance most,
    else throughput (KV memory when requests were preempted or the pool ran full, else compute)."""
    slo = parse_slo("1s", "100ms", 90.0)
    assert binding_constraint(_steady(miss_tpot=0.3), slo) == "TPOT SLO"
    assert binding_constraint(_steady(miss_ttft=0.3, miss_tpot=0.15), slo) == "TTFT SLO"
    assert binding_constraint(_steady(stable=False, miss_ttft=0.9), slo) == "compute"
    assert binding_constraint(_steady(stable=False, preemptions=4), slo) == "KV memory"
    assert binding_constraint(_steady(completed=90, peak=0.99), slo) == "KV memory"
    assert binding_constraint(None, slo) == "rate ceiling"


def test_binds_comes_from_the_capacity_search():
    """find_goodput reports the constraint of its last failing run: a replica whose TPOT grows with the rate
    and whose backlog grows above 8 req/s binds on the TPOT SLO when the SLO is tight, on compute when loose."""
    def run(rate):
        tpot_miss = max(0.0, (rate - 4.0) / 10)                      # TPOT misses grow past 4 req/s
        return _steady(stable=rate <= 8.0, miss_tpot=tpot_miss, met=rate <= 8.0 and tpot_miss <= 0.1)
    tight = find_goodput(run, parse_slo("1s", "100ms", 90.0), 2.0)
    assert 4.9 < tight.goodput_rps <= 5.0 and tight.binding == "TPOT SLO"

    def loose(rate):
        return _steady(stable=rate <= 8.0, met=rate <= 8.0)
    cap = find_goodput(loose, parse_slo("1s", "100ms", 90.0), 2.0)
    assert 7.9 < cap.goodput_rps <= 8.0 and cap.binding == "compute"


def test_checkpoint_format_by_default():
    fp8 = load_model("Qwen/Qwen3-235B-A22B-FP8")
    assert fp8.checkpoint_dtype == "fp8" and fp8.source == "Qwen/Qwen3-235B-A22B-FP8"
    assert fp8.checkpoint_repo("fp8") == ("Qwen/Qwen3-235B-A22B-FP8", True)
    assert fp8.checkpoint_repo("bf16") == ("Qwen/Qwen3-235B-A22B", False)
    assert load_model("qwen3-235b-a22b").checkpoint_dtype == "bf16"
    ds = load_model("deepseek-v3")                                        # published as FP8 (block scales)
    assert ds.checkpoint_dtype == "fp8" and ds.checkpoint_repo("fp8") == ("deepseek-ai/DeepSeek-V3", True)
    assert ds.checkpoint_repo("fp4") == ("nvidia/DeepSeek-V3-0324-FP4", True)


ENGINE = EngineConfig(max_num_seqs=64, max_batched_tokens=2048, chunked_prefill=True, block_size=16,
                      gpu_memory_utilization=0.9, max_model_len=8192, custom_allreduce=True)


def test_launch_flags_per_format():
    for family in ("vllm", "sglang"):
        on_bf16 = parse_launch(launch_command(family, "org/m", Plan(1, 2, 1, 1, "fp8", "fp8"), ENGINE))
        assert on_bf16["quantization"] == "fp8"                          # online dynamic fp8
        pre = parse_launch(launch_command(family, "org/m-FP8", Plan(1, 2, 1, 1, "fp8", "fp8"), ENGINE, True))
        assert pre["quantization"] is None                               # the checkpoint's config says it
        for dt in ("fp4", "int4", "int8"):
            cmd = launch_command(family, "org/m", Plan(1, 2, 1, 1, dt, "bf16"), ENGINE)
            assert "--quantization" not in cmd and f"needs a {dt} checkpoint" in cmd
            assert parse_launch(cmd)["tp"] == 2
            assert "--quantization" not in launch_command(family, "org/m-AWQ", Plan(1, 2, 1, 1, dt, "bf16"), ENGINE, True)


def test_headroom(capsys, monkeypatch):
    code, out, err = run_main(SEARCH + ["--headroom", "0.5", "--format", "json"], capsys, monkeypatch)
    assert code == 0, err
    doc = json.loads(out)
    assert doc["inputs"]["demand_rps"] == 5 and doc["inputs"]["headroom"] == 0.5
    assert doc["inputs"]["searched_rps"] == 7.5
    assert all(d["goodput_rps"] >= 7.5 for d in doc["deployments"])


def test_simulate_says_when_gpus_are_left_idle(capsys, monkeypatch):
    code, out, err = run_main(["simulate", "--model", "llama-3.1-8b", "--gpu", "h100-sxm-80gb", "--gpus", "8",
                               "--workload", "chat", "--rate", "1", "--num-requests", "20", "--max-model-len", "8192",
                               "--format", "json"], capsys, monkeypatch)
    assert code == 0, err
    assert "uses 1 of the 8 GPUs" in err and len(err.strip().splitlines()) == 1


def test_numpy_warnings_never_reach_the_user():
    import subprocess
    import sys
    code = ("from apex_plan import console; console.one_line_warnings(); import numpy as np; "
            "np.array([0.0]) / 0; np.mean(np.array([])); np.exp(np.array([1e4]))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and r.stderr == "", r.stderr


def test_search_json_lists_uncalibrated_components(capsys, monkeypatch):
    code, out, err = run_main(SEARCH + ["--engine", "vllm@0.6.0", "--format", "json"], capsys, monkeypatch)
    assert code == 0, err
    doc = json.loads(out)
    assert any("engine profile" in u for u in doc["uncalibrated"]), doc["uncalibrated"]
    code, out, err = run_main(SEARCH + ["--format", "json"], capsys, monkeypatch)   # vllm-v1 stores its bands
    assert not any("engine profile" in u for u in json.loads(out)["uncalibrated"])


def test_config_json_launch_names_a_servable_model(tmp_path):
    """A config.json's launch model: the repo id its Hugging Face cache path spells, or aiconfigurator-core's
    ORG--NAME_config.json name, else its _name_or_path when that is a repo id, else its folder."""
    from apex_plan.model.load import servable_source
    cfg = {"_name_or_path": "llama_nemotron_super"}
    snap = tmp_path / "models--nvidia--Llama-3_3-Nemotron-Super-49B-v1" / "snapshots" / "abc123" / "config.json"
    assert servable_source(snap, cfg) == "nvidia/Llama-3_3-Nemotron-Super-49B-v1"
    assert servable_source(tmp_path / "nvidia--Foo-1B_config.json", cfg) == "nvidia/Foo-1B"
    assert servable_source(tmp_path / "m" / "config.json", {"_name_or_path": "org/name"}) == "org/name"
    assert servable_source(tmp_path / "m" / "config.json", cfg) == str((tmp_path / "m").resolve())


def test_remote_code_configs_launch_with_trust_remote_code():
    """A config with its own modelling code (auto_map: DeciLM) launches with each engine's trust flag;
    the parallel sizes read back unchanged."""
    from pathlib import Path
    from apex_plan.model.load import load_model
    spec = load_model(str(Path(__file__).parent / "fixtures" / "model_cards" / "decilm_nemotron_super_49b.json"))
    assert spec.remote_code and not load_model("llama-3.1-8b").remote_code
    plan = Plan(1, 2, 1, 1, "bf16", "bf16")
    flags = {"vllm": "--trust-remote-code", "sglang": "--trust-remote-code", "trtllm": "--trust_remote_code"}
    for family, flag in flags.items():
        cmd = launch_command(family, "org/m", plan, ENGINE, remote_code=True)
        assert flag in cmd.split() and flag not in launch_command(family, "org/m", plan, ENGINE).split()
        assert parse_launch(cmd)["tp"] == 2


def test_modelopt_companion_sets_the_checkpoint_format(tmp_path, capsys, monkeypatch):
    """A config.json without quantization_config beside a modelopt hf_quant_config.json (NVIDIA's NVFP4
    exports) is planned in the companion's format (folder layout and aiconfigurator-core's naming); without
    one it stays bf16; a broken companion is one line naming it."""
    from apex_plan.model.load import load_model
    from test_model import _hf_llama_config
    cfg = dict(_hf_llama_config(), _name_or_path="nvidia/Llama-3.1-8B-NVFP4")
    nvfp4 = {"producer": {"name": "modelopt"}, "quantization": {"quant_algo": "NVFP4", "group_size": 16,
                                                                "exclude_modules": ["lm_head"]}}
    folder = tmp_path / "repo"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(cfg))
    assert load_model(str(folder / "config.json")).checkpoint_dtype == "bf16"
    (folder / "hf_quant_config.json").write_text(json.dumps(nvfp4))
    spec = load_model(str(folder / "config.json"))
    assert spec.checkpoint_dtype == "fp4" and spec.source == "nvidia/Llama-3.1-8B-NVFP4"
    (tmp_path / "nvidia--X-NVFP4_config.json").write_text(json.dumps(cfg))
    (tmp_path / "nvidia--X-NVFP4_hf_quant_config.json").write_text(json.dumps(nvfp4))
    assert load_model(str(tmp_path / "nvidia--X-NVFP4_config.json")).checkpoint_dtype == "fp4"
    (folder / "hf_quant_config.json").write_text('{"quantization": "NVFP4"}')
    code, out, err = run_main(["models", str(folder / "config.json")], capsys, monkeypatch)
    assert code == 2 and len(err.strip().splitlines()) == 1 and "hf_quant_config.json" in err and "quantization" in err
