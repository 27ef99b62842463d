"""calibrate / validate: benchmark result files round-trip through the CLI; fitted constants stay in
bounds; the overlay carries provenance and error quantiles and loads back; intervals follow the
stored error; bad input is one line and exit status 2."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

from apex_plan.calibrate.fit import BOUNDS
from apex_plan.calibrate.formats import RunDefaults, read_measured, read_summaries
from apex_plan.calibrate.interval import covered, interval
from apex_plan.cli import main
from apex_plan.engine.load import load_engine_file, resolve_engine_profile

from test_cli import run_main

RUNS = Path(__file__).resolve().parent / "fixtures" / "runs"
VLLM = sorted(str(p) for p in RUNS.glob("vllm-bench-*.json"))
AIPERF = str(RUNS / "profile_export_aiperf.json")
SGLANG = str(RUNS / "sglang-bench-llama8b-h100.jsonl")
GPU = ["--gpu", "h100-sxm-80gb"]


run = run_main      # the console entry point in-process: (exit status, stdout, stderr)


@pytest.fixture(scope="module")
def vllm_overlay(tmp_path_factory):
    """Calibrate vLLM 0.11 on the six `vllm bench serve` results (once for the module)."""
    path = tmp_path_factory.mktemp("cal") / "vllm-h100.yaml"
    mp = pytest.MonkeyPatch()                # capsys is function-scoped: capture by hand
    import contextlib
    import io
    out, err = io.StringIO(), io.StringIO()
    mp.setattr(sys, "argv", ["apex-plan", "calibrate", *VLLM, "--engine", "vllm@0.11.0", *GPU, "--output", str(path),
                             "-f", "json"])
    code = 0
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            main()
        except SystemExit as e:
            code = e.code
    mp.undo()
    assert code == 0, err.getvalue()
    return path, json.loads(out.getvalue())


def test_readers_take_the_measured_figures():
    (v,) = read_summaries(RUNS / "vllm-bench-llama8b-h100-c16.json")
    assert (v.fmt, v.concurrency, v.rate_per_s, v.requests) == ("vllm-bench", 16, None, 160)
    assert (v.ttft_ms, v.tpot_ms) == (77.6, 8.61) and set(v.prompt_tokens) == {1024}
    (d,) = read_summaries(RUNS / "vllm-bench-llama8b-h100-c1.json")       # per-request lengths saved
    raw = json.loads((RUNS / "vllm-bench-llama8b-h100-c1.json").read_text())
    assert list(d.prompt_tokens) == raw["input_lens"] and list(d.output_tokens) == raw["output_lens"]
    (a,) = read_summaries(AIPERF)
    assert (a.fmt, a.concurrency, a.requests, a.ttft_ms, a.tpot_ms) == ("aiperf", 16, 160, 79.2, 8.58)
    assert a.model == "meta-llama/Llama-3.1-8B-Instruct"
    s = read_summaries(SGLANG)
    assert [x.fmt for x in s] == ["sglang-bench"] * 3 and [x.concurrency for x in s] == [2, 8, 32]


def test_genai_perf_export(tmp_path):
    doc = {"time_to_first_token": {"unit": "ms", "avg": 41.0}, "inter_token_latency": {"unit": "ms", "avg": 7.1},
           "input_sequence_length": {"unit": "tokens", "avg": 550}, "output_sequence_length": {"unit": "tokens", "avg": 200},
           "request_count": {"unit": "requests", "avg": 40},
           "input_config": {"model": ["meta-llama/Llama-3.1-8B-Instruct"], "concurrency": 4}}
    p = tmp_path / "profile_export_genai_perf.json"
    p.write_text(json.dumps(doc))
    (s,) = read_summaries(p)
    assert (s.fmt, s.concurrency, int(s.prompt_tokens[0]), int(s.output_tokens[0])) == ("genai-perf", 4, 550, 200)
    (case,), _ = read_measured([p], RunDefaults(gpu="h100-sxm-80gb"))
    assert case.workload.mode == "closed" and case.workload.concurrency == 4


def test_calibrate_vllm_bench_round_trip(vllm_overlay, capsys, monkeypatch):
    path, doc = vllm_overlay
    # fitted constants stay inside their physical bounds
    for c in doc["constants"]:
        lo, hi, _ = BOUNDS[c["name"]]
        assert lo <= c["value"] <= hi and c["prior"] is not None
        assert c["identified"] == (abs(c["value"] - c["prior"]) > 0.01 * (abs(c["prior"]) or hi - lo))
    # six runs: cross-validated; the fit improves on the defaults
    assert doc["cross_validated"]["runs"] == 6
    assert doc["after"]["ttft_mape"] < doc["before"]["ttft_mape"]
    assert doc["after"]["tpot_mape"] < doc["before"]["tpot_mape"]
    # the overlay loads back, with the fitted host values, provenance and error quantiles
    prof = load_engine_file(path)
    host = {c["name"].split(".", 1)[1]: c["value"] for c in doc["constants"]}
    for k, v in host.items():
        assert getattr(prof.host, k) == pytest.approx(v)
    assert "vllm-bench-llama8b-h100-c16.json" in prof.calibration and "cross-validated" in prof.calibration
    assert "6 runs" in prof.calibration
    ce = prof.calibration_error
    assert ce["level"] == 0.8 and ce["ttft_low"] <= ce["ttft_high"] and ce["tpot_low"] <= ce["tpot_high"]
    # validate with the overlay: better than the built-in profile on the same runs, aiperf run included
    code, out, err = run(["validate", *VLLM, AIPERF, "--engine", path, *GPU, "-f", "json"], capsys, monkeypatch)
    assert code == 0, err
    after = json.loads(out)
    code, out, err = run(["validate", *VLLM, AIPERF, "--engine", "vllm@0.11.0", *GPU, "-f", "json"], capsys, monkeypatch)
    before = json.loads(out)
    assert len(after["runs"]) == 7 and after["overall"]["ttft_mape"] < before["overall"]["ttft_mape"]
    assert after["overall"]["ttft_in_interval"] is not None
    # the built-in profile's interval is its stored H100 band's
    builtin = resolve_engine_profile("vllm@0.11.0")
    assert before["profiles"][builtin.label]["calibration_error_by_gpu"]["h100-sxm-80gb"] == \
        builtin.calibration_error_by_gpu["h100-sxm-80gb"]
    # per-run error is predicted / measured - 1
    r = after["runs"][0]
    assert r["ttft_error"] == pytest.approx(r["predicted_ttft_ms"] / r["measured_ttft_ms"] - 1, abs=1e-4)
    # simulate with the overlay states an interval around its prediction; the built-in one says uncalibrated
    sim = ["simulate", "-m", "llama-3.1-8b", *GPU, "--gpus", "1", "--concurrency", "8", "--prompt-tokens", "1024",
           "--output-tokens", "128", "-f", "json", "--ttft-slo", "200ms", "--tpot-slo", "20ms"]
    code, out, err = run([*sim, "--engine", path], capsys, monkeypatch)
    assert code == 0, err
    sim_doc = json.loads(out)
    m = sim_doc["metrics"]
    assert sim_doc["inputs"]["engine"]["calibration_error"]["ttft_high"] == pytest.approx(ce["ttft_high"], rel=1e-4)
    assert "vllm-bench-llama8b-h100-c16.json" in sim_doc["inputs"]["engine"]["calibration"]
    iv = m["interval"]["ttft_ms"]["mean"]
    assert iv["low"] <= m["ttft_ms"]["mean"] / (1 + ce["ttft_high"]) * 1.0001 and iv["level"] == 0.8
    g = m["interval"]["goodput_requests_per_s"]
    assert g["low"] <= g["high"]
    code, out, err = run(sim, capsys, monkeypatch)
    m = json.loads(out)["metrics"]
    band = resolve_engine_profile("vllm").calibration_error_by_gpu["h100-sxm-80gb"]   # the built-in's H100 band
    assert m["interval"]["ttft_ms"]["mean"]["low"] == pytest.approx(m["ttft_ms"]["mean"] / (1 + band["ttft_high"]))
    code, out, err = run([*sim, "--engine", "vllm@0.6.0"], capsys, monkeypatch)     # a profile with no band
    assert json.loads(out)["metrics"]["interval"]["ttft_ms"]["mean"]["status"] == "uncalibrated"
    # search --slo-margin: the SLO searched is the asked one times (1 + the 10th-percentile error), never looser
    code, out, err = run(["search", "-m", "llama-3.1-8b", *GPU, "--gpus", "1", "--workload", "chat", "--rate", "1",
                          "--num-requests", "20", "--max-model-len", "8192", "--ttft-slo", "500ms", "--tpot-slo", "50ms",
                          "--engine", path, "--slo-margin", "-f", "json"], capsys, monkeypatch)
    assert code in (0, 1), err
    inp = json.loads(out)["inputs"]
    assert inp["slo"]["ttft_ms"] == 500
    f = min(1.0, 1 + ce["ttft_low"])
    assert inp["slo_margin"]["searched_slo"]["ttft_ms"] == pytest.approx(500 * f, rel=1e-4)
    assert inp["slo_margin"]["searched_slo"]["tpot_ms"] <= 50


def test_calibrate_aiperf_round_trip(tmp_path, capsys, monkeypatch):
    ov = tmp_path / "aiperf.yaml"
    code, out, err = run(["calibrate", AIPERF, "--engine", "vllm@0.11.0", *GPU, "--fit", "host.frontend_ms,host.step_ms",
                          "--output", ov, "-f", "json"], capsys, monkeypatch)
    assert code == 0, err
    doc = json.loads(out)
    assert doc["cross_validated"] is None and "in-sample" in doc["calibration"]
    for c in doc["constants"]:
        lo, hi, _ = BOUNDS[c["name"]]
        assert lo <= c["value"] <= hi
    code, out, err = run(["validate", AIPERF, "--engine", ov, *GPU, "-f", "json"], capsys, monkeypatch)
    assert code == 0, err
    after = json.loads(out)["runs"][0]
    assert abs(after["ttft_error"]) < abs(doc["before"]["ttft_bias"])
    # table and csv render
    code, out, err = run(["validate", AIPERF, "--engine", ov, *GPU, "-f", "csv"], capsys, monkeypatch)
    assert code == 0 and out.splitlines()[0].startswith("id,group")


def test_csv_rows_filtered_to_engine(tmp_path):
    p = tmp_path / "runs.csv"
    head = ("id,backend,backend_version,model_path,system,precision,mode,isl,osl,batch_size,tp_size,pp_size,"
            "attention_dp_size,moe_tp_size,moe_ep_size,silicon_ttft_ms,silicon_tpot_ms,concurrency\n")
    p.write_text(head + "a,vllm,0.11.0,meta-llama/Llama-3.1-8B-Instruct,h100_sxm,,agg,1024,128,8,1,1,,1,1,60,7.5,8\n"
                        "b,sglang,0.5.1,meta-llama/Llama-3.1-8B-Instruct,h100_sxm,,agg,1024,128,8,1,1,,1,1,55,7.1,8\n")
    over = tmp_path / "v.yaml"
    prof = resolve_engine_profile("vllm@0.11.0")
    import dataclasses

    import yaml

    from apex_plan.engine.load import profile_to_dict
    over.write_text(yaml.safe_dump(profile_to_dict(dataclasses.replace(prof, calibration_error={
        "level": 0.8, "ttft_low": -0.1, "ttft_high": 0.1, "tpot_low": -0.1, "tpot_high": 0.1}))))
    cases, skipped = read_measured([p], RunDefaults(engine=str(over)))
    assert [c.id for c in cases] == ["a"] and skipped[0][0] == "b"
    assert cases[0].engine.profile.calibration_error["ttft_high"] == 0.1


def test_interval_math():
    import dataclasses
    prof = dataclasses.replace(resolve_engine_profile("vllm"), calibration_error={})
    assert interval(prof, "ttft", 100.0)["status"] == "uncalibrated"
    p = dataclasses.replace(prof, calibration_error={"level": 0.8, "ttft_low": -0.2, "ttft_high": 0.25,
                                                     "tpot_low": 0.0, "tpot_high": 0.0})
    iv = interval(p, "ttft", 100.0)
    assert iv["low"] == pytest.approx(80.0) and iv["high"] == pytest.approx(125.0)
    cov = covered(p, np.array([[100.0, 10.0], [100.0, 10.0]]), np.array([[120.0, 10.0], [130.0, 11.0]]))
    assert cov.tolist() == [[1.0, 1.0], [0.0, 0.0]]


@pytest.mark.parametrize("args,needles", [
    (["calibrate", "nope.json", *GPU], ("nope.json", "not found")),
    (["calibrate", AIPERF, *GPU, "--fit", "host.stepms"], ("--fit", "host.step_ms")),
    (["calibrate", AIPERF], ("--gpu",)),
    (["validate", SGLANG, *GPU], ("--model",)),
    (["calibrate", AIPERF, *GPU, "--output", "x.txt"], ("--output", ".yaml")),
    (["calibrate", *VLLM[:2], AIPERF, *GPU, "--engine", "vllm@0.11.0", "--fit", "gpu.nope"], ("--fit",)),
    (["validate", "{bad}", *GPU], ("mean_ttft_ms",)),
    (["validate", "{nottf}", *GPU], ("time_to_first_token.avg", "missing")),
    (["validate", "{notjson}", *GPU], ("not JSON",)),
    (["validate", VLLM[0], "--gpu", "h100-nope"], ("--gpu",)),
    (["validate", VLLM[0], *GPU, "--engine", "vllm@9.0"], ("--engine",)),
])
def test_bad_input_one_line(args, needles, tmp_path, capsys, monkeypatch):
    files = {"{bad}": ("bad.json", '{"foo": 1}'), "{notjson}": ("x.jsonl", "{\n]"),
             "{nottf}": ("p.json", json.dumps({"time_to_first_token": {"unit": "ms"}, "request_count": {"avg": 3},
                                                "output_sequence_length": {"avg": 3}, "input_sequence_length": {"avg": 3},
                                                "inter_token_latency": {"avg": 3}}))}
    argv = []
    for a in args:
        if a in files:
            name, text = files[a]
            (tmp_path / name).write_text(text)
            a = str(tmp_path / name)
        argv.append(a)
    monkeypatch.chdir(tmp_path)
    code, out, err = run(argv, capsys, monkeypatch)
    assert code == 2, (code, out, err)
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    for n in needles:
        assert n in err, (n, err)


def test_uncalibrated_components_named():
    from apex_plan.calibrate.interval import uncalibrated_components
    from apex_plan.hardware.load import load_gpu
    from apex_plan.plan.spec import Plan
    import dataclasses
    prof = dataclasses.replace(resolve_engine_profile("vllm"), calibration_error={})
    h100_tp = uncalibrated_components(Plan(1, 8, 1, 1, "bf16", "bf16"), load_gpu("h100-sxm-80gb"), 8, prof)
    assert h100_tp == [f"engine profile {prof.label}: no held-out error stored (no interval)"]
    b200_pp = uncalibrated_components(Plan(1, 8, 2, 8, "fp8", "fp8"), load_gpu("b200-sxm-180gb"), 8, prof)
    text = " | ".join(b200_pp)
    for needle in ("pipeline", "expert parallelism across nodes", "b200-sxm-180gb", "fp8 GEMM"):
        assert needle in text, (needle, text)


def test_error_band_widens_for_few_runs():
    from apex_plan.calibrate.interval import error_quantiles
    few = error_quantiles(np.array([[0.0, 0.0], [0.1, 0.0], [0.2, 0.0]]), 3)
    assert few["ttft_low"] < np.quantile([0, 0.1, 0.2], 0.1) and few["ttft_high"] > np.quantile([0, 0.1, 0.2], 0.9)
    assert few["tpot_low"] == few["tpot_high"] == 0.0
    rng = np.random.default_rng(1)
    many = error_quantiles(rng.normal(0.05, 0.1, size=(4000, 2)), 4000)
    assert many["ttft_low"] == pytest.approx(0.05 - 0.128, abs=0.01)
    assert many["ttft_high"] == pytest.approx(0.05 + 0.128, abs=0.01)
    # heavy tails: from 30 runs the empirical 10th-90th percentiles stand (80 % of the values inside)
    tails = rng.standard_t(1.5, size=(400, 2)) * 0.1
    band = error_quantiles(tails, 400)
    inside = ((tails[:, 0] >= band["ttft_low"]) & (tails[:, 0] <= band["ttft_high"])).mean()
    assert 0.79 <= inside <= 0.81


def test_three_runs_leave_one_out(capsys, monkeypatch):
    code, out, err = run(["calibrate", *VLLM[:3], "--engine", "vllm@0.11.0", *GPU, "--fit", "host.frontend_ms",
                          "--rounds", "1", "-f", "json"], capsys, monkeypatch)
    assert code == 0, err
    doc = json.loads(out)
    assert doc["cross_validated"]["runs"] == 3 and "leave-one-out" in doc["calibration"]
    assert doc["after"]["ttft_mape"] < doc["before"]["ttft_mape"]


def _cross_validate_module():
    import importlib.util
    from pathlib import Path
    spec = importlib.util.spec_from_file_location("cross_validate",
                                                  Path(__file__).resolve().parents[1] / "scripts" / "cross_validate.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_cross_validation_bands_are_per_gpu_from_held_out_errors():
    cv = _cross_validate_module()
    from apex_plan.calibrate.interval import FEW_RUNS
    n, m = max(cv.MIN_BAND_RUNS, FEW_RUNS), cv.MIN_BAND_RUNS - 1      # m: too few runs for a band of its own
    # training errors: GPU a spans [-0.1, 0.1] (enough runs for its own band), GPU b has too few runs
    e_a = np.column_stack([np.linspace(-0.1, 0.1, n), np.linspace(-0.05, 0.05, n)])
    e_b = np.array([[2.0, 2.0]] * m)
    e_train = np.vstack([e_a, e_b])
    gpus = ["a"] * n + ["b"] * m
    held = np.array([[0.0, 0.0], [0.5, 0.0], [0.5, 0.0], [np.nan, 0.01]])
    hits = cv.band_hits(e_train, gpus, held, ["a", "a", "b", "a"], ["m1"] * n + ["m2"] * m)
    # a's own 10th-90th percentile band holds 0 and not 0.5; b takes the pooled band, which reaches 2.0
    assert hits[:3, 0].tolist() == [1.0, 0.0, 1.0] and np.isnan(hits[3, 0]) and hits[3, 1] == 1.0
    # the stored bands: per GPU from the model folds' held-out errors, the default from the GPU folds'
    results = [{"profile": "p", "kind": "model", "gpus": ["a"] * n, "errors": e_a.tolist(), "models": ["m1"] * n},
               {"profile": "p", "kind": "model", "gpus": ["b"] * m, "errors": [[0.0, 0.0]] * m, "models": ["m2"] * m},
               {"profile": "p", "kind": "gpu", "gpus": ["b"] * 2, "errors": [[-0.5, -0.2], [0.5, 0.2]],
                "models": ["m1", "m2"]}]
    out = cv.bands(results)["p"]
    assert set(out["calibration_error_by_gpu"]) == {"a"}            # b has too few held-out runs of its own
    a = out["calibration_error_by_gpu"]["a"]
    from apex_plan.calibrate.interval import tail_levels
    assert a["ttft_low"] == pytest.approx(np.quantile(e_a[:, 0], tail_levels(0.8, n)[0]), abs=1e-4) and a["held_out"] == 1.0
    assert out["calibration_error"]["ttft_high"] > 0.3 and out["calibration_error"]["runs"] == 2


def test_held_out_gpu_band_is_the_default_rule_from_uncalibrated_errors():
    """A GPU without training runs takes the default band built as `bands` stores it: from the other GPUs'
    errors with the profile's own front end (the GPU folds'), not from their calibrated errors."""
    cv = _cross_validate_module()
    n = max(cv.MIN_BAND_RUNS, 30)
    e_cal = np.column_stack([np.linspace(-0.05, 0.05, n)] * 2)         # calibrated: tight
    e_unc = e_cal + np.array([0.4, 0.0])                                # the profile's front end: TTFT 40 % over
    held = np.array([[0.4, 0.0], [0.0, 0.0]])
    gpus, models = ["a"] * n, ["m"] * n
    with_default = cv.band_hits(e_cal, gpus, held, ["new", "new"], models, e_unc)
    without = cv.band_hits(e_cal, gpus, held, ["new", "new"], models)
    assert with_default[:, 0].tolist() == [1.0, 0.0] and without[:, 0].tolist() == [0.0, 1.0]
    # a calibrated GPU keeps its own band from the calibrated errors
    assert cv.band_hits(e_cal, gpus, held, ["a", "a"], models, e_unc)[:, 0].tolist() == [0.0, 1.0]


def test_band_weighs_a_model_of_n_runs_as_sqrt_n():
    from apex_plan.calibrate.interval import error_quantiles, tail_levels, weighted_quantile
    rng = np.random.default_rng(5)
    x = rng.normal(size=40)
    for q in (0.0, 0.1, 0.5, 0.9, 1.0):                      # equal weights: numpy's default quantile, exactly
        assert weighted_quantile(x, np.ones(40), q) == pytest.approx(np.quantile(x, q))
    # 100 tightly predicted runs of one model, 4 runs of another 50 % over: the second model's bias is a
    # new model's risk; weighted by run it falls outside the band, weighted sqrt(n) it sets the top
    big = np.column_stack([np.linspace(-0.05, 0.05, 100)] * 2)
    small = np.full((4, 2), 0.5)
    e = np.vstack([big, small])
    by_run = error_quantiles(e, len(e))
    by_model = error_quantiles(e, len(e), groups=np.array(["big"] * 100 + ["small"] * 4))
    assert by_run["ttft_high"] < 0.05 < 0.5 * 0.5 < by_model["ttft_high"] <= 0.5
    assert by_model["ttft_low"] == pytest.approx(by_run["ttft_low"], abs=0.02)
    one = error_quantiles(big, 100, groups=np.array(["big"] * 100))   # one model: the unweighted band
    lo_q, hi_q = tail_levels(0.8, 100)                                 # split-conformal: 0.9 x 101 / 100
    assert (lo_q, hi_q) == pytest.approx((1 - 0.909, 0.909))
    assert one["ttft_high"] == pytest.approx(np.quantile(big[:, 0], hi_q))
    assert one["ttft_low"] == pytest.approx(np.quantile(big[:, 0], lo_q))


def test_band_levels_hold_the_next_run_with_the_finite_sample_correction():
    """tail_levels: (1 - a/2)(n + 1)/n per tail, capped at the sample's ends; it tends to the plain level."""
    from apex_plan.calibrate.interval import tail_levels
    assert tail_levels(0.8, 9) == pytest.approx((0.0, 1.0))            # 0.9 x 10 / 9 > 1: the extremes
    assert tail_levels(0.8, 1e9) == pytest.approx((0.1, 0.9))
    # over many draws of 20 errors, the band's next-run coverage is at least 80 % (plain percentiles: below)
    rng = np.random.default_rng(7)
    from apex_plan.calibrate.interval import weighted_quantile
    hits, plain = [], []
    for _ in range(4000):
        e, new = rng.standard_normal(20), rng.standard_normal()
        lo, hi = tail_levels(0.8, 20)
        q = (weighted_quantile(e, np.ones(20), lo), weighted_quantile(e, np.ones(20), hi))
        hits.append(q[0] <= new <= q[1])
        plain.append(np.quantile(e, 0.1) <= new <= np.quantile(e, 0.9))
    assert np.mean(hits) >= 0.8 > np.mean(plain)


