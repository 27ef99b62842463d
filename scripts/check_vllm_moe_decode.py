"""vLLM block-fp8 MoE decode on Hopper, layer by layer: the estimator's expert rows beside the wheel's Triton
table and beside what vLLM 0.11.1-0.1x actually runs there, DeepGEMM's grouped GEMM (a probe, not a fit).

Which kernel vLLM runs (vllm/model_executor/layers/quantization/fp8.py `get_fp8_moe_backend`, v0.11-0.13):
DEEPGEMM for block-quantized experts whenever `deep_gemm` is installed (VLLM_USE_DEEP_GEMM and
VLLM_MOE_USE_DEEP_GEMM default 1; PR #29346, 2025-11-24, turns it off at TP = 8 only); its experts are
`TritonOrDeepGemmExperts`, which takes DeepGEMM at every token count once `is_deep_gemm_e8m0_used()` (PR #26197,
2025-10-03: E8M0 scales on by default on Hopper too; before it, only from 128 tokens). The wheel's vLLM MoE
tables (moe/vllm/0.19.0 `vllm_fused_moe`, 0.24.0 `vllm_fp8moe_triton_tritonexperts`) time the Triton kernel, and
no table of the wheel times DeepGEMM's grouped MoE on Hopper. It is estimated here from the dense DeepGEMM
tables of the same chip (gemm/sglang `sglang_deepgemm_gemm_nt_f8f8bf16`, gemm/trtllm fp8_block: the fastest
per shape): m_grouped_fp8_gemm_nt_contiguous pads every expert's rows to the 128-row M alignment
(get_mk_alignment_for_contiguous_layout) and skips the padding blocks, so a layer costs
    touched experts x ceil(rows / 128) x (N / 128) output tiles, each t0 + K x c on one of the SMs,
t0 and c least squares on the dense tables' m = 128 rows of n >= 16384 (many tiles per SM). The same proxy
against the wheel's only grouped DeepGEMM MoE table (b200_sxm moe/trtllm 1.3.0rc20 `deepgemm`) is printed
with it: the check that the proxy holds.

Figures (2026-12-07, Qwen3-235B-A22B-FP8 shape hidden 4096, inter 1536, top-8 of 128; the proxy without the
layer's fixed time): H200, 16 decode tokens, moe tp 2: Triton table 0.32 ms a layer (balanced routing), the
estimator 0.25 ms (82 of 128 experts touched under uniform routing), DeepGEMM proxy 0.26 ms (uniform) / 0.40 ms
(balanced); moe tp 4: 0.19 / 0.15 / 0.14-0.22 ms. Tile fit t0 0.98 us + 5.0 ns x K. B200 check, balanced
routing: proxy / DeepGEMM table 1.16 at 16 tokens, 1.13-1.06 at 32-512 (tp 2); the table's ~60 us fixed time
at one token (permute, unpermute, activation quantisation) is not in the proxy. So the DeepGEMM path adds its
fixed time (~35-60 us a layer) to what the estimator already charges, 3-6 ms a token over 94 layers, while the
served vLLM 0.12 runs (calibration-h200-b200.csv) decode at ~52 ms a token at tp 2 (c8-16) against 33-35 ms
predicted: the kernel accounts for a fifth to a third of that gap (report vllmmoe, 2026-12-07).

    PYTHONPATH=.:PYARROW_DIR python scripts/check_vllm_moe_decode.py /work/aic/core   # the unpacked wheel
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import numpy as np

SHAPE = dict(hidden_size=4096, inter_size=1536, num_experts=128, topk=8)   # Qwen3-235B-A22B MoE layer
M_ALIGN = 128            # DeepGEMM SM90 contiguous layout: rows of each expert padded to 128 (get_mk_alignment...)
N_TILE = 128             # DeepGEMM output tile width (BLOCK_N 128 for these shapes)
TOKENS = (1, 4, 8, 16, 32, 64, 128, 512)


def _tables(root: Path, gpu: str, op: str, name: str, engines: tuple[str, ...]):
    """Every version's table `name` of `op` for `engines` on `gpu`, stacked."""
    import pandas as pd
    base = root / "aiconfigurator_core/systems/data" / gpu / op
    paths = [p for e in engines for p in sorted((base / e).glob(f"*/{name}"))]
    return pd.concat([pd.read_parquet(p) for p in paths], ignore_index=True)


def tile_fit(gemm, sms: int) -> tuple[float, float]:
    """(t0 us, c us per K element) of one 128 x 128 output tile of the dense DeepGEMM block-fp8 GEMM: least
    squares of latency = tiles / SMs x (t0 + K x c) on its m = 128 rows with n >= 16384."""
    g = gemm[(gemm.gemm_dtype == "fp8_block") & (gemm.m == M_ALIGN) & (gemm.n >= 16384)
             & gemm.kernel_source.str.contains("deepgemm|torch_flow")]
    g = g.groupby(["n", "k"]).latency.min().reset_index()
    waves = g.n / N_TILE / sms                               # tiles per SM
    a = np.stack([waves, waves * g.k], axis=1)
    (t0, c), *_ = np.linalg.lstsq(a, g.latency.to_numpy() * 1e3, rcond=None)
    return float(t0), float(c)


