"""`apex-plan sweep`: grid/list expansion with stable ids, bad sweep files, one JSON line per scenario
in the `search --format json` schema, failures that do not stop the others, resuming."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from apex_plan.errors import InputError
from apex_plan.report.sweep_view import summary_rows, usd_per_mtok
from apex_plan.sweep import run as R
from apex_plan.sweep.scenarios import expand, load_scenarios

from test_cli import assert_one_line_error, run_main

ROOT = Path(__file__).resolve().parents[1]
SCHEMA = json.loads((ROOT / "apex_plan" / "report" / "search_schema.json").read_text())

GRID = {
    "base": {"gpus": 8, "gpu": "h100-sxm-80gb", "workload": "chat", "num_requests": 200},
    "grid": {"model": ["llama-3.1-8b", "llama-3.1-70b"], "rate": [1, 2, 4],
             "slo": [{"name": "tight", "ttft_slo": "500ms", "tpot_slo": "50ms"},
                     {"name": "loose", "ttft-slo": "2s", "tpot-slo": "100ms"}]},
    "scenarios": [{"name": "fp8", "model": "llama-3.1-70b", "weight_dtype": ["bf16", "fp8"], "all": True}],
    "prices": {"h100-sxm-80gb": 3.0},
}


def test_grid_and_list_expand_with_names_and_args():
    scs, prices = expand(GRID, "sweep.yaml")
    assert len(scs) == 2 * 3 * 2 + 1 and prices == {"h100-sxm-80gb": 3.0}
    names = [s.name for s in scs]
    assert "llama-3.1-70b/rate=4/loose" in names and names[-1] == "fp8"
    loose = scs[names.index("llama-3.1-70b/rate=4/loose")]
    a = list(loose.args)
    assert a[a.index("--ttft-slo") + 1] == "2s" and a[a.index("--rate") + 1] == "4" and a[a.index("--gpus") + 1] == "8"
    fp8 = list(scs[-1].args)
    assert fp8[fp8.index("--weight-dtype") + 1] == "bf16,fp8" and "--all" in fp8
    assert len({s.id for s in scs}) == len(scs)


def test_ids_do_not_depend_on_order_or_spelling():
    a, _ = expand(GRID, "a.yaml")
    g2 = dict(GRID, grid=dict(reversed(list(GRID["grid"].items()))),
              base={"num-requests": 200, "workload": "chat", "gpu": "h100-sxm-80gb", "gpus": 8})
    b, _ = expand(g2, "b.yaml")
    assert {s.id: s.options for s in a} == {s.id: s.options for s in b}
    dup = dict(GRID, scenarios=GRID["scenarios"] * 2)
    assert len(expand(dup, "c.yaml")[0]) == len(a)          # the same scenario twice runs once


@pytest.mark.parametrize("doc,needles", [
    ({"grid": {"modle": ["llama-3.1-8b"]}}, ["modle", "did you mean 'model'"]),
    ({"base": {"model": "llama-3.1-8b", "output": "x.json"}, "grid": {"rate": [1]}}, ["output", "set by the sweep"]),
    ({"grids": {}}, ["grids", "grid"]),
    ({"base": {"gpus": 8}, "grid": {"rate": [1]}}, ["model", "missing"]),
    ({"grid": {"model": []}}, ["grid.model", "no values"]),
    ({"scenarios": [{"model": "llama-3.1-8b"}], "prices": {"h100": "cheap"}}, ["prices"]),
    ({"scenarios": [{"model": "llama-3.1-8b", "all": "yes"}]}, ["all", "true or false"]),
])
def test_bad_sweep_files_name_the_field(doc, needles):
    with pytest.raises(InputError) as e:
        expand(doc, "s.yaml")
    for n in needles:
        assert n in str(e.value)


def test_cli_bad_sweep_file_is_one_line(tmp_path, capsys, monkeypatch):
    f = tmp_path / "s.yaml"
    f.write_text("grid:\n  model: [llama-3.1-8b\n")
    code, out, err = run_main(["sweep", f], capsys, monkeypatch)
    assert_one_line_error(code, out, err, str(f), "YAML")
    code, out, err = run_main(["sweep", tmp_path / "missing.yaml"], capsys, monkeypatch)
    assert_one_line_error(code, out, err, "missing.yaml")


def _validate(doc):
    jsonschema = pytest.importorskip("jsonschema")
    jsonschema.validate(doc, SCHEMA)


def test_sweep_runs_resumes_and_isolates_failures(tmp_path, capsys, monkeypatch):
    f = tmp_path / "s.yaml"
    f.write_text(yaml.safe_dump({
        "base": {"gpus": 2, "gpu": "h100-sxm-80gb", "workload": "chat", "num_requests": 150, "rate": 1},
        "grid": {"model": ["llama-3.1-8b", "no-such-model"]},
        "scenarios": [{"name": "tight", "model": "llama-3.1-8b", "tpot_slo": "50ms", "ttft_slo": "400ms"}],
        "prices": {"h100-sxm-80gb": 3.0}}))
    out = tmp_path / "r.jsonl"
    html = tmp_path / "r.html"
    code, stdout, err = run_main(["sweep", f, "--output", out, "--jobs", "1", "--report", html, "--format", "json"],
                                 capsys, monkeypatch)
    assert code == 1, err                                   # one scenario failed: status 1, others done
    failed = [x for x in err.splitlines() if ": failed" in x]
    assert len(failed) == 1 and "no-such-model" in failed[0] and "--model" in failed[0], err   # its reason, one line
    summary = json.loads(stdout)
    assert summary["scenarios"] == 3 and summary["ok"] == 2 and summary["failed"] == 1
    lines = [json.loads(x) for x in out.read_text().splitlines()]
    assert len(lines) == 3
    bad = [x for x in lines if "error" in x]
    assert len(bad) == 1 and "no-such-model" in bad[0]["error"] and bad[0]["error_kind"] == "input"
    good = [x for x in lines if "error" not in x]
    for doc in good:
        _validate(doc)
        assert doc["deployments"]
    # the same result as running that search on its own
    tight = next(x for x in good if x["inputs"]["scenario"]["name"] == "tight")
    code, alone, _ = run_main(["search", *load_scenarios(f)[0][2].args, "--format", "json"], capsys, monkeypatch)
    alone = json.loads(alone)
    tight["inputs"].pop("scenario")
    assert tight == alone
    page = html.read_text()
    assert "GPUs needed" in page and "no-such-model" in page and "<svg" in page

    # restart: nothing is run again
    calls = []
    monkeypatch.setattr(R, "_local", lambda todo, jobs, done: calls.append(len(todo)))
    code, _, err = run_main(["sweep", f, "--output", out], capsys, monkeypatch)
    assert calls == [] and "3 scenario(s) already done" in err and len(out.read_text().splitlines()) == 3
    # a line cut short by a kill is dropped and that scenario runs again; failures rerun on request
    text = out.read_text().splitlines(keepends=True)
    out.write_text("".join(text[:2]) + text[2][: len(text[2]) // 2])
    code, _, _ = run_main(["sweep", f, "--output", out, "--retry-failed"], capsys, monkeypatch)
    kept = {json.loads(x)["inputs"]["scenario"]["id"] for x in text[:2]}
    bad_id = bad[0]["inputs"]["scenario"]["id"]
    assert calls == [3 - len(kept) + (bad_id in kept)]
    assert out.read_text().endswith("\n") and len(out.read_text().splitlines()) == 2


def test_usd_per_mtok():
    # $3/h for 1000 tok/s: 3.6 Mtok per hour -> 0.8333 $/Mtok
    assert usd_per_mtok(3.0, 1000.0) == pytest.approx(3.0 / 3.6)
    # a price of 0 (an owned fleet) is a price; no price is None, never 0
    assert usd_per_mtok(0.0, 1000.0) == 0.0 and usd_per_mtok(None, 1000.0) is None and usd_per_mtok(3.0, 0.0) is None


def test_summary_uses_file_prices_and_marks_pending():
    scs, prices = expand(GRID, "s.yaml")
    doc = {"inputs": {"gpu": "h100-sxm-80gb", "demand_rps": 2.0}, "deployments": [
        {"gpus": 4, "replicas": [{"plan": "tp4-pp1 bf16/bf16", "count": 1}], "goodput_rps": 9.0, "cost_per_hour": None,
         "metrics": {"ttft_ms": {"p90": 80.0}, "tpot_ms": {"p90": 30.0}, "output_tokens_per_s": 500.0}}]}
    rows = summary_rows(scs, {scs[0].id: doc}, prices)
    assert rows[0]["cost_per_hour"] == 12.0 and rows[0]["usd_per_mtok"] == pytest.approx(12.0 / 1.8)
    assert rows[1]["status"] == "pending"


def test_ray_executor_matches_local(tmp_path):
    pytest.importorskip("ray")
    scs, _ = expand({"base": {"gpus": 2, "gpu": "h100-sxm-80gb", "workload": "chat", "num_requests": 150},
                     "grid": {"model": ["llama-3.1-8b"], "rate": [1, 2]}}, "s.yaml")
    a, _ = R.run_sweep(scs, tmp_path / "local.jsonl", "local", 2)
    b, _ = R.run_sweep(scs, tmp_path / "ray.jsonl", "ray", 2)
    assert a == b and len(a) == 2


def test_ray_missing_is_one_line(tmp_path, monkeypatch):
    import sys
    monkeypatch.setitem(sys.modules, "ray", None)
    scs, _ = expand({"scenarios": [{"model": "llama-3.1-8b"}]}, "s.yaml")
    with pytest.raises(InputError, match=r"apex-plan\[ray\]"):
        R.run_sweep(scs, tmp_path / "x.jsonl", "ray", 1)


def _children(pid: int) -> set[int]:
    """PIDs whose parent is `pid` (Linux /proc)."""
    out = set()
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                fields = (d / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid:
                out.add(int(d.name))
    return out


def _alive(pids: set[int]) -> set[int]:
    import os
    alive = set()
    for p in pids:
        try:
            os.kill(p, 0)
            alive.add(p)
        except OSError:
            pass
    return alive


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs Linux /proc")
@pytest.mark.parametrize("sig", ["TERM", "KILL"])
def test_interrupted_sweep_says_so_and_leaves_no_workers(tmp_path, sig):
    """SIGTERM: one line saying the sweep was interrupted and how to resume, exit 130; SIGKILL of the
    sweep process: its workers notice the parent is gone and exit (no search keeps running)."""
    import os
    import signal
    import subprocess
    import sys
    import time
    doc = {"base": {"gpu": "h100-sxm-80gb", "gpus": 8, "workload": "chat", "model": "llama-3.1-70b"},
           "grid": {"rate": list(range(1, 41))}}   # long enough to be running when signalled
    f = tmp_path / "s.yaml"
    f.write_text(yaml.safe_dump(doc))
    proc = subprocess.Popen([sys.executable, "-m", "apex_plan", "sweep", str(f), "--jobs", "2", "--output",
                             str(tmp_path / "out.jsonl")], cwd=Path(__file__).resolve().parents[1],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    workers: set[int] = set()
    deadline = time.time() + 60
    while time.time() < deadline and len(workers) < 2:   # wait for the pool's workers to start
        time.sleep(0.5)
        workers |= {c for c in _children(proc.pid)}
    time.sleep(1)
    workers |= _children(proc.pid)
    assert proc.poll() is None, "the sweep ended before it was signalled"
    os.kill(proc.pid, getattr(signal, f"SIG{sig}"))
    out, err = proc.communicate(timeout=60)
    time.sleep(3)                                        # workers poll their parent every 0.5 s
    assert not _alive(workers), (sig, _alive(workers))
    if sig == "TERM":
        assert proc.returncode == 130, (proc.returncode, err)
        assert "sweep interrupted" in err and "run the same command again" in err, err
        assert "Traceback" not in err
