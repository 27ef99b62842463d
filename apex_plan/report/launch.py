"""The command that starts one replica of a plan on its engine, so a planner can run what was
recommended. Flag spellings are each engine's own:

* vLLM: `vllm serve MODEL` (vLLM docs, "OpenAI-compatible server" / engine arguments):
  --tensor-parallel-size, --pipeline-parallel-size, --enable-expert-parallel, --max-num-seqs,
  --max-num-batched-tokens, --max-model-len, --enable-chunked-prefill, --gpu-memory-utilization,
  --block-size, --kv-cache-dtype, --quantization, --disable-custom-all-reduce, --data-parallel-size
  (attention-DP ranks; with --enable-expert-parallel the experts span tp x dp GPUs). In vLLM 0.6
  `--enable-chunked-prefill` takes an optional boolean (arg_utils: StoreBoolean, nargs="?"), so
  `--enable-chunked-prefill=False` pins it off where the length rule would turn it on.
* SGLang: `python -m sglang.launch_server --model-path MODEL` (SGLang docs, "Server Arguments"):
  --tp-size, --pp-size, --ep-size, --dp-size with --enable-dp-attention, --max-running-requests,
  --chunked-prefill-size (-1 disables chunking), --context-length, --mem-fraction-static,
  --page-size, --kv-cache-dtype, --quantization, --disable-custom-all-reduce.
* TensorRT-LLM: `trtllm-serve MODEL` (TensorRT-LLM docs, "trtllm-serve"): --backend pytorch,
  --tp_size, --pp_size, --ep_size, --max_batch_size, --max_num_tokens, --max_seq_len,
  --kv_cache_free_gpu_memory_fraction. Attention-DP is a YAML option there (enable_attention_dp in
  --extra_llm_api_options), not a flag: for adp > 1 the command sets --tp_size to every GPU of a
  stage and the YAML option must be added by hand.

Quantisation: a checkpoint already in the plan's format (its config.json says `quantization_config`)
needs no flag, vLLM and SGLang read the method from it (vLLM engine args: "--quantization ... If None,
we first check the quantization_config attribute in the model config file"); bf16 weights served as
fp8 take `--quantization fp8` (online dynamic FP8 in both). No engine quantises online to fp4, int4 or
int8 (nor trtllm-serve to fp8): such a plan needs a checkpoint in that format, and its command says so
in a trailing comment.

`parse_launch` reads a command back (tests check the round trip against the plan).
"""

from __future__ import annotations

import json
import shlex
from dataclasses import dataclass

from apex_plan.plan.spec import Plan, expert_slots
from apex_plan.simulate.metrics import Record

# KV-cache dtype names of each engine for the planner's dtypes
_KV = {"vllm": {"fp8": "fp8"}, "sglang": {"fp8": "fp8_e4m3"}, "trtllm": {}}
ONLINE_QUANT = ("fp8",)          # weight dtypes vLLM and SGLang quantise to at load (--quantization fp8);
                                 # trtllm-serve loads the checkpoint's own quantisation only
_UNQUANTISED = ("bf16", "fp16", "fp32")


def _quant_flag(plan: Plan, prequantized: bool) -> list[str]:
    """--quantization for bf16 weights served as fp8; nothing for a checkpoint already quantised."""
    if prequantized or plan.weight_dtype in _UNQUANTISED or plan.weight_dtype not in ONLINE_QUANT:
        return []
    return ["--quantization", plan.weight_dtype]


def _a2a_flags(family: str, engine, plan: Plan) -> list[str]:
    """The MoE all-to-all backend flags of the engine's layouts (`engine.all2all.launch_flags`)."""
    from apex_plan.engine.all2all import launch_flags
    prof = getattr(engine, "profile", None)
    return launch_flags(family, prof.layouts, plan.ep, getattr(plan, "adp", 1)) if prof is not None else []


