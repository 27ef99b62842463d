"""Synthetic traces: length distributions, Poisson or gamma arrivals, and named presets."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from apex_plan.errors import InputError, did_you_mean
from apex_plan.limits import MAX_RATE_PER_S, MAX_REQUESTS, MAX_SEED, MIN_RATE_PER_S, check_count, check_real
from apex_plan.workload.spec import Trace, Workload

LENGTH_KINDS = ("constant", "uniform", "normal", "lognormal")
ARRIVALS = ("poisson", "gamma")


@dataclass(frozen=True)
class LengthDist:
    """Token-length distribution; samples are rounded and clipped to [min_tokens, max_tokens].

    constant: `mean`. uniform: integers in [low, high]. normal / lognormal: `mean` and `std` of
    the lengths themselves (lognormal parameters are moment-matched from them).
    """

    kind: str
    mean: float = 0.0
    std: float = 0.0
    low: int | None = None
    high: int | None = None
    min_tokens: int = 1
    max_tokens: int | None = None

    def __post_init__(self) -> None:
        where = "LengthDist"
        if self.kind not in LENGTH_KINDS:
            raise InputError(where, "kind", f"unknown distribution '{self.kind}'", did_you_mean(self.kind, LENGTH_KINDS))
        if self.min_tokens < 0:
            raise InputError(where, "min_tokens", f"must be >= 0, got {self.min_tokens}", "use 1 for at least one token")
        if self.max_tokens is not None and self.max_tokens < self.min_tokens:
            raise InputError(where, "max_tokens", f"{self.max_tokens} is below min_tokens {self.min_tokens}",
                             "raise max_tokens or leave it unset")
        if self.kind == "uniform":
            if self.low is None or self.high is None or not 0 <= self.low <= self.high:
                raise InputError(where, "low/high", f"uniform needs 0 <= low <= high, got {self.low}, {self.high}",
                                 "e.g. LengthDist('uniform', low=64, high=512)")
            return
        if not (math.isfinite(self.mean) and self.mean > 0):
            raise InputError(where, "mean", f"must be a positive number of tokens, got {self.mean}", "e.g. mean=256")
        if self.kind in ("normal", "lognormal") and not (math.isfinite(self.std) and self.std >= 0):
            raise InputError(where, "std", f"must be >= 0 tokens, got {self.std}", "e.g. std=64")

    def sample(self, n: int, rng: np.random.Generator) -> np.ndarray:
        """`n` int64 lengths."""
        if self.kind == "constant":
            values = np.full(n, float(self.mean))
        elif self.kind == "uniform":
            values = rng.integers(self.low, self.high, size=n, endpoint=True).astype(np.float64)
        elif self.kind == "normal":
            values = rng.normal(self.mean, self.std, size=n)
        else:
            sigma2 = math.log1p((self.std / self.mean) ** 2)
            values = rng.lognormal(math.log(self.mean) - sigma2 / 2, math.sqrt(sigma2), size=n)
        upper = np.inf if self.max_tokens is None else self.max_tokens
        return np.clip(np.rint(values), self.min_tokens, upper).astype(np.int64)


@dataclass(frozen=True)
class Preset:
    """A named workload shape measured from a real trace (arrivals are chosen by the caller)."""

    name: str
    prompt: LengthDist
    output: LengthDist
    source: str
    description: str = ""


def _arrivals_s(n: int, rate_per_s: float, arrival: str, burstiness_cv: float, rng: np.random.Generator) -> np.ndarray:
    """Arrival times starting at 0 with mean inter-arrival 1/rate; gamma gaps have CV `burstiness_cv`."""
    if arrival == "poisson":
        gaps = rng.exponential(1.0 / rate_per_s, size=n)
    else:
        shape = 1.0 / burstiness_cv**2
        gaps = rng.gamma(shape, 1.0 / (rate_per_s * shape), size=n)
    arrival_s = np.empty(n)
    arrival_s[0] = 0.0
    np.cumsum(gaps[:-1], out=arrival_s[1:])
    return arrival_s


def synthetic_trace(num_requests: int, prompt: LengthDist, output: LengthDist, rate_per_s: float | None,
                    arrival: str = "poisson", burstiness_cv: float = 1.0, seed: int = 0,
                    name: str = "synthetic") -> Trace:
    """Open-loop synthetic trace; rate_per_s=None gives all arrivals at 0 (for closed-loop use)."""
    if isinstance(num_requests, bool) or not isinstance(num_requests, (int, np.integer)) or num_requests < 1:
        raise InputError("--num-requests", None, f"must be a positive whole number, got {num_requests!r}", "e.g. 1000")
    check_count("--num-requests", None, int(num_requests), 1, MAX_REQUESTS, "e.g. --num-requests 1000")
    if arrival not in ARRIVALS:
        raise InputError("--arrival", None, f"unknown arrival process '{arrival}'", did_you_mean(arrival, ARRIVALS))
    if rate_per_s is not None and not (math.isfinite(rate_per_s) and rate_per_s > 0):
        raise InputError("--rate", None, f"must be a positive number of requests per second, got {rate_per_s}", "e.g. 2.5")
    if rate_per_s is not None:
        check_real("--rate", None, rate_per_s, MIN_RATE_PER_S, MAX_RATE_PER_S, "e.g. --rate 2.5")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or not 0 <= seed <= MAX_SEED:
        raise InputError("--seed", None, f"must be a whole number from 0 to {MAX_SEED}, got {seed!r}", "e.g. --seed 0")
    if not (math.isfinite(burstiness_cv) and 0 < burstiness_cv <= 100):
        raise InputError("--burstiness-cv", None, f"must be in (0, 100], got {burstiness_cv}",
                         "1.0 is Poisson-like; above 1 is burstier, below 1 more regular")
    rng = np.random.default_rng(seed)
    n = int(num_requests)
    prompt_tokens = prompt.sample(n, rng)
    output_tokens = np.maximum(output.sample(n, rng), 1)            # every request generates >= 1 token
    arrival_s = np.zeros(n) if rate_per_s is None else _arrivals_s(n, rate_per_s, arrival, burstiness_cv, rng)
    return Trace(arrival_s=arrival_s, prompt_tokens=prompt_tokens, output_tokens=output_tokens, name=name)


def closed_loop(trace: Trace, concurrency: int) -> Workload:
    """Closed-loop workload: `concurrency` requests in flight, arrival times unused."""
    if isinstance(concurrency, bool) or not isinstance(concurrency, (int, np.integer)) or concurrency < 1:
        raise InputError("--concurrency", None, f"must be a positive whole number, got {concurrency!r}", "e.g. 32")
    check_count("--concurrency", None, int(concurrency), 1, MAX_REQUESTS, "e.g. --concurrency 32")
    return Workload(trace=trace, mode="closed", concurrency=int(concurrency))


# Presets measured once (mean, population std, min, max of each length) from the vLLM H100 bench
# traces in shared/bench/vllm-h100/traces/ (Llama-3.1-70B, rate 0.5/s, dp1tp8 runs); the numbers
# are copied here so nothing reads that folder at run time. Output lengths are what the engine
# generated (EOS-stopped), not requested maxima.
#   lmsys_05.dp1tp8:         1024 req, prompt 74.28 +- 124.75 [12, 1151],  output 79.38 +- 118.57 [1, 591]
#   summarization_05.dp1tp8: 1302 req, prompt 2753.06 +- 947.32 [245, 4092], output 131.96 +- 80.84 [1, 458]
#   creation_05.dp1tp8:       512 req, prompt 307.74 +- 92.47 [100, 1232],  output 1135.67 +- 433.07 [236, 3501]
# chat is heavy tailed (median prompt 28, output 17): lognormal. Summarization prompts pile up below
# the 4k context limit (median 2943 > mean) and its outputs are near-symmetric: clipped normal.
# Creation lengths are right-skewed with small CV: lognormal.
PRESETS: dict[str, Preset] = {
    "chat": Preset(
        name="chat",
        prompt=LengthDist("lognormal", mean=74.28, std=124.75, min_tokens=12, max_tokens=1151),
        output=LengthDist("lognormal", mean=79.38, std=118.57, min_tokens=1, max_tokens=591),
        source="llama-3.1-70b.lmsys_05.dp1tp8.jsonl (LMSYS-Chat prompts)",
        description="short multi-turn chat, heavy-tailed lengths",
    ),
    "summarization": Preset(
        name="summarization",
        prompt=LengthDist("normal", mean=2753.06, std=947.32, min_tokens=245, max_tokens=4092),
        output=LengthDist("normal", mean=131.96, std=80.84, min_tokens=1, max_tokens=458),
        source="llama-3.1-70b.summarization_05.dp1tp8.jsonl",
        description="long prompts, short outputs (prefill heavy)",
    ),
    "creation": Preset(
        name="creation",
        prompt=LengthDist("lognormal", mean=307.74, std=92.47, min_tokens=100, max_tokens=1232),
        output=LengthDist("lognormal", mean=1135.67, std=433.07, min_tokens=236, max_tokens=3501),
        source="llama-3.1-70b.creation_05.dp1tp8.jsonl",
        description="short prompts, long outputs (decode heavy)",
    ),
}


def preset_trace(name: str, rate_per_s: float | None, num_requests: int = 1000, seed: int = 0,
                 arrival: str = "poisson", burstiness_cv: float = 1.0) -> Trace:
    """Synthetic trace with a preset's length distributions and Poisson (or gamma) arrivals."""
    preset = PRESETS.get(name)
    if preset is None:
        raise InputError("--workload", None, f"unknown preset '{name}'", did_you_mean(name, PRESETS))
    return synthetic_trace(num_requests, preset.prompt, preset.output, rate_per_s, arrival=arrival,
                           burstiness_cv=burstiness_cv, seed=seed, name=name)
