#!/usr/bin/env python3
"""Copy-heavy request sets for measuring speculative decoding with `inferd bench
--workload jsonl`: one chat request body per line.

- editing: a short Python function to return with one identifier renamed;
- extraction: a passage of records from which one record is to be quoted whole.

    python3 scripts/spec/workloads.py --out benchmarks/spec --count 16

Bodies are greedy (temperature 0) with `max_tokens` 128; the texts are made
from fixed word lists by a seeded generator, so every run sends the same ones.
"""
import argparse
import json
import os
import random

NAMES = ["total", "count", "items", "result", "values", "index", "buffer", "limit"]
OPS = ["+", "-", "*"]
FIELDS = ["city", "river", "mountain", "language", "instrument", "planet"]
WORDS = ["north", "blue", "quiet", "old", "bright", "long", "deep", "high", "small"]


def function(rng: random.Random, i: int) -> tuple[str, str]:
    a, b = rng.sample(NAMES, 2)
    lines = [f"def step_{i}({a}, {b}):", f'    """Combine {a} and {b}, step {i}."""']
    for k in range(rng.randint(4, 7)):
        op = rng.choice(OPS)
        lines.append(f"    {a} = {a} {op} {b} {op} {rng.randint(2, 99)}")
        if k % 2:
            lines.append(f"    if {a} > {rng.randint(100, 999)}:")
            lines.append(f"        {a} = {a} // {rng.randint(2, 9)}")
    lines.append(f"    return {a}")
    return "\n".join(lines), a


def editing(rng: random.Random, i: int) -> dict:
    code, name = function(rng, i)
    new = name + "_value"
    ask = (
        f"Return this function unchanged except that `{name}` is renamed to `{new}`. "
        f"Reply with the code only.\n\n```python\n{code}\n```"
    )
    return {"messages": [{"role": "user", "content": ask}]}


def extraction(rng: random.Random, i: int) -> dict:
    records = []
    for r in range(8):
        field = rng.choice(FIELDS)
        words = " ".join(rng.choice(WORDS) for _ in range(6))
        records.append(f"Record {r + 1}: the {field} called {words.title()} (id {rng.randint(1000, 9999)}).")
    pick = rng.randint(1, 8)
    ask = "\n".join(records) + f"\n\nQuote record {pick} exactly, then record {pick % 8 + 1} exactly."
    return {"messages": [{"role": "user", "content": ask}]}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="benchmarks/spec")
    p.add_argument("--count", type=int, default=16)
    p.add_argument("--seed", type=int, default=20261202)
    args = p.parse_args()
    os.makedirs(args.out, exist_ok=True)
    for name, make in [("editing", editing), ("extraction", extraction)]:
        rng = random.Random(args.seed)
        path = os.path.join(args.out, f"{name}.jsonl")
        with open(path, "w") as f:
            for i in range(args.count):
                body = make(rng, i)
                body.update({"temperature": 0, "max_tokens": 128})
                f.write(json.dumps(body) + "\n")
        print(path)


if __name__ == "__main__":
    main()
