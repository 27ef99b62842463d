"""Read request traces (APEX JSON lines, plain CSV, BurstGPT, Azure LLM inference) into a Trace.

Each reader has a vectorised fast path (one regex or `np.loadtxt` pass over the file) and a
line-by-line slow path that runs only when the fast path meets something unexpected; the slow
path either reads the file anyway (blank lines, floats written as 12.0, keys in odd order) or
raises an InputError naming the file, line and field.
"""

from __future__ import annotations

import csv
import io
import itertools
import json
import math
import re
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from apex_plan.errors import InputError
from apex_plan.limits import MAX_REQUESTS, MAX_TOKENS_PER_REQUEST, MAX_TRACE_BYTES, MAX_TRACE_SPAN_S
from apex_plan.workload.spec import Trace

APEX_FIELDS = ("StartTimeOffset", "ContextTokens", "GeneratedTokens")   # ns, tokens, tokens
CSV_FIELDS = ("arrival_s", "prompt_tokens", "output_tokens")
BURSTGPT_FIELDS = ("Timestamp", "Request tokens", "Response tokens")    # s, tokens, tokens (plus Model, Total tokens, Log Type)
AZURE_FIELDS = ("TIMESTAMP", "ContextTokens", "GeneratedTokens")        # datetime, tokens, tokens

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


@dataclass(frozen=True, eq=False)
class _Columns:
    """Raw columns of a trace before checks; `lines` holds the 1-based file line of each row."""

    time: np.ndarray                 # int64 or float64, in the format's unit
    prompt: np.ndarray
    output: np.ndarray
    lines: np.ndarray


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
        cols = _apex_columns(where, text)
        time_s_scale = 1e-9
    elif fmt == "azure":
        cols = _azure_columns(where, text, header)
        time_s_scale = 1e-6
    else:
        cols = _csv_columns(where, text, header, FORMATS[fmt])
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


def _first_line(text: str) -> str:
    """First non-blank line, stripped, without splitting the whole text."""
    found = re.search(r"\S", text)
    start = found.start() if found else 0
    end = text.find("\n", start)
    return text[start:] if end < 0 else text[start:end].strip()


def _split_header(line: str) -> list[str]:
    return [c.strip().strip('"').strip() for c in next(csv.reader([line]))]


def detect_format(path: Path, text: str) -> tuple[str, list[str]]:
    """('apex'|'csv'|'burstgpt'|'azure', CSV header columns) from the extension and first line."""
    first = _first_line(text)
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
# APEX JSON lines

_WS = r"[ \t]*"
_ANY_JSON_VALUE = r'(?:"[^"\\\n]*(?:\\.[^"\\\n]*)*"|[-+0-9.eE]+|true|false|null)'


_FAST_CHUNK_CHARS = 32 * 2**20      # parse ~32 MB of text at a time: bounded memory for the matches


def _apex_fast(text: str) -> _Columns | None:
    """A regex built from the first line's key order, run over the text chunk by chunk (each chunk ends at a
    line end, so the matches of one chunk are freed before the next); None on any surprise."""
    end = len(text)
    while end and text[end - 1] in "\r\n\t ":       # trailing blank space, without copying the text
        end -= 1
    num_lines = text.count("\n", 0, end) + 1
    try:
        first = json.loads(_first_line(text))
    except ValueError:
        return None
    if not isinstance(first, dict) or not set(APEX_FIELDS) <= set(first):
        return None
    keys = list(first)
    parts = [_WS + json.dumps(k) + _WS + ":" + _WS + (r"(-?\d{1,18})" if k in APEX_FIELDS else _ANY_JSON_VALUE) + _WS
             for k in keys]
    pattern = re.compile(r"\{" + ",".join(parts) + r"\}")
    table = np.empty((num_lines, 3), np.int64)
    row, pos = 0, 0
    while pos < end:
        stop = text.find("\n", min(pos + _FAST_CHUNK_CHARS, end), end)
        stop = end if stop < 0 else stop
        rows = pattern.findall(text, pos, stop)
        if row + len(rows) > num_lines:
            return None
        table[row:row + len(rows)] = np.fromiter(map(int, itertools.chain.from_iterable(rows)), np.int64,
                                                 3 * len(rows)).reshape(-1, 3)
        row, pos = row + len(rows), stop + 1
    if row != num_lines:
        return None
    in_line_order = sorted(APEX_FIELDS, key=keys.index)           # regex groups follow the line's key order
    col = {f: table[:, in_line_order.index(f)] for f in APEX_FIELDS}
    return _Columns(col["StartTimeOffset"], col["ContextTokens"], col["GeneratedTokens"], np.arange(1, num_lines + 1))


