"""The kernel ABI: every record that crosses the numba boundary, declared once, by name.

Python builders fill these records by field name (`make_record`, which refuses a missing or an
unknown field) and the numba kernels read them by field name (`cost.p.tp`, `g.w_bytes`,
`eng[e].busy_s`); no kernel addresses a slot by position.

Records (numpy structured dtypes: one C struct each, read by attribute in numba):
* `COST`      step-cost parameters of one replica of one plan (GPU physics, parallel layout,
              engine host costs, layer-kind counts of the largest pipeline stage);
              built by `apex_plan.estimate.step_cost.build_step_cost`.
* `GEMM`      one row per weight GEMM of a layer on one GPU; built from `estimate.shard.Gemm`.
* `SCHED`     engine / scheduler configuration of a simulation (`simulate.run.simulate`).
* `REQUEST`   one row per request: the trace's inputs, the simulated times, the loop's state.
* `ENGINE`    one row per scheduler: statistics out, the loop's state.
* `SLOT`      (engine, slot) table of running lists and step entries (allocated in the kernel).
* `BATCH`     one row per group of identical sequences in a step (what `aggregate` reads).
Tuples (numba namedtuples, built and returned inside kernels):
* `CostTables(params, gemms)`: a `COST` record array of length 1 and its `GEMM` table.
* `StepShape`: the batch aggregates a step's cost depends on (`estimate.kernels.aggregate`).
* `Breakdown`: a step's seconds per part, FLOPs and bytes (`estimate.kernels.step_time`).

Adding a field (e.g. a per-request cached-prefix length, a draft length per step):
1. add `("name", dtype, "what it counts, with its unit")` to the record's field list below
   (or the name to a namedtuple's field string, with a comment);
2. write it in the builder (`make_record` raises until every builder names it; the test
   `tests/test_abi.py` builds every record for every built-in model and checks each field);
3. read it by name in the kernel. numba's cache of the kernels is keyed on this file too
   (`apex_plan.jit`), so nothing stale survives the change.
"""

from __future__ import annotations

from collections import namedtuple

import numpy as np

F8, I8 = "f8", "i8"

