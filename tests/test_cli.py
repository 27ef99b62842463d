"""Command line: every bad input is exit status 2 with one line on stderr and no traceback; listing
and describing built-ins; help text."""

from __future__ import annotations

import csv
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from apex_plan.cli import main
from apex_plan.hardware.load import list_gpus
from apex_plan.model.load import list_models

ROOT = Path(__file__).resolve().parents[1]
H100_YAML = ROOT / "hardware_profiles" / "h100-sxm-80gb.yaml"
L70_YAML = ROOT / "models" / "llama-3.1-70b.yaml"
BASE = ["simulate", "--model", "llama-3.1-70b", "--gpu", "h100-sxm-80gb", "--gpus", "8", "--plan", "tp=8",
        "--workload", "chat", "--rate", "1", "--num-requests", "10", "--max-model-len", "8192"]


def run_main(args, capsys, monkeypatch, env=None):
    """Run the console entry point in-process (with `env` variables set); returns (exit status, stdout, stderr)."""
    monkeypatch.setattr(sys, "argv", ["apex-plan", *map(str, args)])
    for k, v in (env or {}).items():
        monkeypatch.setenv(k, v)
    code = 0
    try:
        main()
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    out, err = capsys.readouterr()
    return code, out, err


def assert_one_line_error(code, out, err, *needles):
    assert code == 2, (code, out, err)
    assert "Traceback" not in err and "Traceback" not in out
    lines = err.strip("\n").split("\n")
    assert len(lines) == 1 and lines[0].strip(), err
    for n in needles:
        assert n in err, (n, err)
    return lines[0]


@pytest.fixture
def files(tmp_path):
    bad_yaml = tmp_path / "broken-model.yaml"
    bad_yaml.write_text("name: broken\nnum_hidden_layers: [1,\nhidden_size: 8\n")
    neg_gpu = tmp_path / "neg-gpu.yaml"
    text = H100_YAML.read_text()
    assert "mem_bw_gbps: 3350" in text
    neg_gpu.write_text(text.replace("mem_bw_gbps: 3350", "mem_bw_gbps: -3350"))
    unsorted = tmp_path / "unsorted.jsonl"
    unsorted.write_text('{"StartTimeOffset": 2000000000, "ContextTokens": 10, "GeneratedTokens": 5}\n'
                        '{"StartTimeOffset": 0, "ContextTokens": 10, "GeneratedTokens": 5}\n')
    negtok = tmp_path / "negtok.jsonl"
    negtok.write_text('{"StartTimeOffset": 0, "ContextTokens": 10, "GeneratedTokens": 5}\n'
                      '{"StartTimeOffset": 100, "ContextTokens": -10, "GeneratedTokens": 5}\n')
    good = tmp_path / "good.jsonl"
    good.write_text('{"StartTimeOffset": 0, "ContextTokens": 10, "GeneratedTokens": 5}\n'
                    '{"StartTimeOffset": 500000000, "ContextTokens": 20, "GeneratedTokens": 7}\n')
    return {"bad_yaml": bad_yaml, "neg_gpu": neg_gpu, "unsorted": unsorted, "negtok": negtok, "good": good}


def _sim(model="llama-3.1-70b", gpu="h100-sxm-80gb", gpus="8", extra=()):
    return ["simulate", "--model", model, "--gpu", gpu, "--gpus", gpus, "--workload", "chat", "--rate", "1",
            "--num-requests", "10", "--max-model-len", "8192", *extra]


