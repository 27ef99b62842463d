"""Fit each engine's own custom all-reduce kernel per GPU to aiconfigurator-core's measured tables and
print the `custom_allreduce_latency_us_by_engine` line of every GPU profile's calibration section.

Each engine ships its own one-shot all-reduce for small messages: vLLM
(csrc/custom_all_reduce.cuh), SGLang (sgl-kernel custom_all_reduce) and TRT-LLM (allReduceFusion /
one-shot Lamport kernels). Their small-message latencies differ by chip: on B200 TRT-LLM's and
SGLang's kernels take about 5 us and vLLM's about 7.5 us, where on H100 all three are 3-5 us. One
latency per GPU (the vLLM table's) charged TRT-LLM and SGLang vLLM's B200 figure.

Tables (aiconfigurator-core wheel, newest version of each engine):
systems/data/<gpu>/comm/<engine>/<version>/custom_allreduce_perf.parquet, bf16, 2/4/8 GPUs (what the
GPU measured), messages below vLLM's 8 MiB custom-kernel limit, the CUDA-graph rows (vllm_graph,
sglang_graph; TRT-LLM's rows are graphed). Model, per engine and GPU, by least squares on log time
(the estimator's own formula, estimate/kernels._allreduce_s):
    t = latency + 2 (n - 1) / n x bytes / (NVLink bytes/s x link fraction).

Transfer (as scripts/fit_gpu_constants.py does for every fixed latency): the profile value is the
table's latency plus the in-service excess H100 serving runs show over the vLLM table on H100
(h100-sxm-80gb `custom_allreduce_latency_us`, fitted end to end, minus the vLLM H100 table fit):
launch gaps and rank skew at each collective, which do not scale with the chip. A GPU on the same
chip as another with at least its links (H200 beside H100) keeps at most that GPU's latency.

usage: python scripts/fit_engine_allreduce.py WHEEL_DIR     (needs pandas, pyarrow, scipy)
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import numpy as np

ENGINES = {"vllm": "vllm_graph", "sglang": "sglang_graph", "trtllm": "trtllm"}   # engine -> graphed rows
GPUS = {"h100_sxm": "h100-sxm-80gb", "h200_sxm": "h200-sxm-141gb", "b200_sxm": "b200-sxm-180gb",
        "b300_sxm": "b300-sxm-288gb", "gb200": "gb200-nvl72", "gb300": "gb300-nvl72"}
SAME_CHIP = {"h200-sxm-141gb": "h100-sxm-80gb"}     # GH100 with HBM3e: latencies at most H100's
ANCHOR = "h100_sxm"
CUSTOM_MAX_BYTES = 8 * 1024 * 1024   # vLLM custom_all_reduce.py max_size; the tables' rows above it run NCCL
MAX_ERROR_PCT = 60.0                 # a worse fit is not written (as fit_gpu_constants.COMM_MAX_ERROR_PCT)


def _version_key(v: str) -> tuple[int, ...]:
    return tuple(int(x) for x in re.findall(r"\d+", v))


def engine_table(root: Path, gpu: str, engine: str):
    """The newest custom all-reduce table of `engine` on `gpu`, graphed bf16 rows under the limit."""
    import pandas as pd
    paths = sorted((root / "aiconfigurator_core" / "systems" / "data" / gpu / "comm" / engine).glob(
        "*/custom_allreduce_perf.parquet"), key=lambda p: _version_key(p.parent.name))
    if not paths:
        return None, ""
    df = pd.read_parquet(paths[-1])
    col = "implementation" if "implementation" in df else "backend"
    df = df[(df[col] == ENGINES[engine]) & df.num_gpus.isin([2, 4, 8]) & (df.message_size * 2 < CUSTOM_MAX_BYTES)
            & df.allreduce_dtype.astype(str).str.contains("16")]
    return df, f"{engine} {paths[-1].parent.name}"


def fit_latency(df, link_bytes_s: float) -> tuple[float, float, float, int]:
    """(link fraction, latency us, rms log error %, rows) of t = lat + 2 (n-1)/n bytes / (link x le)."""
    from scipy.optimize import least_squares
    n = df.num_gpus.to_numpy(float)
    ring = 2.0 * (n - 1.0) / n * df.message_size.to_numpy(float) * 2.0    # bytes each GPU sends (bf16 elements)
    t_s = df.latency.to_numpy(float) * 1e-3                              # tables hold milliseconds

    def resid(x):
        return np.log(x[1] * 1e-6 + ring / (link_bytes_s * x[0])) - np.log(t_s)

    r = least_squares(resid, [0.5, 5.0], bounds=([0.01, 0.0], [1.0, 100.0]))
    return float(r.x[0]), float(r.x[1]), 100.0 * (np.exp(np.sqrt(np.mean(resid(r.x) ** 2))) - 1.0), len(t_s)


def main() -> int:
    if len(sys.argv) != 2 or not (Path(sys.argv[1]) / "aiconfigurator_core").is_dir():
        print("error: WHEEL_DIR: pass the folder the aiconfigurator-core wheel was unzipped into "
              "(it holds aiconfigurator_core/)", file=sys.stderr)
        return 2
    from apex_plan.hardware.load import load_gpu
    root = Path(sys.argv[1])
    fits: dict[str, dict[str, tuple]] = {}
    for g, name in GPUS.items():
        link = load_gpu(name).intra_node_bw_gbps * 1e9
        fits[name] = {}
        for e in ENGINES:
            df, src = engine_table(root, g, e)
            if df is not None and len(df):
                fits[name][e] = fit_latency(df, link) + (src,)
    anchor = GPUS[ANCHOR]
    excess = load_gpu(anchor).calibration.custom_allreduce_latency_us - fits[anchor]["vllm"][1]
    print(f"in-service excess over the tables: h100 custom_allreduce_latency_us "
          f"{load_gpu(anchor).calibration.custom_allreduce_latency_us} - vLLM H100 table fit "
          f"{fits[anchor]['vllm'][1]:.2f} = {excess:.2f} us")
    values: dict[str, dict[str, float]] = {}
    for name, per in fits.items():
        values[name] = {e: round(f[1] + excess, 2) for e, f in per.items() if f[2] <= MAX_ERROR_PCT}
        if name in SAME_CHIP:
            ref = values[SAME_CHIP[name]]
            values[name] = {e: min(v, ref.get(e, v)) for e, v in values[name].items()}
        for e, (le, lat, err, rows, src) in per.items():
            to = f"{values[name][e]:.2f} us" if e in values[name] else "not written (fit error)"
            print(f"{name:16} {e:7} table {src:20} lat {lat:5.2f} us  link {le:.3f}  err {err:3.0f}%  {rows} rows  -> {to}")
        line = ", ".join(f"{e}: {v:.2f}" for e, v in sorted(values[name].items()))
        print(f"  {name}: custom_allreduce_latency_us_by_engine: {{{line}}}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
