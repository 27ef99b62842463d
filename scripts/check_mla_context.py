"""Check the estimator's MLA prefill block (DeepSeek-V3 attention: its q/kv low-rank GEMMs, the expanded
attention and o_proj, per layer) against TensorRT-LLM's measured MLA context module, shape by shape.

Source: the pip package `aiconfigurator-core` (Apache-2.0) ships per-op latencies measured with TRT-LLM under
aiconfigurator_core/systems/data/<gpu>/mla/trtllm/<version>/mla_context_module_perf.parquet (one MLA layer's
context forward: the module, norms and rotary included). Read an unpacked copy of the wheel:

    pip download --no-deps aiconfigurator-core -d /tmp/aicw && unzip -q /tmp/aicw/*.whl -d /tmp/aicw/unz
    pip install pandas pyarrow                  # only for this script
    python scripts/check_mla_context.py /tmp/aicw/unz

Per GPU, tensor-parallel degree (128 / heads), GEMM format and KV dtype it prints the table's and the model's
time per layer at each prompt length (batch 1) and the rms log error; a ratio below 1 is a model faster than the
engine's module. The model's block is the op table's attention GEMM rows plus its attention row, each at the
estimator's own rates (`apex_plan.estimate.kernels._op_time`): the norms and rotary of the layer are costed
with the layer's elementwise kernels, not here.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from apex_plan.abi import GEMM_ATTENTION, OP_ATTENTION
from apex_plan.estimate import kernels as K
from apex_plan.estimate.step_cost import build_step_cost
from apex_plan.hardware.load import load_gpu, make_cluster
from apex_plan.model.load import load_model
from apex_plan.plan.spec import Plan

GPUS = {"h100_sxm": "h100-sxm-80gb", "h200_sxm": "h200-sxm-141gb", "b200_sxm": "b200-sxm-180gb",
        "b300_sxm": "b300-sxm-288gb", "gb200": "gb200-nvl72", "gb300": "gb300-nvl72"}
FORMATS = {"bfloat16": "bf16", "fp8_block": "fp8", "nvfp4": "fp4"}     # table gemm_type -> apex-plan weight dtype
KV = {"bfloat16": "bf16", "fp8": "fp8"}
ISLS = (1024, 2048, 4096, 8192, 16384)
MODEL = "deepseek-ai/DeepSeek-V3"      # the tables' model (its config.json: 128 heads, kv_lora 512, q_lora 1536)


def model_block_s(sc, isl: int) -> float:
    """Seconds of one layer's MLA block for one prompt of `isl` tokens: attention GEMM rows + attention row."""
    p = sc.params[0]
    sh = K.aggregate(K.make_batch(0, 0, isl, 0, False), p["window_tokens"], p["topk_tokens"], p["window2_tokens"], 0)
    gemm_rows = [i for i, g in enumerate(sc.shard.gemms) if g.kind == GEMM_ATTENTION]
    ops = sc.cost.ops
    t = sum(K._op_time(p, sh, ops[i], float(isl), float(isl))[0] for i in gemm_rows)
    t += sum(K._op_time(p, sh, ops[i], float(isl), float(isl))[0] for i in range(ops.shape[0])
             if ops[i]["shape"] == OP_ATTENTION)
    return float(t)


def check_gpu(root: Path, folder: str, profile: str) -> list[str]:
    """Lines of the comparison on one GPU (none when the wheel has no TRT-LLM MLA module table for it)."""
    import pandas as pd

    paths = sorted((root / "aiconfigurator_core" / "systems" / "data" / folder / "mla" / "trtllm").glob(
        "*/mla_context_module_perf.parquet"))
    if not paths:
        return []
    d = pd.read_parquet(paths[-1])
    d = d[(d.model == MODEL) & (d.batch_size == 1) & d.isl.isin(ISLS)]
    gpu, model = load_gpu(profile), load_model(MODEL)
    lines = [f"{folder} ({paths[-1].parent.name}): table / model ms per layer at isl {', '.join(map(str, ISLS))}"]
    for (heads, gemm, kv), rows in d.groupby(["num_heads", "gemm_type", "kv_cache_dtype"]):
        tp = model.num_heads // int(heads)
        if gemm not in FORMATS or kv not in KV or tp not in (1, 2, 4, 8):
            continue
        wd = FORMATS[gemm]
        if wd not in gpu.peak_tflops:
            continue
        sc = build_step_cost(model, gpu, Plan(tp=tp, weight_dtype=wd, kv_dtype=KV[kv]), make_cluster(gpu, tp))
        meas = rows.set_index("isl").latency.reindex(ISLS).to_numpy(float) * 1e-3
        pred = np.array([model_block_s(sc, s) for s in ISLS])
        ok = np.isfinite(meas)
        rms = float(np.sqrt(np.mean(np.log(pred[ok] / meas[ok]) ** 2)))
        cells = "  ".join(f"{m * 1e3:6.3f}/{q * 1e3:6.3f}" if np.isfinite(m) else "      -/     -" for m, q in zip(meas, pred))
        lines.append(f"  tp{tp} {gemm:9} kv {kv:8} {cells}   rms {100 * np.expm1(rms):4.0f}%")
    return lines


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("wheel_dir", type=Path, help="unpacked aiconfigurator-core wheel (holds aiconfigurator_core/)")
    args = ap.parse_args()
    if not (args.wheel_dir / "aiconfigurator_core" / "systems" / "data").is_dir():
        print(f"error: {args.wheel_dir}: no aiconfigurator_core/systems/data; pass the folder the wheel was "
              "unpacked into", file=sys.stderr)
        return 2
    try:
        import pandas  # noqa: F401
    except ImportError:
        print("error: pandas and pyarrow are needed to read the tables: pip install pandas pyarrow", file=sys.stderr)
        return 2
    for folder, profile in GPUS.items():
        for line in check_gpu(args.wheel_dir, folder, profile):
            print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
