"""Decompose the predicted prefill of one DeepSeek-V3 prompt into its ops and set each beside the
aiconfigurator-core wheel's measured per-op tables of the same shape (a probe, not a fit).

Per GPU (B200, H200), engine (SGLang, TRT-LLM), tensor-parallel degree, weight dtype and prompt length it
prints, per layer, the op table's time of each attention GEMM (q_a, q_b, kv_a, kv_b, o), of the routed experts
(both grouped GEMMs, one MoE layer), of the shared expert, of the MLA context attention and of one all-reduce,
each with the wheel's time for that shape:
* GEMMs: systems/data/<gpu>/gemm/<engine>/<v>/gemm_perf.parquet, gemm_dtype fp8_block / nvfp4 / bfloat16, m = tokens;
* MoE: moe/<engine>/<v>/moe_perf.parquet (hidden 7168, inter 2048, top-8 of 256, moe_tp = tp, ep 1),
  balanced and power-law 1.01 routing, the fastest kernel the engine's table ran;
* MLA: mla/<engine>/<v>/context_mla_perf.parquet (heads 128 / tp, batch 1, the plan's KV dtype);
* all-reduce: comm/<engine>/<v>/custom_allreduce_perf.parquet (bf16, message tokens x 7168 x 2 bytes).
Then the whole predicted prefill (StepCost.prefill_time_s, one chunk) and the sum of the wheel's ops times layers.

    PYTHONPATH=.:PYARROW_DIR python scripts/check_prefill_ops.py /work/aic/core   # the unpacked wheel
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from apex_plan.abi import GEMM_ATTENTION, GEMM_MOE_DENSE, GEMM_ROUTED_EXPERTS, OP_ATTENTION
from apex_plan.engine.load import resolve_engine_profile
from apex_plan.estimate import kernels as K
from apex_plan.estimate.step_cost import build_step_cost
from apex_plan.hardware.load import load_gpu, make_cluster
from apex_plan.model.load import load_model
from apex_plan.plan.spec import Plan

GPUS = {"b200_sxm": "b200-sxm-180gb", "h200_sxm": "h200-sxm-141gb"}
TABLE_DTYPE = {"fp8-block": "fp8_block", "nvfp4": "nvfp4", "bf16": "bfloat16"}
MOE_DTYPE = {"fp8": "fp8_block", "fp4": "nvfp4"}
MODEL = "deepseek-ai/DeepSeek-V3"


def _table(root: Path, gpu: str, op: str, engine: str, name: str):
    """Every version's table `name` of `op` measured with `engine` on `gpu`, stacked (None when absent):
    the lookups take the fastest row of a shape, so a version that did not measure it drops out."""
    import pandas as pd
    paths = sorted((root / "aiconfigurator_core/systems/data" / gpu / op / engine).glob(f"*/{name}"))
    return pd.concat([pd.read_parquet(x) for x in paths], ignore_index=True) if paths else None


def _gemm_ms(t, fmt: str, m: int, n: int, k: int) -> float:
    """The table's fastest time of an (m, n, k) GEMM in `fmt` weights, ms (nan when not measured)."""
    if t is None:
        return float("nan")
    s = t[(t.gemm_dtype == TABLE_DTYPE.get(fmt, fmt)) & (t.m == m) & (t.n == n) & (t.k == k)]
    return float(s.latency.min()) if len(s) else float("nan")


def _moe_ms(t, wd: str, tokens: int, tp: int, dist: str) -> float:
    """The table's fastest time of one DeepSeek-V3 MoE layer at `tokens` tokens, moe_tp = tp, ep 1, ms."""
    if t is None:
        return float("nan")
    s = t[(t.moe_dtype == MOE_DTYPE[wd]) & (t.hidden_size == 7168) & (t.inter_size == 2048) & (t.num_experts == 256)
          & (t.topk == 8) & (t.moe_tp_size == tp) & (t.moe_ep_size == 1) & (t.distribution == dist)
          & (t.num_tokens == tokens)]
    return float(s.latency.min()) if len(s) else float("nan")


