"""The two roles of a disaggregated deployment, screened analytically before any simulation.

Every replica plan the engine runs (the aggregated enumeration, `variants.enumerate_group`) is tried
as a prefill instance and as a decode instance, with each engine setting of the search, fitted to its
memory exactly as the disaggregated simulator fits it (`simulate.disagg._role`). Each role gets one
figure: the arrival rate one instance sustains within the SLO.

* Decode, at the TPOT SLO with its KV capacity. An instance has adp x pp engines, each running up to
  b sequences, so c = adp x pp x b slots; a slot is held from admission (the KV arrives) to the last
  token, T = transfer + first step + mean output x t(b) seconds. The largest b whose step time
  t(b) (at the mean context, host time x pp included) is within the TPOT SLO and whose KV holds b
  sequences at their longest (mean prompt + mean output) sets c.
  Requests queue for a slot when all are busy: an M/M/c queue in the Halfin-Whitt regime (Halfin &
  Whitt 1981, Oper. Res. 29(3)) waits with probability [1 + beta Phi(beta) / phi(beta)]^-1 when
  c = R + beta sqrt(R) for offered load R = rate x T; beta is chosen so that at most half of the
  SLO's (100 - p)% of requests wait (p: the SLO percentile; `miss_share`), which gives the rate R / T.
* Prefill, at the TTFT SLO. A loaded instance runs full token budgets: pp x adp x (budget tokens)
  per step time, so it serves requests at mu = tokens/s / mean prompt. Its queue is a G/G/1 with
  Kingman's mean wait E[W] = rho / (1 - rho) x (ca^2 + cs^2) / 2 x E[S] (Kingman 1961; ca^2: the
  mix's squared CV of inter-arrival gaps, cs^2: of prompt lengths, as service is proportional to
  the prompt), and the exponential tail of M/M/1, P(W > t) = rho exp(-rho t / E[W]), gives the
  wait that at most the other half of the (100 - p)% exceed (the two pools' misses then add up to
  at most the SLO's allowance: a union bound). The rate is the highest rho mu at which that wait,
  the p-th percentile prompt's own step(s), its KV transfer, the first decode step and the
  frontend fit the TTFT SLO (transfer and first step at the slowest of the decode plans kept).
Plans one role cannot use are kept with their reason (memory, TPOT or TTFT floor).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from apex_plan.abi import BATCH
from apex_plan.plan.spec import EngineConfig, Plan
from apex_plan.search.fit import engine_label
from apex_plan.search.spec import PlanEval, SearchInputs
from apex_plan.simulate.metrics import Record
from apex_plan.simulate.disagg import Role, _role
from apex_plan.simulate.transfer import kv_transfer_bytes, nic_bytes

RHO_STEPS = 40                    # bisection steps on the prefill utilisation (2^-40: exact to float noise)
BATCH_POWERS = 12                 # decode batches tried per engine: powers of two up to 2^11, and the KV limit


@dataclass(frozen=True)
class DecodeScreen(Record):
    """A decode role's analytic figures at its chosen batch (`screen_decode`)."""
    batch_per_engine: int               # sequences per engine
    slots: int                          # adp x pp x batch: sequences one instance holds
    step_ms: float                      # step time at that batch (ms)
    tpot_ms: float                      # step time or pp x host time, the larger (ms)
    kv_batch_limit: int                 # sequences per engine the KV pool holds at their longest
    waiting_beta: float                 # Halfin-Whitt beta for the waiting share allowed
    rate_rps: float                     # requests/s one instance sustains


@dataclass(frozen=True)
class PrefillScreen(Record):
    """A prefill role's analytic figures at the TTFT SLO (`screen_prefill`)."""
    prompt_tokens_per_s: float          # prompt tokens/s one loaded instance prefills
    service_rps: float                  # mu: requests/s it serves, loaded
    utilization: float                  # rho at the rate kept
    own_prefill_ms: float               # the p-th percentile prompt's own prefill (ms)
    queue_budget_ms: float              # ms of the TTFT SLO left for queueing
    rate_rps: float                     # requests/s one instance sustains


