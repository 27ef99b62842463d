"""Views of built-in models and GPU profiles (`apex-plan models`, `apex-plan hardware`)."""

from __future__ import annotations

import dataclasses

from rich.console import Console

from apex_plan.report.layout import print_table, table

from apex_plan.hardware.spec import GpuSpec
from apex_plan.model.kv import kv_cache_bytes_per_seq, kv_cache_bytes_per_token
from apex_plan.model.params import param_counts
from apex_plan.model.spec import ModelSpec
from apex_plan.report.output import SCHEMA_VERSION

GIB = 1024.0 ** 3


def model_doc(m: ModelSpec) -> dict:
    pc = param_counts(m)
    return {
        "name": m.name,
        "source": m.source,
        "architecture": m.architecture,
        "spec": dataclasses.asdict(m),
        "parameters": {
            "total": pc.total,
            "active": pc.active,
            "attention_per_layer": pc.attention_per_layer,
            "dense_mlp_per_layer": pc.dense_mlp_per_layer,
            "routed_experts_per_layer": pc.routed_experts_per_layer,
            "shared_experts_per_layer": pc.shared_experts_per_layer,
            "router_per_layer": pc.router_per_layer,
            "embedding": pc.embedding,
            "lm_head": pc.lm_head,
            "dense_layers": m.n_dense_layers,
            "moe_layers": m.n_moe_layers,
        },
        "kv_cache_bytes_per_token": {dt: kv_cache_bytes_per_token(m, dt) for dt in ("bf16", "fp8")},
        # layer groups, e.g. "3 x (linear+moe), 1 x (full+moe) repeated 15 times"; KV plus fixed per-sequence
        # state of one bf16 sequence at 1K and 128K tokens (sliding windows capped)
        "layer_groups": [{"kinds": [k.label() for k in g.kinds], "repeat": g.repeat} for g in m.groups],
        "kv_cache_bytes_per_seq_bf16": {str(n): kv_cache_bytes_per_seq(m, "bf16", n) for n in (1024, 131072)},
        "weight_formats": dict(m.weight_formats),
        "notes": list(m.notes),
        "weights_gib": {dt: pc.total * b / GIB for dt, b in (("bf16", 2), ("fp8", 1))},
    }


def models_list_doc(models: list[ModelSpec]) -> dict:
    return {"schema_version": SCHEMA_VERSION, "models": [model_doc(m) for m in models]}


def models_rows(models: list[ModelSpec]) -> list[dict]:
    rows = []
    for m in models:
        d = model_doc(m)
        rows.append({"name": m.name, "architecture": m.architecture, "parameters_total": d["parameters"]["total"],
                     "parameters_active": d["parameters"]["active"], "layers": m.num_layers,
                     "hidden_size": m.hidden_size, "heads": m.num_heads, "kv_heads": m.num_kv_heads,
                     "experts": m.num_experts, "experts_per_token": m.experts_per_token,
                     "max_context": m.max_context, "kv_bytes_per_token_bf16": d["kv_cache_bytes_per_token"]["bf16"],
                     "source": m.source})
    return rows


def models_table(models: list[ModelSpec], console: Console) -> None:
    t = table("Models", [(c, "left" if c in ("name", "architecture") else "right")
                         for c in ("name", "architecture", "params", "active", "layers", "hidden", "heads/kv",
                                   "experts", "KV/token bf16", "max ctx")])
    for r in models_rows(models):
        t.add_row(r["name"], r["architecture"], f"{r['parameters_total'] / 1e9:.1f}B", f"{r['parameters_active'] / 1e9:.1f}B",
                  str(r["layers"]), str(r["hidden_size"]), f"{r['heads']}/{r['kv_heads']}",
                  f"{r['experts_per_token']}/{r['experts']}" if r["experts"] else "-",
                  f"{r['kv_bytes_per_token_bf16'] / 1024:.0f} KiB", f"{r['max_context']:,}")
    print_table(console, t, ("architecture", "hidden", "heads/kv", "layers", "max ctx"))


