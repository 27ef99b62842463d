"""Analytic upper bound on one replica's goodput, and the rule that skips plans it rules out.

The bound follows the simulator's own accounting (`simulate/kernels.py`) and costs its steps with the
same aggregation and step time (`StepCost.step_s`, windowed contexts capped as the simulator caps them): a replica runs `pp`
virtual engines, each with up to `max_num_seqs` sequences and 1/pp of the KV blocks; their GPU
work overlaps but the scheduler part of every step (`Breakdown.scheduler`) runs on the replica's one host
thread. For a decode batch `b` per engine at the workload's mean context:

    tokens/s <= min(pp * b / t(b), b / h(b))        t: step seconds, h: its host seconds
    TPOT     >= max(t(b), pp * h(b))                (one token per step of the sequence's engine)

and every request also costs its prompt's marginal prefill seconds inside mixed steps. The bound
takes the best `b` whose TPOT floor is within the SLO (with BOUND_SLACK), and is multiplied by
BOUND_SLACK for what a mean context and a p90 SLO leave open; tests check it never falls below a
simulated goodput.

Pruning, by objective (never for energy or latency, whose tie-breaks a bound cannot settle):
* throughput: a plan P is skipped when a plan Q already simulated uses a divisor of P's GPUs and
  g_P/g_Q replicas of Q sustain more than P's bound: any deployment using P can swap each P
  replica for those Q replicas in the same GPUs with strictly more goodput, so P is never in the
  best deployment.
* gpus, cost (with a demand): P is skipped when one replica of it needs more GPUs than each of
  top-K distinct homogeneous deployments already found: every deployment using P has more GPUs
  than K better ones, whatever the energy tie-break.
* every objective with a demand: P is skipped when no deployment on the cluster's GPUs that holds
  a replica of P can carry the demand (`cannot_cover`): one replica at P's bound plus the most the
  remaining GPUs carry in whole replicas, each at the highest rate any candidate of its size may
  reach (its goodput once simulated, which never exceeds its bound; its bound before), falls short.
  Deployments must carry the demand (`rank.deploy` enforces it for every objective), so P is in
  none of them. When no deployment meets the demand at all, the skipped plans are simulated after
  all, for the closest deployment (`search.pipeline.run_agg`).
"""

from __future__ import annotations

import math

from apex_plan.estimate.step_cost import StepCost
from apex_plan.rank.problem import DEMAND_RTOL
from apex_plan.simulate.features import decode_step_s
from apex_plan.workload.spec import Slo

BOUND_SLACK = 1.15               # headroom for mean-context and percentile effects (see tests)
PRUNE_OBJECTIVES = ("throughput", "gpus", "cost")


def gpus_needed(demand_rps: float, goodput_rps: float, gpus_per_replica: int) -> int:
    """GPUs of the homogeneous deployment of a plan that meets the demand."""
    return math.ceil(demand_rps / goodput_rps - 1e-9) * gpus_per_replica


def outranked(gpus: int, homogeneous_gpus: list[int], top_k: int) -> bool:
    """A plan of `gpus` GPUs per replica cannot enter the top-K when K distinct layouts already
    meet the demand with fewer GPUs."""
    best = sorted(homogeneous_gpus)
    return len(best) >= top_k and gpus > best[top_k - 1]


def _decode(sc: StepCost, b: int, ctx: int) -> tuple[float, float]:
    """Seconds of a decode step of `b` sequences of `ctx` tokens, and its host (scheduler) seconds."""
    t, br = sc.step_s(decodes=b, context=ctx)
    return t, br["scheduler"]


