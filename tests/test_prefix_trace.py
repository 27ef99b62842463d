"""Traces with prefix structure: Mooncake and session readers, the multi-turn generator, the exact
infinite-cache hit count."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from apex_plan.errors import InputError
from apex_plan.workload.mooncake import write_mooncake
from apex_plan.workload.prefix import SessionOptions, exact_hit_tokens, hit_rate, multiturn_trace
from apex_plan.workload.spec import take_ragged
from apex_plan.workload.synthetic import LengthDist
from apex_plan.workload.trace import load_trace, read_trace

ROOT = Path(__file__).resolve().parents[1]


def _write(tmp_path: Path, rows: list[dict], name: str = "t.jsonl") -> Path:
    p = tmp_path / name
    p.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return p


def _ids(tr, i):
    return tr.hash_ids[tr.hash_ptr[i]:tr.hash_ptr[i + 1]].tolist()


def test_mooncake_reader_and_exact_hits(tmp_path):
    rows = [{"timestamp": 0, "input_length": 1500, "output_length": 10, "hash_ids": [0, 1, 2]},
            {"timestamp": 5, "input_length": 1100, "output_length": 5, "hash_ids": [0, 1, 3]},
            {"timestamp": 9, "input_length": 1024, "output_length": 5, "hash_ids": [0, 1]},
            {"timestamp": 20, "input_length": 2000, "output_length": 7, "hash_ids": [0, 4, 5, 6]},
            {"timestamp": 30, "input_length": 1537, "output_length": 7, "hash_ids": [0, 1, 2, 7]}]
    loaded = load_trace(_write(tmp_path, rows))
    tr = loaded.trace
    assert loaded.format == "mooncake" and tr.hash_block_tokens == 512 and not tr.hash_covers_output
    assert np.allclose(tr.arrival_s, [0, 0.005, 0.009, 0.02, 0.03])
    assert _ids(tr, 3) == [0, 4, 5, 6]
    # request 1: blocks 0, 1 cached by request 0 (full blocks of its 1500-token prompt); 3 is new.
    # request 2: 1024 tokens = 2 full blocks, but a lookup stops at prompt - 1 tokens: 1 block.
    # request 4: 0, 1 cached; 2 is partial in request 0's 1500-token prompt, so never cached.
    assert exact_hit_tokens(tr).tolist() == [0, 1024, 512, 512, 1024]
    assert hit_rate(tr, exact_hit_tokens(tr)) == pytest.approx(3072 / 7161)


def test_exact_hits_ignore_partial_blocks(tmp_path):
    # request 0's block 1 is partial (700 tokens): request 1 cannot hit it, though its id matches
    rows = [{"timestamp": 0, "input_length": 700, "output_length": 10, "hash_ids": [0, 1]},
            {"timestamp": 1, "input_length": 1600, "output_length": 10, "hash_ids": [0, 1, 2, 3]}]
    assert exact_hit_tokens(read_trace(_write(tmp_path, rows))).tolist() == [0, 512]


@pytest.mark.parametrize("row, field", [
    ({"timestamp": 0, "input_length": 100, "output_length": 1, "hash_ids": [0, 1]}, "hash_ids"),
    ({"timestamp": 0, "input_length": 100, "output_length": 1, "hash_ids": ["a"]}, "hash_ids"),
    ({"timestamp": 0, "input_length": 0, "output_length": 1, "hash_ids": [0]}, "input_length"),
    ({"timestamp": -1, "input_length": 10, "output_length": 1, "hash_ids": [0]}, "timestamp"),
    ({"input_length": 10, "output_length": 1, "hash_ids": [0]}, "timestamp"),
])
def test_mooncake_bad_lines(tmp_path, row, field):
    with pytest.raises(InputError) as e:
        read_trace(_write(tmp_path, [row]))
    assert e.value.field == field and "t.jsonl:1" in e.value.where


def test_session_trace_prompts_are_the_conversation(tmp_path):
    rows = [{"session_id": "a", "timestamp": 0, "input_length": 100, "output_length": 50},
            {"session_id": "b", "timestamp": 10, "input_length": 30, "output_length": 20},
            {"session_id": "a", "timestamp": 2000, "input_length": 40, "output_length": 60},
            {"session_id": "a", "timestamp": 5000, "input_length": 10, "output_length": 5}]
    tr = read_trace(_write(tmp_path, rows), hash_block_tokens=16)
    assert tr.prompt_tokens.tolist() == [100, 30, 190, 260]          # history + the new message
    assert tr.session.tolist() == [0, 1, 0, 0] and tr.hash_covers_output
    assert _ids(tr, 2)[:len(_ids(tr, 0))] == _ids(tr, 0)              # the earlier turn is a prefix
    assert not set(_ids(tr, 1)) & set(_ids(tr, 0))                    # sessions share nothing
    # turn 2 finds turn 1's prompt and reply: 150 tokens -> 9 full blocks of 16
    assert exact_hit_tokens(tr).tolist() == [0, 0, 144, 240]


def test_multiturn_generator_structure():
    tr = multiturn_trace(400, LengthDist("uniform", low=20, high=200), LengthDist("uniform", low=1, high=300), 4.0,
                         SessionOptions(turns=5, prefix_tokens=700, num_prefixes=2, think_time_s=3.0,
                                        hash_block_tokens=64), seed=3)
    assert len(tr) == 400 and np.all(np.diff(tr.arrival_s) >= 0) and tr.arrival_s[0] == 0
    for s in np.unique(tr.session)[:20]:
        turns = np.flatnonzero(tr.session == s)
        for a, b in zip(turns[:-1], turns[1:]):
            # the next prompt is this prompt, its reply and a new message of at least 20 tokens
            assert tr.prompt_tokens[b] - tr.prompt_tokens[a] - tr.output_tokens[a] >= 20
            assert _ids(tr, b)[:len(_ids(tr, a)) - 1] == _ids(tr, a)[:-1]
    hits = exact_hit_tokens(tr)
    assert np.all(hits <= tr.prompt_tokens - 1) and np.all(hits % 64 == 0)
    # every request after the first of its system prompt hits the 10 shared full blocks at least
    shared = (700 // 64) * 64
    first_use = {}
    for i in range(len(tr)):
        first_use.setdefault(_ids(tr, i)[0], i)
    later = np.array([i for i in range(len(tr)) if first_use[_ids(tr, i)[0]] != i])
    assert np.all(hits[later] >= shared)


def test_mooncake_round_trip(tmp_path):
    src = read_trace(ROOT / "examples" / "mooncake.jsonl")
    out = tmp_path / "copy.jsonl"
    write_mooncake(src, out)
    back = read_trace(out)
    assert np.allclose(back.arrival_s, src.arrival_s)
    assert np.array_equal(back.prompt_tokens, src.prompt_tokens) and np.array_equal(back.hash_ptr, src.hash_ptr)
    assert np.array_equal(back.hash_ids, src.hash_ids)
    assert np.array_equal(exact_hit_tokens(back), exact_hit_tokens(src))


def test_take_ragged_matches_a_loop():
    rng = np.random.default_rng(0)
    lengths = rng.integers(0, 6, size=50)
    ptr = np.concatenate(([0], np.cumsum(lengths)))
    vals = rng.integers(0, 1000, size=int(ptr[-1]))
    idx = rng.permutation(50)[:30]
    new_ptr, new_vals = take_ragged(ptr, vals, idx)
    expect = [v for i in idx for v in vals[ptr[i]:ptr[i + 1]]]
    assert new_vals.tolist() == expect and new_ptr[-1] == len(expect)


# ---- speculative-decoding settings and engine rules ---------------------------------------------

def test_speculative_parse_and_tokens_per_step():
    from apex_plan.engine.speculative import parse_speculative
    s = parse_speculative("mtp:3", "0.8")
    assert s.conditional == (0.8, 0.8, 0.8)
    assert s.tokens_per_step == pytest.approx(1 + 0.8 + 0.64 + 0.512)
    v = parse_speculative("eagle3:3", "0.9,0.72,0.36")        # vLLM's per-position (unconditional) rates
    assert v.conditional == pytest.approx((0.9, 0.8, 0.5))
    assert v.tokens_per_step == pytest.approx(1 + 0.9 + 0.72 + 0.36)
    assert parse_speculative("mtp:1", None).conditional == (0.85,)  # DeepSeek-V3 report default
    assert parse_speculative("none", None) is None
    for text, acc in (("mtp:2", None), ("eagle3:4", None), ("mtp:0", "0.5"), ("medusa:2", "0.5"),
                      ("mtp:2", "0.5,0.6"), ("mtp:2", "1.2"), ("mtp:3", "0.5,0.4"), (None, "0.5")):
        with pytest.raises(InputError):
            parse_speculative(text, acc)


def test_engine_rules_for_speculation_and_caching():
    from apex_plan.engine.speculative import parse_speculative
    from apex_plan.inputs import engine_from_options
    from apex_plan.plan.spec import EngineConfig
    from apex_plan.model.load import load_model
    from apex_plan.simulate.engine import resolve_engine
    ds, llama = load_model("deepseek-v3"), load_model("llama-3.1-8b")
    mtp = parse_speculative("mtp:1", None)
    eng = lambda name, spec=None, pc=None: engine_from_options(EngineConfig(name=name, max_model_len=8192,
                                                                            prefix_caching=pc, speculative=spec))
    assert resolve_engine(eng("vllm", mtp), ds).speculative is mtp
    assert resolve_engine(eng("sglang", mtp), ds).prefix_caching
    assert resolve_engine(eng("trtllm"), llama).prefix_caching
    assert not resolve_engine(eng("vllm@0.6.3"), llama).prefix_caching          # V0 default off
    assert resolve_engine(eng("vllm@0.6.3", pc=True), llama).prefix_caching
    assert not resolve_engine(eng("vllm", pc=False), llama).prefix_caching
    with pytest.raises(InputError, match="no multi-token-prediction"):
        resolve_engine(eng("vllm", mtp), llama)
    with pytest.raises(InputError, match="vllm-0.6"):
        resolve_engine(eng("vllm@0.6.3", mtp), ds)
