#!/usr/bin/env python3
"""Fit the expert-popularity skew law of `apex_plan.estimate.moe.popularity_skew` to aiconfigurator's
measured MoE kernels.

aiconfigurator-core times each engine's MoE kernel per GPU under balanced routing and under the
power-law expert popularity it assumes for DeepSeek-family models (alpha 1.01, sdk/models/deepseek.py):
systems/data/<gpu>/moe/<engine>/<version>/moe_perf.parquet, column `distribution`. The ratio of the two
latencies at many tokens per step (>= 4096, where the busiest rank's share of the tokens, not the
statistical spread, sets it) is the busiest EP rank's slowdown from the skew. This prints its median
per ep and the slope s of c(ep) = 1 + s log2(ep) (least squares through c(1) = 1 on those medians,
ep 2..32), with each GPU left out in turn and per engine.

    python scripts/fit_moe_skew.py /work/aic/core/aiconfigurator_core

Needs pandas with a parquet engine (pyarrow).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

MIN_TOKENS = 4096
EP_RANGE = (2, 32)


def ratios(root: Path):
    """One row per measured shape with both distributions: its power-law / balanced latency ratio."""
    import pandas as pd
    frames = []
    for path in sorted(root.glob("systems/data/*/moe/*/*/moe_perf.parquet")):
        df = pd.read_parquet(path)
        if "distribution" not in df:
            continue
        keys = [k for k in ("kernel_source", "moe_dtype", "num_tokens", "hidden_size", "inter_size", "topk",
                            "num_experts", "moe_tp_size", "moe_ep_size") if k in df]
        piv = df.pivot_table(index=keys, columns="distribution", values="latency", aggfunc="min").reset_index()
        if "balanced" not in piv or "power_law_1.01" not in piv:
            continue
        piv["ratio"] = piv["power_law_1.01"] / piv["balanced"]
        piv["gpu"], piv["engine"] = path.parts[-5], path.parts[-3]
        frames.append(piv.dropna(subset=["ratio"]))
    if not frames:
        raise SystemExit(f"{root}: no systems/data/<gpu>/moe/<engine>/<version>/moe_perf.parquet with both "
                         "distributions; give the unpacked aiconfigurator_core folder")
    return pd.concat(frames)


def slope(df) -> tuple[float, dict]:
    """s of 1 + s log2(ep) through the per-ep medians (least squares), and the medians."""
    import numpy as np
    med = df.groupby("moe_ep_size")["ratio"].median()
    lg = np.log2(np.asarray(med.index, float))
    return float(((med.values - 1.0) * lg).sum() / (lg ** 2).sum()), {int(k): round(v, 3) for k, v in med.items()}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("root", type=Path, help="the unpacked aiconfigurator_core folder")
    args = ap.parse_args(argv)
    d = ratios(args.root)
    big = d[(d.num_tokens >= MIN_TOKENS) & (d.moe_ep_size >= EP_RANGE[0]) & (d.moe_ep_size <= EP_RANGE[1])]
    s, med = slope(big)
    wide = d[(d.num_tokens >= MIN_TOKENS) & (d.moe_ep_size > EP_RANGE[1])]
    print(f"power-law 1.01 / balanced latency, >= {MIN_TOKENS} tokens, median per ep: {med}")
    print(f"  beyond ep {EP_RANGE[1]}: {slope(wide)[1] if len(wide) else {}}")
    print(f"c(ep) = 1 + s log2(ep): s = {s:.4f} per doubling, c(8) = {1 + 3 * s:.3f}  ({len(big)} shapes)")
    for gpu in sorted(big.gpu.unique()):
        print(f"  leaving {gpu} out: s = {slope(big[big.gpu != gpu])[0]:.4f}")
    for eng in sorted(big.engine.unique()):
        print(f"  {eng} alone: s = {slope(big[big.engine == eng])[0]:.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
