"""Write examples/mooncake.jsonl: a small synthetic trace in the Mooncake format (kvcache-ai/Mooncake,
FAST25-release/README.md: `timestamp` ms, `input_length`, `output_length`, `hash_ids` of the prompt's
512-token blocks, ceil(input_length / 512) of them).

Requests arrive as a Poisson process; 70% of them extend one of a few shared documents / system
prompts (popularity falling as 1/rank), the rest are fresh. Every prompt ends in blocks of its own.

    python scripts/make_mooncake_example.py [--requests 300] [--rate 1.0] [--seed 7] [--output examples/mooncake.jsonl]
"""

from __future__ import annotations

import argparse
import json

import numpy as np

BLOCK = 512          # Mooncake's block size, tokens


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=300)
    ap.add_argument("--rate", type=float, default=1.0, help="requests per second")
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--output", default="examples/mooncake.jsonl")
    a = ap.parse_args()
    rng = np.random.default_rng(a.seed)
    doc_blocks = rng.integers(2, 13, size=6)                       # shared prefixes of 2-12 full blocks
    popularity = 1.0 / np.arange(1, doc_blocks.size + 1)
    next_id = int(doc_blocks.sum())
    doc_start = np.concatenate(([0], np.cumsum(doc_blocks)[:-1]))
    t_ms = 0.0
    with open(a.output, "w", encoding="utf-8") as f:
        for _ in range(a.requests):
            ids: list[int] = []
            if rng.random() < 0.7:
                d = rng.choice(doc_blocks.size, p=popularity / popularity.sum())
                ids = list(range(int(doc_start[d]), int(doc_start[d] + doc_blocks[d])))
            own = int(rng.integers(1, 5))                           # blocks of its own, the last one partial
            ids += list(range(next_id, next_id + own))
            next_id += own
            tokens = (len(ids) - 1) * BLOCK + int(rng.integers(1, BLOCK + 1))
            out = int(np.clip(rng.lognormal(np.log(200), 0.8), 1, 2000))
            f.write(json.dumps({"timestamp": int(t_ms), "input_length": tokens, "output_length": out,
                                "hash_ids": ids}) + "\n")
            t_ms += rng.exponential(1000.0 / a.rate)


if __name__ == "__main__":
    main()
