#!/usr/bin/env python3
"""Load every Hugging Face config.json of a folder (or a wheel / zip) and report which load.

Meant for the `aiconfigurator-core` wheel (Apache-2.0), which ships current models' configs under
`aiconfigurator_core/model_configs/` (`<org>--<name>_config.json`, with modelopt
`..._hf_quant_config.json` companions). It is not a dependency: fetch it with

    pip download --no-deps aiconfigurator-core -d /tmp/aic
    python scripts/check_model_configs.py /tmp/aic/aiconfigurator_core-*.whl

Model configs are loaded with apex-plan's loader (`spec_from_hf`) and reported with their
parameter total; quantisation companions are read for their per-component weight formats. Prints
one line per file, each failure with its reason, then how many of all files load, then the
parameter totals of the configs named in the model-card table (`--cards`, default
tests/fixtures/model_cards/cards.json) against the cards' published figures. Exit status 0 when
every model config loads and every carded total is within its card's tolerance, 1 otherwise.
"""

from __future__ import annotations

import argparse
import json
import sys
import zipfile
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from apex_plan.errors import InputError  # noqa: E402
from apex_plan.model.load import spec_from_hf  # noqa: E402
from apex_plan.model.params import param_counts  # noqa: E402
from apex_plan.model.quant import formats_from_config  # noqa: E402


def read_configs(source: Path) -> list[tuple[str, bytes]]:
    """(name, bytes) of every .json file in a folder (recursively) or a wheel / zip."""
    if source.is_file() and zipfile.is_zipfile(source):
        with zipfile.ZipFile(source) as zf:
            return sorted((Path(n).name, zf.read(n)) for n in zf.namelist()
                          if n.endswith(".json") and "model_configs/" in n)
    if source.is_dir():
        if (source / "model_configs").is_dir():          # the unpacked package: its model configs only
            source = source / "model_configs"
        return sorted((p.name, p.read_bytes()) for p in source.rglob("*.json"))
    raise SystemExit(f"{source}: not a folder or a wheel/zip of config.json files")


DEFAULT_CARDS = Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "model_cards" / "cards.json"


def card_rows(files: list[tuple[str, bytes]], cards_path: Path) -> tuple[list[str], bool]:
    """Lines comparing each carded config's parameter totals with its model card, and whether all are in
    tolerance. A carded config missing from `files` is a line of its own (and a failure)."""
    cards = {k: v for k, v in json.loads(cards_path.read_text()).items() if not k.startswith("_")}
    by_name = dict(files)
    lines, ok = [], True
    for card in cards.values():
        for name in card["configs"]:
            if name not in by_name:
                lines.append(f"MISSING {name}: not in the source")
                ok = False
                continue
            stem = name.removesuffix(".json").removesuffix("_config")
            counts = param_counts(spec_from_hf(json.loads(by_name[name]), name, default_name=stem))
            d_total = counts.total / card["total"] - 1
            good = abs(d_total) <= card["tol_total"]
            active = "active: no card figure"
            if card["active"]:
                d_active = counts.active_matmul / card["active"] - 1
                good = good and abs(d_active) <= card["tol_active"]
                active = (f"active {counts.active_matmul / 1e9:,.1f}B vs {card['active'] / 1e9:,.1f}B "
                          f"({d_active:+.1%}, within ±{card['tol_active']:.0%})")
            ok = ok and good
            lines.append(f"{'ok  ' if good else 'OFF '} {name}: total {counts.total / 1e9:,.1f}B vs card "
                         f"{card['total'] / 1e9:,.1f}B ({d_total:+.2%}, within ±{card['tol_total']:.1%}); {active}")
    return lines, ok


def check_one(name: str, raw: bytes) -> tuple[str, bool, str]:
    """(kind, loaded, detail) of one file."""
    try:
        data = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        return "unreadable", False, f"malformed JSON: {err}"
    if not isinstance(data, dict):
        return "unreadable", False, "top level is not a JSON object"
    if "architectures" not in data and ("quantization" in data or "quant_algo" in data):
        formats = formats_from_config(data, 1)
        if formats:
            shown = sorted({f for c, f in formats.items() if c in ("experts", "attention", "mlp")})
            return "quant companion", True, "weight formats " + "/".join(shown)
        return "quant companion", False, "no weight format apex-plan reads in it"
    stem = name.removesuffix(".json").removesuffix("_config")
    try:
        spec = spec_from_hf(data, name, default_name=stem)
    except InputError as err:
        field = f"field '{err.field}': " if err.field else ""
        return "model config", False, f"{field}{err.problem}"
    counts = param_counts(spec)
    kinds = ", ".join(f"{n} {k.label()}" for k, n in spec.kind_counts().items())
    extra = f" [{'; '.join(spec.notes)}]" if spec.notes else ""
    return "model config", True, f"{spec.architecture}: {counts.total / 1e9:.2f}B params, {kinds}{extra}"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("source", type=Path, help="folder of config.json files, or the aiconfigurator-core wheel")
    ap.add_argument("--quiet", action="store_true", help="print only failures and the summary")
    ap.add_argument("--cards", type=Path, default=DEFAULT_CARDS,
                    help="model-card table (JSON) of published parameter totals to compare with")
    args = ap.parse_args(argv)
    files = read_configs(args.source)
    loaded, failed = Counter(), Counter()
    for name, raw in files:
        kind, ok, detail = check_one(name, raw)
        (loaded if ok else failed)[kind] += 1
        if not ok:
            print(f"FAIL {name}: {detail}")
        elif not args.quiet:
            print(f"ok   {name}: {detail}")
    total_ok = sum(loaded.values())
    print(f"\n{total_ok} of {len(files)} files load "
          f"({loaded['model config']} of {loaded['model config'] + failed['model config']} model configs, "
          f"{loaded['quant companion']} of {loaded['quant companion'] + failed['quant companion']} quantisation companions)")
    cards_ok = True
    if args.cards.is_file():
        lines, cards_ok = card_rows(files, args.cards)
        print(f"\nparameter totals against the model cards ({args.cards.name}):")
        print("\n".join(lines))
    return 0 if not failed["model config"] and cards_ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
