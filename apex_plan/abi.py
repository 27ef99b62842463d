"""The kernel ABI: every record that crosses the numba boundary, declared once, by name.

Python builders fill these records by field name (`make_record`, which refuses a missing or an
unknown field) and the numba kernels read them by field name (`p.tp`, `op.w_bytes`,
`eng[e].busy_s`); no kernel addresses a slot by position.

Records (numpy structured dtypes: one C struct each, read by attribute in numba):
* `COST`      step-cost parameters of one replica of one plan (GPU physics, parallel layout,
              engine host costs, layer-kind counts of the largest pipeline stage);
              built by `apex_plan.estimate.step_cost.build_step_cost`.
* `OP`        the op table: one row per weight GEMM and per token-mixer op of a layer kind on
              one GPU, with its cost shape, layer count and (GEMMs) weight format; built by
              `estimate.mixers.op_table` (the kernel loops over the rows).
* `SCHED`     engine / scheduler configuration of a simulation (`simulate.run.simulate`).
* `REQUEST`   one row per request: the trace's inputs, the simulated times, the loop's state.
* `ENGINE`    one row per scheduler: statistics out, the loop's state.
* `SLOT`      (engine, slot) table of running lists and step entries (allocated in the kernel).
* `BATCH`     one row per group of identical sequences in a step (what `aggregate` reads).
* `XFER`, `XENGINE`, `LINK`  disaggregated serving: per request, per engine, per (prefill rank,
              decode rank) pair (`simulate.disagg_kernel`).
Tuples (numba namedtuples, built and returned inside kernels):
* `CostTables(params, ops)`: a `COST` record array of length 1 and its `OP` table.
* `Pool(req, sched, cost)`: one disaggregated role's REQUEST rows, SCHED record and CostTables.
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
    ("gemm_peak_flops_per_s", F8, "dense peak FLOP/s of the weight dtype's tensor cores"),
    ("hbm_bytes_per_s", F8, "HBM bandwidth, bytes/s"),
    ("gemm_efficiency", F8, "achievable fraction of peak FLOP/s on GEMMs"),
    ("hbm_efficiency", F8, "achievable fraction of HBM bandwidth"),
    ("attn_efficiency", F8, "achievable fraction of peak FLOP/s in prefill attention"),
    ("kernel_latency_s", F8, "GPU latency per kernel, s"),
    ("eager_launch_s", F8, "host launch time per kernel without CUDA graphs, s"),
    ("eager_latent_layer_s", F8, "host time per latent-attention layer without CUDA graphs beyond its launches, s"),
    ("latent_layers", F8, "latent-attention (MLA, sparse MLA) layers on the largest stage"),
    ("allreduce_latency_s", F8, "all-reduce latency, s (custom or NCCL as configured)"),
    ("allreduce_nccl_latency_s", F8, "NCCL all-reduce latency, s (messages above the custom limit)"),
    ("custom_allreduce_max_bytes", F8, "largest message the custom all-reduce takes, bytes (0: off)"),
    ("link_bytes_per_s", F8, "effective per-GPU link bandwidth in collectives, bytes/s"),
    ("allreduce_one_shot_bytes_per_s", F8, "custom one-shot all-reduce: bytes/s a rank reads its peers at (0: ring term)"),
    ("allreduce_two_shot_latency_s", F8, "custom two-shot all-reduce: latency beyond the one-shot's, s"),
    ("allreduce_two_shot_bytes_per_s", F8, "custom two-shot all-reduce: ring bytes/s of its two phases"),
    ("tp", F8, "tensor-parallel degree"),
    ("pp", F8, "pipeline stages"),
    ("ep", F8, "expert-parallel degree"),
    ("dense_layers", F8, "dense-MLP layers on the largest stage"),
    ("moe_layers", F8, "MoE layers on the largest stage"),
    ("mlp_free_layers", F8, "blocks without an MLP on the largest stage (Nemotron-H mixer blocks)"),
    ("hidden", F8, "hidden size"),
    ("act_bytes", F8, "bytes per activation element"),
    ("elem_bytes_per_token", F8, "elementwise bytes per token per layer on one GPU (norms, rotary, act, KV write)"),
    ("elem_kernels_per_layer", F8, "elementwise kernels per layer"),
    ("kernels_per_dense_layer", F8, "kernels per dense layer"),
    ("kernels_per_moe_layer", F8, "kernels per MoE layer"),
    ("vocab_per_gpu", F8, "vocabulary columns of the LM head on one GPU"),
    ("head_weight_bytes", F8, "bytes per LM-head weight element"),
    ("p2p_latency_s", F8, "pipeline send/recv latency, s"),
    ("p2p_bytes_per_s", F8, "pipeline link bandwidth, bytes/s"),
    ("a2a_kind", F8, "how MoE tokens move between attention-DP ranks: estimate.moe.A2A_NONE / _ALLGATHER / _ALLTOALL"),
    ("a2a_ranks", F8, "GPUs of a stage exchanging MoE tokens (tp x adp)"),
    ("a2a_domain_gpus", F8, "of those, the GPUs one NVLink domain joins (this GPU included)"),
    ("a2a_latency_s", F8, "latency of one dispatch or combine phase, s"),
    ("a2a_bytes_per_s", F8, "MoE token-exchange bandwidth per GPU to peers in its NVLink domain, bytes/s"),
    ("a2a_rdma_bytes_per_s", F8, "the same to peers in other NVLink domains (RDMA), bytes/s"),
    ("a2a_dispatch_bytes", F8, "bytes per hidden element dispatched (quantised dispatch: fp8 + block scales)"),
    ("a2a_rank_copies", F8, "alltoall: distinct expert-parallel ranks one token's top-k experts land on"),
    ("a2a_ll_decode", F8, "alltoall: 1 when decode-only steps run the low-latency kernels (a copy per routed expert)"),
    ("moe_imbalance", F8, "busiest expert rank's load over the mean with many tokens per step at this ep (routing skew)"),
    ("ep_max_z", F8, "expected maximum of ep standard normals (the busiest rank's sampling spread)"),
    ("experts_per_token", F8, "routed experts per token (top-k)"),
    ("host_step_s", F8, "engine CPU time per step, s"),
    ("host_per_seq_s", F8, "engine CPU time per scheduled sequence, s"),
    ("host_per_prefill_token_s", F8, "engine CPU time per prefill token, s"),
    ("host_overlap", F8, "fraction of host time per step that overlaps GPU work"),
    ("graph_mode", F8, "CUDA-graph policy: GRAPH_DECODE_ONLY, GRAPH_PIECEWISE or GRAPH_FULL"),
    ("graph_max", F8, "largest step captured in a graph (sequences for decode-only, tokens otherwise)"),
    ("eager_kernels_mixed", F8, "kernels per layer launched by the host in a piecewise-graphed mixed step"),
    ("attn_peak_flops_per_s", F8, "dense peak FLOP/s of the attention kernels (activation dtype)"),
    ("attn_heads", F8, "query heads on one GPU (attention thread blocks per 128-row query tile)"),
    ("sms", F8, "streaming multiprocessors"),
    ("attn_scale_fresh", F8, "backend scale of attention efficiency for fresh prefill"),
    ("attn_scale_prefix", F8, "backend scale for chunks attending to cached context"),
    # layer kinds of the largest stage (each mixer's layer count is on its OP rows)
    ("mixerless_layers", F8, "blocks without a token mixer (Nemotron-H MLP/MoE blocks)"),
    ("window_tokens", F8, "tokens a windowed layer attends to (sliding window, chunk, a compressed layer's raw window); 0: none"),
    ("topk_tokens", F8, "tokens of context a sparse layer's top-k rows span (index_topk x compress); 0: none"),
    ("window2_tokens", F8, "the model's second, smaller window: tokens its layers of that window attend to; 0: none"),
)

GRAPH_DECODE_ONLY, GRAPH_PIECEWISE, GRAPH_FULL = 0.0, 1.0, 2.0   # values of COST.graph_mode
GRAPH_MODES = {"decode_only": GRAPH_DECODE_ONLY, "piecewise": GRAPH_PIECEWISE, "full": GRAPH_FULL}

# ---- the op table: what one layer of each kind computes, rows times their layer counts ------------
# GEMM kinds: which layers run a GEMM (estimate.gemms.Gemm.kind; the builder turns them into counts)
GEMM_ATTENTION = 0       # attention layers' projections (full, windowed, sparse)
GEMM_ROUTED_EXPERTS = 1  # routed experts of MoE layers
GEMM_DENSE_MLP = 2       # dense-MLP layers
GEMM_MOE_DENSE = 3       # MoE layers' dense part (router, shared experts, latent projections)
GEMM_LINEAR_ATTN = 4     # linear-attention layers' projections
GEMM_MAMBA = 5           # Mamba layers' projections
GEMM_PROJ_MIXER = 6      # linear replacements of attention (DeciLM replace_with_linear)
GEMM_PROJ_MLP = 7        # linear replacements of the FFN (DeciLM replace_with_linear)
N_GEMM_KINDS = 8

# cost shapes of an op row (how the kernel costs it)
OP_GEMM = 0         # y[M, n] = x[M, k] @ W[k, n] over the step's M tokens
OP_EXPERTS = 1      # routed-expert GEMMs: the tokens routed to this GPU, the experts they touch
OP_ATTENTION = 2    # attention over cached context (prefill: tile-padded pairs; decode: KV read)
OP_RECURRENT = 3    # a recurrent step per token with a fixed state per sequence (linear attention, Mamba)

OP_FIELDS = (
    ("shape", I8, "OP_* cost shape"),
    ("count", F8, "layers of the largest stage that run this row"),
    ("format", I8, "GEMM rows: weight format (index into apex_plan.model.quant.FORMATS); -1 otherwise"),
    ("peak_flops_per_s", F8, "GEMM rows: dense peak FLOP/s of the tensor cores running this GEMM"),
    ("efficiency", F8, "GEMM rows: achievable fraction of that peak; attention rows: of the attention peak in prefill"),
    ("bytes_per_s", F8, "GEMM rows: achievable HBM bytes/s of this GEMM's kernel; attention rows: of the decode KV read"),
    ("latency_s", F8, "GEMM and attention rows: fixed GPU time per call inside a CUDA graph, s (routed experts: "
                      "half the fused-MoE layer's, over its two grouped GEMMs)"),
    ("k", F8, "GEMM rows: reduction dim (input features) on one GPU"),
    ("k_overhead", F8, "GEMM rows: K-depth each output tile costs beyond its own (pipeline fill/drain, epilogue; "
                       "GpuSpec.kernel_formats.gemm_shapes), 0: none"),
    ("n", F8, "GEMM rows: output features on one GPU"),
    ("w_bytes", F8, "GEMM rows: bytes per weight element, scales included"),
    ("experts", F8, "expert rows: routed experts held on one GPU"),
    ("route_frac", F8, "expert rows: expert-token assignments landing on this GPU per input token"),
    ("active_p", F8, "expert rows: probability that one token activates a given expert (topk / experts)"),
    ("tile_rows", F8, "expert rows: grouped-GEMM row tile each touched expert's tokens are padded to (0: no padding)"),
    ("flops_per_unit", F8, "attention: FLOPs per (query x key) pair; recurrent: FLOPs per token (one GPU)"),
    ("pf_flops_per_unit", F8, "attention: prefill FLOPs per (query x key) pair (MLA: the expanded form; else as decode)"),
    ("decode_efficiency", F8, "attention: achievable fraction of the attention peak FLOP/s in decode"),
    ("bytes_per_unit", F8, "attention: KV bytes per cached token read; recurrent: state bytes per sequence"),
    ("rereads", F8, "attention: decode KV reads per KV head (1: GQA shared; query heads per KV head otherwise)"),
    ("windowed", I8, "attention: 1 reads each sequence's context capped at COST.window_tokens, 2 at COST.topk_tokens, "
                     "3 at COST.window2_tokens"),
)

# ---- engine / scheduler configuration of one simulation -----------------------------------------
SCHED_FIELDS = (
    ("ranks", I8, "schedulers per pipeline slot: replicas x attention-DP ranks"),
    ("pp", I8, "pipeline virtual engines per rank"),
    ("routing", I8, "ROUTE_*: round robin, least loaded, session affinity, longest cached prefix"),
    ("max_seqs", I8, "sequences one engine runs at once"),
    ("budget_tokens", I8, "tokens one step may schedule"),
    ("chunked", I8, "1: prefill chunks cut to the budget left"),
    ("block_tokens", I8, "tokens per KV block"),
    ("kv_blocks", I8, "KV blocks of one engine"),
    ("watermark_blocks", I8, "KV blocks admission leaves free"),
    ("prefill_first", I8, "1: waiting prompts run in a prefill-only step ahead of the decodes"),
    ("reserve_full", I8, "1: admission reserves KV for prompt + every output token"),
    ("closed_concurrency", I8, "requests in flight of a closed loop; 0: open loop (arrival times)"),
    ("frontend_token_s", F8, "API server's serial time per prompt token before the engine (tokenisation), s"),
    ("tdp_w", F8, "GPU board power at full load, W"),
    ("idle_w", F8, "GPU idle power, W"),
    ("gpus_per_engine", F8, "GPUs whose power one engine's steps draw (tp x pp)"),
    ("draft_tokens", I8, "speculative decoding: draft tokens per decode step (0: none)"),
    ("seed", I8, "seed of the draft-acceptance draws"),
    ("adp_ranks", I8, "attention-DP ranks of one replica (consecutive ranks)"),
    ("adp_routing", I8, "ROUTE_ROUND_ROBIN, ROUTE_LEAST_LOADED or ROUTE_BOOTSTRAP_ROOM: how a replica hands a "
                        "request to one of its attention-DP ranks (SCHED.routing picks the replica)"),
    ("adp_lockstep", I8, "1: a replica's attention-DP ranks step together, each step as long as the busiest rank's "
                         "(the MoE layers exchange every rank's tokens); 0: each rank steps on its own"),
    ("adp_balance_steps", I8, "attention-DP balance: new contexts wait until every rank of the replica has one, "
                              "or this many steps (TRT-LLM attention_dp_config.timeout_iters); 0: off"),
    ("adp_pad_tokens", I8, "attention-DP padding: a lock-step step whose busiest rank runs at most this many tokens "
                           "pads every rank to that rank's tokens, all of them through the experts (vLLM DP); 0: none"),
    ("engine_base", I8, "first engine of this pool in the ENGINE rows (a disaggregated decode pool: after the "
                        "prefill engines; 0 otherwise)"),
    ("first_token_generated", I8, "tokens generated when the client sees its first token: 1 (the prompt's last "
                                  "step samples it); 2 on a disaggregated decode pool (the prefill's token "
                                  "arrives with the first decode step)"),
    ("admit_ratio_init", F8, "SGLang admission (PrefillAdder): new_token_ratio at start and when idle, the fraction of "
                             "each running request's remaining output held back for it (0: no such reservation)"),
    ("admit_ratio_min", F8, "the ratio's floor"),
    ("admit_ratio_decay", F8, "the ratio's decrease per decode step"),
    ("admit_clip_tokens", I8, "outputs counted at most this many tokens in the reservation (CLIP_MAX_NEW_TOKENS)"),
    ("admit_retract_steps", I8, "after a preemption the ratio restarts at (decoded + this x running) / outputs"),
    ("batch_wait_iters", I8, "TRT-LLM batch waiting: while generations run, new contexts wait at most this many steps "
                             "(batch_wait_timeout_iters); 0 with batch_wait_ratio 0: off"),
    ("batch_wait_ratio", F8, "... or until the step's tokens reach this fraction of budget_tokens "
                             "(batch_wait_max_tokens_ratio)"),
    ("recv_interval", I8, "SGLang --scheduler-recv-interval: a busy scheduler takes the requests that arrived only "
                          "when its counter (+1 per decode-only step, +RECV_WEIGHT_EXTEND after a step with prompt "
                          "tokens) reaches this; an idle one at once; 1: every step (simulate.scheduler._receive)"),
)

ROUTE_ROUND_ROBIN, ROUTE_LEAST_LOADED, ROUTE_SESSION, ROUTE_PREFIX = 0, 1, 2, 3   # values of SCHED.routing
ROUTES = {"round_robin": ROUTE_ROUND_ROBIN, "least_loaded": ROUTE_LEAST_LOADED, "session": ROUTE_SESSION,
          "prefix": ROUTE_PREFIX}
ROUTE_BOOTSTRAP_ROOM = 4                 # SCHED.adp_routing only: the rank is REQUEST.bootstrap_room % ranks
ADP_ROUTES = {"round_robin": ROUTE_ROUND_ROBIN, "least_loaded": ROUTE_LEAST_LOADED,
              "bootstrap_room": ROUTE_BOOTSTRAP_ROOM}   # values of SCHED.adp_routing by profile name

# ---- requests: one row each; inputs, results, and the event loop's own per-request state -----------
REQUEST_FIELDS = (
    ("arrival_s", F8, "in: arrival time, s (open loop)"),
    ("prompt_tokens", I8, "in: prompt tokens"),
    ("output_tokens", I8, "in: tokens to generate"),
    ("client_delay_s", F8, "in: closed loop: the client's delay before sending this request, s"),
    ("sent_s", F8, "out: time the client sent the request, s (closed loop: from finishes)"),
    ("frontend_s", F8, "out: time from sending to reaching the engine (the serial API server), s"),
    ("scheduled_s", F8, "out: first time the request was scheduled, s (-1: never)"),
    ("first_token_s", F8, "out: time of the first token, s (-1: rejected)"),
    ("finish_s", F8, "out: time of the last token, s (-1: rejected)"),
    ("preemptions", I8, "out: times the request was preempted (recomputed)"),
    ("computed", I8, "state: tokens of the sequence in the KV cache"),
    ("generated", I8, "state: tokens generated so far"),
    ("kv_blocks", I8, "state: KV blocks held"),
    ("next", I8, "state: next request in its engine's waiting queue (-1: none)"),
    ("session", I8, "in: conversation id (-1: none), for session-affinity routing"),
    ("hash_start", I8, "in: offset of the request's prefix block ids in the ids array"),
    ("hash_count", I8, "in: prefix block ids of the request (0: none, or caching off)"),
    ("hash_cacheable", I8, "in: leading block ids it computes in full, and so caches"),
    ("cached_units", I8, "state: leading prefix-cache units the request holds"),
    ("hit_tokens", I8, "out: prompt tokens found in the prefix cache when first scheduled"),
    ("finishes", I8, "out: times a step of this pool finished the request (conservation: once)"),
    ("bootstrap_room", I8, "in: disaggregated prefill pool: the router's random bootstrap room; SCHED.adp_routing "
                           "ROUTE_BOOTSTRAP_ROOM serves the request on rank room % attention-DP ranks"),
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
    ("verify_steps", I8, "out: speculative verification entries (one per decoding sequence per step)"),
    ("verified_tokens", I8, "out: tokens those entries emitted (accepted drafts plus the target's own)"),
    ("balance_steps", F8, "state: on an attention-DP replica's first engine, steps toward the balance timeout"),
    ("balance_open", I8, "state: 1 when the balance timeout let this engine's held contexts in"),
    ("new_token_ratio", F8, "state: SGLang admission's share of the running requests' remaining output reserved"),
    ("batch_wait_steps", I8, "state: TRT-LLM batch waiting: steps the waiting contexts have been held so far"),
    ("adp_next", I8, "state: on an attention-DP replica's first engine, requests handed out in turn (round robin)"),
    ("inbox_head", I8, "state: SGLang receive interval: first request routed here the scheduler has not taken yet "
                       "(-1: none)"),
    ("inbox_tail", I8, "state: the last such request (-1: none)"),
    ("recv_count", I8, "state: the receive counter (SGLang SchedulerRecvSkipper._counter)"),
    ("last_step", I8, "state: the engine's last step: -1 none (idle), 0 decode-only, 1 with prompt tokens"),
)

# ---- disaggregated serving: per request, what happens between its prefill and its decode ------------
XFER_FIELDS = (
    ("send_bytes", F8, "in: KV bytes on each sending (prefill) GPU's link"),
    ("recv_bytes", F8, "in: KV bytes on each receiving (decode) GPU's link"),
    ("prefill_done_s", F8, "out: end of the step that completed the prompt, s (-1: never)"),
    ("admit_s", F8, "out: the decode engine took it (batch slot and KV blocks), s (-1: never)"),
    ("transfer_start_s", F8, "out: both links free, the KV transfer starts, s (-1: never)"),
    ("transfer_end_s", F8, "out: the KV has landed (delivered in order), s (-1: never)"),
    ("prefilled", I8, "out: times the request's prompt completed on a prefill engine"),
    ("transferred", I8, "out: times its KV landed on a decode engine"),
    ("held_blocks", I8, "state: prefill KV blocks held until the transfer lands"),
    ("prefill_engine", I8, "state: the prefill engine that computed it"),
)

# ---- disaggregated serving: per engine, the decode side's queues and each rank's links ----------------
XENGINE_FIELDS = (
    ("pend_head", I8, "state: decode engine: first prefilled request waiting for admission (-1: none)"),
    ("pend_tail", I8, "state: decode engine: last one (-1: none)"),
    ("xfer_head", I8, "state: decode engine: first transfer in flight, in delivery order (-1: none)"),
    ("xfer_tail", I8, "state: decode engine: last one (-1: none)"),
    ("in_transfer", I8, "state: decode engine: transfers in flight (they hold batch slots)"),
    ("link_free_s", F8, "state: on a rank's first engine, when its GPUs' links are free, s"),
)

# ---- disaggregated serving: the link between each (prefill rank, decode rank) pair ------------------
LINK_FIELDS = (
    ("bytes_per_s", F8, "achievable KV-transfer bandwidth of the pair's busiest link, bytes/s"),
    ("latency_s", F8, "latency of one transfer between the pair, s"),
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
OP = _dtype(OP_FIELDS)
SCHED = _dtype(SCHED_FIELDS)
REQUEST = _dtype(REQUEST_FIELDS)
ENGINE = _dtype(ENGINE_FIELDS)
SLOT = _dtype(SLOT_FIELDS)
XFER = _dtype(XFER_FIELDS)
XENGINE = _dtype(XENGINE_FIELDS)
LINK = _dtype(LINK_FIELDS)
BATCH = _dtype(BATCH_FIELDS)

CostTables = namedtuple("CostTables", "params ops")   # COST record array (length 1), OP table
Pool = namedtuple("Pool", "req sched cost")   # a disaggregated role: its REQUEST rows, SCHED record array, CostTables
# batch aggregates of one step (filled by estimate.kernels.add_sequence; `_w` fields cap each
# sequence's context at COST.window_tokens, `_k` at COST.topk_tokens, `_v` at COST.window2_tokens,
# equal to the uncapped ones when the model has no such cap)
StepShape = namedtuple("StepShape", (
    "tokens n_decode n_prefill n_logits "          # query tokens; decode sequences; prefill chunks; sampled rows
    "pf_pairs pf_pad_pairs pf_pad_prefix_pairs "   # causal query x key pairs; over whole 128-row query tiles; of chunks with cache
    "pf_q_tiles dec_ctx_tokens pf_ctx_tokens "     # query tiles of the chunks; KV tokens read by decodes; by chunks
    "pf_pairs_w dec_ctx_w pf_ctx_w "              # windowed pairs / KV reads
    "pf_pairs_k dec_ctx_k pf_ctx_k "              # top-k capped pairs / KV reads
    "pf_pairs_v dec_ctx_v pf_ctx_v eager"))        # second-window pairs / KV reads; 1: every kernel host-launched
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