def test_fit_frontend_minimises_ttft_mape_exactly():
    from apex_plan.calibrate.fit import BOUNDS, fit_frontend_ms
    rng = np.random.default_rng(3)
    base = rng.uniform(20, 400, 41)                          # engine-loop TTFT without the front end
    meas = base + 55.0 + rng.normal(0, 5, 41)
    f = fit_frontend_ms(base + 137.0, meas, 137.0)
    mape = lambda g: np.mean(np.abs(base + g - meas) / meas)  # noqa: E731
    grid = np.linspace(0, 250, 25001)
    assert mape(f) <= min(mape(g) for g in grid) + 1e-12      # no front end on a 0.01 ms grid does better
    assert 45 < f < 65
    # clipped to its physical bounds, and runs without a prediction are ignored
    lo, hi, _ = BOUNDS["host.frontend_ms"]
    assert fit_frontend_ms(base, base + 1e4, 0.0) == hi and fit_frontend_ms(base + 500, base, 0.0) == lo
    pred = np.append(base + 137.0, np.nan)
    assert fit_frontend_ms(pred, np.append(meas, 10.0), 137.0) == f


def test_fit_frontend_weights_each_gpu_the_same():
    """Per-run weights (1 / the runs of its GPU) minimise the mean over GPUs of each GPU's TTFT MAPE."""
    from apex_plan.calibrate.fit import fit_frontend_ms
    rng = np.random.default_rng(5)
    base = rng.uniform(50, 300, 50)
    gpu = np.array(["a"] * 30 + ["b"] * 10 + ["c"] * 10)
    meas = base + np.where(gpu == "a", 20.0, 120.0)          # a's 30 runs ask for 20 ms, b's and c's 20 for 120 ms
    w = np.array([1.0 / (gpu == g).sum() for g in gpu])
    mape = lambda f, g: np.mean(np.abs(base[gpu == g] + f - meas[gpu == g]) / meas[gpu == g])  # noqa: E731
    per_gpu = lambda f: sum(mape(f, g) for g in "abc")                                      # noqa: E731
    f = fit_frontend_ms(base, meas, 0.0, w)
    grid = np.linspace(0, 250, 25001)
    assert per_gpu(f) <= min(per_gpu(g) for g in grid) + 1e-12
    assert fit_frontend_ms(base, meas, 0.0) == pytest.approx(20.0)   # by runs: a's 30 win
    assert f == pytest.approx(120.0)                                 # by GPUs: b and c win


