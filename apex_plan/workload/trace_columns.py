"""The column parsers of `workload.trace`: each trace format's raw columns (times, prompt and output
tokens, file lines), a vectorised fast path and a line-by-line slow path that reads odd but valid
files or raises an InputError naming the file, line and field. Checks and units are applied by
`workload.trace` afterwards."""

from __future__ import annotations

import csv
import io
import itertools
import json
import math
import re
from dataclasses import dataclass

import numpy as np

from apex_plan.errors import InputError
from apex_plan.limits import MAX_TOKENS_PER_REQUEST

APEX_FIELDS = ("StartTimeOffset", "ContextTokens", "GeneratedTokens")   # ns, tokens, tokens
CSV_FIELDS = ("arrival_s", "prompt_tokens", "output_tokens")
BURSTGPT_FIELDS = ("Timestamp", "Request tokens", "Response tokens")    # s, tokens, tokens (plus Model, Total tokens, Log Type)
AZURE_FIELDS = ("TIMESTAMP", "ContextTokens", "GeneratedTokens")        # datetime, tokens, tokens


@dataclass(frozen=True, eq=False)
class Columns:
    """Raw columns of a trace before checks; `lines` holds the 1-based file line of each row."""

    time: np.ndarray                 # int64 or float64, in the format's unit
    prompt: np.ndarray
    output: np.ndarray
    lines: np.ndarray


def first_line(text: str) -> str:
    """First non-blank line, stripped, without splitting the whole text."""
    found = re.search(r"\S", text)
    start = found.start() if found else 0
    end = text.find("\n", start)
    return text[start:] if end < 0 else text[start:end].strip()



# ---------------------------------------------------------------------------------------------
# APEX JSON lines

_WS = r"[ \t]*"
_ANY_JSON_VALUE = r'(?:"[^"\\\n]*(?:\\.[^"\\\n]*)*"|[-+0-9.eE]+|true|false|null)'


_FAST_CHUNK_CHARS = 32 * 2**20      # parse ~32 MB of text at a time: bounded memory for the matches


def _apex_fast(text: str) -> Columns | None:
    """A regex built from the first line's key order, run over the text chunk by chunk (each chunk ends at a
    line end, so the matches of one chunk are freed before the next); None on any surprise."""
    end = len(text)
    while end and text[end - 1] in "\r\n\t ":       # trailing blank space, without copying the text
        end -= 1
    num_lines = text.count("\n", 0, end) + 1
    try:
        first = json.loads(first_line(text))
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
    return Columns(col["StartTimeOffset"], col["ContextTokens"], col["GeneratedTokens"], np.arange(1, num_lines + 1))


def apex_columns(where: str, text: str) -> Columns:
    """Fast regex path; json per line (exact errors) when it does not account for every line."""
    cols = _apex_fast(text)
    return cols if cols is not None else _apex_slow(where, text)


def _apex_slow(where: str, text: str) -> Columns:
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
    return Columns(time_arr, np.array(prompts, dtype=np.int64), np.array(outputs, dtype=np.int64),
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


def csv_columns(where: str, text: str, header: list[str], fields: tuple[str, str, str]) -> Columns:
    """Numeric CSV columns `fields` via np.loadtxt; per-row csv parsing when that fails."""
    body, clean = _body_lines(text)
    if not body:
        raise InputError(where, None, "trace has a header but no requests", "add at least one data row")
    table = _loadtxt(body, [header.index(f) for f in fields]) if clean and _same_width(body, header) else None
    if table is not None:
        return Columns(table[:, 0], table[:, 1], table[:, 2], np.arange(2, table.shape[0] + 2))
    return _csv_slow(where, text, header, fields, {})


def _csv_slow(where: str, text: str, header: list[str], fields: tuple[str, ...],
              parsers: dict[str, object]) -> Columns:
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
    return Columns(arrays[0], arrays[1], arrays[2], np.array(lines, dtype=np.int64))


def azure_columns(where: str, text: str, header: list[str]) -> Columns:
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
                return Columns(time_us, table[:, 0], table[:, 1], np.arange(2, table.shape[0] + 2))
    return _csv_slow(where, text, header, AZURE_FIELDS, {"TIMESTAMP": _parse_azure_time})


def _parse_azure_time(at: str, field: str, cell: str) -> int:
    try:
        value = np.datetime64(cell[:26].replace(" ", "T"), "us")
    except ValueError:
        value = np.datetime64("NaT")
    if np.isnat(value):
        raise InputError(at, field, f"cannot read datetime '{cell}'", "write e.g. 2023-11-16 18:15:46.6805900")
    return int(value.astype(np.int64))