BAD_CASES = {
    "unknown-model": (lambda f: _sim(model="llama-3.1-7b", extra=["--plan", "tp=8"]),
                      ["--model", "llama-3.1-7b", "did you mean 'llama-3.1-70b'"]),
    "unknown-gpu": (lambda f: _sim(gpu="h100-sxm", extra=["--plan", "tp=8"]), ["--gpu", "h100-sxm", "h100-sxm-80gb"]),
    "malformed-yaml-model": (lambda f: _sim(model=str(f["bad_yaml"])), ["broken-model.yaml", "malformed YAML", "line"]),
    "negative-gpu-field": (lambda f: _sim(gpu=str(f["neg_gpu"])), ["neg-gpu.yaml", "mem_bw_gbps", "-3350"]),
    "impossible-cluster": (lambda f: _sim(gpus="12", extra=["--gpus-per-node", "8"]), ["--gpus", "12"]),
    "plan-too-big": (lambda f: _sim(extra=["--plan", "dp=2,tp=8"]), ["--plan", "16", "8"]),
    "tp-not-dividing-heads": (lambda f: _sim(extra=["--plan", "tp=3"]), ["tp=3", "does not divide"]),
    "zero-degree": (lambda f: _sim(extra=["--plan", "tp=0"]), ["--plan", "tp"]),
    "unsorted-trace": (lambda f: BASE[:9] + ["--trace", str(f["unsorted"])], ["unsorted.jsonl", "StartTimeOffset"]),
    "negative-tokens": (lambda f: BASE[:9] + ["--trace", str(f["negtok"])], ["negtok.jsonl", "ContextTokens", "-10"]),
    "missing-trace": (lambda f: BASE[:9] + ["--trace", "/nonexistent/trace.jsonl"], ["trace.jsonl"]),
    "slo-without-unit": (lambda f: BASE + ["--ttft-slo", "500"], ["--ttft-slo", "500", "unit"]),
    "slo-bad-unit": (lambda f: BASE + ["--ttft-slo", "5xs"], ["--ttft-slo", "5xs"]),
    "unknown-format": (lambda f: BASE + ["--format", "xml"], ["--format", "xml"]),
    "unknown-dtype": (lambda f: BASE + ["--weight-dtype", "bf61"], ["--weight-dtype", "bf61"]),
    "negative-rate": (lambda f: _sim(extra=["--plan", "tp=8"])[:-6] + ["--rate", "-1"], ["--rate"]),
    "unwritable-output": (lambda f: BASE + ["--format", "json", "--output", "/nonexistent/dir/x.json"], ["x.json"]),
    "models-unknown": (lambda f: ["models", "llama-3.1-7b"], ["llama-3.1-7b", "did you mean"]),
    "hardware-unknown": (lambda f: ["hardware", "h1OO"], ["h1OO"]),
    "models-format": (lambda f: ["models", "--format", "yaml"], ["--format"]),
}


@pytest.mark.parametrize("case", list(BAD_CASES), ids=list(BAD_CASES))
def test_bad_input_one_line_exit_2(case, files, capsys, monkeypatch):
    build, needles = BAD_CASES[case]
    code, out, err = run_main(build(files), capsys, monkeypatch)
    line = assert_one_line_error(code, out, err, *needles)
    assert line.startswith("apex-plan: error: ")
    assert out == ""