# ---- step cost of one replica ------------------------------------------------------------------
COST_FIELDS = (
    ("gemm_peak_flops_per_s", F8, "dense peak FLOP/s of the LM head (activation dtype); weight GEMMs: their GEMM rows"),
    ("hbm_bytes_per_s", F8, "HBM bandwidth, bytes/s"),
    ("gemm_efficiency", F8, "achievable fraction of peak FLOP/s on GEMMs"),
    ("hbm_efficiency", F8, "achievable fraction of HBM bandwidth"),
    ("attn_efficiency", F8, "achievable fraction of peak FLOP/s in prefill attention"),
    ("kernel_latency_s", F8, "GPU latency per kernel, s"),
    ("eager_launch_s", F8, "host launch time per kernel without CUDA graphs, s"),
    ("allreduce_latency_s", F8, "all-reduce latency, s (custom or NCCL as configured)"),
    ("allreduce_nccl_latency_s", F8, "NCCL all-reduce latency, s (messages above the custom limit)"),
    ("custom_allreduce_max_bytes", F8, "largest message the custom all-reduce takes, bytes (0: off)"),
    ("link_bytes_per_s", F8, "effective per-GPU link bandwidth in collectives, bytes/s"),
    ("tp", F8, "tensor-parallel degree"),
    ("pp", F8, "pipeline stages"),
    ("ep", F8, "expert-parallel degree"),
    ("dense_layers", F8, "dense-MLP layers on the largest stage"),
    ("moe_layers", F8, "MoE layers on the largest stage"),
    ("mlp_free_layers", F8, "blocks without an MLP on the largest stage (Nemotron-H mixer blocks)"),
    ("hidden", F8, "hidden size"),
    ("act_bytes", F8, "bytes per activation element"),
    ("kv_bytes_per_token", F8, "KV-cache bytes per token per layer on one GPU"),
    ("attn_flops_per_pair", F8, "attention FLOPs per (query token x context token) per layer on one GPU"),
    ("elem_bytes_per_token", F8, "elementwise bytes per token per layer on one GPU (norms, rotary, act, KV write)"),
    ("elem_kernels_per_layer", F8, "elementwise kernels per layer"),
    ("kernels_per_dense_layer", F8, "kernels per dense layer"),
    ("kernels_per_moe_layer", F8, "kernels per MoE layer"),
    ("vocab_per_gpu", F8, "vocabulary columns of the LM head on one GPU"),
    ("head_weight_bytes", F8, "bytes per LM-head weight element"),
    ("p2p_latency_s", F8, "pipeline send/recv latency, s"),
    ("p2p_bytes_per_s", F8, "pipeline link bandwidth, bytes/s"),
    ("moe_all_to_all", F8, "1 when MoE tokens move by all-to-all (attention-DP ranks hold different tokens)"),
    ("a2a_latency_s", F8, "all-to-all latency, s"),
    ("a2a_bytes_per_s", F8, "all-to-all bandwidth per GPU, bytes/s"),
    ("moe_imbalance", F8, "busiest expert rank's load over the mean"),
    ("experts_per_token", F8, "routed experts per token (top-k)"),
    ("host_step_s", F8, "engine CPU time per step, s"),
    ("host_per_seq_s", F8, "engine CPU time per scheduled sequence, s"),
    ("host_per_prefill_token_s", F8, "engine CPU time per prefill token, s"),
    ("host_overlap", F8, "fraction of host time per step that overlaps GPU work"),
    ("graph_mode", F8, "CUDA-graph policy: GRAPH_DECODE_ONLY, GRAPH_PIECEWISE or GRAPH_FULL"),
    ("graph_max", F8, "largest step captured in a graph (sequences for decode-only, tokens otherwise)"),
    ("eager_kernels_mixed", F8, "kernels per layer launched by the host in a piecewise-graphed mixed step"),
    ("attn_peak_flops_per_s", F8, "dense peak FLOP/s of the attention kernels (activation dtype)"),
    ("decode_kv_rereads", F8, "decode KV reads per KV head (1: GQA shared; query heads per KV head otherwise)"),
    ("attn_heads", F8, "query heads on one GPU (attention thread blocks per 128-row query tile)"),
    ("sms", F8, "streaming multiprocessors"),
    ("attn_scale_fresh", F8, "backend scale of attention efficiency for fresh prefill"),
    ("attn_scale_prefix", F8, "backend scale for chunks attending to cached context"),
    ("decode_attn_efficiency", F8, "achievable fraction of attention peak FLOP/s in decode attention (MLA: its fit)"),
    ("decode_kv_efficiency", F8, "achievable fraction of HBM bandwidth reading the KV cache in decode attention"),
    ("attn_latency_s", F8, "fixed GPU time per attention call, s"),
    ("prefill_attn_flops_per_pair", F8, "prefill attention FLOPs per (query x key) pair per layer on one GPU "
                                        "(MLA expanded form); 0: as decode"),
    # layer kinds of the largest stage
    ("full_layers", F8, "full-attention layers (KV of every token)"),
    ("windowed_layers", F8, "sliding-window / chunked-attention layers"),
    ("sparse_layers", F8, "DeepSeek-sparse-attention layers"),
    ("linear_layers", F8, "Gated DeltaNet linear-attention layers"),
    ("mamba_layers", F8, "Mamba-2 layers"),
    ("mixerless_layers", F8, "blocks without a token mixer (Nemotron-H MLP/MoE blocks)"),
    ("window_tokens", F8, "tokens a windowed / sparse layer attends to (window, chunk, index top-k); 0: none"),
    ("index_kv_bytes_per_token", F8, "sparse attention: indexer key bytes per cached token on one GPU"),
    ("index_flops_per_pair", F8, "sparse attention: indexer FLOPs per (query x cached token) on one GPU"),
    ("linear_state_bytes", F8, "linear attention: state bytes per sequence per layer on one GPU"),
    ("mamba_state_bytes", F8, "Mamba: state bytes per sequence per layer on one GPU"),
    ("linear_flops_per_token", F8, "linear attention: recurrent FLOPs per token per layer on one GPU"),
    ("mamba_flops_per_token", F8, "Mamba: scan FLOPs per token per layer on one GPU"),
    ("full_kv_bytes_per_token", F8, "full-attention layers' KV bytes per token on one GPU (own geometry, Gemma 4)"),
    ("full_attn_flops_per_pair", F8, "full-attention layers' FLOPs per (query x key) pair (own geometry)"),
)

