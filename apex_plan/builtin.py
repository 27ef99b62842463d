"""Where the built-in data folders are: models/, hardware_profiles/, engine_profiles/.

In the source tree they sit at the repository's top level; a wheel carries copies inside the package
as `apex_plan/data/<kind>/` (see setup.py). Every loader of built-in data asks this one resolver, so
an editable install, a wheel install and `python -m apex_plan` in a checkout all find the same files.
An environment variable per kind points at another folder instead (e.g. APEX_PLAN_MODELS_DIR).
"""

from __future__ import annotations

import os
from pathlib import Path

from apex_plan.errors import InputError

# folder name -> environment variable that overrides it
KINDS: dict[str, str] = {
    "models": "APEX_PLAN_MODELS_DIR",
    "hardware_profiles": "APEX_PLAN_HARDWARE_DIR",
    "engine_profiles": "APEX_PLAN_ENGINE_DIR",
}
_PACKAGE = Path(__file__).resolve().parent


def builtin_dir(kind: str, *, check_env: bool = True) -> Path:
    """The folder of built-in `kind` files: $ENV override, else the wheel's copy, else the checkout's."""
    if kind not in KINDS:
        raise ValueError(f"unknown built-in data kind {kind!r}; one of {sorted(KINDS)}")
    env = KINDS[kind]
    override = os.environ.get(env) if check_env else None
    if override:
        path = Path(override).expanduser()
        if not path.is_dir():
            raise InputError(env, None, f"'{override}' is not a folder",
                             f"point it at a folder of {kind.replace('_', ' ')} .yaml files, or unset it")
        return path
    packaged = _PACKAGE / "data" / kind
    if packaged.is_dir():
        return packaged
    return _PACKAGE.parent / kind


def builtin_names(kind: str, suffixes: tuple[str, ...] = (".yaml", ".yml")) -> list[str]:
    """Sorted file stems of the built-in `kind` files (empty when the folder is absent)."""
    folder = builtin_dir(kind)
    if not folder.is_dir():
        return []
    return sorted({p.stem for p in folder.iterdir() if p.suffix in suffixes and p.is_file()})


def builtin_file(kind: str, name: str, suffixes: tuple[str, ...] = (".yaml", ".yml")) -> Path | None:
    """The built-in file called `name` (without suffix), or None."""
    folder = builtin_dir(kind)
    for suffix in suffixes:
        path = folder / f"{name}{suffix}"
        if path.is_file():
            return path
    return None
