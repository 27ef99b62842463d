"""Read request traces (APEX JSON lines, plain CSV, BurstGPT, Azure LLM inference) into a Trace.

Each reader has a vectorised fast path (one regex or `np.loadtxt` pass over the file) and a
line-by-line slow path that runs only when the fast path meets something unexpected; the slow
path either reads the file anyway (blank lines, floats written as 12.0, keys in odd order) or
raises an InputError naming the file, line and field. The per-format column parsers are in
`workload.trace_columns`; this module detects the format, checks the columns and builds the Trace.
"""

from __future__ import annotations

import csv
import json
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from apex_plan.errors import InputError
from apex_plan.limits import MAX_REQUESTS, MAX_TOKENS_PER_REQUEST, MAX_TRACE_BYTES, MAX_TRACE_SPAN_S
from apex_plan.workload.spec import Trace
from apex_plan.workload.trace_columns import (APEX_FIELDS, AZURE_FIELDS, BURSTGPT_FIELDS, CSV_FIELDS, Columns,
                                              apex_columns, azure_columns, csv_columns, first_line)

FORMATS = {"apex": APEX_FIELDS, "csv": CSV_FIELDS, "burstgpt": BURSTGPT_FIELDS, "azure": AZURE_FIELDS}
_FORMAT_NAMES = {"apex": "APEX JSON lines", "csv": "plain CSV", "burstgpt": "BurstGPT CSV",
                 "azure": "Azure LLM inference CSV", "mooncake": "Mooncake / session JSON lines"}
_MUST_BE_SORTED = {"apex": True, "csv": True, "burstgpt": False, "azure": False}


class TraceWarning(UserWarning):
    """Something in a trace was dropped or changed while reading it."""


@dataclass(frozen=True, eq=False)
class TraceLoad:
    """A trace plus what reading it did: its format and the failed requests dropped."""

    trace: Trace
    format: str
    dropped_failed: int = 0          # BurstGPT rows with 0 response tokens (failed requests)
    notes: tuple[str, ...] = ()


# ---------------------------------------------------------------------------------------------
# entry points

def read_trace(path: str | Path, hash_block_tokens: int | None = None) -> Trace:
    """Read a trace, detecting its format from the extension and header; warns on dropped rows.
    `hash_block_tokens`: block size of the ids built for a session trace (see workload.mooncake)."""
    loaded = load_trace(path, hash_block_tokens)
    for note in loaded.notes:
        warnings.warn(note, TraceWarning, stacklevel=2)
    return loaded.trace


def load_trace(path: str | Path, hash_block_tokens: int | None = None) -> TraceLoad:
    """Like `read_trace` but returns the format and the count of dropped failed requests."""
    path = Path(path)
    text = _read_text(path)
    fmt, header = detect_format(path, text)
    where = str(path)
    if fmt == "mooncake":
        from apex_plan.workload.mooncake import read_mooncake
        from apex_plan.workload.prefix import DEFAULT_HASH_BLOCK_TOKENS
        return TraceLoad(read_mooncake(where, text, path.stem, hash_block_tokens or DEFAULT_HASH_BLOCK_TOKENS), fmt)
    if fmt == "apex":
        cols = apex_columns(where, text)
        time_s_scale = 1e-9
    elif fmt == "azure":
        cols = azure_columns(where, text, header)
        time_s_scale = 1e-6
    else:
        cols = csv_columns(where, text, header, FORMATS[fmt])
        time_s_scale = 1.0
    return _finish(where, fmt, cols, time_s_scale, path.stem)


def read_apex_jsonl(path: str | Path) -> Trace:
    """APEX JSON lines: StartTimeOffset (ns), ContextTokens, GeneratedTokens, optional RequestID."""
    return _read_as(path, "apex")


def read_csv_trace(path: str | Path) -> Trace:
    """Plain CSV with header arrival_s,prompt_tokens,output_tokens."""
    return _read_as(path, "csv")


def read_burstgpt(path: str | Path) -> Trace:
    """BurstGPT CSV; failed requests (0 response tokens) are dropped with a TraceWarning."""
    return _read_as(path, "burstgpt")


def read_azure(path: str | Path) -> Trace:
    """Azure LLM inference trace CSV: TIMESTAMP (datetime), ContextTokens, GeneratedTokens."""
    return _read_as(path, "azure")