GRAPH_DECODE_ONLY, GRAPH_PIECEWISE, GRAPH_FULL = 0.0, 1.0, 2.0   # values of COST.graph_mode
GRAPH_MODES = {"decode_only": GRAPH_DECODE_ONLY, "piecewise": GRAPH_PIECEWISE, "full": GRAPH_FULL}

# ---- weight GEMMs of one layer on one GPU -------------------------------------------------------
# GEMM kinds: which layers run the GEMM (the step multiplies each kind's time by its layer count)
GEMM_ATTENTION = 0       # attention layers' projections (full, windowed, sparse)
GEMM_ROUTED_EXPERTS = 1  # routed experts of MoE layers
GEMM_DENSE_MLP = 2       # dense-MLP layers
GEMM_MOE_DENSE = 3       # MoE layers' dense part (router, shared experts, latent projections)
GEMM_LINEAR_ATTN = 4     # linear-attention layers' projections
GEMM_MAMBA = 5           # Mamba layers' projections
N_GEMM_KINDS = 6

GEMM_FIELDS = (
    ("k", F8, "reduction dim (input features) on one GPU"),
    ("n", F8, "output features on one GPU"),
    ("w_bytes", F8, "bytes per weight element, scales included"),
    ("kind", I8, "GEMM_* kind"),
    ("experts", F8, "routed experts held on one GPU (0 for dense GEMMs)"),
    ("route_frac", F8, "expert-token assignments landing on this GPU per input token"),
    ("active_p", F8, "probability that one token activates a given expert (topk / experts)"),
    ("flops_per_s", F8, "achievable FLOP/s: the weight format's tensor-core peak x its kernel fit's efficiency"),
    ("bytes_per_s", F8, "achievable HBM bytes/s of this GEMM's kernel"),
    ("latency_s", F8, "fixed GPU time per call, s (routed experts: half the fused-MoE layer's, two GEMMs)"),
)

# ---- engine / scheduler configuration of one simulation -----------------------------------------
SCHED_FIELDS = (
    ("ranks", I8, "schedulers per pipeline slot: replicas x attention-DP ranks"),
    ("pp", I8, "pipeline virtual engines per rank"),
    ("least_loaded", I8, "1: route arrivals to the least-loaded replica; 0: round robin"),
    ("max_seqs", I8, "sequences one engine runs at once"),
    ("budget_tokens", I8, "tokens one step may schedule"),
    ("chunked", I8, "1: prefill chunks cut to the budget left"),
    ("block_tokens", I8, "tokens per KV block"),
    ("kv_blocks", I8, "KV blocks of one engine"),
    ("watermark_blocks", I8, "KV blocks admission leaves free"),
    ("prefill_first", I8, "1: waiting prompts run in a prefill-only step ahead of the decodes"),
    ("reserve_full", I8, "1: admission reserves KV for prompt + every output token"),
    ("closed_concurrency", I8, "requests in flight of a closed loop; 0: open loop (arrival times)"),
    ("tdp_w", F8, "GPU board power at full load, W"),
    ("idle_w", F8, "GPU idle power, W"),
    ("gpus_per_engine", F8, "GPUs whose power one engine's steps draw (tp x pp)"),
)

# ---- requests: one row each; inputs, results, and the event loop's own per-request state -----------
REQUEST_FIELDS = (
    ("arrival_s", F8, "in: arrival time, s (open loop)"),
    ("prompt_tokens", I8, "in: prompt tokens"),
    ("output_tokens", I8, "in: tokens to generate"),
    ("client_delay_s", F8, "in: closed loop: the client's delay before sending this request, s"),
    ("sent_s", F8, "out: time the request reached the engine, s (closed loop: from finishes)"),
    ("scheduled_s", F8, "out: first time the request was scheduled, s (-1: never)"),
    ("first_token_s", F8, "out: time of the first token, s (-1: rejected)"),
    ("finish_s", F8, "out: time of the last token, s (-1: rejected)"),
    ("preemptions", I8, "out: times the request was preempted (recomputed)"),
    ("computed", I8, "state: tokens of the sequence in the KV cache"),
    ("generated", I8, "state: tokens generated so far"),
    ("kv_blocks", I8, "state: KV blocks held"),
    ("next", I8, "state: next request in its engine's waiting queue (-1: none)"),
)

