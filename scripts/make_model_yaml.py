#!/usr/bin/env python3
"""Write a built-in model file (models/NAME.yaml) from a Hugging Face config.json, fields copied.

A built-in is the model's config.json with a header: `name`, `source` (the repo id the config is
from), `aliases` (repo ids of the same weights in other formats) and `alias_quantization` (each
alias's own quantization_config, from its config.json or its modelopt `*_hf_quant_config.json`
companion). Every config field is copied as it is; the file is loaded back with apex-plan's loader
and must give the same model as the config.json itself (exit status 1 otherwise), so the file adds
names, never figures.

Meant for the configs the `aiconfigurator-core` wheel ships (`aiconfigurator_core/model_configs/
<org>--<name>_config.json`, see scripts/check_model_configs.py): an alias given as a repo id is looked
up there as `<org>--<name>_config.json` beside CONFIG.

usage: python scripts/make_model_yaml.py CONFIG.json --name NAME [--source REPO] [--alias REPO ...]
       [--note TEXT] [--out FILE]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import re
import sys
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import yaml  # noqa: E402

from apex_plan.model.load import load_model, quant_companion  # noqa: E402
from apex_plan.model.quant import formats_from_config  # noqa: E402

_LAYER = re.compile(r"^(.*\.layers\.)(\d+)(\..+|\*)$")
_EXCLUDE_KEYS = ("modules_to_not_convert", "ignore", "exclude_modules")

WHEEL_NOTE = "aiconfigurator-core 0.12.0 model_configs/"


def _repo_of(config: Path) -> str:
    """`org/name` of a `<org>--<name>_config.json` file."""
    return config.name[: -len("_config.json")].replace("--", "/", 1)


def _quantization(config: Path) -> tuple[dict | None, str]:
    """The quantization_config of a config file (its own, else its modelopt companion, found as the loader finds
    it: model.load.quant_companion) and where it is from (None when there is no such file)."""
    if not config.is_file():
        return None, ""
    cfg = json.loads(config.read_text())
    if cfg.get("quantization_config"):
        return cfg["quantization_config"], "config.json"
    companion = quant_companion(config)
    return (companion["quantization"], "hf_quant_config.json") if companion else (None, "")


def condense(quant: dict, n_layers: int) -> dict:
    """`quant` with each per-layer exclusion that names every layer 0..n_layers-1 written as one
    'layers.*' wildcard, when that gives the same formats (quant.formats_from_config); else as it is."""
    for key in _EXCLUDE_KEYS:
        excl = quant.get(key)
        if not isinstance(excl, list):
            continue
        groups: dict[tuple[str, str], set[int]] = defaultdict(set)
        for e in excl:
            m = _LAYER.match(e) if isinstance(e, str) else None
            if m:
                groups[(m.group(1), m.group(3))].add(int(m.group(2)))
        full = {k for k, idx in groups.items() if set(range(n_layers)) <= idx}
        out, done = [], set()
        for e in excl:
            m = _LAYER.match(e) if isinstance(e, str) else None
            k = (m.group(1), m.group(3)) if m else None
            if k in full and int(m.group(2)) < n_layers:
                if k not in done:
                    out.append(k[0] + "*" + k[1])
                    done.add(k)
                continue
            out.append(e)
        short = dict(quant, **{key: out})
        if formats_from_config(short, n_layers) == formats_from_config(quant, n_layers):
            quant = short
    return quant


def build(config: Path, name: str, source: str, aliases: list[str], note: str) -> str:
    """The YAML text of the built-in."""
    cfg = json.loads(config.read_text())
    quant, _ = _quantization(config)
    if quant:
        cfg["quantization_config"] = condense(quant, _layers(cfg))
    head = [f"# {name}: fields copied from {source} config.json, as {WHEEL_NOTE} holds it"
            + (f" ({note})." if note else "."),
            "# Written by scripts/make_model_yaml.py; loading it gives the same model as that config.json.",
            f"name: {name}", f"source: {source}"]
    if aliases:
        head.append(f"aliases: [{', '.join(aliases)}]")
        lines = []
        for a in aliases:
            q, where = _quantization(config.with_name(a.replace("/", "--", 1) + "_config.json"))
            if q:
                lines.append(f"  {a}: {json.dumps(condense(q, _layers(cfg)))}   # {where}")
        if lines:
            head += [f"# each alias's own quantization_config, as the copies in {WHEEL_NOTE} hold them (per-layer",
                     "# exclusions of every layer written as the 'layers.*' wildcard they amount to)",
                     "alias_quantization:"] + lines
    body = yaml.safe_dump(cfg, sort_keys=False, default_flow_style=None, width=120)
    return "\n".join(head) + "\n" + body


def _layers(cfg: dict) -> int:
    """num_hidden_layers of a config (its text_config's for a multimodal one)."""
    return int(cfg.get("num_hidden_layers") or (cfg.get("text_config") or {}).get("num_hidden_layers") or 0)


def _same(a, b) -> list[str]:
    """Fields of two ModelSpecs that differ, leaving out the names."""
    skip = {"name", "source", "aliases", "alias_quantization", "aliases_dtype", "alias_formats"}   # the aliases' own
    da, db = dataclasses.asdict(a), dataclasses.asdict(b)
    return [k for k in da if k not in skip and da[k] != db.get(k)]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("config", type=Path)
    ap.add_argument("--name", required=True)
    ap.add_argument("--source", help="the repo id (default: from the file name)")
    ap.add_argument("--alias", action="append", default=[])
    ap.add_argument("--note", default="")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args(argv)
    source = args.source or _repo_of(args.config)
    out = args.out or Path(__file__).resolve().parents[1] / "models" / f"{args.name}.yaml"
    out.write_text(build(args.config, args.name, source, args.alias, args.note))
    want = load_model(str(args.config))               # the config.json as the loader reads it, companion included
    got = load_model(str(out))
    diff = _same(want, got)
    if diff:
        print(f"{out}: differs from {args.config} in {', '.join(diff)}", file=sys.stderr)
        return 1
    print(f"{out}: {got.name}, {got.architecture}, {got.num_layers} layers" + (f", {len(args.alias)} aliases" if args.alias else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
