"""Mooncake traces and multi-turn session traces (JSON lines), read into a Trace with block ids.

Mooncake (kvcache-ai/Mooncake, FAST25-release/README.md and the technical report, section 4):
one request per line, `timestamp` (ms since the first request), `input_length`, `output_length`
(tokens) and `hash_ids`, the remapped prefix hashes of the prompt's 512-token blocks
(ceil(input_length / 512) ids, the last block possibly partial). An optional `session_id`
groups requests into conversations for session-affinity routing.

Session traces: lines with `session_id`, `timestamp` (ms) and `input_length` but no `hash_ids`.
Lines of one session are its turns in file order (or by an optional `turn` number); a turn's
`input_length` is its new message, and its prompt is every earlier message and reply of the
session plus that message. Block ids are built from the sessions (`hash_block_tokens` each) and
cover the replies too, so the next turn finds the previous reply cached.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from apex_plan.errors import InputError
from apex_plan.limits import MAX_TOKENS_PER_REQUEST, MAX_TRACE_SPAN_S
from apex_plan.workload.prefix import DEFAULT_HASH_BLOCK_TOKENS, MOONCAKE_BLOCK_TOKENS, _rows
from apex_plan.workload.spec import Trace

MOONCAKE_KEYS = ("timestamp", "input_length", "output_length")


def is_mooncake_line(obj: object) -> bool:
    """A first line of a Mooncake or session trace."""
    return isinstance(obj, dict) and "input_length" in obj and ("hash_ids" in obj or "session_id" in obj)


def _records(where: str, text: str) -> tuple[list[dict], list[int]]:
    """Every non-blank line as a dict (one json.loads over the whole file; per line on failure)."""
    lines = [(i, ln) for i, ln in enumerate(text.splitlines(), start=1) if ln.strip()]
    try:
        objs = json.loads("[" + ",".join(ln for _, ln in lines) + "]")
    except ValueError:
        objs = None
    if objs is None or len(objs) != len(lines):
        objs = []
        for i, ln in lines:
            try:
                objs.append(json.loads(ln))
            except ValueError as exc:
                raise InputError(f"{where}:{i}", None, f"not valid JSON ({exc.msg})",
                                 "each line must be one JSON object") from None
    for (i, _), obj in zip(lines, objs):
        if not isinstance(obj, dict):
            raise InputError(f"{where}:{i}", None, "expected a JSON object", 'write {"timestamp": 0, ...}')
    return objs, [i for i, _ in lines]


def _number(at: str, key: str, value: object, *, count: bool, low: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise InputError(at, key, f"expected a number, got {json.dumps(value)[:40]}",
                         "write milliseconds" if key == "timestamp" else "write a whole number of tokens")
    if count and not float(value).is_integer():
        raise InputError(at, key, f"{value} is not a whole number", "write an integer")
    if value < low:
        raise InputError(at, key, f"{value:g} is below {low:g}", "timestamps are >= 0 ms, prompts >= 1 token, "
                         "outputs >= 1 token")
    if count and value > MAX_TOKENS_PER_REQUEST:
        raise InputError(at, key, f"{value:,.0f} tokens is above the limit of {MAX_TOKENS_PER_REQUEST:,}",
                         "check the field; token counts are per request")
    return value


def _columns(where: str, objs: list[dict], lines: list[int], with_hashes: bool):
    ts, inp, out, sess, turn, ptr, ids = [], [], [], [], [], [0], []
    session_index: dict = {}
    for obj, ln in zip(objs, lines):
        at = f"{where}:{ln}"
        for key in MOONCAKE_KEYS:
            if key not in obj:
                raise InputError(at, key, "missing", "every line needs " + ", ".join(MOONCAKE_KEYS))
        ts.append(_number(at, "timestamp", obj["timestamp"], count=False, low=0))
        inp.append(int(_number(at, "input_length", obj["input_length"], count=True, low=1)))
        out.append(int(_number(at, "output_length", obj["output_length"], count=True, low=1)))
        sid = obj.get("session_id")
        sess.append(-1 if sid is None else session_index.setdefault(sid, len(session_index)))
        turn.append(_number(at, "turn", obj.get("turn", len(turn)), count=True, low=0))
        if with_hashes:
            h = obj.get("hash_ids")
            if not isinstance(h, list) or not all(isinstance(x, int) and not isinstance(x, bool) and 0 <= x < 2**62
                                                  for x in h):
                raise InputError(at, "hash_ids", "expected a list of non-negative integers",
                                 "write the block hashes as [0, 1, 2]")
            if len(h) > -(-inp[-1] // MOONCAKE_BLOCK_TOKENS):
                raise InputError(at, "hash_ids", f"{len(h)} ids for {inp[-1]} tokens: more than one per "
                                 f"{MOONCAKE_BLOCK_TOKENS}-token block", "give ceil(input_length / 512) ids")
            ids.extend(h)
            ptr.append(len(ids))
    return (np.array(ts, float), np.array(inp, np.int64), np.array(out, np.int64), np.array(sess, np.int64),
            np.array(turn, float), np.array(ptr, np.int64), np.array(ids, np.int64))


def _session_streams(inp: np.ndarray, out: np.ndarray, sess: np.ndarray, turn: np.ndarray, block: int):
    """Prompts (history + new message) and block ids of session turns (requests without a session
    stand alone). Returns prompt tokens, ids offsets, ids."""
    n = inp.size
    solo = sess < 0
    key = np.where(solo, -1 - np.arange(n), sess)                   # lone requests: a session of their own
    order = np.lexsort((np.arange(n), turn, key))
    k, i_, o_ = key[order], inp[order], out[order]
    start = np.ones(n, bool)
    start[1:] = k[1:] != k[:-1]
    seg = np.cumsum(start) - 1
    turn_tokens = i_ + o_
    csum = np.cumsum(turn_tokens)
    seg_first = np.flatnonzero(start)
    history = csum - turn_tokens - (csum[seg_first] - turn_tokens[seg_first])[seg]
    prompt_sorted = history + i_
    nblk = -(-(prompt_sorted + o_) // block)
    seg_len = np.zeros(seg_first.size, np.int64)
    np.maximum.at(seg_len, seg, nblk)                               # the session's longest stream
    base = np.concatenate(([0], np.cumsum(seg_len)[:-1]))
    prompt = np.empty(n, np.int64)
    prompt[order] = prompt_sorted
    nb = np.empty(n, np.int64)
    nb[order] = nblk
    ptr = np.zeros(n + 1, np.int64)
    np.cumsum(nb, out=ptr[1:])
    rows, j = _rows(ptr)
    seg_of = np.empty(n, np.int64)
    seg_of[order] = seg
    return prompt, ptr, base[seg_of][rows] + j


def read_mooncake(where: str, text: str, name: str, hash_block_tokens: int = DEFAULT_HASH_BLOCK_TOKENS) -> Trace:
    """A Mooncake trace (lines with hash_ids) or a session trace (session_id, no hash_ids)."""
    objs, lines = _records(where, text)
    with_hashes = "hash_ids" in objs[0]
    for obj, ln in zip(objs, lines):
        if ("hash_ids" in obj) != with_hashes:
            raise InputError(f"{where}:{ln}", "hash_ids", "present on some lines and not others",
                             "give hash_ids on every line (Mooncake) or on none (session trace)")
    ts, inp, out, sess, turn, ptr, ids = _columns(where, objs, lines, with_hashes)
    if with_hashes:
        prompt, block, covers = inp, MOONCAKE_BLOCK_TOKENS, False
    else:
        prompt, ptr, ids = _session_streams(inp, out, sess, turn, hash_block_tokens)
        block, covers = hash_block_tokens, True
        big = prompt > MAX_TOKENS_PER_REQUEST
        if big.any():
            i = int(np.argmax(big))
            raise InputError(f"{where}:{lines[i]}", "input_length", f"the session's prompt reaches {prompt[i]:,} "
                             f"tokens, above the limit of {MAX_TOKENS_PER_REQUEST:,}", "split the session")
    arrival_s = (ts - ts.min()) * 1e-3
    if arrival_s.max() > MAX_TRACE_SPAN_S:
        raise InputError(where, "timestamp", f"the trace spans {arrival_s.max():.3g} s", "timestamps are milliseconds")
    trace = Trace(arrival_s, prompt, out, name, ptr, ids, block, None if (sess < 0).all() else sess, covers)
    order = np.argsort(arrival_s, kind="stable")                  # Mooncake timestamps are sorted; sessions may not be
    return trace if (np.diff(order) == 1).all() else trace.take(order)


def write_mooncake(trace: Trace, path: str | Path) -> None:
    """Write `trace` as Mooncake JSON lines (its block ids as hash_ids; sessions as session_id).
    Only prompt-only ids at 512-token blocks make a faithful Mooncake file."""
    if not trace.has_prefix_hashes or trace.hash_block_tokens != MOONCAKE_BLOCK_TOKENS or trace.hash_covers_output:
        raise InputError(str(path), "hash_ids", "the trace's block ids are not Mooncake's (512-token prompt blocks)",
                         "build the trace with hash_block_tokens=512 over prompts only")
    with open(path, "w", encoding="utf-8") as f:
        for i in range(len(trace)):
            rec = {"timestamp": round(float(trace.arrival_s[i]) * 1e3, 3), "input_length": int(trace.prompt_tokens[i]),
                   "output_length": int(trace.output_tokens[i]),
                   "hash_ids": trace.hash_ids[trace.hash_ptr[i]:trace.hash_ptr[i + 1]].tolist()}
            if trace.session is not None and trace.session[i] >= 0:
                rec["session_id"] = int(trace.session[i])
            f.write(json.dumps(rec) + "\n")
