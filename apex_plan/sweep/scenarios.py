"""A sweep file: a grid and/or a list of scenarios, each one `apex-plan search` with its options (the
fields of `SearchRequest`).

    base:                      # options every scenario shares (any `search` option, - or _)
      gpus: 8
      workload: chat
    grid:                      # every combination of these axes (a scalar is a one-value axis)
      model: [llama-3.1-8b, llama-3.1-70b]
      rate: [1, 2, 4]
      slo:                     # an axis of option bundles; `name` names the value in scenario names
        - {name: tight, ttft_slo: 300ms, tpot_slo: 30ms}
        - {name: relaxed, ttft_slo: 2s, tpot_slo: 100ms}
    scenarios:                 # and/or explicit scenarios (merged over base)
      - {name: ds-v3, model: deepseek-v3, gpus: 64}
    prices:                    # USD per GPU-hour by GPU profile, for $/Mtok (a cluster YAML's price wins)
      h100-sxm-80gb: 2.5

Each scenario's identity is a hash of its options (sorted, canonical JSON), so a restarted sweep
recognises the scenarios it already finished however the file is reordered.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
from dataclasses import dataclass
from pathlib import Path

import yaml

from apex_plan.errors import InputError, did_you_mean

TOP_KEYS = ("base", "grid", "scenarios", "prices")
RESERVED = ("format", "output", "report", "plot", "help")     # the sweep sets or forbids these
PATH_OPTIONS = ("trace", "cluster", "model", "gpu")           # resolved against the sweep file's folder
MAX_SCENARIOS = 100_000


@dataclass(frozen=True)
class Scenario:
    id: str                     # stable hash of the options
    name: str
    options: dict               # option name (underscores) -> value as written
    args: tuple[str, ...]       # the same search as `apex-plan search` arguments
    request: dict               # SearchRequest field -> value (paths resolved), for SearchRequest.from_mapping


def search_options() -> dict[str, tuple[str, bool, str]]:
    """`search` option name (underscores) -> (flag, is_boolean_flag, SearchRequest field), read from
    the request's declared options."""
    from apex_plan.requests.options import field_kinds, option_keys
    from apex_plan.requests.search import SearchRequest
    kinds = field_kinds(SearchRequest)
    flags = {f.name: f.metadata["flags"][0] for f in dataclasses.fields(SearchRequest)}
    return {key: (flags[name], kinds[name][1] is bool, name) for key, name in option_keys(SearchRequest).items()}


def _key(k, where: str, known: dict) -> str:
    name = str(k).replace("-", "_")
    if name in RESERVED:
        raise InputError(where, str(k), "is set by the sweep itself", "remove it (the sweep writes JSON lines)")
    if name not in known:
        raise InputError(where, str(k), "is not an `apex-plan search` option", did_you_mean(name, known))
    return name


def _value(v, where: str, key: str):
    if isinstance(v, (list, tuple)):                  # a list option such as weight_dtype: [bf16, fp8]
        return ",".join(str(x) for x in v)
    if isinstance(v, (dict, type(None))):
        raise InputError(where, key, f"value {v!r} is not a scalar", "give a number, a string or a list")
    return v


def _bundle(v, where: str, known: dict) -> tuple[str, dict]:
    """A grid value: a scalar for a plain axis, or a mapping of options with an optional `name`."""
    if isinstance(v, dict):
        d = dict(v)
        name = str(d.pop("name", ""))
        opts = {_key(k, where, known): _value(x, where, str(k)) for k, x in d.items()}
        return name or ",".join(f"{k}={x}" for k, x in opts.items()), opts
    return "", v


