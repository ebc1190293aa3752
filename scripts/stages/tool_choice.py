#!/usr/bin/env python3
"""Does narrowing the tool list help a model pick the right tool?

MetaTool (../shared/data/metatool), split as in latency.py (seed 7, `--train`
labelled examples per tool, test queries unseen). A fixed set of `--tools`
tools is drawn (seed 11) and the first `--queries` test queries whose tool is
in it are asked of SmolLM2 with `tool_choice: "required"` (a grammar holds the
call to one of the offered tools), greedily:

- full: all the tools, sent straight to the model (`model: "local"`);
- narrowed: the same request through the gateway (`model: "auto"`), whose
  `[routing.tools]` keeps the 5 most relevant before the template renders.

Reported: how often the called tool is the right one, recall@5 of the
narrowing, prompt tokens and time per request.

    python3 scripts/stages/tool_choice.py --inferd target/release/inferd --tools 50 --queries 100
"""

import json
import os
import random
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from latency import (arguments, gateway_head, load, post, serve, split, tool_defs,  # noqa: E402
                     write_examples)


def main():
    args = arguments(tools=50, queries=100)
    desc, rows = load(args.data)
    tools, train, test = split(rows, args.train)
    chosen = sorted(random.Random(11).sample(tools, args.tools))
    test = [(q, t) for q, t in test if t in chosen][:args.queries]
    defs = tool_defs(desc, chosen)
    tmp = tempfile.mkdtemp()
    examples = write_examples(tmp, train)
    config = os.path.join(tmp, "gateway.toml")
    with open(config, "w") as f:
        f.write(gateway_head(args) +
                f'[routing.tools]\nmodel = "minilm"\ntop_k = 5\nexamples_file = {json.dumps(examples)}\n')
    proc, base = serve(args.inferd, config)
    print(f"{args.tools} candidate tools, {len(test)} unseen test queries; SmolLM2-135M Q4_1, "
          f"tool_choice required, greedy", flush=True)
    try:
        results = {}
        for mode, model in (("full", "local"), ("narrowed", "auto")):
            right = recall = prompt = 0
            ms = []
            for q, t in test:
                body = {"model": model, "temperature": 0, "max_tokens": 48, "tools": defs,
                        "tool_choice": "required", "messages": [{"role": "user", "content": q}]}
                start = time.perf_counter()
                v = post(base, body)
                ms.append((time.perf_counter() - start) * 1e3)
                calls = v["choices"][0]["message"].get("tool_calls") or []
                right += bool(calls) and calls[0]["function"]["name"] == t
                prompt += v["usage"]["prompt_tokens"]
                if mode == "narrowed":
                    recall += t in v["route"]["tools"]["kept"]
            ms.sort()
            results[mode] = (right / len(test), recall / len(test), prompt / len(test), ms[len(ms) // 2])
        print("\n| tools offered | right tool called | narrowing recall@5 | prompt tokens (mean) | request p50 ms |")
        print("| --- | --- | --- | --- | --- |")
        for mode, (acc, rec, p, med) in results.items():
            offered = args.tools if mode == "full" else 5
            rec_s = f"{rec:.3f}" if mode == "narrowed" else ""
            print(f"| {offered} ({mode}) | {acc:.3f} | {rec_s} | {p:.0f} | {med:.0f} |")
    finally:
        proc.terminate()
        proc.wait(timeout=30)


if __name__ == "__main__":
    main()