def test_refresh_bands_replaces_only_the_band_blocks():
    import importlib.util
    from pathlib import Path
    import yaml
    root = Path(__file__).resolve().parents[1]
    spec = importlib.util.spec_from_file_location("refresh_bands", root / "scripts" / "refresh_bands.py")
    rb = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(rb)
    text = (root / "engine_profiles" / "trtllm-1.yaml").read_text()
    band = {"calibration_error": {"level": 0.8, "runs": 7.0, "held_out": 1.0, "ttft_low": -0.25, "ttft_high": 0.5,
                                  "tpot_low": -0.125, "tpot_high": 0.0625},
            "calibration_error_by_gpu": {"h100-sxm-80gb": {"level": 0.8, "runs": 5.0, "held_out": 1.0, "ttft_low": -0.5,
                                                           "ttft_high": 1.5, "tpot_low": -0.25, "tpot_high": 0.75}},
            "calibration_error_new_model": {"level": 0.8, "runs": 9.0, "held_out": 1.0, "ttft_low": -0.75,
                                            "ttft_high": 0.5, "tpot_low": -0.5, "tpot_high": 0.25},
            "calibrated_models": ["deepseek-r1", "llama-3.1-8b"]}
    out = rb.replace_blocks(text, rb.blocks(band, rb.PROVENANCE + " (test)"))
    before, after = yaml.safe_load(text), yaml.safe_load(out)
    assert after["calibration_error"] == {**band["calibration_error"], "runs": 7, "held_out": 1}
    assert after["calibration_error_by_gpu"] == {"h100-sxm-80gb": {**band["calibration_error_by_gpu"]["h100-sxm-80gb"],
                                                                   "runs": 5, "held_out": 1}}
    assert after["calibration_error_new_model"] == {**band["calibration_error_new_model"], "runs": 9, "held_out": 1}
    assert after["calibrated_models"] == band["calibrated_models"]
    rest = lambda d: {k: v for k, v in d.items() if not k.startswith(("calibration_error", "calibrated_models"))}  # noqa: E731
    assert rest(after) == rest(before)
    assert rb.replace_blocks(out, rb.blocks(band, rb.PROVENANCE + " (test)")) == out     # one provenance line, once


