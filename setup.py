"""Ships the top-level built-in data folders inside the wheel as apex_plan/data/<kind>/.

Everything else about the package is in pyproject.toml; apex_plan/builtin.py finds the copies.
"""

import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

DATA_FOLDERS = ("models", "hardware_profiles", "engine_profiles")


class BuildPyWithData(build_py):
    """build_py, then copy each data folder's .yaml/.yml/.json files into the built package."""

    def run(self):
        super().run()
        if getattr(self, "editable_mode", False):
            return                      # an editable install reads the folders in the checkout
        root = Path(__file__).resolve().parent
        for kind in DATA_FOLDERS:
            src = root / kind
            if not src.is_dir():
                continue
            dst = Path(self.build_lib) / "apex_plan" / "data" / kind
            dst.mkdir(parents=True, exist_ok=True)
            for f in sorted(src.iterdir()):
                if f.is_file() and f.suffix in (".yaml", ".yml", ".json"):
                    shutil.copy2(f, dst / f.name)


setup(cmdclass={"build_py": BuildPyWithData})
