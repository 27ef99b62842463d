"""The MoE all-to-all backend as the engines spell it: `--all2all-backend` (vLLM) or `--moe-a2a-backend` (SGLang,
with `--deepep-mode`), turned into the profile's `Layouts.moe_dispatch` / `a2a_decode_kernel` that the cost
model reads (`estimate.moe`, `estimate.step_cost`), and back into launch flags.

Spellings and meanings (engine source):
* vLLM `--all2all-backend` (vllm/config/parallel.py `All2AllBackend`, default allgather_reducescatter):
  allgather_reducescatter: every rank's tokens all-gathered before the experts, the output reduce-scattered
  (dispatch allgather); deepep_high_throughput: DeepEP's normal kernels on every step (alltoall, decode
  kernel normal); deepep_low_latency: DeepEP's low-latency kernels (alltoall, decode kernel low_latency).
* SGLang `--moe-a2a-backend` (srt/server_args.py MOE_A2A_BACKEND_CHOICES, default none): none: the
  attention-DP global buffer (srt/layers/dp_attention.py; dispatch dp_buffer); deepep: DeepEP
  dispatch/combine (alltoall). `--deepep-mode` (normal | low_latency | auto, default auto: "low_latency
  for decode batch and normal for prefill batch") sets the decode kernel: auto and low_latency take the
  low-latency kernels on decode-only steps, normal the normal ones.
The model costs steps that carry prefill tokens with the normal kernels in every mode, so vLLM's
deepep_low_latency and SGLang's low_latency mode are modelled as auto: exact for decode-only instances
(a disaggregated decode pool), optimistic for mixed steps of an aggregated instance (the low-latency
kernels send a copy per routed expert, the normal ones one per destination rank).
Other backends the engines list (pplx, naive, mori, nixl_ep, flashinfer_*, mooncake, ...) are not
modelled and are refused. TRT-LLM picks its MoE communication itself (an all-to-all needs MNNVL):
the options are refused for it.
"""

from __future__ import annotations

import dataclasses

from apex_plan.errors import InputError, did_you_mean

# backend -> (Layouts.moe_dispatch, Layouts.a2a_decode_kernel; None: the mode's)
VLLM_BACKENDS = {"allgather_reducescatter": ("allgather", None), "deepep_high_throughput": ("alltoall", "normal"),
                 "deepep_low_latency": ("alltoall", "low_latency")}
SGLANG_BACKENDS = {"none": ("dp_buffer", None), "deepep": ("alltoall", None)}
DEEPEP_MODES = {"auto": "low_latency", "low_latency": "low_latency", "normal": "normal"}   # mode -> decode kernel
OPTION = "--all2all-backend"


def with_all2all(profile, backend: str | None, deepep_mode: str | None = None):
    """`profile` with its MoE token movement set by the backend the user named (module docstring); the profile
    itself when neither option is given. Bad values raise an InputError naming the option and the choices."""
    if backend is None and deepep_mode is None:
        return profile
    fam = profile.family
    if fam == "trtllm":
        raise InputError(OPTION, None, "TRT-LLM chooses its MoE communication itself (no such option)",
                         "drop --all2all-backend / --deepep-mode, or use --engine vllm or sglang")
    if deepep_mode is not None and deepep_mode not in DEEPEP_MODES:
        raise InputError("--deepep-mode", None, f"unknown mode '{deepep_mode}'",
                         did_you_mean(deepep_mode, DEEPEP_MODES) or "use " + ", ".join(DEEPEP_MODES))
    table = VLLM_BACKENDS if fam == "vllm" else SGLANG_BACKENDS
    other = SGLANG_BACKENDS if fam == "vllm" else VLLM_BACKENDS
    if deepep_mode is not None and fam != "sglang":
        raise InputError("--deepep-mode", None, f"is an SGLang option, not {fam}'s",
                         "use --all2all-backend deepep_low_latency or deepep_high_throughput")
    if backend is None:
        backend = "deepep"                        # --deepep-mode alone: SGLang with DeepEP
    if backend not in table:
        hint = (f"'{backend}' is {'SGLang' if fam == 'vllm' else 'vLLM'}'s spelling; " if backend in other else "")
        raise InputError(OPTION, None, f"{hint}{fam} backend '{backend}' is not modelled",
                         did_you_mean(backend, table) or "use " + ", ".join(table))
    if deepep_mode is not None and backend != "deepep":
        raise InputError("--deepep-mode", None, f"needs --moe-a2a-backend deepep, not '{backend}'",
                         "add --moe-a2a-backend deepep or drop --deepep-mode")
    dispatch, kernel = table[backend]
    if dispatch != "alltoall":
        kernel = profile.layouts.a2a_decode_kernel          # read only by alltoall dispatch
    elif kernel is None:
        kernel = DEEPEP_MODES[deepep_mode or "auto"]
    layouts = dataclasses.replace(profile.layouts, moe_dispatch=dispatch, a2a_decode_kernel=kernel)
    if dispatch == "alltoall":
        # DeepEP holds whole experts per rank over the instance: SGLang sets ep_size = tp_size with deepep
        # (srt/server_args.py _handle_a2a_moe), vLLM's --enable-expert-parallel is all ranks already
        layouts = dataclasses.replace(layouts, ep_degrees="all")
    return dataclasses.replace(profile, layouts=layouts)


def launch_flags(family: str, layouts, ep: int, adp: int) -> list[str]:
    """The engine flags that start a replica with `layouts`' MoE token movement; [] for the engine's default
    (vLLM allgather_reducescatter, SGLang none), or a replica without expert parallelism or attention DP
    (whose tokens the model moves as tensor parallelism does: `estimate.step_cost`)."""
    if ep <= 1 or adp <= 1 or layouts.moe_dispatch != "alltoall":
        return []
    low = layouts.a2a_decode_kernel == "low_latency"
    if family == "vllm":
        return ["--all2all-backend", "deepep_low_latency" if low else "deepep_high_throughput"]
    if family == "sglang":
        return ["--moe-a2a-backend", "deepep", "--deepep-mode", "auto" if low else "normal"]
    return []