def test_a_new_model_takes_the_new_model_band():
    """EngineProfile.for_model: a calibrated model keeps the stored bands; another one takes the new-model band
    on every calibrated GPU and, on a GPU nobody calibrated, the default widened to cover it."""
    import dataclasses
    from apex_plan.engine.load import resolve_engine_profile
    from apex_plan.engine.spec import widen
    base = resolve_engine_profile("vllm")
    band = lambda lo, hi: {"level": 0.8, "runs": 50.0, "held_out": 1.0, "ttft_low": lo, "ttft_high": hi,  # noqa: E731
                           "tpot_low": lo / 2, "tpot_high": hi / 2}
    prof = dataclasses.replace(base, calibration_error=band(-0.3, 0.2), calibration_error_by_gpu={"h100-sxm-80gb": band(-0.1, 0.1)},
                               calibration_error_new_model=band(-0.5, 0.15), calibrated_models=("llama-3.1-8b",))
    assert prof.for_model("llama-3.1-8b") is prof
    new = prof.for_model("qwen3-8b")
    assert new.on_gpu("h100-sxm-80gb").calibration_error == {**band(-0.5, 0.15), "new_model": 1.0}
    other = new.on_gpu("b300-sxm-288gb").calibration_error
    assert other == {**widen(band(-0.3, 0.2), band(-0.5, 0.15)), "new_model": 1.0}
    assert (other["ttft_low"], other["ttft_high"], other["tpot_low"], other["tpot_high"]) == (-0.5, 0.2, -0.25, 0.1)
    assert new.for_model("qwen3-8b").on_gpu("h100-sxm-80gb").calibration_error == {**band(-0.5, 0.15), "new_model": 1.0}
    assert dataclasses.replace(prof, calibration_error_new_model={}).for_model("qwen3-8b").calibration_error == band(-0.3, 0.2)


