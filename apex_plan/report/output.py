"""Write results as JSON, CSV or a rich table, to stdout or `--output FILE`."""

from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path
from typing import Any, Callable

from rich.console import Console

from apex_plan.errors import InputError

SCHEMA_VERSION = "1.2"    # 1.1: deployments carry economics (null prices, $/Mtok, power); plans their group and clock;
                          # 1.2: search deployments say their serving (agg | disagg), disaggregated ones their pools
FORMATS = ("table", "json", "csv")


def check_format(fmt: str, output: str | None = None) -> str:
    """Refuse an unknown format, or an --output path that cannot be written, before any work."""
    if fmt not in FORMATS:
        raise InputError("--format", None, f"unknown format '{fmt}'", "use table, json or csv")
    if output is not None:
        check_writable(output, "--output")
    return fmt


def check_writable(path_text: str, option: str) -> None:
    """Refuse an output path that cannot be written, before any work: a folder, a missing folder, or a
    place the file cannot be created (tried by opening it for appending; a file created by the try is
    removed again, an existing one is left as it was)."""
    path = Path(path_text).expanduser()
    if path.is_dir():
        raise InputError(option, None, f"'{path_text}' is a folder", f"give a file path to {option}")
    if not path.resolve().parent.is_dir():
        raise InputError(option, None, f"the folder of '{path_text}' does not exist", "create it or choose another path")
    existed = path.exists()
    try:
        with open(path, "a"):
            pass
    except OSError as e:
        raise InputError(option, None, f"cannot write '{path_text}': {e.strerror or e}",
                         "choose a writable path") from None
    if not existed:
        try:
            path.unlink()
        except OSError:
            pass


def _clean(x: Any) -> Any:
    """JSON-safe, deterministic values: floats rounded to 6 significant digits, NaN/inf as null."""
    if isinstance(x, float):
        if not math.isfinite(x):
            return None
        return float(f"{x:.6g}")
    if isinstance(x, dict):
        return {str(k): _clean(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_clean(v) for v in x]
    if hasattr(x, "item") and callable(x.item):     # numpy scalars
        return _clean(x.item())
    return x


def to_json(doc: dict) -> str:
    return json.dumps(_clean(doc), indent=2) + "\n"


def to_csv(rows: list[dict]) -> str:
    buf = io.StringIO()
    if rows:
        cols: list[str] = []
        for r in rows:
            for k in r:
                if k not in cols:
                    cols.append(k)
        w = csv.DictWriter(buf, fieldnames=cols, lineterminator="\n")
        w.writeheader()
        for r in rows:
            w.writerow({k: _clean(v) for k, v in r.items()})
    return buf.getvalue()


def flatten(d: dict, prefix: str = "") -> dict:
    """{'a': {'b': 1}} -> {'a.b': 1} for CSV columns."""
    out: dict = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, key + "."))
        elif isinstance(v, (list, tuple)):
            out[key] = ";".join(str(_clean(x)) for x in v)
        else:
            out[key] = v
    return out


def _pipe_width(default: int = 160) -> int:
    """Table width when stdout is not a terminal: $COLUMNS when it is a sensible number, else `default`."""
    import os
    try:
        width = int(os.environ.get("COLUMNS", ""))
    except ValueError:
        return default
    return width if 20 <= width <= 1000 else default


def emit(fmt: str, output: str | None, json_doc: Callable[[], dict], csv_rows: Callable[[], list[dict]],
         table: Callable[[Console], None]) -> None:
    """Render in `fmt` and write to stdout or `output`."""
    if fmt == "json":
        text = to_json(json_doc())
    elif fmt == "csv":
        text = to_csv(csv_rows())
    else:
        if output:
            buf = io.StringIO()
            table(Console(file=buf, width=160, force_terminal=False, color_system=None))
            text = buf.getvalue()
        else:
            import sys
            # a pipe or file gets a colourless console, as wide as $COLUMNS says, else wide enough
            # that no column is cut
            table(Console() if sys.stdout.isatty() else Console(width=_pipe_width(), color_system=None))
            return
    if output:
        try:
            Path(output).write_text(text)
        except OSError as e:
            raise InputError(output, None, f"cannot write: {e.strerror}", "choose a writable --output path") from None
    else:
        import sys
        sys.stdout.write(text)
