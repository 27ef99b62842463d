"""The held-slot signature of measured closed loops: does a new request wait for the next completion?

In a closed loop of C requests on an engine that seats only C - k of them (k slots held from new
requests: a client with more requests in flight than the engine's batch, a cap one below it), k
requests always wait, each for the next completion: a de-synchronised loop completes one request
every lifetime / (C - k), so TTFT = base + k x lifetime / (C - k). At fixed prompt, concurrency and
layout only the lifetime moves with the output length (about osl x TPOT), so over a row set that
varies osl alone

    TTFT = base + k x osl x TPOT / (C - 1)                       (k small against C)

and the least-squares slope k reads the held slots: 0 for an engine that seats every request at once
(its TTFT flat in osl), 1 for one slot held. `campaign_slopes` fits k per group of rows sharing
everything but osl and summarises it per measuring campaign (GPU, engine, version, model, dtype).
scripts/check_closed_loop_hold.py prints it for the shared silicon files; README 'Closed loops'.
"""
from __future__ import annotations

import csv
import statistics
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np

MIN_CONCURRENCY = 2      # C - 1 > 0: one slot held leaves at least one seated
MAX_CONCURRENCY = 32     # above it the hold's lifetime / (C - 1) drowns in the step times' noise


@dataclass(frozen=True)
class HoldFit:
    """One group's fit: k (held slots) and base (ms) of TTFT = base + k x osl x TPOT / (C - 1)."""
    key: tuple
    slope: float
    base_ms: float
    runs: int


@dataclass(frozen=True)
class CampaignHold:
    """The groups of one campaign: their median held-slot slope, its range, and the median base."""
    campaign: tuple
    groups: int
    median_slope: float
    min_slope: float
    max_slope: float
    median_base_ms: float


def hold_slope(osl, tpot_ms, ttft_ms, concurrency: int) -> tuple[float, float]:
    """Least-squares (k, base_ms) of TTFT = base + k x osl x TPOT / (C - 1) over runs differing in osl."""
    x = np.asarray(osl, float) * np.asarray(tpot_ms, float) / (concurrency - 1)   # one inter-completion gap, ms
    a = np.vstack([np.ones_like(x), x]).T
    (base, k), *_ = np.linalg.lstsq(a, np.asarray(ttft_ms, float), rcond=None)
    return float(k), float(base)


def _num(v: str) -> float | None:
    try:
        return float(v)
    except (TypeError, ValueError):
        return None


def group_fits(rows) -> list[HoldFit]:
    """A fit per group of aggregated rows sharing GPU, engine, version, model, dtype, layout, isl and C
    (MIN_CONCURRENCY <= C <= MAX_CONCURRENCY) that has at least two output lengths."""
    groups = defaultdict(list)
    for r in rows:
        c, osl = _num(r.get("concurrency")), _num(r.get("osl"))
        ttft, tpot = _num(r.get("silicon_ttft_ms")), _num(r.get("silicon_tpot_ms"))
        if r.get("mode") != "agg" or None in (c, osl, ttft, tpot) or not MIN_CONCURRENCY <= c <= MAX_CONCURRENCY:
            continue
        key = tuple(r.get(f, "") for f in ("system", "backend", "backend_version", "model_path", "precision",
                                           "tp_size", "pp_size", "attention_dp_size", "moe_ep_size", "isl"))
        groups[key + (int(c),)].append((osl, tpot, ttft))
    fits = []
    for key, runs in sorted(groups.items()):
        if len({o for o, _, _ in runs}) < 2:
            continue
        osl, tpot, ttft = zip(*runs)
        k, base = hold_slope(osl, tpot, ttft, key[-1])
        fits.append(HoldFit(key, k, base, len(runs)))
    return fits


def campaign_slopes(fits: list[HoldFit]) -> list[CampaignHold]:
    """Per campaign (GPU, engine, version, model, dtype): the spread of its groups' held-slot slopes."""
    by = defaultdict(list)
    for f in fits:
        by[f.key[:5]].append(f)
    out = []
    for camp, fs in sorted(by.items()):
        ks = [f.slope for f in fs]
        out.append(CampaignHold(camp, len(fs), statistics.median(ks), min(ks), max(ks),
                                statistics.median(f.base_ms for f in fs)))
    return out


def read_rows(paths) -> list[dict]:
    """Every row of the silicon CSVs at `paths`."""
    rows = []
    for p in paths:
        with Path(p).open(newline="") as fh:
            rows.extend(csv.DictReader(fh))
    return rows