def test_bad_input_as_a_process(files):
    """The real entry point (`python -m apex_plan`) behaves the same: no traceback, one line, status 2."""
    p = subprocess.run([sys.executable, "-m", "apex_plan", *BAD_CASES["negative-tokens"][0](files)],
                       capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert_one_line_error(p.returncode, p.stdout, p.stderr, "negtok.jsonl", "ContextTokens")


@pytest.mark.parametrize("args", [
    ["simulate", "--model", "llama-3.1-70b", "--gpu", "h100-sxm-80gb", "--gpus", "abc"],
    ["simulate", "--model", "llama-3.1-70b", "--gpu", "h100-sxm-80gb", "--gpus", "8", "--bogus"],
    ["simulate", "--gpu", "h100-sxm-80gb", "--gpus", "8"],
    ["frobnicate"],
], ids=["non-integer", "unknown-option", "missing-model", "unknown-command"])
def test_usage_errors_one_line(args, capsys, monkeypatch):
    """Click usage errors, too, are one 'apex-plan: error:' line (they used to be a 6-line rich box)."""
    code, out, err = run_main(args, capsys, monkeypatch)
    line = assert_one_line_error(code, out, err)
    assert line.startswith("apex-plan: error: ")


# ---- check ---------------------------------------------------------------------------------------

def test_check_good_files(files, capsys, monkeypatch):
    code, out, err = run_main(["check", L70_YAML, H100_YAML, files["good"]], capsys, monkeypatch)
    assert code == 0, err
    assert err == ""
    lines = out.strip().split("\n")
    assert len(lines) == 3 and all(line.startswith("ok  ") for line in lines)
    assert "llama-3.1-70b" in lines[0] and "80 layers" in lines[0]
    assert "h100-sxm-80gb" in lines[1]
    assert "2 requests" in lines[2]


@pytest.mark.parametrize("key,needles", [("bad_yaml", ["broken-model.yaml", "malformed YAML"]),
                                         ("neg_gpu", ["neg-gpu.yaml", "mem_bw_gbps"]),
                                         ("unsorted", ["unsorted.jsonl", "StartTimeOffset"]),
                                         ("negtok", ["negtok.jsonl", "ContextTokens"])])
def test_check_bad_file(key, needles, files, capsys, monkeypatch):
    code, out, err = run_main(["check", files["good"], files[key]], capsys, monkeypatch)
    assert code == 2
    assert out.startswith("ok  ") and len(out.strip().split("\n")) == 1    # the good file is still reported
    line = assert_one_line_error(code, "", err, *needles)
    assert line.startswith("bad ")


def test_check_missing_file(capsys, monkeypatch, tmp_path):
    code, out, err = run_main(["check", tmp_path / "nope.yaml"], capsys, monkeypatch)
    assert_one_line_error(code, out, err, "nope.yaml", "not found")


# ---- models / hardware ----------------------------------------------------------------------------

def test_models_json_exact_total(capsys, monkeypatch):
    code, out, err = run_main(["models", "llama-3.1-70b", "--format", "json"], capsys, monkeypatch)
    assert code == 0, err
    doc = json.loads(out)
    assert doc["schema_version"]
    assert doc["parameters"]["total"] == 70553706496
    assert doc["spec"]["num_layers"] == 80


def test_models_and_hardware_list_all_builtins(capsys, monkeypatch):
    models = list_models()
    gpus = list_gpus()
    assert len(models) >= 10 and "llama-3.1-70b" in models and "deepseek-v3" in models
    assert "h100-sxm-80gb" in gpus and len(gpus) >= 6
    code, out, _ = run_main(["models", "--format", "json"], capsys, monkeypatch)
    assert code == 0
    assert [m["name"] for m in json.loads(out)["models"]] == models
    code, out, _ = run_main(["hardware", "--format", "json"], capsys, monkeypatch)
    assert code == 0
    assert [g["name"] for g in json.loads(out)["gpus"]] == gpus
    code, out, _ = run_main(["models", "--format", "csv"], capsys, monkeypatch)
    assert code == 0
    assert [r["name"] for r in csv.DictReader(io.StringIO(out))] == models
    code, out, _ = run_main(["hardware", "--format", "csv"], capsys, monkeypatch)
    assert code == 0
    assert [r["name"] for r in csv.DictReader(io.StringIO(out))] == gpus


def test_list_tables_show_full_names():
    """Piped to a file or another program (80 columns), the default tables keep every name whole
    (they used to cut them to 'deep…', 'a100-…')."""
    for cmd, names in (("models", list_models()), ("hardware", list_gpus())):
        p = subprocess.run([sys.executable, "-m", "apex_plan", cmd], capture_output=True, text=True, timeout=60,
                           cwd=ROOT, env={**os.environ, "COLUMNS": "80"})
        assert p.returncode == 0
        for n in names:
            assert n in p.stdout, n


def test_simulate_help_shows_example(capsys, monkeypatch):
    code, out, _ = run_main(["simulate", "--help"], capsys, monkeypatch)
    assert code == 0
    flat = " ".join(out.replace("│", " ").split())
    assert "Example: apex-plan simulate --model" in flat
    assert "--ttft-slo" in flat and "--plan" in flat