def _read_as(path: str | Path, expected: str) -> Trace:
    path = Path(path)
    fmt, _ = detect_format(path, _read_text(path))
    if fmt != expected:
        raise InputError(str(path), None, f"this is a {_FORMAT_NAMES[fmt]} trace, not {_FORMAT_NAMES[expected]}",
                         "use read_trace, which detects the format")
    return read_trace(path)


# ---------------------------------------------------------------------------------------------
# detection

def _read_text(path: Path) -> str:
    try:
        size = path.stat().st_size
        if size > MAX_TRACE_BYTES:            # refused from the file system, before reading a byte
            raise InputError(str(path), None, f"trace file is {size / 2**30:.1f} GiB, above the limit of "
                             f"{MAX_TRACE_BYTES / 2**30:g} GiB", "split it, or sample the requests you need")
        if path.is_dir():
            raise InputError(str(path), None, "is a folder, not a trace file", "give the path of a .jsonl or .csv file")
        data = path.read_bytes()
    except FileNotFoundError:
        raise InputError(str(path), None, "trace file not found", "check the path") from None
    except OSError as exc:
        raise InputError(str(path), None, f"cannot read trace: {exc.strerror or exc}", "check the path") from None
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise InputError(f"{path}:{line}", None, "not UTF-8 text", "save the trace as UTF-8 JSON lines or CSV") from None
    if "\r" in text:
        text = text.replace("\r\n", "\n")
    if not text or text.isspace():
        raise InputError(str(path), None, "trace file is empty", "give a trace with at least one request")
    return text


def _split_header(line: str) -> list[str]:
    return [c.strip().strip('"').strip() for c in next(csv.reader([line]))]


def detect_format(path: Path, text: str) -> tuple[str, list[str]]:
    """('apex'|'csv'|'burstgpt'|'azure', CSV header columns) from the extension and first line."""
    first = first_line(text)
    suffix = path.suffix.lower()
    if first.startswith("{"):
        from apex_plan.workload.mooncake import is_mooncake_line
        try:
            obj = json.loads(first)
        except ValueError:
            obj = None
        return ("mooncake" if is_mooncake_line(obj) else "apex"), []
    if suffix in (".jsonl", ".json", ".ndjson"):
        raise InputError(f"{path}:1", None, "expected a JSON object per line",
                         'APEX traces have lines like {"StartTimeOffset": 0, "ContextTokens": 12, "GeneratedTokens": 34}')
    header = _split_header(first)
    scores = {fmt: len(set(fields) & set(header)) for fmt, fields in FORMATS.items() if fmt != "apex"}
    best = max(scores, key=lambda f: (scores[f], f == "csv"))
    if scores[best] == 0:
        expected = "; ".join(f"{_FORMAT_NAMES[f]}: {','.join(FORMATS[f])}" for f in FORMATS if f != "apex")
        raise InputError(f"{path}:1", None, f"unrecognised trace header '{first[:80]}'",
                         f"the first line must name the columns ({expected}); or give APEX JSON lines")
    missing = [c for c in FORMATS[best] if c not in header]
    if missing:
        raise InputError(f"{path}:1", missing[0], f"missing column for a {_FORMAT_NAMES[best]} trace",
                         "the header needs " + ",".join(FORMATS[best]))
    return best, header




# ---------------------------------------------------------------------------------------------
# checks shared by all formats

def _first(mask: np.ndarray) -> int:
    return int(np.flatnonzero(mask)[0])