def _eplb_flags(family: str, num_experts: int, ep: int) -> tuple[list[str], str]:
    """Flags (and, for trtllm-serve, a comment) that give an ep which does not divide the experts its
    redundant expert slots (plan.spec.expert_slots; the engine profiles' layouts.redundant_experts)."""
    slots = expert_slots(num_experts, ep)
    extra = slots - num_experts
    if extra <= 0:
        return [], ""
    if family == "sglang":
        return ["--enable-eplb", "--ep-num-redundant-experts", str(extra)], ""
    if family == "trtllm":
        return [], f"  # with moe_config: {{load_balancer: {{num_slots: {slots}}}}} in --extra_llm_api_options"
    return ["--enable-eplb", "--eplb-config", json.dumps({"num_redundant_experts": extra})], ""


def launch_command(family: str, model_repo: str, plan: Plan, engine, prequantized: bool = False,
                   remote_code: bool = False, num_experts: int = 0) -> str:
    """One replica's launch command. `engine` has the resolved settings: max_num_seqs,
    max_batched_tokens, chunked_prefill, block_size, gpu_memory_utilization, max_model_len,
    custom_allreduce; `prequantized`: `model_repo`'s checkpoint is already in the plan's weight dtype;
    `remote_code`: its config names its own modelling code (ModelSpec.remote_code), which vLLM and SGLang
    load with --trust-remote-code and trtllm-serve with --trust_remote_code; `num_experts`: the model's
    routed experts (redundant slots are asked for when plan.ep does not divide them)."""
    e = engine
    eplb, eplb_note = _eplb_flags(family, num_experts, plan.ep)
    if family == "sglang":
        adp = getattr(plan, "adp", 1)
        # attention-DP: --tp-size counts every GPU of a stage, --dp-size the attention ranks among them
        a = ["python", "-m", "sglang.launch_server", "--model-path", model_repo, "--tp-size", str(plan.tp * adp)]
        if adp > 1:
            a += ["--dp-size", str(adp), "--enable-dp-attention"]
        if plan.pp > 1:
            a += ["--pp-size", str(plan.pp)]
        if plan.ep > 1:
            a += ["--ep-size", str(plan.ep)]
        a += ["--max-running-requests", str(e.max_num_seqs), "--context-length", str(e.max_model_len),
              "--chunked-prefill-size", str(e.max_batched_tokens if e.chunked_prefill else -1),
              "--mem-fraction-static", f"{e.gpu_memory_utilization:g}", "--page-size", str(e.block_size)]
        if plan.kv_dtype in _KV["sglang"]:
            a += ["--kv-cache-dtype", _KV["sglang"][plan.kv_dtype]]
        a += _quant_flag(plan, prequantized)
        if not e.custom_allreduce:
            a += ["--disable-custom-all-reduce"]
        a += _a2a_flags(family, e, plan)
    elif family == "trtllm":
        a = ["trtllm-serve", model_repo, "--backend", "pytorch", "--tp_size", str(plan.tp * getattr(plan, "adp", 1)),
             "--pp_size", str(plan.pp)]
        if plan.ep > 1:
            a += ["--ep_size", str(plan.ep)]
        a += ["--max_batch_size", str(e.max_num_seqs), "--max_num_tokens", str(e.max_batched_tokens),
              "--max_seq_len", str(e.max_model_len),
              "--kv_cache_free_gpu_memory_fraction", f"{e.gpu_memory_utilization:g}"]
    else:
        a = ["vllm", "serve", model_repo, "--tensor-parallel-size", str(plan.tp)]
        if getattr(plan, "adp", 1) > 1:      # attention on data-parallel ranks, experts over all of them
            a += ["--data-parallel-size", str(plan.adp)]
        if plan.pp > 1:
            a += ["--pipeline-parallel-size", str(plan.pp)]
        if plan.ep > 1:
            a += ["--enable-expert-parallel"]
        a += ["--max-num-seqs", str(e.max_num_seqs), "--max-num-batched-tokens", str(e.max_batched_tokens),
              "--max-model-len", str(e.max_model_len), "--gpu-memory-utilization", f"{e.gpu_memory_utilization:g}",
              "--block-size", str(e.block_size)]
        a += ["--enable-chunked-prefill"] if e.chunked_prefill else ["--enable-chunked-prefill=False"]
        if plan.kv_dtype in _KV["vllm"]:
            a += ["--kv-cache-dtype", _KV["vllm"][plan.kv_dtype]]
        a += _quant_flag(plan, prequantized)
        if not e.custom_allreduce:
            a += ["--disable-custom-all-reduce"]
        a += _a2a_flags(family, e, plan)
    a += eplb
    if remote_code:
        a += ["--trust_remote_code" if family == "trtllm" else "--trust-remote-code"]
    cmd = shlex.join(a) + eplb_note
    online = ONLINE_QUANT if family in ("vllm", "sglang") else ()
    if not prequantized and plan.weight_dtype not in _UNQUANTISED + online:
        cmd += (f"  # needs a {plan.weight_dtype} checkpoint of {model_repo} ({family} does not quantise weights to "
                f"{plan.weight_dtype} at load)")
    return cmd


