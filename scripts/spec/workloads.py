#!/usr/bin/env python3
"""Copy-heavy request sets for measuring speculative decoding with `inferd bench
--workload jsonl`: one chat request body per line.

- editing: a short Python function to return with one identifier renamed;
- extraction: a passage of records from which one record is to be quoted whole;
- summarise: a passage to summarise in one sentence, then two of its sentences
  to quote exactly;
- agent: a multi-turn tool-calling loop (OpenAI `tools`, assistant
  `tool_calls`, `tool` results as JSON) whose next step repeats ids, names and
  amounts from the tool outputs, the same shape on every request, as an agent
  loop repeats itself.

    python3 scripts/spec/workloads.py --out benchmarks/spec --count 32

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


SUBJECTS = ["the harbour", "the library", "the station", "the market", "the bridge", "the school"]
VERBS = ["opened", "closed", "moved", "grew", "changed", "reopened"]


def summarise(rng: random.Random, i: int) -> dict:
    sentences = []
    for s in range(7):
        subject, verb = rng.choice(SUBJECTS), rng.choice(VERBS)
        words = " ".join(rng.choice(WORDS) for _ in range(5))
        sentences.append(f"In {1900 + rng.randint(0, 120)} {subject} {verb}, {words} and busy.")
    a, b = rng.sample(range(1, 8), 2)
    ask = (
        " ".join(sentences)
        + f"\n\nSummarise this passage in one sentence. Then quote sentence {a} and sentence {b} exactly."
    )
    return {"messages": [{"role": "user", "content": ask}]}


TOOLS = [
    {
        "type": "function",
        "function": {
            "name": name,
            "description": description,
            "parameters": {
                "type": "object",
                "properties": {k: {"type": t} for k, t in params.items()},
                "required": list(params),
            },
        },
    }
    for name, description, params in [
        ("search_orders", "List a customer's orders.", {"customer": "string"}),
        ("get_order", "One order's details.", {"order_id": "string"}),
        ("refund", "Refund an order, fully or in part.", {"order_id": "string", "amount": "number"}),
    ]
]
ITEMS = ["kettle", "lamp", "chair", "backpack", "printer", "jacket", "blender"]
CUSTOMERS = ["Ada Park", "Ben Ortiz", "Chen Wu", "Dana Levi", "Eli Moss", "Farah Aziz"]


def agent(rng: random.Random, i: int) -> dict:
    customer, item = rng.choice(CUSTOMERS), rng.choice(ITEMS)
    orders = [
        {
            "order_id": f"A-{rng.randint(10000, 99999)}",
            "item": rng.choice(ITEMS) if k else item,
            "amount": round(rng.uniform(10, 300), 2),
            "date": f"2026-{rng.randint(1, 11):02d}-{rng.randint(1, 28):02d}",
        }
        for k in range(5)
    ]
    rng.shuffle(orders)
    target = next(o for o in orders if o["item"] == item)
    details = dict(target, customer=customer, status="delivered", reason=f"the {item} arrived broken")

    def call(n: int, name: str, args: dict) -> dict:
        return {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {"id": f"call_{n}", "type": "function", "function": {"name": name, "arguments": json.dumps(args)}}
            ],
        }

    messages = [
        {"role": "system", "content": "You are a support agent. Use the tools; state ids and amounts exactly."},
        {"role": "user", "content": f"{customer} wants a refund for their {item} order. Handle it."},
        call(1, "search_orders", {"customer": customer}),
        {"role": "tool", "tool_call_id": "call_1", "content": json.dumps(orders)},
        call(2, "get_order", {"order_id": target["order_id"]}),
        {"role": "tool", "tool_call_id": "call_2", "content": json.dumps(details)},
        {
            "role": "user",
            "content": "Refund it in full, then tell me the order id, the item, the amount and the date exactly.",
        },
    ]
    return {"messages": messages, "tools": TOOLS}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="benchmarks/spec")
    p.add_argument("--count", type=int, default=16)
    p.add_argument("--seed", type=int, default=20261202)
    args = p.parse_args()
    os.makedirs(args.out, exist_ok=True)
    for name, make in [
        ("editing", editing),
        ("extraction", extraction),
        ("summarise", summarise),
        ("agent", agent),
    ]:
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
