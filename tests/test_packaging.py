"""A real (non-editable) install: build the wheel, install it into a fresh virtual environment and,
from outside the source tree, list the built-in models and GPU profiles it carries."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import venv
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
_SKIP = {".git", ".venv", ".ci-venv", "build", "dist", "__pycache__", ".pytest_cache", ".hypothesis"}


def _names(folder: Path) -> list[str]:
    return sorted(p.stem for p in folder.glob("*.yaml")) if folder.is_dir() else []


@pytest.mark.packaging
def test_wheel_install_lists_builtins_outside_the_tree(tmp_path):
    pytest.importorskip("wheel", reason="building the wheel offline needs the 'wheel' package ([test] extra)")
    src = tmp_path / "src"
    shutil.copytree(ROOT, src, ignore=lambda d, names: [n for n in names if n in _SKIP or n.endswith(".egg-info")])
    dist = tmp_path / "dist"
    build = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index",
                            "-q", "-w", str(dist), str(src)], capture_output=True, text=True, timeout=120)
    assert build.returncode == 0, build.stderr[-2000:]
    (wheel,) = dist.glob("apex_plan-*.whl")

    # a fresh environment whose only apex_plan is the wheel; its dependencies come from this one's
    # site-packages, added as a plain path (its .pth files, e.g. an editable install, are not run)
    env_dir = tmp_path / "venv"
    venv.EnvBuilder(with_pip=False, symlinks=os.name != "nt").create(env_dir)
    bindir = env_dir / ("Scripts" if os.name == "nt" else "bin")
    py = bindir / ("python.exe" if os.name == "nt" else "python")
    site = Path(subprocess.check_output([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                                        text=True).strip())
    (site / "zz_deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    inst = subprocess.run([sys.executable, "-m", "pip", "--python", str(py), "install", "--no-deps", "--no-index",
                           "-q", str(wheel)], capture_output=True, text=True, timeout=120)
    assert inst.returncode == 0, inst.stderr[-2000:]

    outside = tmp_path / "elsewhere"
    outside.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("APEX_PLAN_") and k != "PYTHONPATH"}
    where = subprocess.check_output([str(py), "-c", "import apex_plan, sys; print(apex_plan.__file__)"],
                                    cwd=outside, env=env, text=True).strip()
    assert Path(where).is_relative_to(env_dir), where          # the wheel's copy, not the checkout
    exe = bindir / "apex-plan"
    for cmd, key, folder in (("models", "models", "models"), ("hardware", "gpus", "hardware_profiles")):
        p = subprocess.run([str(exe), cmd, "--format", "json"], cwd=outside, env=env, capture_output=True,
                           text=True, timeout=120)
        assert p.returncode == 0, p.stderr
        listed = [d["name"] for d in json.loads(p.stdout)[key]]
        assert listed and listed == _names(ROOT / folder), (cmd, listed)
    engines = _names(ROOT / "engine_profiles")
    shipped = _names(Path(where).parent / "data" / "engine_profiles")
    assert shipped == engines                                  # engine profiles ship too (when the tree has them)
    p = subprocess.run([str(exe), "models", "llama-3.1-70b", "--format", "json"], cwd=outside, env=env,
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 0 and json.loads(p.stdout)["parameters"]["total"] == 70553706496, p.stderr