_INT_FLAGS = {
    "--tensor-parallel-size": "tp", "--pipeline-parallel-size": "pp", "--data-parallel-size": "adp", "--dp-size": "adp", "--max-num-seqs": "max_num_seqs",
    "--max-num-batched-tokens": "max_batched_tokens", "--max-model-len": "max_model_len", "--block-size": "block_size",
    "--tp-size": "tp", "--pp-size": "pp", "--ep-size": "ep", "--max-running-requests": "max_num_seqs",
    "--context-length": "max_model_len", "--page-size": "block_size", "--chunked-prefill-size": "chunk",
    "--tp_size": "tp", "--pp_size": "pp", "--ep_size": "ep", "--max_batch_size": "max_num_seqs",
    "--max_num_tokens": "max_batched_tokens", "--max_seq_len": "max_model_len",
}
_FLOAT_FLAGS = {"--gpu-memory-utilization", "--mem-fraction-static", "--kv_cache_free_gpu_memory_fraction"}


def parse_launch(cmd: str) -> dict:
    """The parallel sizes and engine settings a launch command sets (for the round-trip test)."""
    a = shlex.split(cmd.split("  # ", 1)[0])
    out: dict = {"tp": 1, "pp": 1, "ep": 1, "adp": 1, "custom_allreduce": True, "kv_cache_dtype": None,
                 "quantization": None}
    i = 0
    while i < len(a):
        f = a[i]
        if f in _INT_FLAGS:
            out[_INT_FLAGS[f]] = int(a[i + 1])
            i += 1
        elif f in _FLOAT_FLAGS:
            out["gpu_memory_utilization"] = float(a[i + 1])
            i += 1
        elif f in ("--kv-cache-dtype", "--quantization"):
            out[f[2:].replace("-", "_")] = a[i + 1]
            i += 1
        elif f.startswith("--enable-chunked-prefill"):
            out["chunked_prefill"] = not f.endswith("=False")
        elif f == "--enable-expert-parallel":
            out["ep"] = out["tp"] * out["adp"]
        elif f == "--enable-dp-attention":
            out["dp_attention"] = True
        elif f == "--disable-custom-all-reduce":
            out["custom_allreduce"] = False
        i += 1
    if out.pop("dp_attention", False):       # SGLang: --tp-size counts the attention-DP ranks' GPUs too
        out["tp"] //= out["adp"]
    if "chunk" in out:
        out["chunked_prefill"] = out["chunk"] > 0
        if out["chunked_prefill"]:
            out["max_batched_tokens"] = out["chunk"]
        del out["chunk"]
    return out


# ---- disaggregated deployments ------------------------------------------------------------------
# SGLang PD (docs "PD Disaggregation"): each worker is a launch_server with --disaggregation-mode
# prefill|decode and a transfer backend (mooncake | nixl); the sglang_router joins them
# (--pd-disaggregation --prefill URL [BOOTSTRAP_PORT] --decode URL).
# vLLM (docs "NixlConnector Usage"): every instance is a `vllm serve` with
# --kv-transfer-config '{"kv_connector":"NixlConnector","kv_role":"kv_both"}', fronted by a proxy
# or NVIDIA Dynamo that sends each request to a prefill instance, then to a decode instance.
# TensorRT-LLM (docs "Disaggregated Serving"): context and generation workers are trtllm-serve
# instances whose --extra_llm_api_options YAML sets cache_transceiver_config (backend UCX / NIXL);
# `trtllm-serve disaggregated -c disagg.yaml` lists context_servers and generation_servers.
_VLLM_KV_TRANSFER = '{"kv_connector":"NixlConnector","kv_role":"kv_both"}'


