"""Fit each engine's own custom all-reduce kernel per GPU to aiconfigurator-core's measured tables and
print the `custom_allreduce_latency_us_by_engine` line of every GPU profile's calibration section.

Each engine ships its own one-shot all-reduce for small messages: vLLM
(csrc/custom_all_reduce.cuh), SGLang (sgl-kernel custom_all_reduce) and TRT-LLM (allReduceFusion /
one-shot Lamport kernels). Their small-message latencies differ by chip: on B200 TRT-LLM's and
SGLang's kernels take about 5 us and vLLM's about 7.5 us, where on H100 all three are 3-5 us. One
latency per GPU (the vLLM table's) charged TRT-LLM and SGLang vLLM's B200 figure.

Tables (aiconfigurator-core wheel, newest version of each engine):
systems/data/<gpu>/comm/<engine>/<version>/custom_allreduce_perf.parquet, bf16, 2/4/8 GPUs (what the
GPU measured), messages below the engine's custom-kernel limit (vLLM/SGLang 8 MiB, TRT-LLM 16 MiB), the
CUDA-graph rows (vllm_graph, sglang_graph; TRT-LLM's rows are graphed). Model (estimate/kernels._allreduce_s),
fitted per engine and GPU on all three world sizes at once, by robust least squares on log time:
    one-shot  t1 = latency + (n - 1) x bytes / (NVLink bytes/s x f1)      every rank reads each peer's buffer
    two-shot  t2 = latency + extra + 2 (n - 1) / n x bytes / (NVLink x f2) reduce-scatter + all-gather, 2 barriers
    t = min(t1, t2)   (vLLM custom_all_reduce.cuh picks 1-stage below 512 / 256 KiB at 4 / 8 ranks, else 2-stage;
                       TRT-LLM allReduceStrategy AUTO picks ONESHOT / TWOSHOT by size and ranks)
The single-formula fit (latency + ring term) missed the tables by 13-28 % rms: at 8 ranks a one-shot kernel
moves 7 x the message, not 1.75 x (B200 TRT-LLM, 1 MiB at TP8: 17.8 us measured, 9 us by the ring term).

Transfer (as scripts/fit_gpu_constants.py does for every fixed latency): the profile latency is the
table's latency plus the in-service excess H100 serving runs show over the vLLM table on H100
(h100-sxm-80gb `custom_allreduce_latency_us`, fitted end to end, minus the vLLM H100 table fit):
launch gaps and rank skew at each collective, which do not scale with the chip. A GPU on the same
chip as another with at least its links (H200 beside H100) keeps at most that GPU's latency. The
link fractions and the two-shot extra latency are the table's own (kernel physics).

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
# an engine whose table on this GPU does not fit (error > MAX_ERROR_PCT) takes the same chip's fit: the NVL72 trays carry
# the HGX board's GPU and NVLink 5 switch ports (GB300: B300's Blackwell Ultra, GB200: B200's)
FALLBACK_CHIP = {"gb300-nvl72": "b300-sxm-288gb", "gb200-nvl72": "b200-sxm-180gb"}
ANCHOR = "h100_sxm"
CUSTOM_MAX_BYTES = {"vllm": 8 * 2**20, "sglang": 8 * 2**20,   # vLLM custom_all_reduce.py max_size (SGLang the same);
                    "trtllm": 16 * 2**20}                     # TRT-LLM custom AllReduce up to 16 MiB; rows above run NCCL
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
    df = df[(df[col] == ENGINES[engine]) & df.num_gpus.isin([2, 4, 8]) & (df.message_size * 2 < CUSTOM_MAX_BYTES[engine])
            & df.allreduce_dtype.astype(str).str.contains("16")]
    return df, f"{engine} {paths[-1].parent.name}"


def shots_s(x, n, nbytes, link_bytes_s):
    """Seconds of an all-reduce of `nbytes` over n ranks: the faster of one-shot and two-shot.
    x = (latency us, one-shot link fraction, two-shot extra latency us, two-shot link fraction)."""
    lat_us, f1, extra_us, f2 = x
    # one-shot: each rank reads the n - 1 peers' whole buffers over its links
    one = lat_us * 1e-6 + (n - 1.0) * nbytes / (link_bytes_s * f1)
    # two-shot: reduce-scatter then all-gather, 2 (n - 1) / n of the message each way, one more barrier
    two = (lat_us + extra_us) * 1e-6 + 2.0 * (n - 1.0) / n * nbytes / (link_bytes_s * f2)
    return np.minimum(one, two)


def fit_latency(df, link_bytes_s: float) -> tuple[tuple[float, ...], float, int]:
    """((latency us, one-shot fraction, two-shot extra us, two-shot fraction), rms log error %, rows)."""
    from scipy.optimize import least_squares
    n = df.num_gpus.to_numpy(float)
    nbytes = df.message_size.to_numpy(float) * 2.0                      # bf16 elements
    t_s = df.latency.to_numpy(float) * 1e-3                              # tables hold milliseconds

    def resid(x):
        return np.log(shots_s(x, n, nbytes, link_bytes_s)) - np.log(t_s)

    # soft-L1: a few rows of the tables are single slow samples (H100 SGLang 0.5.14 TP8 at 1 KiB: 38 us)
    r = least_squares(resid, [5.0, 0.5, 5.0, 0.5], bounds=([0.0, 0.05, 0.0, 0.05], [100.0, 1.0, 100.0, 1.0]),
                      loss="soft_l1", f_scale=0.1)
    return tuple(float(v) for v in r.x), 100.0 * (np.exp(np.sqrt(np.mean(resid(r.x) ** 2))) - 1.0), len(t_s)


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
    excess = load_gpu(anchor).calibration.custom_allreduce_latency_us - fits[anchor]["vllm"][0][0]
    print(f"in-service excess over the tables: h100 custom_allreduce_latency_us "
          f"{load_gpu(anchor).calibration.custom_allreduce_latency_us} - vLLM H100 table fit "
          f"{fits[anchor]['vllm'][0][0]:.2f} = {excess:.2f} us")
    for name, per in fits.items():
        ok = {e: f for e, f in per.items() if f[1] <= MAX_ERROR_PCT}
        lats = {e: round(f[0][0] + excess, 2) for e, f in ok.items()}
        for e in ENGINES:                  # no usable table here: the same chip's fit, if it has one
            twin = fits.get(FALLBACK_CHIP.get(name, ""), {}).get(e)
            if e not in ok and twin is not None and twin[1] <= MAX_ERROR_PCT:
                ok[e], lats[e] = twin, round(twin[0][0] + excess, 2)
                print(f"{name:16} {e:7} -> {FALLBACK_CHIP[name]}'s fit (same chip)")
        if name in SAME_CHIP:
            ref = load_gpu(SAME_CHIP[name]).calibration.custom_allreduce_us
            lats = {e: min(v, ref(e)) for e, v in lats.items()}
        for e, (x, err, rows, src) in per.items():
            to = f"{lats[e]:.2f} us" if e in lats else "not written (fit error)"
            print(f"{name:16} {e:7} table {src:20} lat {x[0]:5.2f} us  one-shot {x[1]:.3f}  two-shot +{x[2]:5.2f} us "
                  f"{x[3]:.3f}  err {err:3.0f}%  {rows} rows  -> {to}")

        def line(vals):
            return "{" + ", ".join(f"{e}: {v}" for e, v in sorted(vals.items())) + "}"
        print(f"  {name}:")
        print(f"  custom_allreduce_latency_us_by_engine: {line({e: f'{v:.2f}' for e, v in lats.items()})}")
        print(f"  allreduce_1shot_efficiency_by_engine: {line({e: f'{f[0][1]:.3f}' for e, f in ok.items()})}")
        print(f"  allreduce_2shot_latency_us_by_engine: {line({e: f'{f[0][2]:.2f}' for e, f in ok.items()})}")
        print(f"  allreduce_2shot_efficiency_by_engine: {line({e: f'{f[0][3]:.3f}' for e, f in ok.items()})}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
