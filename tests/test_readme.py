"""The README's examples run as written (from the repository root, in-process) and exit 0."""

from __future__ import annotations

import re
import shlex
import sys
from pathlib import Path

import pytest

from apex_plan.cli import main

ROOT = Path(__file__).resolve().parents[1]


def readme_commands() -> list[str]:
    """Every `apex-plan ...` command in the README's bash blocks, continuation lines joined."""
    text = (ROOT / "README.md").read_text()
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", text, re.S):
        for line in block.replace("\\\n", " ").splitlines():
            line = line.split(" #")[0].strip()
            if line.startswith("apex-plan "):
                commands.append(" ".join(line.split()))
    return commands


# a sweep runs 48 searches (minutes; the Ray one needs the optional extra): tests/test_sweep.py runs
# small sweep files through the same command instead
COMMANDS = [c for c in readme_commands() if not c.startswith("apex-plan sweep ")]


def test_readme_has_examples_of_every_command():
    used = {c.split()[1] for c in COMMANDS}
    assert {"models", "hardware", "check", "simulate", "search"} <= used, used
    assert any("examples/cluster.yaml" in c for c in COMMANDS)
    for f in ("examples/chat.jsonl", "examples/burstgpt.csv", "examples/azure.csv"):
        assert any(f in c for c in COMMANDS), f


@pytest.mark.parametrize("command", COMMANDS, ids=[c[:60] for c in COMMANDS])
def test_readme_example_runs(command, capsys, monkeypatch, tmp_path):
    # run where the README's relative paths resolve, but write outputs (--report l70.html) to a scratch folder
    for name in ("examples", "models", "hardware_profiles", "engine_profiles", "tests"):
        (tmp_path / name).symlink_to(ROOT / name)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", shlex.split(command))
    with pytest.raises(SystemExit) as e:
        main()
    out, err = capsys.readouterr()
    assert e.value.code == 0, (command, err)
    assert "error" not in err and out.strip(), (command, err)


def test_example_files_are_each_format():
    from apex_plan.workload.trace import load_trace
    formats = {load_trace(ROOT / "examples" / f).format for f in ("chat.jsonl", "chat.csv", "burstgpt.csv", "azure.csv")}
    assert formats == {"apex", "csv", "burstgpt", "azure"}