def _check_tokens(where: str, fmt: str, cols: Columns, allow_zero_output: bool) -> None:
    names = dict(zip(("prompt", "output"), FORMATS[fmt][1:]))
    for kind, values in (("prompt", cols.prompt), ("output", cols.output)):
        field = names[kind]
        bad = ~np.isfinite(values) if values.dtype.kind == "f" else np.zeros(values.shape, bool)
        if values.dtype.kind == "f":
            bad |= np.where(np.isfinite(values), values != np.floor(values), True)
        if bad.any():
            i = _first(bad)
            raise InputError(f"{where}:{cols.lines[i]}", field, f"token count {values[i]} is not a whole number",
                             "write an integer")
        if (values < 0).any():
            i = _first(values < 0)
            raise InputError(f"{where}:{cols.lines[i]}", field, f"token count {values[i]:g} is negative",
                             "token counts must be >= 0")
        if (values > MAX_TOKENS_PER_REQUEST).any():
            i = _first(values > MAX_TOKENS_PER_REQUEST)
            raise InputError(f"{where}:{cols.lines[i]}", field, f"{values[i]:,.0f} tokens is above the limit of "
                             f"{MAX_TOKENS_PER_REQUEST:,} per request", "check the column; token counts are per request")
        if kind == "prompt" and (values == 0).any():
            i = _first(values == 0)
            raise InputError(f"{where}:{cols.lines[i]}", field, "0 prompt tokens",
                             "every request needs at least 1 prompt token (vLLM refuses empty prompts)")
        if kind == "output" and not allow_zero_output and (values == 0).any():
            i = _first(values == 0)
            raise InputError(f"{where}:{cols.lines[i]}", field, "0 output tokens",
                             "every request must generate at least 1 token; drop failed requests")


def _finish(where: str, fmt: str, cols: Columns, to_s: float, name: str) -> TraceLoad:
    """Validate columns, drop failed BurstGPT rows, sort where allowed, shift times to start at 0."""
    time_field = FORMATS[fmt][0]
    time = cols.time
    if len(time) == 0:
        raise InputError(where, None, "trace has no requests", "give at least one request")
    if len(time) > MAX_REQUESTS:
        raise InputError(where, None, f"{len(time):,} requests, above the limit of {MAX_REQUESTS:,}",
                         "split the trace, or sample the requests you need")
    if time.dtype.kind == "f" and not np.isfinite(time).all():
        i = _first(~np.isfinite(time))
        raise InputError(f"{where}:{cols.lines[i]}", time_field, f"time {time[i]} is not a finite number",
                         "write a time in seconds" if to_s == 1.0 else "write a time")
    if fmt != "azure" and (time < 0).any():
        i = _first(time < 0)
        raise InputError(f"{where}:{cols.lines[i]}", time_field, f"negative time {time[i]}",
                         "times are offsets from the start of the trace and must be >= 0")
    dropped = 0
    notes: tuple[str, ...] = ()
    if fmt == "burstgpt":
        _check_tokens(where, fmt, cols, allow_zero_output=True)
        keep = cols.output != 0
        dropped = int((~keep).sum())
        if dropped:
            notes = (f"{where}: dropped {dropped} failed requests (0 response tokens) of {len(keep)}",)
            cols = Columns(time[keep], cols.prompt[keep], cols.output[keep], cols.lines[keep])
            time = cols.time
        if len(time) == 0:
            raise InputError(where, "Response tokens", "every request failed (0 response tokens)",
                             "give a trace with successful requests")
    else:
        _check_tokens(where, fmt, cols, allow_zero_output=False)
    step_back = np.diff(time) < 0
    if step_back.any():
        if _MUST_BE_SORTED[fmt]:
            i = _first(step_back) + 1
            raise InputError(f"{where}:{cols.lines[i]}", time_field,
                             f"time goes backwards (line {cols.lines[i - 1]} is later)",
                             f"{_FORMAT_NAMES[fmt]} traces must be sorted by {time_field}; sort the file")
        order = np.argsort(time, kind="stable")
        cols = Columns(time[order], cols.prompt[order], cols.output[order], cols.lines[order])
        time = cols.time
    arrival_s = (time - time[0]).astype(np.float64) * to_s
    if arrival_s[-1] > MAX_TRACE_SPAN_S:
        i = len(arrival_s) - 1
        raise InputError(f"{where}:{cols.lines[i]}", time_field, f"the trace spans {arrival_s[-1]:.3g} s, above the "
                         f"limit of {MAX_TRACE_SPAN_S:.3g} s (ten years)",
                         "check the time unit: " + ("nanoseconds" if fmt == "apex" else
                                                    "the timestamps" if fmt == "azure" else "seconds"))
    trace = Trace(arrival_s=arrival_s, prompt_tokens=cols.prompt.astype(np.int64),
                  output_tokens=cols.output.astype(np.int64), name=name)
    return TraceLoad(trace=trace, format=fmt, dropped_failed=dropped, notes=notes)
