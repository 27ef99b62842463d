"""GPU profiles, cluster YAML and the errors every bad hardware input must give."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import yaml

from apex_plan.errors import InputError
from apex_plan.hardware.load import (
    DEFAULT_INTER_NODE_BW_GBPS,
    hardware_dir,
    list_gpus,
    load_cluster,
    load_gpu,
    make_cluster,
)
from apex_plan.hardware.spec import Calibration, GpuSpec

EXPECTED_GPUS = ["a100-sxm-80gb", "b200-sxm-180gb", "b300-sxm-288gb", "gb200-nvl72", "gb300-nvl72", "h100-sxm-80gb",
                 "h200-sxm-141gb", "l40s", "mi300x", "mi325x", "mi355x"]


def _h100_doc() -> dict:
    return yaml.safe_load((hardware_dir() / "h100-sxm-80gb.yaml").read_text())


def _write(tmp_path: Path, doc: dict | str, name: str = "gpu.yaml") -> Path:
    path = tmp_path / name
    path.write_text(doc if isinstance(doc, str) else yaml.safe_dump(doc, sort_keys=False))
    return path


def _error(fn, *args) -> InputError:
    with pytest.raises(InputError) as info:
        fn(*args)
    return info.value


# --- profiles -----------------------------------------------------------------------------------

def test_builtin_profiles_listed():
    assert list_gpus() == EXPECTED_GPUS


@pytest.mark.parametrize("name", EXPECTED_GPUS)
def test_every_profile_loads(name):
    gpu = load_gpu(name)
    assert isinstance(gpu, GpuSpec)
    assert gpu.name == name
    assert gpu.supports("bf16") and gpu.peak_tflops["bf16"] > 0
    assert gpu.mem_bw_gbps > 0 and gpu.memory_bytes > 40 * 2**30
    assert 0 < gpu.idle_w < gpu.tdp_w
    assert gpu.num_sms > 0 and gpu.source
    cal = gpu.calibration
    assert all(0 < getattr(cal, f.name) <= 1 for f in dataclasses.fields(cal) if f.name.endswith("_efficiency"))


@pytest.mark.parametrize("name", EXPECTED_GPUS)
def test_every_profile_lists_every_calibration_field(name):
    doc = yaml.safe_load((hardware_dir() / f"{name}.yaml").read_text())
    assert set(doc["calibration"]) == {f.name for f in dataclasses.fields(Calibration)}


def test_h100_datasheet_numbers():
    gpu = load_gpu("h100-sxm-80gb")
    assert gpu.peak_tflops["bf16"] == pytest.approx(989.4)
    assert gpu.peak_tflops["fp8"] == pytest.approx(1978.9)
    assert gpu.mem_bw_gbps == pytest.approx(3350)
    assert gpu.memory_bytes == 81559 * 2**20
    assert gpu.intra_node_bw_gbps == 450 and gpu.num_sms == 132
    assert gpu.peak_flops("fp8") == pytest.approx(1978.9e12)


def test_dtype_support_matches_hardware():
    assert not load_gpu("a100-sxm-80gb").supports("fp8")
    assert load_gpu("b200-sxm-180gb").supports("fp4")
    assert not load_gpu("h100-sxm-80gb").supports("fp4")
    assert load_gpu("h200-sxm-141gb").peak_tflops == load_gpu("h100-sxm-80gb").peak_tflops


def test_load_by_path_and_env_override(tmp_path, monkeypatch):
    doc = _h100_doc()
    doc["name"] = "my-gpu"
    path = _write(tmp_path, doc, "my-gpu.yaml")
    assert load_gpu(path).name == "my-gpu"
    assert load_gpu(str(path)).name == "my-gpu"
    monkeypatch.setenv("APEX_PLAN_HARDWARE_DIR", str(tmp_path))
    assert list_gpus() == ["my-gpu"]
    assert load_gpu("my-gpu").mem_bw_gbps == 3350


def test_partial_calibration_keeps_defaults(tmp_path):
    doc = _h100_doc()
    doc["calibration"] = {"compute_efficiency": 0.55}
    gpu = load_gpu(_write(tmp_path, doc))
    assert gpu.calibration.compute_efficiency == 0.55
    assert gpu.calibration.bandwidth_efficiency == Calibration().bandwidth_efficiency


# --- clusters -----------------------------------------------------------------------------------

def test_cluster_yaml_round_trip(tmp_path):
    doc = {"name": "lab", "gpu": "h100-sxm-80gb", "nodes": 2, "gpus_per_node": 8,
           "intra_node_bw_gbps": 400, "intra_node_latency_us": 3, "inter_node_bw_gbps": 25,
           "inter_node_latency_us": 12, "price_per_gpu_hour": 2.5}
    cluster = load_cluster(_write(tmp_path, doc, "cluster.yaml"))
    assert cluster.name == "lab" and cluster.gpu.name == "h100-sxm-80gb"
    assert (cluster.num_nodes, cluster.gpus_per_node, cluster.num_gpus) == (2, 8, 16)
    assert (cluster.intra_node_bw_gbps, cluster.intra_node_latency_us) == (400, 3)
    assert (cluster.inter_node_bw_gbps, cluster.inter_node_latency_us) == (25, 12)
    assert cluster.price_per_gpu_hour == 2.5
    again = {"name": cluster.name, "gpu": cluster.gpu.name, "nodes": cluster.num_nodes,
             "gpus_per_node": cluster.gpus_per_node, "intra_node_bw_gbps": cluster.intra_node_bw_gbps,
             "intra_node_latency_us": cluster.intra_node_latency_us,
             "inter_node_bw_gbps": cluster.inter_node_bw_gbps,
             "inter_node_latency_us": cluster.inter_node_latency_us,
             "price_per_gpu_hour": cluster.price_per_gpu_hour}
    assert load_cluster(_write(tmp_path, again, "again.yaml")) == cluster


def test_cluster_defaults_and_relative_gpu_path(tmp_path):
    doc = _h100_doc()
    doc["name"] = "custom"
    doc["intra_node_bw_gbps"] = 123
    _write(tmp_path, doc, "custom.yaml")
    cluster = load_cluster(_write(tmp_path, {"gpu": "custom.yaml", "nodes": 1, "gpus_per_node": 4}, "c.yaml"))
    assert cluster.gpu.name == "custom" and cluster.name == "c"
    assert cluster.intra_node_bw_gbps == 123                   # the GPU's own link
    assert cluster.intra_node_latency_us == 2.0
    assert cluster.inter_node_bw_gbps == DEFAULT_INTER_NODE_BW_GBPS == 50.0
    assert cluster.inter_node_latency_us == 10.0 and cluster.price_per_gpu_hour is None   # no price: unknown, never 0


def test_make_cluster():
    gpu = load_gpu("h100-sxm-80gb")
    assert (make_cluster(gpu, 16).num_nodes, make_cluster(gpu, 16).gpus_per_node) == (2, 8)
    small = make_cluster(gpu, 4)
    assert (small.num_nodes, small.gpus_per_node, small.num_gpus) == (1, 4, 4)
    assert small.intra_node_bw_gbps == gpu.intra_node_bw_gbps
    assert make_cluster(gpu, 8, gpus_per_node=4).num_nodes == 2
    err = _error(make_cluster, gpu, 12)
    assert "--gpus" in str(err) and "8" in str(err) and "16" in str(err)
    assert "--gpus" in str(_error(make_cluster, gpu, 0))
    assert "--gpus-per-node" in str(_error(make_cluster, gpu, 8, 0))


# --- bad inputs ---------------------------------------------------------------------------------

def test_unknown_gpu_suggests_a_name():
    err = _error(load_gpu, "h100-sxm-80")
    assert "--gpu" in str(err) and "h100-sxm-80gb" in str(err)
    assert "did you mean" in str(err)


def test_missing_profile_file(tmp_path):
    err = _error(load_gpu, tmp_path / "nope.yaml")
    assert "nope.yaml" in str(err) and "not found" in str(err)


def test_malformed_yaml(tmp_path):
    path = _write(tmp_path, "name: x\npeak_tflops: {bf16: 1\n  vendor: [\n")
    err = _error(load_gpu, path)
    assert str(path) in str(err) and "malformed YAML" in str(err) and "line" in str(err)


def test_yaml_that_is_not_a_mapping(tmp_path):
    assert "mapping" in str(_error(load_gpu, _write(tmp_path, "- just\n- a list\n")))
    assert "empty" in str(_error(load_gpu, _write(tmp_path, "")))


@pytest.mark.parametrize("field", ["name", "memory_gib", "mem_bw_gbps", "peak_tflops", "tdp_w", "num_sms"])
def test_missing_field(tmp_path, field):
    doc = _h100_doc()
    del doc[field]
    path = _write(tmp_path, doc)
    err = _error(load_gpu, path)
    assert str(path) in str(err) and f"field '{field}'" in str(err) and "missing" in str(err)


@pytest.mark.parametrize("field,value", [("mem_bw_gbps", 0), ("mem_bw_gbps", -3350), ("memory_gib", -1),
                                         ("tdp_w", 0), ("num_sms", 0), ("pcie_gbps", -64)])
def test_non_positive_values(tmp_path, field, value):
    doc = _h100_doc()
    doc[field] = value
    err = _error(load_gpu, _write(tmp_path, doc))
    assert f"field '{field}'" in str(err) and "must be" in str(err)


def test_negative_peak_and_idle_above_tdp(tmp_path):
    doc = _h100_doc()
    doc["peak_tflops"]["fp8"] = -1
    assert "field 'peak_tflops.fp8'" in str(_error(load_gpu, _write(tmp_path, doc)))
    doc = _h100_doc()
    doc["idle_w"] = 900
    assert "field 'idle_w'" in str(_error(load_gpu, _write(tmp_path, doc)))


def test_string_with_units_names_the_unit(tmp_path):
    doc = _h100_doc()
    doc["mem_bw_gbps"] = "3.35 TB/s"
    path = _write(tmp_path, doc)
    err = str(_error(load_gpu, path))
    assert str(path) in err and "field 'mem_bw_gbps'" in err
    assert "GB/s" in err and "3350" in err               # says the unit and offers the converted number
    doc = _h100_doc()
    doc["memory_gib"] = "80GB"
    err = str(_error(load_gpu, _write(tmp_path, doc)))
    assert "GiB" in err and "74.5" in err
    doc = _h100_doc()
    doc["num_sms"] = 132.5
    assert "whole number" in str(_error(load_gpu, _write(tmp_path, doc)))


def test_unknown_fields_and_dtypes(tmp_path):
    doc = _h100_doc()
    doc["mem_bw_gbs"] = doc.pop("mem_bw_gbps")
    err = str(_error(load_gpu, _write(tmp_path, doc)))
    assert "field 'mem_bw_gbs'" in err and "mem_bw_gbps" in err
    doc = _h100_doc()
    doc["peak_tflops"]["bf61"] = 1.0
    assert "field 'peak_tflops.bf61'" in str(_error(load_gpu, _write(tmp_path, doc)))
    doc = _h100_doc()
    del doc["peak_tflops"]["bf16"]
    assert "peak_tflops.bf16" in str(_error(load_gpu, _write(tmp_path, doc)))


def test_unknown_calibration_key(tmp_path):
    doc = _h100_doc()
    doc["calibration"]["compute_eficiency"] = 0.5
    path = _write(tmp_path, doc)
    err = str(_error(load_gpu, path))
    assert str(path) in err and "field 'calibration.compute_eficiency'" in err
    assert "compute_efficiency" in err


@pytest.mark.parametrize("value", [0, 1.5, -0.2, 70])
def test_efficiency_outside_unit_interval(tmp_path, value):
    doc = _h100_doc()
    doc["calibration"]["bandwidth_efficiency"] = value
    err = str(_error(load_gpu, _write(tmp_path, doc)))
    assert "field 'calibration.bandwidth_efficiency'" in err and ("(0, 1]" in err or "> 0" in err)


def test_moe_imbalance_below_one(tmp_path):
    doc = _h100_doc()
    doc["calibration"]["moe_imbalance"] = 0.9
    assert "field 'calibration.moe_imbalance'" in str(_error(load_gpu, _write(tmp_path, doc)))


def test_efficiency_of_one_is_allowed_and_negative_latency_is_not(tmp_path):
    doc = _h100_doc()
    doc["calibration"]["link_efficiency"] = 1.0
    assert load_gpu(_write(tmp_path, doc)).calibration.link_efficiency == 1.0
    doc["calibration"]["kernel_latency_us"] = -1
    assert "field 'calibration.kernel_latency_us'" in str(_error(load_gpu, _write(tmp_path, doc)))
    doc["calibration"]["kernel_latency_us"] = "4us"
    assert "microseconds" in str(_error(load_gpu, _write(tmp_path, doc)))


def test_bad_env_override(monkeypatch, tmp_path):
    monkeypatch.setenv("APEX_PLAN_HARDWARE_DIR", str(tmp_path / "missing"))
    assert "APEX_PLAN_HARDWARE_DIR" in str(_error(load_gpu, "h100-sxm-80gb"))


def _cluster(tmp_path, **changes) -> Path:
    doc = {"name": "c", "gpu": "h100-sxm-80gb", "nodes": 2, "gpus_per_node": 8}
    doc.update(changes)
    return _write(tmp_path, {k: v for k, v in doc.items() if v is not None}, "cluster.yaml")


@pytest.mark.parametrize("changes,field", [
    ({"gpu": None}, "gpu"),
    ({"nodes": None}, "nodes"),
    ({"gpus_per_node": 0}, "gpus_per_node"),
    ({"nodes": -2}, "nodes"),
    ({"nodes": 1.5}, "nodes"),
    ({"inter_node_bw_gbps": "400 Gb/s"}, "inter_node_bw_gbps"),
    ({"inter_node_bw_gbps": 0}, "inter_node_bw_gbps"),
    ({"intra_node_latency_us": -1}, "intra_node_latency_us"),
    ({"price_per_gpu_hour": -2}, "price_per_gpu_hour"),
    ({"gpu": "h100"}, "gpu"),
    ({"gpu": 100}, "gpu"),
    ({"gpus": 16}, "gpus"),
])
def test_bad_cluster(tmp_path, changes, field):
    path = _cluster(tmp_path, **changes)
    err = str(_error(load_cluster, path))
    assert str(path) in err and f"field '{field}'" in err


def test_cluster_unit_hint_and_missing_file(tmp_path):
    err = str(_error(load_cluster, _cluster(tmp_path, inter_node_bw_gbps="400 Gb/s")))
    assert "GB/s" in err and "50" in err
    assert "not found" in str(_error(load_cluster, tmp_path / "nope.yaml"))


def test_cluster_gpu_profile_errors_name_the_profile(tmp_path):
    doc = _h100_doc()
    doc["tdp_w"] = "700W"
    gpu_path = _write(tmp_path, doc, "bad-gpu.yaml")
    err = str(_error(load_cluster, _cluster(tmp_path, gpu=str(gpu_path))))
    assert "bad-gpu.yaml" in err and "field 'tdp_w'" in err and "700" in err
