"""CLI conventions: --version, help on every option at 80 columns, vLLM spellings, did-you-mean,
COLUMNS when piped, a closed stdout, one-line failures whatever the typer/click version, and search
sweeps that skip invalid engine settings."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import typer.main

from apex_plan import __version__
from apex_plan.cli import app, main
from apex_plan.console import exit_status as _exit_status
from apex_plan.errors import InputError

from test_cli import run_main  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


run = run_main      # the console entry point in-process: (exit status, stdout, stderr)


def test_version(capsys, monkeypatch):
    code, out, err = run(["--version"], capsys, monkeypatch)
    assert code == 0 and out.strip() == f"apex-plan {__version__}" and err == ""


def test_every_option_has_help_and_help_fits_80_columns(capsys, monkeypatch):
    group = typer.main.get_command(app)
    for name, cmd in group.commands.items():
        for p in cmd.params:
            assert getattr(p, "help", None), (name, p.opts)
        code, out, _ = run([name, "--help"], capsys, monkeypatch, env={"COLUMNS": "80"})
        assert code == 0
        widest = max(len(line) for line in out.splitlines())
        assert widest <= 80, (name, widest)
        flat = " ".join(out.replace("│", " ").split())
        for p in cmd.params:
            if p.param_type_name == "option":
                assert p.opts[0] in flat, (name, p.opts[0])


SIM = ["simulate", "--model", "llama-3.1-70b", "--gpu", "h100-sxm-80gb", "--gpus", "8", "--workload", "chat",
       "--rate", "1", "--num-requests", "40", "--max-model-len", "8192", "--format", "json"]


def test_vllm_spellings_mean_the_same(capsys, monkeypatch):
    ours = SIM + ["--plan", "tp=4,pp=2", "--chunked-prefill", "on", "--max-batched-tokens", "1024",
                  "--kv-dtype", "fp8", "--no-custom-allreduce"]
    vllm = SIM + ["--tensor-parallel-size", "4", "--pipeline-parallel-size", "2", "--enable-chunked-prefill",
                  "--max-num-batched-tokens", "1024", "--kv-cache-dtype", "fp8", "--disable-custom-all-reduce"]
    short = SIM + ["-tp", "4", "-pp", "2", "--enable-chunked-prefill=true", "--max-num-batched-tokens", "1024",
                   "--kv-cache-dtype", "fp8", "--disable-custom-all-reduce"]
    docs = []
    for args in (ours, vllm, short):
        code, out, err = run(args, capsys, monkeypatch)
        assert code == 0, err
        doc = json.loads(out)
        doc.pop("inputs")
        docs.append(doc)
    assert docs[0] == docs[1] == docs[2]


def test_chunked_prefill_has_one_meaning(capsys, monkeypatch):
    """`--chunked-prefill off` in simulate is what `--no-chunked-prefill` and vLLM's
    `--enable-chunked-prefill=false` say; `auto` is the default."""
    outs = []
    for extra in (["--chunked-prefill", "off"], ["--no-chunked-prefill"], ["--enable-chunked-prefill=false"]):
        code, out, err = run(SIM + ["--plan", "tp=8"] + extra, capsys, monkeypatch)
        assert code == 0, err
        outs.append(json.loads(out)["metrics"])
    assert outs[0] == outs[1] == outs[2]
    # vLLM 0.6 schedules the two differently (mixed chunks vs prefill-only steps): the results differ
    on06, off06 = (json.loads(run(SIM + ["--plan", "tp=8", "--engine", "vllm@0.6.0", "--chunked-prefill", v],
                                  capsys, monkeypatch)[1])["metrics"] for v in ("on", "off"))
    assert on06 != off06


@pytest.mark.parametrize("args,hint", [
    (["hardware", "h100-sxm-80g"], "did you mean 'h100-sxm-80gb'"),
    (SIM[:4] + ["h100-sxm"] + SIM[5:], "did you mean 'h100-sxm-80gb'"),
    (SIM + ["--engine", "vlm"], "did you mean 'vllm'"),
    (["models", "llama-3.1-7b"], "did you mean 'llama-3.1-70b'"),
])
def test_did_you_mean(args, hint, capsys, monkeypatch):
    code, out, err = run(args, capsys, monkeypatch)
    assert code == 2 and hint in err and len(err.strip().splitlines()) == 1


def test_hardware_argument_is_named(capsys, monkeypatch):
    code, _, err = run(["hardware", "rtx4090"], capsys, monkeypatch)
    assert code == 2 and err.startswith("apex-plan: error: hardware NAME: unknown GPU 'rtx4090'") and "--gpu" not in err


def test_columns_honoured_when_piped():
    def widest(cols):
        p = subprocess.run([sys.executable, "-m", "apex_plan", "hardware"], capture_output=True, text=True, timeout=60,
                           cwd=ROOT, env={**os.environ, "COLUMNS": str(cols)})
        assert p.returncode == 0
        return max(len(line) for line in p.stdout.splitlines())
    assert widest(80) <= 80 < widest(200)


def test_closed_stdout_ends_quietly():
    """`apex-plan models | head -1`: the reader goes away; no traceback, no message."""
    for cmd in (["models"], ["hardware", "--format", "json"]):
        p = subprocess.Popen([sys.executable, "-m", "apex_plan", *cmd], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             cwd=ROOT)
        p.stdout.close()                  # closed before anything is written
        err = p.stderr.read().decode()
        p.wait(timeout=60)
        assert err == "", err
        assert p.returncode in (0, 1)
    p = subprocess.run(f"'{sys.executable}' -m apex_plan models | head -1", shell=True, capture_output=True, text=True,
                       cwd=ROOT, timeout=60)
    assert p.stderr == "" and len(p.stdout.splitlines()) == 1


class _NotClick(Exception):
    pass


@pytest.mark.parametrize("exc,code,text", [
    (InputError("--x", "f", "bad", "fix it"), 2, "apex-plan: error: --x: field 'f': bad (fix it)"),
    (ZeroDivisionError("division by zero"), 1, "internal error ZeroDivisionError"),
    (_NotClick("multi\nline"), 1, "internal error _NotClick: multi"),
    (MemoryError(), 1, "out of memory"),
    (KeyboardInterrupt(), 130, "interrupted"),
])
def test_every_failure_is_one_line(exc, code, text, capsys):
    assert _exit_status(exc) == code
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and text in err


def test_main_survives_a_click_without_exit(monkeypatch, capsys):
    """typer 0.29 vendors a click with no `Exit`; older ones use click itself. main() must not depend on
    either having any particular class: take every optional class away and fail with a plain error."""
    import apex_plan.console as cli

    monkeypatch.setattr(cli, "cli_exception_types", lambda: {k: () for k in
                                                               ("NoArgsIsHelpError", "UsageError", "ClickException",
                                                                "Exit", "Abort")})
    assert _exit_status(RuntimeError("boom")) == 1
    assert "internal error RuntimeError: boom" in capsys.readouterr().err
    monkeypatch.setattr(typer, "Exit", None, raising=False)
    assert cli.cli_exception_types()["Exit"] == cli.cli_exception_types()["Exit"]   # no AttributeError


def test_search_sweep_skips_invalid_settings(capsys, monkeypatch):
    args = ["search", "--model", "llama-3.1-8b", "--gpu", "h100-sxm-80gb", "--gpus", "1", "--workload", "chat",
            "--rate", "1", "--num-requests", "40", "--chunked-prefill", "both", "--max-batched-tokens", "512,2048,8192",
            "--engine", "vllm@0.6.0", "--format", "json"]
    code, out, err = run(args, capsys, monkeypatch)
    assert code == 0, err
    rejected = json.loads(out)["inputs"]["rejected_engine_settings"]
    assert [r["setting"] for r in rejected] == [f"max_num_seqs=256 max_batched_tokens={b} chunked_prefill=off"
                                                for b in (512, 2048, 8192)]
    assert all("max_model_len" in r["reason"] for r in rejected)
    # every combination invalid: one line naming the option
    code, out, err = run(args[:-6] + ["--chunked-prefill", "off", "--max-batched-tokens", "512,2048", "--engine",
                                      "vllm@0.6.0"], capsys, monkeypatch)
    assert code == 2 and "--max-batched-tokens" in err and "all 2 engine settings" in err


def test_sweep_helpers():
    from apex_plan.inputs import chunked_prefill_modes, engine_sweep
    from apex_plan.model.load import load_model
    from apex_plan.plan.spec import EngineConfig
    assert chunked_prefill_modes("both", sweep=True) == [True, False]
    assert chunked_prefill_modes("auto,on,on", sweep=True) == [None, True]
    with pytest.raises(InputError):
        chunked_prefill_modes("on,off", sweep=False)
    m = load_model("llama-3.1-8b")
    kept, rejected = engine_sweep(EngineConfig(max_model_len=4096), m, "128,256", "64,4096", "on,off")
    assert len(kept) + len(rejected) == 8
    # vLLM's rules: the budget must hold max_num_seqs, and without chunking max_model_len
    for cfg in kept:
        assert cfg.max_batched_tokens >= cfg.max_num_seqs
        assert cfg.chunked_prefill or cfg.max_batched_tokens >= 4096
    assert len(kept) == 4 and {c.max_batched_tokens for c in kept} == {4096}
    assert len(rejected) == 4 and all("max_batched_tokens=64 " in k and "64 is below" in r for k, r in rejected)