def test_simulate_states_a_new_models_interval_from_its_band(capsys, monkeypatch):
    """A built-in the bands did not see (qwen3-8b on vLLM) gets its interval from the new-model band."""
    import json
    from apex_plan.calibrate.interval import interval
    from apex_plan.engine.load import resolve_engine_profile
    prof = resolve_engine_profile("vllm")
    assert prof.calibration_error_new_model and "qwen3-8b" not in prof.calibrated_models
    code, out, _ = run_main(["simulate", "--model", "Qwen/Qwen3-8B", "--gpu", "h100-sxm-80gb", "--gpus", "1",
                             "--engine", "vllm", "--prompt-tokens", "512", "--output-tokens", "64", "--concurrency", "2",
                             "--format", "json"], capsys, monkeypatch)
    assert code == 0
    doc = json.loads(out)
    ttft = doc["metrics"]["ttft_ms"]["mean"]
    got = doc["metrics"]["interval"]["ttft_ms"]["mean"]
    want = interval(prof.for_model("qwen3-8b").on_gpu("h100-sxm-80gb"), "ttft", ttft)
    assert (got["low"], got["high"]) == pytest.approx((want["low"], want["high"]))
    band = prof.calibration_error_new_model
    assert got["low"] == pytest.approx(ttft / (1 + band["ttft_high"])) and got["high"] == pytest.approx(ttft / (1 + band["ttft_low"]))
    assert "not among the calibrated models" in got["basis"]