def _apex_columns(where: str, text: str) -> _Columns:
    """Fast regex path; json per line (exact errors) when it does not account for every line."""
    cols = _apex_fast(text)
    return cols if cols is not None else _apex_slow(where, text)


def _apex_slow(where: str, text: str) -> _Columns:
    times: list[float] = []
    prompts: list[int] = []
    outputs: list[int] = []
    lines: list[int] = []
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        at = f"{where}:{lineno}"
        try:
            obj = json.loads(line)
        except ValueError as exc:
            raise InputError(at, None, f"not valid JSON ({exc.msg})", "each line must be one JSON object") from None
        if not isinstance(obj, dict):
            raise InputError(at, None, "expected a JSON object", 'write {"StartTimeOffset": ..., ...}')
        for key in APEX_FIELDS:
            if key not in obj:
                raise InputError(at, key, "missing", "every line needs " + ", ".join(APEX_FIELDS))
        times.append(_json_number(at, "StartTimeOffset", obj["StartTimeOffset"], "nanoseconds since the trace start"))
        prompts.append(_json_count(at, "ContextTokens", obj["ContextTokens"]))
        outputs.append(_json_count(at, "GeneratedTokens", obj["GeneratedTokens"]))
        lines.append(lineno)
    time_arr = np.array(times)
    if all(float(t).is_integer() and abs(t) < 2**62 for t in times):      # else float64 (the span check refuses it)
        time_arr = np.array([int(t) for t in times], dtype=np.int64)
    return _Columns(time_arr, np.array(prompts, dtype=np.int64), np.array(outputs, dtype=np.int64),
                    np.array(lines, dtype=np.int64))


