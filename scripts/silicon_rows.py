"""Shared helpers for the check_* scripts that re-run rows of a `run_silicon.py --json` file."""
from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys


def flag(cmd: str, name: str) -> str | None:
    """The value of `name` in one row's `apex-plan simulate ...` command, None when absent."""
    m = re.search(re.escape(name) + r" (\S+)", cmd)
    return m.group(1) if m else None


def rerun(cmd: str, extra: list[str]) -> subprocess.CompletedProcess:
    """Run one row's command in this interpreter (`python -m apex_plan`) with `extra` arguments appended."""
    argv = [sys.executable, "-m", "apex_plan"] + shlex.split(cmd)[1:] + list(extra)
    return subprocess.run(argv, capture_output=True, text=True)


def rerun_metrics(cmd: str, extra: list[str]) -> dict:
    """The `metrics` object of a re-run row; raises CalledProcessError when the command fails."""
    out = rerun(cmd, extra)
    out.check_returncode()
    return json.loads(out.stdout)["metrics"]