# ---- engines: one row per scheduler (replica x attention-DP rank x pipeline virtual engine) ----------
ENGINE_FIELDS = (
    ("busy_s", F8, "out: time spent stepping, s"),
    ("steps", I8, "out: steps run"),
    ("dynamic_j", F8, "out: dynamic energy above idle, J, all GPUs of the engine"),
    ("kv_block_s", F8, "out: integral of KV blocks in use over time, block x s"),
    ("kv_peak_blocks", I8, "out: most KV blocks in use"),
    ("preemptions", I8, "out: preemptions"),
    ("tokens", I8, "out: tokens processed (prefill + decode)"),
    ("head", I8, "state: first waiting request (-1: none)"),
    ("tail", I8, "state: last waiting request (-1: none)"),
    ("running", I8, "state: requests in the running list"),
    ("free_blocks", I8, "state: free KV blocks"),
    ("unfinished", I8, "state: requests routed here and not finished"),
    ("busy_until_s", F8, "state: end of the step in flight, s (inf: idle)"),
    ("scheduled", I8, "state: entries of the step in flight"),
    ("host_free_s", F8, "state: on a replica's first engine, when its scheduler thread is free, s"),
)

# ---- the event loop's slot table: (engine, slot) -> running request and the step's entries ------------
SLOT_FIELDS = (
    ("running", I8, "request in this position of the engine's running list"),
    ("req", I8, "request of this entry of the step being built"),
    ("tokens", I8, "tokens this entry computes"),
)

# ---- a step's batch: rows of identical sequences ------------------------------------------------------
BATCH_FIELDS = (
    ("cached_tokens", I8, "tokens of the sequence already in the KV cache before this step"),
    ("new_tokens", I8, "tokens this step computes for the sequence (1 for a decode)"),
    ("decode", I8, "1: a decode of a sequence that has generated before; 0: a prefill chunk"),
    ("samples", I8, "1: the step samples a token for the sequence (its last prompt chunk, or a decode)"),
    ("count", I8, "identical sequences this row stands for"),
)


def _dtype(fields) -> np.dtype:
    return np.dtype([(name, kind) for name, kind, _ in fields], align=True)


COST = _dtype(COST_FIELDS)
GEMM = _dtype(GEMM_FIELDS)
SCHED = _dtype(SCHED_FIELDS)
REQUEST = _dtype(REQUEST_FIELDS)
ENGINE = _dtype(ENGINE_FIELDS)
SLOT = _dtype(SLOT_FIELDS)
BATCH = _dtype(BATCH_FIELDS)

CostTables = namedtuple("CostTables", "params gemms")   # COST record array (length 1), GEMM table
# batch aggregates of one step (filled by estimate.kernels.add_sequence; `_w` fields cap each
# sequence's context at COST.window_tokens, equal to the uncapped ones when the model has no window)
StepShape = namedtuple("StepShape", (
    "tokens n_decode n_prefill n_logits "          # query tokens; decode sequences; prefill chunks; sampled rows
    "pf_pairs pf_pad_pairs pf_pad_prefix_pairs "   # causal query x key pairs; over whole 128-row query tiles; of chunks with cache
    "pf_q_tiles dec_ctx_tokens pf_ctx_tokens "     # query tiles of the chunks; KV tokens read by decodes; by chunks
    "pf_pairs_w dec_ctx_w pf_ctx_w eager"))        # windowed pairs / KV reads; 1: every kernel host-launched
Breakdown = namedtuple("Breakdown", "gemm attention communication elementwise embed_lm_head engine_host flops bytes "
                                    "scheduler")   # seconds per part of the step; FLOPs, HBM bytes per GPU; host s


def make_record(dtype: np.dtype, **values) -> np.ndarray:
    """A length-1 record array of `dtype` with every field set by name; a missing or unknown field
    is a programming error and raises."""
    names = set(dtype.names)
    missing, unknown = names - values.keys(), values.keys() - names
    if missing or unknown:
        raise TypeError(f"record fields missing: {sorted(missing)}, unknown: {sorted(unknown)}")
    rec = np.zeros(1, dtype)
    for name, v in values.items():
        rec[name] = v
    return rec


def make_table(dtype: np.dtype, rows: list[dict]) -> np.ndarray:
    """A record array of `dtype`, one row per mapping, each filled by name as in `make_record`."""
    table = np.zeros(len(rows), dtype)
    for i, row in enumerate(rows):
        table[i] = make_record(dtype, **row)[0]
    return table


def record_dict(rec: np.ndarray) -> dict:
    """A length-1 record array as {field: Python number}."""
    return {name: rec[name][0].item() for name in rec.dtype.names}
