"""Physical upper bounds on an engine's per-step host time, from measured closed-loop runs.

An engine step's wall time is at least its host time whatever the overlap: the kernel's
step = max(GPU, overlap x host) + (1 - overlap) x host >= host (`estimate.kernels.step_time`). In a
closed loop the mean time per output token is the mean decode step, so for every measured run

    host.step_ms + host.per_seq_ms x decoding  <=  measured TPOT,

where `decoding` is the number of requests in their decode phase on one engine loop, from Little's
law: each of the C requests spends (osl - 1) x TPOT of its lifetime TTFT + (osl - 1) x TPOT decoding.
A profile whose host constants break this on a run cannot reproduce that run at any GPU speed.

The same count checks the declared batch cap: a run whose decoding count exceeds its declared
max batch (per attention-DP rank) did not run under that cap as the row reads it.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

from apex_plan.engine.load import resolve_engine_profile
from apex_plan.calibrate.runs import SYSTEM_GPU
from apex_plan.errors import InputError

CAP_SLACK = 1.05        # decoding counts this far above the declared cap are measurement noise, not a breach


@dataclass(frozen=True)
class RunBound:
    """One measured run's bound on its engine's per-sequence host time."""

    id: str
    profile: str                # engine profile name the run resolves to
    gpu: str                    # GPU profile name
    model: str
    decoding: float             # requests decoding per engine loop (Little's law)
    tpot_ms: float              # measured mean time per output token
    step_ms: float              # the profile's fixed host time per step on this GPU
    per_seq_ms: float           # the profile's host time per scheduled request per step on this GPU
    bound_ms: float             # largest per-request host time the run allows
    cap: int                    # declared max batch per attention-DP rank (0: none declared)

    @property
    def host_ms(self) -> float:
        """The profile's host time of one step at this run's decoding count."""
        return self.step_ms + self.per_seq_ms * self.decoding

    @property
    def violated(self) -> bool:
        return self.host_ms > self.tpot_ms

    @property
    def cap_breached(self) -> bool:
        return self.cap > 0 and self.decoding > CAP_SLACK * self.cap


def decoding_requests(ttft_ms: float, tpot_ms: float, osl: int, concurrency: float, ranks: int = 1) -> float:
    """Requests in their decode phase per engine loop: C x decode time / lifetime (Little's law), per rank."""
    decode_ms = max(osl - 1, 0) * tpot_ms              # time each request spends decoding
    life_ms = ttft_ms + decode_ms                       # its lifetime in the closed loop
    return concurrency * decode_ms / life_ms / max(ranks, 1) if life_ms > 0 else 0.0


def per_seq_bound_ms(tpot_ms: float, step_ms: float, decoding: float) -> float:
    """Largest per-request host time with step_ms + per_seq x decoding <= TPOT (inf without decodes)."""
    return (tpot_ms - step_ms) / decoding if decoding > 0 else float("inf")


def _int(text: str | None, default: int = 0) -> int:
    try:
        return int(float(text))
    except (TypeError, ValueError):
        return default


def _engine_text(r: dict) -> str:
    version = (r.get("backend_version") or "").strip()
    return f"{r['backend']}@{version}" if version else r["backend"]


def run_bound(r: dict) -> RunBound | None:
    """The bound of one aggregated silicon row (None for rows that are not aggregated closed loops or whose
    engine, GPU or figures cannot be read)."""
    conc = _int(r.get("concurrency")) or _int(r.get("batch_size"))
    gpu = SYSTEM_GPU.get(r.get("system", ""))
    if r.get("mode") != "agg" or conc <= 0 or gpu is None:
        return None
    try:
        ttft, tpot, osl = float(r["silicon_ttft_ms"]), float(r["silicon_tpot_ms"]), int(float(r["osl"]))
        prof = resolve_engine_profile(_engine_text(r)).on_gpu(gpu)
    except (KeyError, ValueError, InputError):     # an unreadable figure, or an engine with no profile
        return None
    ranks = max(_int(r.get("attention_dp_size"), 1), 1)
    dec = decoding_requests(ttft, tpot, osl, conc, ranks)
    host = prof.host
    return RunBound(id=r["id"], profile=prof.name, gpu=gpu, model=r.get("model_path", ""), decoding=dec,
                    tpot_ms=tpot, step_ms=host.step_ms, per_seq_ms=host.per_seq_ms,
                    bound_ms=per_seq_bound_ms(tpot, host.step_ms, dec), cap=_int(r.get("batch_size")))


def read_bounds(paths: list[Path], exclude: set[str] = frozenset()) -> list[RunBound]:
    """Every readable aggregated row's bound, rows whose id is in `exclude` left out."""
    out = []
    for path in paths:
        with open(path, newline="") as fh:
            for r in csv.DictReader(fh):
                if r.get("id") in exclude:
                    continue
                b = run_bound(r)
                if b is not None:
                    out.append(b)
    return out


def read_excluded(path: Path) -> set[str]:
    """Ids listed in an excluded-rows CSV (empty when the file is absent)."""
    if not path.is_file():
        return set()
    with open(path, newline="") as fh:
        return {r["id"] for r in csv.DictReader(fh) if r.get("id")}