def scenario_id(options: dict) -> str:
    """First 16 hex digits of the SHA-256 of the options as canonical JSON."""
    text = json.dumps(options, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _resolved(k: str, v, base_dir: Path | None):
    """A path option resolved against the sweep file's folder when the file is there."""
    text = str(v)
    if base_dir is not None and k in PATH_OPTIONS and (base_dir / text).exists():
        return str((base_dir / text).resolve())
    return v


def to_args(options: dict, known: dict, base_dir: Path | None) -> tuple[str, ...]:
    """The scenario as `apex-plan search` arguments."""
    args: list[str] = []
    for k in sorted(options):
        flag, is_flag, _ = known[k]
        v = options[k]
        if is_flag:
            if v is True:
                args.append(flag)
            elif v is not False:
                raise InputError(f"scenario option '{k}'", None, f"{v!r} is not true or false", "write true or false")
            continue
        args += [flag, str(_resolved(k, v, base_dir))]
    return tuple(args)


def to_request(options: dict, known: dict, base_dir: Path | None) -> dict:
    """The scenario as SearchRequest field -> value (checked when the request is built)."""
    return {known[k][2]: _resolved(k, v, base_dir) for k, v in options.items()}


def expand(doc: dict, where: str, base_dir: Path | None = None) -> tuple[list[Scenario], dict[str, float]]:
    """The scenarios of a parsed sweep file, and its GPU prices."""
    if not isinstance(doc, dict):
        raise InputError(where, None, "is not a mapping", "write base:, grid: and/or scenarios: at the top level")
    for k in doc:
        if k not in TOP_KEYS:
            raise InputError(where, str(k), "unknown section", did_you_mean(str(k), TOP_KEYS))
    known = search_options()
    base_raw = doc.get("base") or {}
    if not isinstance(base_raw, dict):
        raise InputError(where, "base", "is not a mapping", "write option: value lines under base:")
    base = {_key(k, where, known): _value(v, where, str(k)) for k, v in base_raw.items()}
    combos: list[tuple[list[str], dict]] = []
    grid = doc.get("grid")
    if grid is not None:
        if not isinstance(grid, dict) or not grid:
            raise InputError(where, "grid", "is not a mapping of axes", "e.g. grid: {model: [llama-3.1-8b], rate: [1, 2]}")
        axes = []
        for axis, values in grid.items():
            vals = values if isinstance(values, list) else [values]
            if not vals:
                raise InputError(where, f"grid.{axis}", "has no values", "give at least one value")
            opts = []
            for v in vals:
                label, payload = _bundle(v, where, known)
                if isinstance(payload, dict):
                    opts.append((label, payload))
                else:
                    key = _key(axis, where, known)
                    label = "" if len(vals) == 1 else (str(payload) if key in ("model", "gpu") else f"{key}={payload}")
                    opts.append((label, {key: _value(payload, where, key)}))
            axes.append(opts)
        n = 1
        for a in axes:
            n *= len(a)
        if n > MAX_SCENARIOS:
            raise InputError(where, "grid", f"expands to {n} scenarios", f"keep it under {MAX_SCENARIOS}")
        for combo in itertools.product(*axes):
            opts, names = dict(base), []
            for label, o in combo:
                opts.update(o)
                if label:
                    names.append(label)
            combos.append((names, opts))
    items = doc.get("scenarios") or []
    if not isinstance(items, list):
        raise InputError(where, "scenarios", "is not a list", "write one '- {option: value, ...}' per scenario")
    for i, item in enumerate(items):
        if not isinstance(item, dict):
            raise InputError(where, f"scenarios[{i}]", "is not a mapping", "write {option: value, ...}")
        label, payload = _bundle(item, f"{where}: scenarios[{i}]", known)
        combos.append(([label], {**base, **payload}))
    if not combos:
        raise InputError(where, None, "defines no scenario", "add a grid: or a scenarios: section")
    out, seen, by_name = [], {}, {}
    for names, opts in combos:
        if "model" not in opts:
            raise InputError(where, "model", "is missing from a scenario", "set it under base:, grid: or the scenario")
        sid = scenario_id(opts)
        if sid in seen:
            continue                      # the same options twice is one scenario
        seen[sid] = True
        name = "/".join(n for n in names if n) or str(opts.get("model"))
        if name in by_name:
            raise InputError(where, "name", f"two different scenarios are both named '{name}'",
                             "give each scenario its own name (results and tables are keyed by it)")
        by_name[name] = sid
        out.append(Scenario(sid, name, opts, to_args(opts, known, base_dir), to_request(opts, known, base_dir)))
    return out, _prices(doc.get("prices"), where)


def _prices(raw, where: str) -> dict[str, float]:
    """`prices:` GPU profile name -> USD per GPU-hour: known profiles, finite non-negative numbers."""
    import math

    from apex_plan.hardware.load import list_gpus
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise InputError(where, "prices", "must map GPU profile names to USD per GPU-hour", "e.g. h100-sxm-80gb: 2.5")
    gpus = list_gpus()
    for k, v in raw.items():
        if str(k) not in gpus:
            raise InputError(where, f"prices.{k}", "unknown GPU profile", did_you_mean(str(k), gpus))
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0:
            raise InputError(where, f"prices.{k}", f"must be a finite number of USD per GPU-hour >= 0, got {v!r}",
                             "e.g. h100-sxm-80gb: 2.5")
    return {str(k): float(v) for k, v in raw.items()}


def load_scenarios(path: str | Path) -> tuple[list[Scenario], dict[str, float]]:
    p = Path(path)
    try:
        doc = yaml.safe_load(p.read_text())
    except OSError as e:
        raise InputError(str(path), None, f"cannot read: {e.strerror}", "give the path of a sweep YAML file") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        at = f" at line {mark.line + 1}" if mark else ""
        raise InputError(str(path), None, f"is not valid YAML{at}", "fix the syntax") from None
    return expand(doc, str(path), p.parent)