@dataclass
class RoleEval(PlanEval):
    """A replica plan in one role of a disaggregated deployment; `rate_rps` is one instance's analytic
    rate within the SLO (see the module docstring), `batch` the decode batch cap per engine."""

    role: str = "prefill"
    role_engine: Role | None = None
    rate_rps: float = 0.0
    batch: int = 0                      # decode: sequences per engine (the --max-num-seqs it runs with)
    step_s: float = 0.0                 # decode: step time at that batch; prefill: the p-prompt's own prefill
    detail: DecodeScreen | PrefillScreen | None = None     # set once the role is screened "ok"


def _mix_cv2(mix) -> tuple[float, float]:
    """Squared coefficients of variation of the mix's inter-arrival gaps and of its prompt lengths."""
    g = mix.stream_gaps
    p = mix.stream_prompt.astype(np.float64)
    return float(g.var() / max(g.mean(), 1e-300) ** 2), float(p.var() / max(p.mean(), 1e-300) ** 2)


def miss_share(slo) -> float:
    """Share of requests each pool may send past the TTFT target: half the SLO's (100 - p)%, so that
    the prefill path's tail and the decode admission wait together stay within it (union bound)."""
    return (1.0 - slo.percentile / 100.0) / 2.0


def halfin_whitt_beta(wait_share: float) -> float:
    """beta with P(wait) = [1 + beta Phi(beta) / phi(beta)]^-1 = wait_share (bisection; P falls with beta)."""
    lo, hi = 0.0, 10.0
    for _ in range(60):
        b = (lo + hi) / 2
        phi = math.exp(-b * b / 2) / math.sqrt(2 * math.pi)
        cdf = 0.5 * (1 + math.erf(b / math.sqrt(2)))
        p_wait = 1.0 / (1.0 + b * cdf / phi)
        lo, hi = (b, hi) if p_wait > wait_share else (lo, b)
    return hi


def offered_load(slots: int, beta: float) -> float:
    """R with slots = R + beta sqrt(R): the load c slots carry at the Halfin-Whitt waiting probability."""
    s = (-beta + math.sqrt(beta * beta + 4.0 * slots)) / 2.0
    return max(s * s, 0.0)


def _fit(inp: SearchInputs, plan: Plan, cfg: EngineConfig, need: int, longest: int, role: str, base: EngineConfig):
    r, why = _role(inp.model, inp.cluster, plan, cfg, need, longest)
    key = f"{role} " + plan.replica_label() + engine_label(cfg, base)
    ev = RoleEval(plan, cfg, key, inp.cluster, 0, role=role)
    if r is None:
        ev.status, ev.reason = "infeasible", "memory: " + why
        return ev
    ev.role_engine, ev.engine, ev.memory = r, r.engine, r.memory
    return ev