def goodput_bound_rps(sc: StepCost, *, mean_prompt: float, mean_output: float, kv_tokens: int, max_num_seqs: int,
                      budget: int, chunked: bool, slo: Slo, spec=None, draft: StepCost | None = None) -> float:
    """Requests/s one replica cannot exceed within the SLO (0 when no batch meets the TPOT SLO).
    With prefix caching, `mean_prompt` is the mean uncached prompt of an infinite cache (the least
    prefill a cache can leave); with speculation (`spec`, its `draft` cost) every draft is taken as
    accepted (k + 1 tokens per step), so the bound stays an upper bound."""
    pp = sc.plan.pp
    ctx = max(int(mean_prompt + mean_output / 2), 1)
    b_max = int(max(1, min(max_num_seqs, kv_tokens // pp // ctx)))
    tpot_cap = slo.tpot_s * BOUND_SLACK if slo.tpot_s else math.inf
    chunk = max(1, min(budget, 2048) if chunked else int(mean_prompt))
    sizes = sorted({b_max, *(2 ** k for k in range(0, 12) if 2 ** k < b_max)})
    best = 0.0
    for b in sizes:
        t, h, per_step = decode_step_s(sc, draft, spec, b, ctx)
        if max(t, pp * h) / per_step > tpot_cap:
            break                          # step time grows with the batch: larger ones miss too
        # marginal seconds per prompt token when a chunk rides along with this decode batch
        tm, _ = sc.step_s(decodes=b, context=ctx, chunk=chunk, samples=False, eager=True)
        pf_s_per_tok = max(tm - t, 0.0) / chunk
        per_req_s = mean_output * t / (pp * b * per_step) + mean_prompt * pf_s_per_tok / pp   # GPU s per request
        rate = min(1.0 / per_req_s, b * per_step / h / mean_output if h > 0 else math.inf)
        best = max(best, rate)
    return best * BOUND_SLACK


def _batch(sc: StepCost, b: int, ctx: int, chunk: int, mean_prompt: float, mean_output: float) -> tuple[float, float]:
    """(TPOT floor, requests/s) of one replica whose engines each decode `b` sequences of `ctx` tokens:
    one token per step of the sequence's engine (or pp host times); per request the GPU seconds of its
    decode steps and of its prompt's marginal prefill inside mixed steps, and the host's per-step time."""
    pp = sc.plan.pp
    t, h = _decode(sc, b, ctx)
    # marginal seconds per prompt token when a chunk rides along with this decode batch
    tm, _ = sc.step_s(decodes=b, context=ctx, chunk=chunk, samples=False, eager=True)
    pf_s_per_tok = max(tm - t, 0.0) / chunk
    per_req_s = mean_output * t / (pp * b) + mean_prompt * pf_s_per_tok / pp   # GPU seconds per request
    return max(t, pp * h), min(1.0 / per_req_s, b / h / mean_output if h > 0 else math.inf)


def _batches(mean_prompt: float, mean_output: float, kv_tokens: int, max_num_seqs: int, budget: int, chunked: bool,
             pp: int) -> tuple[int, int, list[int]]:
    """(context tokens, prefill chunk, decode batch sizes tried: powers of two up to the largest that fits)."""
    ctx = max(int(mean_prompt + mean_output / 2), 1)
    b_max = int(max(1, min(max_num_seqs, kv_tokens // pp // ctx)))
    chunk = max(1, min(budget, 2048) if chunked else int(mean_prompt))
    return ctx, chunk, sorted({b_max, *(2 ** k for k in range(0, 12) if 2 ** k < b_max)})


def operating_tpot_s(sc: StepCost, rate_rps: float, *, mean_prompt: float, mean_output: float, kv_tokens: int,
                     max_num_seqs: int, budget: int, chunked: bool) -> float:
    """The TPOT one replica runs at when it carries `rate_rps` (the bound's accounting, no SLO): that of
    the smallest decode batch per engine whose GPU and host seconds per request sustain the rate; the
    largest batch's when none does (overloaded)."""
    ctx, chunk, sizes = _batches(mean_prompt, mean_output, kv_tokens, max_num_seqs, budget, chunked, sc.plan.pp)
    tpot = 0.0
    for b in sizes:
        tpot, rate = _batch(sc, b, ctx, chunk, mean_prompt, mean_output)
        if rate >= rate_rps:
            break
    return tpot


def cover_capacity_rps(gpus: int, best_rps_by_size: dict[int, float]) -> list[float]:
    """cap[u]: the most req/s whole replicas fit in u x unit GPUs can carry, each replica size at the best
    rate given for it (an unbounded knapsack over replica sizes; node packing ignored, which can only
    lower what fits), for u up to gpus // unit, unit the sizes' common divisor. Returns (unit, cap)."""
    unit = math.gcd(*best_rps_by_size) if best_rps_by_size else 1
    items = [(g // unit, r) for g, r in best_rps_by_size.items() if r > 0]
    cap = [0.0] * (gpus // unit + 1)
    for u in range(1, len(cap)):
        cap[u] = max([cap[u - 1]] + [cap[u - s] + r for s, r in items if s <= u])   # best of: leave one unit idle, or add a replica
    return unit, cap


def cannot_cover(bound_rps: float, gpus: int, cluster_gpus: int, demand_rps: float,
                 best_rps_by_size: dict[int, float], memo: dict | None = None) -> bool:
    """No deployment within `cluster_gpus` GPUs holding a replica of a plan of `gpus` GPUs and goodput
    at most `bound_rps` carries `demand_rps`: that replica plus the most the other GPUs can carry
    (`cover_capacity_rps`; the plan itself among the sizes) stays below the demand."""
    if gpus > cluster_gpus:
        return True
    key = tuple(sorted(best_rps_by_size.items()))
    if memo is None or key not in memo:
        got = cover_capacity_rps(cluster_gpus, best_rps_by_size)
        if memo is None:
            memo = {}
        memo[key] = got
    unit, cap = memo[key]
    rest = (cluster_gpus - gpus) // unit
    # the same float noise the deployment solver allows (`rank.problem.meets_demand`)
    return bound_rps + cap[rest] < demand_rps * (1 - DEMAND_RTOL)


def dominated_by(bound_rps: float, gpus: int, found: list[tuple[str, int, float]]) -> str | None:
    """The key of a simulated plan (key, gpus, goodput) that dominates a plan with this bound and
    GPU count in the same GPUs, or None."""
    for key, g, gp in found:
        if gpus % g == 0 and gp * (gpus // g) > bound_rps:
            return key
    return None
