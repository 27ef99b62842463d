"""`--report FILE.html` and `--plot FILE.svg|png`: the page is self-contained, holds the charts and
tables, its numbers agree with the search, and it renders in headless Chromium when present."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET
from html.parser import HTMLParser

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from apex_plan import inputs as I
from apex_plan.model.load import load_model
from apex_plan.plan.spec import EngineConfig
from apex_plan.report import figures as F
from apex_plan.report.chart import Chart, Series, nice_ticks, svg, svg_row
from apex_plan.report.html import search_html
from apex_plan.report.report_data import cdf, from_search
from apex_plan.search.curves import load_curves
from apex_plan.search.pipeline import SearchInputs, run_search
from apex_plan.workload.slo import parse_slo

from test_cli import assert_one_line_error, run_main

SEARCH = ["search", "--model", "llama-3.1-70b", "--gpu", "h100-sxm-80gb", "--gpus", "8", "--workload", "chat",
          "--rate", "2", "--num-requests", "300", "--ttft-slo", "500ms", "--tpot-slo", "50ms", "--all"]


@pytest.fixture(scope="module")
def searched():
    m = load_model("llama-3.1-70b")
    cl = I.cluster_from_options("h100-sxm-80gb", 8, 8, None)
    eng = I.engine_from_options(EngineConfig(name="vllm", gpu_memory_utilization=0.9, max_num_seqs=256))
    wl = I.workload_from_options(I.WorkloadOptions(workload="chat", rate=2.0, num_requests=300))
    inp = SearchInputs(m, cl, wl.trace, 2.0, parse_slo("500ms", "50ms", 90.0), engines=(eng,))
    res = run_search(inp)
    assert res.deployments, "the fixture needs a search that finds deployments"
    return res


class _Refs(HTMLParser):
    """Collects every attribute or CSS construct that could load something from outside the page."""

    LOADERS = {"src", "href", "srcset", "data", "poster", "action", "xlink:href", "background", "manifest"}

    def __init__(self):
        super().__init__()
        self.refs, self.tags, self.texts = [], [], []

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        for k, v in attrs:
            if k.lower() in self.LOADERS:
                self.refs.append(f"<{tag} {k}={v}>")
        if tag in ("link", "script", "iframe", "img", "object", "embed", "base", "image", "use", "audio", "video"):
            self.refs.append(f"<{tag}>")


def external_refs(page: str) -> list[str]:
    p = _Refs()
    p.feed(page)
    low = page.lower()
    css = [f"css {k}" for k in ("@import", "url(") if k in low]
    return p.refs + css


def test_search_report_is_self_contained_and_complete(searched):
    d = from_search(searched, {"model": "llama-3.1-70b", "gpu": "h100-sxm-80gb", "gpus": 8,
                               "engine": {"name": "vllm-v1", "version": "0.6.0", "calibration": "fitted, 9 runs"}},
                    curves=load_curves(searched))
    page = search_html(d)
    assert external_refs(page) == []
    p = _Refs()
    p.feed(page)
    # two Pareto charts, two CDFs, phase/step/memory bars
    assert p.tags.count("svg") >= 7
    assert p.tags.count("table") >= 3
    for plan in searched.plans:
        assert plan.key in page                       # every plan in the table, rejected ones too
    for plan, reason in searched.rejected:
        assert reason in page
    assert "TPOT SLO p90 50 ms" in page and "TTFT SLO p90 500 ms" in page
    assert "vllm-v1" in page and "fitted, 9 runs" in page     # engine provenance shown as given
    assert "vllm serve meta-llama/Llama-3.1-70B-Instruct --tensor-parallel-size" in page
    assert page.index("Recommendation") < page.index("The question")   # the answer before the inputs
    import dataclasses
    for k in dataclasses.asdict(searched.inputs.cluster.gpu.calibration):
        assert k in page                                        # the calibration constants behind the numbers


def test_report_draws_the_runs_the_search_verified(searched, monkeypatch):
    """The CDFs are the runs the search verified each deployment with, and the report simulates nothing."""
    import apex_plan.search.verify as V
    import apex_plan.simulate.run as R

    def refuse(*a, **k):
        raise AssertionError("the report simulated")
    monkeypatch.setattr(R, "simulate", refuse)
    monkeypatch.setattr(V, "simulate", refuse)
    monkeypatch.setattr(V, "verify_deployment", refuse)
    d = from_search(searched, {})
    search_html(d)
    assert d.deployments
    for dv, orig in zip(d.deployments, searched.deployments):
        p90_ttft = np.percentile(dv.ttft_s, 90) * 1e3
        p90_tpot = np.percentile(dv.tpot_s, 90) * 1e3
        assert p90_ttft == pytest.approx(orig.metrics.ttft_ms.p90, rel=1e-9)
        assert p90_tpot == pytest.approx(orig.metrics.tpot_ms.p90, rel=1e-9)
        assert dv.ttft_s.size == orig.metrics.completed         # the steady window's requests, every one
        assert sum(g.sim.plan.dp for g in dv.groups) == sum(n for _, n in orig.deployment.replicas)


def test_load_curves_trade_throughput_for_latency(searched):
    """More load on one replica: more tokens/s per GPU, and TPOT no lower (along each plan's curve)."""
    d = from_search(searched, {}, curves=load_curves(searched))
    curves = [p.curve for p in d.plans if p.curve]
    assert curves
    for c in curves:
        thr = [pt[1] for pt in c]
        tpot = [pt[3] for pt in c]
        # each point is a finite 300-request run that ends in a drain: 3% slack on both
        assert all(b >= a * 0.97 for a, b in zip(thr, thr[1:]))
        assert all(b >= a * 0.97 for a, b in zip(tpot, tpot[1:]))
        assert c[-1][3] <= searched.inputs.slo.tpot_s * 1e3 + 1e-6   # the goodput point meets the SLO


@given(st.lists(st.tuples(st.floats(0.1, 1e3), st.floats(0.1, 1e4)), min_size=1, max_size=40))
def test_pareto_front_is_exactly_the_undominated_points(pts):
    xs, ys = [p[0] for p in pts], [p[1] for p in pts]
    fx, fy = F.pareto_front(xs, ys)
    front = set(zip(fx, fy))
    for x, y in zip(xs, ys):
        dominated = any(x2 <= x and y2 >= y and (x2 < x or y2 > y) for x2, y2 in zip(xs, ys))
        assert ((x, y) in front) == (not dominated)


@given(st.floats(-1e6, 1e6), st.floats(1e-3, 1e6))
def test_nice_ticks_cover_the_range(lo, span):
    t = nice_ticks(lo, lo + span)
    steps = np.diff(t)
    assert np.allclose(steps, steps[0], rtol=1e-6) and 2 <= len(t) <= 12
    # covers the range up to a millionth of a step (rounding of the range's ends is tolerated)
    assert t[0] <= lo + 1e-6 * steps[0] and t[-1] >= lo + span - 1e-6 * steps[0]


def test_cdf_is_monotone_and_thinned():
    x, y = cdf(np.random.default_rng(0).exponential(0.1, 5000))
    assert len(x) <= 400 and y[-1] == 1.0
    assert list(x) == sorted(x) and list(y) == sorted(y)


def test_standalone_svg_parses_and_has_hover_text():
    c = Chart("t", "x", "y", (Series("s", (1.0, 2.0), (3.0, 4.0), tips=("first <point>", "second")),))
    root = ET.fromstring(svg_row([c, c]).split("\n", 1)[1])
    ns = "{http://www.w3.org/2000/svg}"
    titles = [t.text for t in root.iter(ns + "title")]
    assert titles.count("first <point>") == 2
    assert 'xmlns' not in svg(c)          # inline in HTML: no namespace declaration to resolve


def test_cli_report_and_plot(tmp_path, capsys, monkeypatch):
    out_html, out_svg = tmp_path / "r.html", tmp_path / "p.svg"
    code, out, err = run_main([*SEARCH, "--format", "json", "--report", out_html, "--plot", out_svg], capsys,
                              monkeypatch)
    assert code == 0, err
    doc = json.loads(out)
    page = out_html.read_text()
    assert external_refs(page) == []
    assert doc["deployments"][0]["replicas"][0]["plan"] in page
    ET.fromstring(out_svg.read_text().split("\n", 1)[1])


def test_cli_simulate_report(tmp_path, capsys, monkeypatch):
    out_html = tmp_path / "s.html"
    code, _, err = run_main(["simulate", "--model", "llama-3.1-8b", "--gpu", "h100-sxm-80gb", "--gpus", "1",
                             "--workload", "chat", "--rate", "2", "--num-requests", "200", "--ttft-slo", "500ms",
                             "--report", out_html, "--plot", tmp_path / "s.svg"], capsys, monkeypatch)
    assert code == 0, err
    page = out_html.read_text()
    assert external_refs(page) == [] and page.count("<svg") >= 4 and "TTFT per request (CDF)" in page


@pytest.mark.parametrize("opt,name", [("--report", "r.pdf"), ("--plot", "p.jpg")])
def test_cli_refuses_wrong_file_types(tmp_path, capsys, monkeypatch, opt, name):
    code, out, err = run_main([*SEARCH, opt, tmp_path / name], capsys, monkeypatch)
    assert_one_line_error(code, out, err, opt)


def test_png_without_matplotlib_names_the_extra(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)       # import fails as if not installed
    code, out, err = run_main([*SEARCH, "--plot", tmp_path / "p.png"], capsys, monkeypatch)
    assert_one_line_error(code, out, err, "apex-plan[plot]")


def test_png_with_matplotlib(tmp_path, capsys, monkeypatch):
    pytest.importorskip("matplotlib")
    code, _, err = run_main([*SEARCH, "--plot", tmp_path / "p.png"], capsys, monkeypatch)
    assert code == 0, err
    assert (tmp_path / "p.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


@pytest.mark.skipif(CHROMIUM is None, reason="no headless Chromium on this machine")
def test_report_renders_in_headless_chromium(searched, tmp_path):
    page = tmp_path / "r.html"
    page.write_text(search_html(from_search(searched, {"model": "llama-3.1-70b"})))
    flags = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
             # any attempt to reach the network fails: the page must not need it
             "--host-resolver-rules=MAP * ~NOTFOUND", "--window-size=1240,2400"]
    dom = subprocess.run([*flags, "--dump-dom", page.as_uri()], capture_output=True, text=True, timeout=120).stdout
    assert dom.count("<svg") >= 7 and dom.count("<table") >= 3 and "Throughput per GPU vs TPOT" in dom
    shot = tmp_path / "r.png"
    subprocess.run([*flags, f"--screenshot={shot}", page.as_uri()], capture_output=True, timeout=120)
    data = shot.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 50_000   # a drawn page, not a blank one
