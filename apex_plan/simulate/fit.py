"""Engine settings fitted to one plan on one GPU: the defaults that depend on the GPU, the plan and
the workload (token budget, CUDA-graph size, memory fraction), and max_model_len / the memory
fraction fitted to the KV pool. `simulate` and `search` both use `fit_engine`: one rule."""

from __future__ import annotations

import dataclasses
import math

from apex_plan.estimate.memory import GIB, MemoryReport, memory_report
from apex_plan.estimate.shard import Shard
from apex_plan.model.spec import ModelSpec
from apex_plan.plan.spec import EngineConfig, Plan
from apex_plan.simulate.engine import ResolvedEngine, resolve_engine

MIB = 1024.0 ** 2
LEN_STEP = 16   # a lowered max_model_len is a multiple of 16 tokens (one vLLM KV block)


def _round_up(x: int, step: int) -> int:
    return -(-x // step) * step


def reserved_fraction(mem, gpu_bytes: float, budget: int, graph_batch: int, plan: Plan) -> float:
    """Default memory fraction from the engine's reserved-memory rule (SGLang >= 0.5.3,
    server_args.py `_handle_gpu_memory_settings`): (GPU MiB - reserved MiB) / GPU MiB, reserved for
    metadata, prefill activations of one chunk, CUDA-graph buffers and the parallel group's extras."""
    gpu_mib = gpu_bytes / MIB
    gpus = plan.tp * plan.adp                      # SGLang's tp_size spans the attention-DP ranks
    # MiB kept outside the static pool: metadata + chunk activations + graph buffers + per-GPU extras
    reserved = (mem.reserved_base_mib + mem.reserved_mib_per_chunk_token * max(budget, mem.reserved_min_chunk_tokens)
                + mem.reserved_mib_per_graph_seq * graph_batch + mem.reserved_mib_per_gpu * gpus * plan.pp)
    if plan.adp > 1:                               # DP attention pads its graphs per rank
        reserved += mem.reserved_mib_per_graph_seq_rank * graph_batch * plan.adp
        if graph_batch > mem.reserved_large_graph_batch:
            reserved += mem.reserved_mib_per_graph_seq_rank_large * graph_batch * plan.adp
    if gpu_mib > mem.reserved_floor_gpu_mib:
        reserved = max(reserved, mem.reserved_floor_mib)
    return round((gpu_mib - reserved) / gpu_mib, 3)


def plan_defaults(eng: ResolvedEngine, cfg: EngineConfig, plan: Plan, gpu, longest_prompt: int = 0) -> ResolvedEngine:
    """The defaults that depend on the GPU and the plan (and, for the token budget deployments size,
    the workload's longest prompt); values the user gave stay. The graph size goes into the resolved
    profile, so the step cost sees it."""
    prof = eng.profile.on_gpu(gpu.name)            # the host constants fitted on this GPU's platform
    sch, gr, mem = prof.scheduler, prof.graphs, prof.memory
    gib = gpu.memory_bytes / GIB
    gpus = plan.tp * plan.adp
    graph_batch = gr.max_batch
    if gr.max_batch_large and ((gr.large_tp and gpus >= gr.large_tp) or (gr.large_gpu_gib and gib >= gr.large_gpu_gib)):
        graph_batch = gr.max_batch_large
    budget = eng.max_batched_tokens
    if cfg.max_batched_tokens is None:
        if sch.token_budget_large_gpu and gib >= sch.large_gpu_gib and eng.chunked_prefill:
            budget = sch.token_budget_large_gpu
        if sch.budget_fits_prompt and longest_prompt:
            # ceil64((k + 1) x batch + longest prompt + 64): a whole prompt fits beside a full batch of decodes,
            # each verifying its k speculative drafts (InferenceX benchmarks/dsr1_fp4_b200_trt_mtp.sh:
            # MAX_NUM_TOKENS = ceil64((MTP + 1) x MAX_BATCH_SIZE + ISL + 64); k = 0 without speculation)
            k = eng.speculative.draft_tokens if eng.speculative is not None else 0
            budget = max(budget, _round_up((k + 1) * eng.max_num_seqs + longest_prompt + 64, 64))
    util = eng.gpu_memory_utilization
    if cfg.gpu_memory_utilization is None and mem.reserved_base_mib > 0:
        util = reserved_fraction(mem, gpu.memory_bytes, budget, graph_batch, plan)
    if cfg.max_batched_tokens is None and sch.budget_per_adp_rank and plan.adp > 1:
        budget = max(budget // plan.adp, 1)        # SGLang: chunked_prefill_size // dp_size per rank
    if graph_batch != gr.max_batch:
        prof = dataclasses.replace(prof, graphs=dataclasses.replace(gr, max_batch=graph_batch))
    return dataclasses.replace(eng, max_batched_tokens=int(budget), gpu_memory_utilization=float(util), profile=prof)


def engine_memory(model: ModelSpec, plan: Plan, shard: Shard, cfg: EngineConfig, gpu,
                  longest_prompt: int = 0) -> tuple[ResolvedEngine, MemoryReport]:
    """The engine settings `cfg` resolves to on `plan` and the memory (KV pool) they leave."""
    eng = plan_defaults(resolve_engine(cfg, model), cfg, plan, gpu, longest_prompt)
    mem = memory_report(model, gpu, plan, shard, gpu_memory_utilization=eng.gpu_memory_utilization,
                        max_batched_tokens=eng.max_batched_tokens, max_num_seqs=eng.max_num_seqs,
                        block_size=eng.block_size, max_model_len=eng.max_model_len, policy=eng.profile.memory)
    return eng, mem


def _fit_len(model: ModelSpec, plan: Plan, shard: Shard, cfg: EngineConfig, gpu, need_len: int,
             longest_prompt: int) -> tuple[ResolvedEngine, MemoryReport, bool]:
    """Settings of `cfg`, with max_model_len lowered to the pool (never below `need_len`) when it is
    not given (or the engine caps a given one). Returns (engine, memory, whether it fits)."""
    eng, mem = engine_memory(model, plan, shard, cfg, gpu, longest_prompt)
    if mem.feasible or mem.kv_tokens <= 0 or (cfg.max_model_len is not None and not eng.profile.memory.caps_max_model_len):
        return eng, mem, mem.feasible
    length = mem.kv_tokens
    for _ in range(3):                    # the pool shrinks a little with max_model_len (per-sequence state)
        length = (min(length, model.max_context) // LEN_STEP) * LEN_STEP
        if length < need_len:
            break
        eng2, mem2 = engine_memory(model, plan, shard, dataclasses.replace(cfg, max_model_len=length), gpu,
                                   longest_prompt)
        if mem2.feasible:
            return eng2, mem2, True
        length = mem2.kv_tokens
    return eng, mem, False


def _fit_seqs(model: ModelSpec, plan: Plan, shard: Shard, cfg: EngineConfig, gpu, need_len: int,
              longest_prompt: int, default_seqs: int) -> tuple[ResolvedEngine, MemoryReport, bool] | None:
    """Windowed, compressed and recurrent layers set aside a fixed state per sequence for max_num_seqs sequences
    (estimate.memory); when max_num_seqs (the default, or a given one: a cap, not a reservation) leaves no room
    for the longest request, the most sequences whose state and KV fit (the engines' paged pools hold a window
    per running sequence, never for sequences that cannot run: vLLM's scheduler and SGLang's SWA pool admit what
    the blocks hold): the largest such max_num_seqs below `default_seqs`, by bisection. None when even one does
    not fit."""

    def largest(fits):
        lo, hi, best = 1, default_seqs - 1, None
        while lo <= hi:
            mid = (lo + hi) // 2
            got = fits(dataclasses.replace(cfg, max_num_seqs=mid))
            if got[2]:
                best, lo = got, mid + 1
            else:
                hi = mid - 1
        return best

    def at_full_length(c):                 # the context as resolved, kept whole
        e, m = engine_memory(model, plan, shard, c, gpu, longest_prompt)
        return e, m, m.feasible

    def every_seq_at_need_len(c):          # the context traded down: each running sequence holds its longest request
        e, m, ok = _fit_len(model, plan, shard, c, gpu, need_len, longest_prompt)
        return e, m, ok and m.kv_tokens >= c.max_num_seqs * need_len

    # keep the context whole when some batch allows it; else trade it down too (never below need_len), to the
    # most sequences that can all run at the longest request's length, else to what one such request leaves
    return largest(at_full_length) or largest(every_seq_at_need_len) or largest(
        lambda c: _fit_len(model, plan, shard, c, gpu, need_len, longest_prompt))


def fit_engine(model: ModelSpec, plan: Plan, shard: Shard, cfg: EngineConfig, gpu, need_len: int,
               longest_prompt: int = 0) -> tuple[ResolvedEngine | None, MemoryReport, str]:
    """Engine settings for `plan` fitted to its memory, as an operator (or the engine) does:

    1. without --max-model-len, a pool that cannot hold the model's context lowers max_model_len to
       what it holds (a multiple of 16; vLLM operators do it by hand, SGLang and TRT-LLM themselves),
       never below `need_len` (the workload's longest request); a given one is kept (vLLM refuses to
       start), unless the profile `caps_max_model_len` (SGLang, TRT-LLM cut it to the pool);
    2. without --gpu-memory-utilization, when the default fraction still leaves no room for the
       longest request, the fraction is raised to what leaves the activation peak, graph pool and
       reserve free (--gpu-memory-utilization / --mem-fraction-static /
       --kv_cache_free_gpu_memory_fraction, as the launch command then says);
    3. when per-sequence state (windowed / recurrent layers) set aside for max_num_seqs sequences (the
       default, or a given one: a cap) still crowds the longest request out, max_num_seqs is lowered to
       what fits, with the fraction of step 2 where the default one does not do.
    Returns (engine or None, memory, reason when None); the engine's `notes` say what was fitted."""
    eng, mem, ok = _fit_len(model, plan, shard, cfg, gpu, need_len, longest_prompt)
    raised, raise_note = None, ""          # the settings with the memory fraction raised to what must stay free
    if (not ok and mem.kv_tokens < need_len and cfg.gpu_memory_utilization is None
            and mem.weights_bytes < mem.total_bytes):
        # what must stay free beside the pool: activations + graph pool + reserve, as a fraction (floored to 0.01)
        top = math.floor(100.0 * (1.0 - (mem.activation_bytes + mem.reserve_bytes) / mem.total_bytes)) / 100.0
        if top > eng.gpu_memory_utilization:
            raised = dataclasses.replace(cfg, gpu_memory_utilization=top)
            raise_note = (f"memory fraction raised from {eng.gpu_memory_utilization:g} to {top:g}: the default leaves "
                          f"{max(mem.kv_tokens, 0)} KV tokens, fewer than the longest request ({need_len})")
            eng2, mem2, ok2 = _fit_len(model, plan, shard, raised, gpu, need_len, longest_prompt)
            if ok2:
                eng, mem, ok = dataclasses.replace(eng2, notes=eng2.notes + (raise_note,)), mem2, True
    if not ok and mem.kv_tokens < need_len and any(shard.seq_bytes_stage(st, 1, 1) > 0 for st in shard.stages):
        fitted, extra = _fit_seqs(model, plan, shard, cfg, gpu, need_len, longest_prompt, eng.max_num_seqs), ()
        if fitted is None and raised is not None:          # both: the fraction raised and the batch lowered
            fitted, extra = _fit_seqs(model, plan, shard, raised, gpu, need_len, longest_prompt, eng.max_num_seqs), \
                (raise_note,)
        if fitted is not None:
            eng2, mem2, _ = fitted
            what = (f"at most {eng2.max_num_seqs} of the {eng.max_num_seqs} sequences asked run at once"
                    if cfg.max_num_seqs is not None else
                    f"max_num_seqs lowered from {eng.max_num_seqs} to {eng2.max_num_seqs}")
            note = (f"{what}: the per-sequence state of windowed / recurrent layers for {eng.max_num_seqs} sequences "
                    f"leaves {max(mem.kv_tokens, 0)} KV tokens, fewer than the longest request ({need_len})")
            eng, mem, ok = dataclasses.replace(eng2, notes=eng2.notes + extra + (note,)), mem2, True
    if not ok:
        reason = (f"KV cache holds {mem.kv_tokens} tokens per replica, fewer than the longest request "
                  f"({need_len} tokens)" if 0 < mem.kv_tokens < need_len else mem.reason)
        return None, mem, reason
    low = lowered_max_model_len(eng, cfg, model)
    if low is not None:
        eng = dataclasses.replace(eng, notes=(f"max_model_len lowered to {low} to fit the KV cache "
                                              f"({mem.kv_tokens} tokens)",) + eng.notes)
    return eng, mem, ""


def lowered_max_model_len(eng: ResolvedEngine | None, cfg: EngineConfig, model: ModelSpec) -> int | None:
    """max_model_len when `fit_engine` lowered it below the asked (or the model's) context, else None."""
    asked = cfg.max_model_len or model.max_context
    return eng.max_model_len if eng is not None and eng.max_model_len < asked else None