def _json_number(at: str, field: str, value: object, unit: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise InputError(at, field, f"expected a number in {unit}, got {json.dumps(value)[:40]}",
                         f"write a bare number in {unit}")
    if isinstance(value, int) and abs(value) >= 2**63:
        raise InputError(at, field, f"{value:.3g} does not fit a 64-bit integer", f"write a number in {unit}")
    return value


def _json_count(at: str, field: str, value: object) -> int:
    number = _json_number(at, field, value, "tokens")
    if not float(number).is_integer():
        raise InputError(at, field, f"token count {number} is not a whole number", "write an integer")
    if abs(number) > MAX_TOKENS_PER_REQUEST:
        raise InputError(at, field, f"{number:,} tokens is above the limit of {MAX_TOKENS_PER_REQUEST:,} per request",
                         "check the column; token counts are per request")
    return int(number)


# ---------------------------------------------------------------------------------------------
# CSV formats

def _body_lines(text: str) -> tuple[str, bool]:
    """The CSV text after the header line, and whether it is free of blank lines (fast-path safe)."""
    stripped = text.lstrip("\r\n")
    header_end = stripped.find("\n")
    body = "" if header_end < 0 else stripped[header_end + 1:].rstrip("\r\n")
    clean = text.startswith(stripped) and "\n\n" not in body and "\n\r\n" not in body and not body.startswith(("\r", "\n"))
    return body, clean


def _same_width(body: str, header: list[str]) -> bool:
    """Every row has the header's field count (checked by counting commas when nothing is quoted; a quoted
    file goes to the row-by-row path, which checks each row)."""
    return '"' not in body and body.count(",") == (body.count("\n") + 1) * (len(header) - 1)


def _loadtxt(body: str, idx: list[int]) -> np.ndarray | None:
    """Numeric columns `idx` of a header-less, blank-free CSV body, or None if any cell fails."""
    try:
        table = np.loadtxt(io.StringIO(body), delimiter=",", usecols=idx, dtype=np.float64,
                           comments=None, quotechar='"', ndmin=2)
    except ValueError:
        return None
    return table if table.shape[0] == body.count("\n") + 1 else None


def _csv_columns(where: str, text: str, header: list[str], fields: tuple[str, str, str]) -> _Columns:
    """Numeric CSV columns `fields` via np.loadtxt; per-row csv parsing when that fails."""
    body, clean = _body_lines(text)
    if not body:
        raise InputError(where, None, "trace has a header but no requests", "add at least one data row")
    table = _loadtxt(body, [header.index(f) for f in fields]) if clean and _same_width(body, header) else None
    if table is not None:
        return _Columns(table[:, 0], table[:, 1], table[:, 2], np.arange(2, table.shape[0] + 2))
    return _csv_slow(where, text, header, fields, {})


def _csv_slow(where: str, text: str, header: list[str], fields: tuple[str, ...],
              parsers: dict[str, object]) -> _Columns:
    """Row by row with the csv module; raises an InputError at the first bad field."""
    idx = [header.index(f) for f in fields]
    reader = csv.reader(io.StringIO(text))
    columns: list[list] = [[], [], []]
    lines: list[int] = []
    seen_header = False
    for row in reader:
        lineno = reader.line_num
        if not row or not "".join(row).strip():
            continue
        if not seen_header:
            seen_header = True
            continue
        at = f"{where}:{lineno}"
        if len(row) != len(header):
            raise InputError(at, None, f"{len(row)} fields where the header has {len(header)}",
                             "every row needs " + ",".join(header))
        for k, (field, i) in enumerate(zip(fields, idx)):
            cell = row[i].strip()
            parse = parsers.get(field)
            if parse is not None:
                columns[k].append(parse(at, field, cell))
                continue
            try:
                value = float(cell)
            except ValueError:
                unit = "seconds" if k == 0 else "tokens"
                raise InputError(at, field, f"'{cell}' is not a number", f"write a bare number in {unit}") from None
            columns[k].append(value)
        lines.append(lineno)
    if not lines:
        raise InputError(where, None, "trace has a header but no requests", "add at least one data row")
    arrays = [np.array(c) if parsers.get(f) else np.array(c, dtype=np.float64) for c, f in zip(columns, fields)]
    return _Columns(arrays[0], arrays[1], arrays[2], np.array(lines, dtype=np.int64))


def _azure_columns(where: str, text: str, header: list[str]) -> _Columns:
    """TIMESTAMP strings parsed as numpy datetime64 after trimming 7 fractional digits to 6."""
    body, clean = _body_lines(text)
    if not body:
        raise InputError(where, None, "trace has a header but no requests", "add at least one data row")
    if clean and _same_width(body, header):
        table = _loadtxt(body, [header.index("ContextTokens"), header.index("GeneratedTokens")])
        if table is not None:
            try:
                stamps = np.loadtxt(io.StringIO(body), delimiter=",", usecols=header.index("TIMESTAMP"),
                                    dtype="U40", comments=None, quotechar='"', ndmin=1)
                time_us = np.char.strip(stamps).astype("U26").astype("datetime64[us]").astype(np.int64)
            except ValueError:
                time_us = None
            if time_us is not None and not (time_us == np.iinfo(np.int64).min).any():   # NaT
                return _Columns(time_us, table[:, 0], table[:, 1], np.arange(2, table.shape[0] + 2))
    return _csv_slow(where, text, header, AZURE_FIELDS, {"TIMESTAMP": _parse_azure_time})


def _parse_azure_time(at: str, field: str, cell: str) -> int:
    try:
        value = np.datetime64(cell[:26].replace(" ", "T"), "us")
    except ValueError:
        value = np.datetime64("NaT")
    if np.isnat(value):
        raise InputError(at, field, f"cannot read datetime '{cell}'", "write e.g. 2023-11-16 18:15:46.6805900")
    return int(value.astype(np.int64))


# ---------------------------------------------------------------------------------------------
# checks shared by all formats

def _first(mask: np.ndarray) -> int:
    return int(np.flatnonzero(mask)[0])


def _check_tokens(where: str, fmt: str, cols: _Columns, allow_zero_output: bool) -> None:
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


def _finish(where: str, fmt: str, cols: _Columns, to_s: float, name: str) -> TraceLoad:
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
            cols = _Columns(time[keep], cols.prompt[keep], cols.output[keep], cols.lines[keep])
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
        cols = _Columns(time[order], cols.prompt[order], cols.output[order], cols.lines[order])
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