@dataclass(frozen=True)
class DisaggLaunch(Record):
    """A disaggregated deployment's commands: each role's (run on every one of its instances) and the router's."""
    prefill: str
    prefill_instances: int
    decode: str
    decode_instances: int
    router: str


def _with_flags(cmd: str, flags: str) -> str:
    """`cmd` with `flags` added to the command, ahead of its trailing '  # ' comment if it has one."""
    head, sep, note = cmd.partition("  # ")
    return head + flags + sep + note


def disagg_launch(family: str, model_repo: str, dplan, eng_prefill, eng_decode, prequantized: bool = False,
                  remote_code: bool = False, num_experts: int = 0) -> DisaggLaunch:
    """The commands that start a disaggregated deployment: one per role (run it on each of that
    role's instances), and the router or front end that joins them. `prequantized`, `remote_code`,
    `num_experts`: as in `launch_command`."""
    pre = launch_command(family, model_repo, dplan.prefill, eng_prefill, prequantized, remote_code, num_experts)
    dec = launch_command(family, model_repo, dplan.decode, eng_decode, prequantized, remote_code, num_experts)
    n_p, n_d = dplan.prefill_replicas, dplan.decode_replicas
    if family == "sglang":
        pre = _with_flags(pre, " --disaggregation-mode prefill --disaggregation-transfer-backend mooncake")
        dec = _with_flags(dec, " --disaggregation-mode decode --disaggregation-transfer-backend mooncake")
        router = ("python -m sglang_router.launch_router --pd-disaggregation "
                  + " ".join(f"--prefill http://PREFILL_{i}:30000 8998" for i in range(n_p)) + " "
                  + " ".join(f"--decode http://DECODE_{i}:30000" for i in range(n_d)))
    elif family == "trtllm":
        pre = _with_flags(pre, " --extra_llm_api_options prefill.yaml")
        dec = _with_flags(dec, " --extra_llm_api_options decode.yaml")
        router = ("trtllm-serve disaggregated -c disagg.yaml   # context_servers: num_instances "
                  f"{n_p}; generation_servers: num_instances {n_d}; both YAMLs: "
                  "cache_transceiver_config: {backend: UCX}"
                  + ("; enable_attention_dp: true where adp > 1" if max(dplan.prefill.adp, dplan.decode.adp) > 1 else ""))
    else:
        pre = _with_flags(pre, " --kv-transfer-config " + shlex.quote(_VLLM_KV_TRANSFER))
        dec = _with_flags(dec, " --kv-transfer-config " + shlex.quote(_VLLM_KV_TRANSFER))
        router = (f"python -m dynamo.frontend --router-mode round-robin   # with {n_p} prefill and {n_d} decode "
                  "workers registered (python -m dynamo.vllm --is-prefill-worker ... for the prefill ones)")
    return DisaggLaunch(pre, n_p, dec, n_d, router)


def power_prefix(point) -> str:
    """The nvidia-smi settings a plan's operating point needs before its engine starts ('' for none):
    `--power-limit` (watts per GPU) and `--lock-gpu-clocks MIN,MAX` (MHz), nvidia-smi's spellings."""
    parts = []
    if point is not None and point.power_cap_w is not None:
        parts.append(f"nvidia-smi --power-limit={point.power_cap_w:g}")
    if point is not None and point.sm_clock_mhz is not None:
        parts.append(f"nvidia-smi --lock-gpu-clocks={point.sm_clock_mhz:g},{point.sm_clock_mhz:g}")
    return "".join(p + " && " for p in parts)
