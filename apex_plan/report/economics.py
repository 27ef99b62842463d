"""Dollars and watts of a deployment: $/h, $ per million output / input tokens, mean power, energy.

Prices are the user's (a cluster file's `price_per_gpu_hour`, or `--prices FILE`); with none a
figure is None and shown as "no price", never 0. Each $/Mtok charges the deployment's whole cost
to that kind of token: $/Mtok output = ($/h) / (output tokens per hour / 1e6), and the same for
input (prompt) tokens. "At demand" uses the tokens the verified steady-state run served at the
demanded rate; "at capacity" the deployment's goodput times the workload mix's mean tokens per
request (what it would serve fully loaded within the SLO).
"""

from __future__ import annotations

from dataclasses import dataclass

from apex_plan.simulate.metrics import Record

SECONDS_PER_HOUR = 3600.0
TOKENS_PER_MTOK = 1e6


def usd_per_mtok(cost_per_hour: float | None, tokens_per_s: float | None) -> float | None:
    """USD per million tokens: the cost of an hour over the millions of tokens served in it."""
    if cost_per_hour is None or not tokens_per_s:
        return None
    return cost_per_hour / (tokens_per_s * SECONDS_PER_HOUR / TOKENS_PER_MTOK)


@dataclass(frozen=True)
class Economics(Record):
    """The `economics` block of a search deployment (module docstring): None where no price was given."""
    cost_per_hour: float | None
    price: str                                        # "priced" | "no price"
    usd_per_mtok_output_at_demand: float | None
    usd_per_mtok_input_at_demand: float | None
    usd_per_mtok_output_at_capacity: float | None
    usd_per_mtok_input_at_capacity: float | None
    mean_power_w_at_demand: float | None
    mean_power_w_at_capacity: float | None
    provisioned_power_w: float | None                 # every GPU at its power limit (cap, else TDP)
    energy_j_per_output_token: float | None
    energy_j_per_request: float | None


def deployment_economics(dv, mix, by_key: dict | None = None, groups=None) -> Economics:
    """The cost, power and energy block of one verified deployment (a `DeploymentEval`); `by_key`
    (plan key -> PlanEval) and `groups` (the node groups) add the provisioned power."""
    dep, m = dv.deployment, dv.metrics
    out_demand = m.throughput.output_tokens_per_s if m else None
    in_demand = m.throughput.input_tokens_per_s if m else None
    out_cap = dep.goodput_rps * mix.mean_output if mix is not None else None     # tokens/s fully loaded
    in_cap = dep.goodput_rps * mix.mean_prompt if mix is not None else None
    cost = dep.cost_per_hour
    provisioned = None
    if by_key and groups:
        # watts the operator provisions: every GPU at its power limit (its cap, else its TDP)
        provisioned = 0.0
        for k, n in dep.replicas:
            ev = by_key[k]
            tdp_w = groups[ev.pool].cluster.gpu.tdp_w
            limit_w = min(ev.point.power_cap_w, tdp_w) if ev.point.power_cap_w is not None else tdp_w
            provisioned += n * ev.plan.gpus_per_replica * limit_w
    return Economics(
        cost_per_hour=cost,
        price="priced" if cost is not None else "no price",
        usd_per_mtok_output_at_demand=usd_per_mtok(cost, out_demand),
        usd_per_mtok_input_at_demand=usd_per_mtok(cost, in_demand),
        usd_per_mtok_output_at_capacity=usd_per_mtok(cost, out_cap),
        usd_per_mtok_input_at_capacity=usd_per_mtok(cost, in_cap),
        mean_power_w_at_demand=m.energy.mean_power_w if m else None,
        mean_power_w_at_capacity=dep.power_w or None,
        provisioned_power_w=provisioned,
        energy_j_per_output_token=m.energy.j_per_output_token if m else None,
        energy_j_per_request=m.energy.j_per_request if m else None,
    )


def money(x: float | None, spec: str = ".2f") -> str:
    """A dollar figure for tables: 'no price' when unknown."""
    return "no price" if x is None else format(x, spec)