def _mla_ms(t, tp: int, isl: int, kv: str) -> float:
    """The table's time of the MLA context attention of one prompt, 128 / tp heads, ms."""
    if t is None:
        return float("nan")
    s = t[(t.num_heads == 128 // tp) & (t.batch_size == 1) & (t.isl == isl)
          & (t.kv_cache_dtype == ("fp8" if kv == "fp8" else "bfloat16"))]
    return float(s.latency.min()) if len(s) else float("nan")


def _ar_ms(t, tp: int, msg_bytes: float) -> float:
    """The table's time of one bf16 all-reduce of `msg_bytes` over tp GPUs (log-interpolated), ms."""
    if t is None:
        return float("nan")
    s = t[(t.num_gpus == tp) & (t.allreduce_dtype == "bfloat16")]
    if "backend" in s and (s.backend.astype(str).str.contains("graph")).any():
        s = s[s.backend.astype(str).str.contains("graph")]
    s = s.groupby("message_size").latency.min()
    if not len(s):
        return float("nan")
    return float(np.exp(np.interp(np.log(msg_bytes), np.log(s.index.to_numpy(float)), np.log(s.to_numpy(float)))))


def decompose(root: Path, gpu_dir: str, engine: str, tp: int, wd: str, isl: int) -> list[str]:
    """Lines of one (GPU, engine, tp, weight dtype, prompt length) decomposition."""
    gpu, model = load_gpu(GPUS[gpu_dir]), load_model(MODEL)
    kv = "fp8" if (wd == "fp4" or engine == "trtllm") else "bf16"
    sc = build_step_cost(model, gpu, Plan(tp=tp, weight_dtype=wd, kv_dtype=kv), make_cluster(gpu, tp),
                         profile=resolve_engine_profile(engine))
    p = sc.params[0]
    sh = K.aggregate(K.make_batch(0, 0, isl, 0, True), p["window_tokens"], p["topk_tokens"], p["window2_tokens"], 0)
    ops = sc.cost.ops
    gemm_t = _table(root, gpu_dir, "gemm", engine, "gemm_perf.parquet")
    moe_t = _table(root, gpu_dir, "moe", engine, "moe_perf.parquet")
    mla_t = _table(root, gpu_dir, "mla", engine, "context_mla_perf.parquet")
    ar_t = _table(root, gpu_dir, "comm", engine, "custom_allreduce_perf.parquet")
    out = [f"{gpu_dir} {engine} tp{tp} {wd} kv {kv} isl {isl}: per layer, model / table ms"]
    tot_model = tot_table = 0.0
    moe_model = 0.0
    for i, g in enumerate(sc.shard.gemms):
        t = float(K._op_time(p, sh, ops[i], float(isl), float(isl))[0]) * 1e3
        cnt = float(ops[i]["count"])
        if g.kind == GEMM_ROUTED_EXPERTS:
            moe_model += t
            continue
        meas = _gemm_ms(gemm_t, g.fmt, isl, g.n, g.k)
        tot_model += cnt * t
        tot_table += cnt * (meas if np.isfinite(meas) else t)
        out.append(f"  {g.name:15} {g.fmt:9} k {g.k:5} n {g.n:5} x{cnt:3.0f}  {t:7.3f} / {meas:7.3f}")
    n_moe = float(p["moe_layers"])
    bal, pl = _moe_ms(moe_t, wd, isl, tp, "balanced"), _moe_ms(moe_t, wd, isl, tp, "power_law_1.01")
    tot_model += n_moe * moe_model
    tot_table += n_moe * (pl if np.isfinite(pl) else moe_model)
    out.append(f"  {'routed experts':15} {wd:9} layer          x{n_moe:3.0f}  {moe_model:7.3f} / {bal:7.3f} balanced,"
               f" {pl:7.3f} power-law 1.01")
    for i in range(ops.shape[0]):
        if ops[i]["shape"] == OP_ATTENTION:
            t = float(K._op_time(p, sh, ops[i], float(isl), float(isl))[0]) * 1e3
            meas = _mla_ms(mla_t, tp, isl, kv)
            cnt = float(ops[i]["count"])
            tot_model += cnt * t
            tot_table += cnt * (meas if np.isfinite(meas) else t)
            out.append(f"  {'MLA attention':15} {'':9} {'':13}  x{cnt:3.0f}  {t:7.3f} / {meas:7.3f}")
    msg = isl * model.hidden_size * 2.0
    ar_model = float(K._allreduce_s(p, msg)) * 1e3
    ar_meas = _ar_ms(ar_t, tp, msg)
    out.append(f"  {'all-reduce':15} {msg / 2**20:6.1f} MiB {'':9}  x{2 * 61:3d}  {ar_model:7.3f} / {ar_meas:7.3f}")
    total = sc.prefill_time_s(isl) * 1e3
    _, br = sc.step_s(chunk=isl)
    out.append(f"  prefill {total:7.2f} ms (" + ", ".join(f"{k} {v * 1e3:.2f}" for k, v in br.items()
                                                      if k not in ("flops", "bytes")) +
               f"); GEMMs+MoE+MLA per step: model {tot_model:.2f}, tables {tot_table:.2f} ms")
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("wheel_dir", type=Path, help="folder holding aiconfigurator_core/ (the unpacked wheel)")
    ap.add_argument("--gpus", default="b200_sxm,h200_sxm")
    ap.add_argument("--engines", default="sglang,trtllm")
    ap.add_argument("--tps", default="4,8")
    ap.add_argument("--dtypes", default="fp8,fp4")
    ap.add_argument("--isls", default="1024,8192")
    a = ap.parse_args()
    for gpu in a.gpus.split(","):
        for eng in a.engines.split(","):
            for tp in map(int, a.tps.split(",")):
                for wd in a.dtypes.split(","):
                    if wd == "fp4" and gpu.startswith("h"):
                        continue
                    for isl in map(int, a.isls.split(",")):
                        print("\n".join(decompose(a.wheel_dir, gpu, eng, tp, wd, isl)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