def deepgemm_layer_us(tokens: int, tp: int, touched: float, fit: tuple[float, float], sms: int) -> float:
    """DeepGEMM grouped-contiguous MoE layer (gate/up then down) of `tokens` tokens over `touched` experts."""
    t0, c = fit
    inter = SHAPE["inter_size"] // tp
    row_tiles = math.ceil(tokens * SHAPE["topk"] / touched / M_ALIGN)   # 128-row blocks per touched expert
    us = 0.0
    for n, k in ((2 * inter, SHAPE["hidden_size"]), (SHAPE["hidden_size"], inter)):
        tiles = touched * row_tiles * n / N_TILE                         # output tiles of this grouped GEMM
        us += tiles / sms * (t0 + k * c)
    return us


def _moe_us(moe, kernel: str, tp: int, tokens: int) -> float:
    """The table's fastest balanced-routing time of `kernel` for this shape, ep 1, us (nan when absent)."""
    s = moe[moe.kernel_source.str.contains(kernel) & (moe.moe_dtype == "fp8_block") & (moe.moe_tp_size == tp)
            & (moe.moe_ep_size == 1) & (moe.distribution == "balanced") & (moe.num_tokens == tokens)]
    for key, v in SHAPE.items():
        s = s[s[key] == v]
    return float(s.latency.min()) * 1e3 if len(s) else float("nan")


def _model_us(tp: int, tokens: int) -> float:
    """The estimator's two expert rows at `tokens` decode tokens (vLLM 0.12, H200, tp = moe tp), us."""
    from apex_plan.abi import GEMM_ROUTED_EXPERTS
    from apex_plan.engine.load import resolve_engine_profile
    from apex_plan.estimate import kernels as K
    from apex_plan.estimate.step_cost import build_step_cost
    from apex_plan.hardware.load import load_gpu, make_cluster
    from apex_plan.model.load import load_model
    from apex_plan.plan.spec import Plan
    gpu = load_gpu("h200-sxm-141gb")
    sc = build_step_cost(load_model("Qwen/Qwen3-235B-A22B-FP8"), gpu, Plan(tp=tp, weight_dtype="fp8", kv_dtype="bf16"),
                         make_cluster(gpu, tp), profile=resolve_engine_profile("vllm@0.12.0"))
    p, ops = sc.params[0], sc.cost.ops
    sh = K.aggregate(K.make_batch(tokens, 2000, 0, 0, True), p["window_tokens"], p["topk_tokens"], p["window2_tokens"], 0)
    return sum(float(K._op_time(p, sh, ops[i], float(tokens), float(tokens))[0]) * 1e6
               for i, g in enumerate(sc.shard.gemms) if g.kind == GEMM_ROUTED_EXPERTS)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("wheel_dir", type=Path, help="folder holding aiconfigurator_core/ (the unpacked wheel)")
    a = ap.parse_args()
    e, k = SHAPE["num_experts"], SHAPE["topk"]
    for gpu, sms in (("h200_sxm", 132), ("b200_sxm", 148)):
        fit = tile_fit(_tables(a.wheel_dir, gpu, "gemm", "gemm_perf.parquet", ("sglang", "trtllm")), sms)
        moe = _tables(a.wheel_dir, gpu, "moe", "moe_perf.parquet", ("vllm", "trtllm"))
        print(f"{gpu}: DeepGEMM tile t0 {fit[0]:.2f} us + {fit[1] * 1e3:.2f} ns x K (dense tables, m = 128)")
        for tp in (1, 2, 4):
            for t in TOKENS:
                rand = e * (1.0 - (1.0 - k / e) ** t)              # experts touched under uniform top-k routing
                bal = min(e, t * k)                                # under the tables' balanced routing
                dg = deepgemm_layer_us(t, tp, bal, fit, sms)
                line = (f"  moe tp{tp} {t:4d} tok: Triton table {_moe_us(moe, 'fused_moe|tritonexperts', tp, t):6.1f} us,"
                        f" DeepGEMM proxy {deepgemm_layer_us(t, tp, rand, fit, sms):6.1f} (uniform) / {dg:6.1f} (balanced)")
                if gpu == "b200_sxm":
                    line += f", DeepGEMM table {_moe_us(moe, '^deepgemm$', tp, t):6.1f}"
                else:
                    line += f", estimator {_model_us(tp, t):6.1f}"
                print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