def screen_decode(ev: RoleEval, inp: SearchInputs, mix, transfer_s: float) -> None:
    """The decode rate of one instance at the TPOT SLO (module docstring), in place."""
    r = ev.role_engine
    p, e, sc = ev.plan, r.engine, r.step_cost
    ctx = max(int(mix.mean_prompt + mix.mean_output / 2), 1)            # mean context over a sequence's decode
    # sequences one engine's KV pool holds with each at its longest (prompt + whole output), so a full
    # batch never runs the pool out (at a mean of half the output, growing sequences would stall admission)
    b_kv = int(r.memory.kv_tokens // p.pp // max(mix.mean_prompt + mix.mean_output, 1))
    b_max = max(0, min(e.max_num_seqs, b_kv))
    tpot_cap = inp.slo.tpot_s or math.inf
    beta = halfin_whitt_beta(miss_share(inp.slo))
    best = None
    for b in sorted({b_max, *(2 ** k for k in range(BATCH_POWERS) if 2 ** k < b_max)} - {0}):
        t, br = sc.step_s(decodes=b, context=ctx)
        tpot = max(t, p.pp * br["scheduler"])                           # one token per step of its engine
        if tpot > tpot_cap:
            break
        slots = p.adp * p.pp * b
        life_s = transfer_s + t + mix.mean_output * tpot                # slot held: transfer, first step, decode
        rate = offered_load(slots, beta) / life_s                       # requests/s at the waiting share allowed
        host = p.adp * b / br["scheduler"] / mix.mean_output if br["scheduler"] > 0 else math.inf
        rate = min(rate, host)
        if best is None or rate > best[0]:
            best = (rate, b, t, tpot, slots)
    if best is None:
        t1, br1 = sc.step_s(decodes=1, context=ctx)
        floor = max(t1, p.pp * br1["scheduler"])
        ev.status = "screened"
        ev.reason = (f"decode: no batch fits the KV pool ({r.memory.kv_tokens} tokens)" if b_max < 1 else
                     f"decode: TPOT floor {floor * 1e3:.1f} ms (one sequence, host time x pp included) exceeds "
                     f"the {tpot_cap * 1e3:.0f} ms SLO")
        return
    ev.rate_rps, ev.batch, ev.step_s = best[0], best[1], best[2]
    ev.key += f" b{best[1]}"
    ev.status = "ok"
    ev.detail = DecodeScreen(best[1], best[4], best[2] * 1e3, best[3] * 1e3, b_kv, beta, best[0])


def _prefill_rate(sc, budget: int, chunked: bool, prompt: float) -> tuple[float, float]:
    """(prompt tokens/s of one engine running full budgets of mean prompts, seconds of such a step)."""
    p = max(int(prompt), 1)
    if p <= budget:                                       # whole prompts batched up to the budget
        k = max(budget // p, 1)
        t, _ = sc.time_s(np.array([(0, p, 0, 1, k)], dtype=BATCH))
        return k * p / t, t
    t = sc.prefill_time_s(p, budget if chunked else None)   # one long prompt in budget-sized chunks
    return p / t, t


def screen_prefill(ev: RoleEval, inp: SearchInputs, mix, fixed_s: float, ca2: float, cs2: float) -> None:
    """The prefill rate of one instance at the TTFT SLO (module docstring), in place. `fixed_s`: the
    transfer, first decode step and frontend seconds after the prefill."""
    r = ev.role_engine
    p, e, sc = ev.plan, r.engine, r.step_cost
    tok_s, t_step = _prefill_rate(sc, e.max_batched_tokens, e.chunked_prefill, mix.mean_prompt)
    mu = p.adp * p.pp * tok_s / mix.mean_prompt                        # requests/s the instance serves, loaded
    q = 1.0 - miss_share(inp.slo)                                       # the prefill path's own percentile
    p_prompt = int(np.percentile(mix.stream_prompt, inp.slo.percentile))
    own_s = max(sc.prefill_time_s(max(p_prompt, 1), e.max_batched_tokens if e.chunked_prefill else None), t_step)
    ev.step_s = own_s
    budget_s = (inp.slo.ttft_s or math.inf) - fixed_s - own_s             # seconds left for queueing
    if budget_s <= 0:
        ev.status = "screened"
        ev.reason = (f"prefill: TTFT floor {(own_s + fixed_s) * 1e3:.0f} ms (p{inp.slo.percentile:g} prompt of "
                     f"{p_prompt} tokens, KV transfer, first decode step, frontend) exceeds the "
                     f"{inp.slo.ttft_s * 1e3:.0f} ms SLO")
        return
    es = 1.0 / mu                                                       # mean service seconds per request

    def wait_p(rho: float) -> float:
        if rho <= 1.0 - q:
            return 0.0                                                  # P(W > 0) <= rho: the percentile waits 0
        ew = rho / (1.0 - rho) * (ca2 + cs2) / 2.0 * es                  # Kingman's mean wait
        return ew / rho * math.log(rho / (1.0 - q))                     # exponential tail at the percentile

    lo, hi = 0.0, 1.0
    for _ in range(RHO_STEPS):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if wait_p(mid) <= budget_s else (lo, mid)
    ev.rate_rps = lo * mu
    ev.status = "ok" if ev.rate_rps > 0 else "screened"
    ev.reason = "" if ev.rate_rps > 0 else "prefill: no load keeps the TTFT SLO"
    ev.detail = PrefillScreen(p.adp * p.pp * tok_s, mu, lo, own_s * 1e3, budget_s * 1e3, ev.rate_rps)


def transfer_s(inp: SearchInputs, prefill: Plan, decode: Plan, prompt: int, memo: dict | None = None) -> float:
    """Seconds to move one `prompt`-token request's KV between instances on different nodes (RDMA):
    the busiest GPU link's bytes at the cluster's inter-node bandwidth, plus its latency. `memo` keeps
    the request's KV bytes per (KV format, activation format, prompt): they do not depend on the plans."""
    cl = inp.cluster
    key = (decode.kv_dtype, decode.act_dtype, prompt)
    total = None if memo is None else memo.get(key)
    if total is None:
        total = kv_transfer_bytes(inp.model, decode.kv_dtype, np.array([prompt]), decode.act_dtype)
        if memo is not None:
            memo[key] = total
    send, recv = nic_bytes(inp.model, prefill, decode, total)
    bw = cl.inter_node_bw_gbps * 1e9 * cl.gpu.calibration.link_efficiency   # bytes/s per GPU NIC
    return float(max(send[0], recv[0])) / bw + cl.inter_node_latency_us * 1e-6


def role_evals(inp: SearchInputs, plans: list[Plan], mix) -> tuple[list[RoleEval], list[RoleEval]]:
    """Every (plan, engine setting) as a prefill and as a decode instance, screened (module docstring)."""
    need = int((inp.trace.prompt_tokens + inp.trace.output_tokens).max())
    longest = int(inp.trace.prompt_tokens.max())
    base = inp.engines[0]
    pre = [_fit(inp, p, c, need, longest, "prefill", base) for p in plans for c in inp.engines]
    dec = [_fit(inp, p, c, need, longest, "decode", base) for p in plans for c in inp.engines]
    p_prompt = int(np.percentile(mix.stream_prompt, inp.slo.percentile))
    mean_prompt = int(mix.mean_prompt)
    # a decode slot's transfer: the mean prompt from the smallest prefill layout (the most bytes per GPU)
    small = min((e.plan for e in pre if e.role_engine is not None), key=lambda p: p.tp * p.pp, default=None)
    kv_bytes: dict = {}
    for ev in dec:
        if ev.role_engine is not None:
            screen_decode(ev, inp, mix, transfer_s(inp, small, ev.plan, mean_prompt, kv_bytes) if small else 0.0)
    ok_dec = [e for e in dec if e.status == "ok"]
    frontend_s = base.profile.host.frontend_ms * 1e-3 if base.profile is not None else 0.0
    first_step_s = max((e.step_s for e in ok_dec), default=0.0)
    ca2, cs2 = _mix_cv2(mix)
    for ev in pre:
        if ev.role_engine is None:
            continue
        xfer = max((transfer_s(inp, ev.plan, d.plan, p_prompt, kv_bytes) for d in ok_dec), default=0.0)
        screen_prefill(ev, inp, mix, xfer + first_step_s + frontend_s, ca2, cs2)
    return pre, dec


def _latency_s(e: RoleEval) -> float:
    """What a role plan adds to a request's latency: prefill, the p-prompt's own prefill; decode, its TPOT."""
    return e.step_s if e.role == "prefill" else decode_tpot_s(e)


def decode_tpot_s(e: RoleEval) -> float:
    """A decode role plan's TPOT at its chosen batch (seconds); 0 before it is screened "ok"."""
    return e.detail.tpot_ms * 1e-3 if isinstance(e.detail, DecodeScreen) else 0.0


def pareto(evals: list[RoleEval]) -> list[RoleEval]:
    """The role plans worth sizing pools with. One is dropped when another of the same engine settings,
    on a divisor of its GPUs and repeated to the same GPUs, sustains at least its rate with no more
    latency (`_latency_s`): swapping the instance for those never needs more GPUs, never lowers the
    rate and keeps each one's SLO. Ties keep the first by (GPUs, -rate, key)."""
    ok = sorted((e for e in evals if e.status == "ok"),
                key=lambda e: (e.plan.gpus_per_replica, -e.rate_rps, _latency_s(e), e.key))
    kept: list[RoleEval] = []
    for e in ok:
        g = e.plan.gpus_per_replica
        by = next((k for k in kept if g % k.plan.gpus_per_replica == 0 and k.engine_cfg is e.engine_cfg
                   and k.rate_rps * (g // k.plan.gpus_per_replica) >= e.rate_rps
                   and _latency_s(k) <= _latency_s(e)), None)
        if by is None:
            kept.append(e)
        else:
            e.status = "pruned"
            e.reason = f"{g // by.plan.gpus_per_replica} x {by.key} sustain more in the same GPUs, no slower"
    return kept
