"""Requests built from a plain mapping: the same checks as the CLI options, defaults, every option
declared once, the sweep calling the search function, and no module importing the CLI."""

from __future__ import annotations

import ast
import dataclasses
from pathlib import Path

import pytest

from apex_plan.errors import InputError
from apex_plan.requests.options import REQUIRED, field_kinds, option_keys
from apex_plan.requests.search import SearchRequest
from apex_plan.requests.simulate import SimulateRequest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("cls", [SearchRequest, SimulateRequest])
def test_every_option_is_declared_once_with_flags_help_and_a_kind(cls):
    keys = option_keys(cls)
    assert len(keys) == len(dataclasses.fields(cls))               # one scenario key per field
    flags = [fl for f in dataclasses.fields(cls) for fl in f.metadata["flags"]]
    assert len(flags) == len(set(flags))                            # no spelling names two options
    for f in dataclasses.fields(cls):
        assert f.metadata["help"] and f.metadata["flags"][0].startswith("--")
        assert field_kinds(cls)[f.name][1] in (int, float, str, bool)
    assert dataclasses.fields(cls)[0].default is REQUIRED            # --model


def test_defaults_and_conversion_from_text():
    r = SearchRequest.from_mapping({"model": "llama-3.1-8b", "gpus": "8", "rate": 2, "show_all": None})
    assert r.gpus == 8 and isinstance(r.gpus, int) and r.rate == 2.0 and isinstance(r.rate, float)
    assert (r.num_requests, r.kv_dtype, r.ttft_slo, r.top, r.show_all) == (1000, "bf16", "1s", 3, False)
    s = SimulateRequest.from_mapping({"model": "m", "max_model_len": 8192.0})
    assert s.max_model_len == 8192 and s.num_requests is None and not s.disaggregated
    assert SimulateRequest.from_mapping({"model": "m", "decode_plan": "tp=1"}).disaggregated
    with pytest.raises(dataclasses.FrozenInstanceError):
        r.gpus = 4


@pytest.mark.parametrize("mapping,needles", [
    ({}, ["--model", "required"]),
    ({"model": "m", "gpus": 0}, ["--gpus", "at least 1"]),
    ({"model": "m", "gpus": "eight"}, ["--gpus", "whole number"]),
    ({"model": "m", "gpus": 1.5}, ["--gpus", "whole number"]),
    ({"model": "m", "gpus": True}, ["--gpus", "whole number"]),
    ({"model": "m", "rate": "fast"}, ["--rate", "number"]),
    ({"model": "m", "rate": float("nan")}, ["--rate", "finite"]),
    ({"model": "m", "top": 1000}, ["--top", "limit of 100"]),
    ({"model": "m", "homogeneous": "yes"}, ["--homogeneous", "true or false"]),
    ({"model": "m", "modle": "x"}, ["--modle", "did you mean 'model'"]),
    ({"model": "m", "headroom": 11}, ["--headroom", "limit"]),
])
def test_bad_values_name_the_option_and_the_fix(mapping, needles):
    with pytest.raises(InputError) as e:
        SearchRequest.from_mapping(mapping)
    text = str(e.value)
    assert "\n" not in text and text.endswith(")")                  # one line, ending with the fix
    for n in needles:
        assert n in text


def test_cli_options_are_the_request_fields():
    import typer.main

    from apex_plan.cli import app
    group = typer.main.get_command(app)
    for name, cls in (("search", SearchRequest), ("simulate", SimulateRequest)):
        params = {p.name: p for p in group.commands[name].params}
        for f in dataclasses.fields(cls):
            assert tuple(params[f.name].opts + params[f.name].secondary_opts) == f.metadata["flags"] or \
                set(params[f.name].opts) <= set(f.metadata["flags"])
        assert set(params) - {f.name for f in dataclasses.fields(cls)} == {"fmt", "output", "report", "plot"}


def test_sweep_scenario_builds_the_same_request_as_its_arguments():
    from apex_plan.sweep.scenarios import expand
    scs, _ = expand({"base": {"gpus": 8, "gpu": "h100-sxm-80gb", "workload": "chat"},
                     "scenarios": [{"model": "llama-3.1-8b", "rate": 2, "weight_dtype": ["bf16", "fp8"],
                                    "all": True, "ttft-slo": "300ms"}]}, "s.yaml")
    r = SearchRequest.from_mapping(scs[0].request)
    assert (r.gpus, r.rate, r.weight_dtype, r.show_all, r.ttft_slo) == (8, 2.0, "bf16,fp8", True, "300ms")
    a = list(scs[0].args)
    assert a[a.index("--rate") + 1] == "2" and "--all" in a


def _imports(path: Path) -> set[str]:
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            out.add(node.module)
            out.update(f"{node.module}.{a.name}" for a in node.names)
        elif isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
    return out


def test_no_module_imports_the_cli():
    """The CLI is the top of the import graph: only the entry point (__main__) imports it."""
    for path in (ROOT / "apex_plan").rglob("*.py"):
        if path.name in ("cli.py", "__main__.py"):
            continue
        assert "apex_plan.cli" not in _imports(path), path