def calibration_doc(g: GpuSpec) -> dict:
    """The calibration constants by name; per-engine figures as an {engine: value} mapping."""
    d = dataclasses.asdict(g.calibration)
    for k, v in d.items():          # every (engine, value) pair list, e.g. *_by_engine, as a mapping
        if isinstance(v, (tuple, list)) and all(isinstance(x, (tuple, list)) and len(x) == 2 for x in v):
            d[k] = {str(e): x for e, x in v}
    return d


def gpu_doc(g: GpuSpec) -> dict:
    return {
        "name": g.name, "vendor": g.vendor, "source": g.source,
        "memory_gib": g.memory_bytes / GIB, "mem_bw_gbps": g.mem_bw_gbps, "peak_tflops": dict(g.peak_tflops),
        "intra_node_bw_gbps": g.intra_node_bw_gbps, "pcie_gbps": g.pcie_gbps, "tdp_w": g.tdp_w, "idle_w": g.idle_w,
        "num_sms": g.num_sms, "gpus_per_node": g.gpus_per_node, "nvlink_domain_gpus": g.nvlink_domain_gpus,
        "calibration": calibration_doc(g),
        "clocks": dataclasses.asdict(g.clocks) if g.clocks else None,
        "ridge_point_flops_per_byte": {dt: v * 1e12 / (g.mem_bw_gbps * 1e9) for dt, v in g.peak_tflops.items()},
    }


def gpus_rows(gpus: list[GpuSpec]) -> list[dict]:
    return [{"name": g.name, "vendor": g.vendor, "memory_gib": round(g.memory_bytes / GIB, 2), "mem_bw_gbps": g.mem_bw_gbps,
             "bf16_tflops": g.peak_tflops.get("bf16"), "fp8_tflops": g.peak_tflops.get("fp8"),
             "fp4_tflops": g.peak_tflops.get("fp4"), "intra_node_bw_gbps": g.intra_node_bw_gbps, "tdp_w": g.tdp_w}
            for g in gpus]


def gpus_table(gpus: list[GpuSpec], console: Console) -> None:
    t = table("GPU profiles (dense peak FLOP/s)", [(c, "left" if c in ("name", "vendor") else "right")
                                                   for c in ("name", "vendor", "memory", "HBM", "bf16", "fp8", "fp4",
                                                             "link/dir", "TDP")])
    for r in gpus_rows(gpus):
        t.add_row(r["name"], r["vendor"], f"{r['memory_gib']:.1f} GiB", f"{r['mem_bw_gbps']:,.0f} GB/s",
                  f"{r['bf16_tflops']:g} TF" if r["bf16_tflops"] else "-", f"{r['fp8_tflops']:g} TF" if r["fp8_tflops"] else "-",
                  f"{r['fp4_tflops']:g} TF" if r["fp4_tflops"] else "-", f"{r['intra_node_bw_gbps']:g} GB/s", f"{r['tdp_w']:g} W")
    print_table(console, t, ("vendor", "link/dir", "TDP"))


def gpu_table(g: GpuSpec, console: Console) -> None:
    gpus_table([g], console)
    t = table(f"{g.name} calibration", [("constant", "left"), ("value", "right")])
    for k, v in calibration_doc(g).items():
        t.add_row(k, ", ".join(f"{e} {x:g}" for e, x in v.items()) or "-" if isinstance(v, dict) else f"{v:g}")
    print_table(console, t)
    console.print(f"source: {g.source}")


def model_table(m: ModelSpec, console: Console) -> None:
    models_table([m], console)
    d = model_doc(m)
    t = table(f"{m.name} parameters ({m.source})", [("component", "left"), ("count", "right")])
    for k, v in d["parameters"].items():
        t.add_row(k, f"{v:,}")
    print_table(console, t)
    console.print(f"KV cache per token: {d['kv_cache_bytes_per_token']['bf16']:,.0f} B (bf16), "
                  f"{d['kv_cache_bytes_per_token']['fp8']:,.0f} B (fp8)")
