#!/usr/bin/env python3
"""The gateway's stages before the model, timed inside a real `inferd serve`.

Each response's `route.stages_ms` gives the time of each stage that ran; this
script sends MetaTool queries (../shared/data/metatool, split by a fixed seed:
`--train` labelled examples per tool, the test queries unseen) through three
gateways and reports p50 / p99 per stage:

- tools: `[routing.tools]` with the examples, every request offering all 199
  tools (recall@5 of `route.tools.kept` too);
- intent: `[routing.intents]` with one intent per tool (its description and
  examples, mapped to that tool), top-1 of the label;
- context: `[routing.context]` fitting a 40-turn conversation to a 512-token
  tier (the query as its current turn).

    python3 scripts/stages/latency.py --inferd target/release/inferd --queries 300
"""

import argparse
import csv
import json
import os
import random
import re
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request


def normal(s):
    return "".join(c.lower() for c in s if c.isascii() and c.isalnum())


def load(data):
    read = lambda f: json.load(open(os.path.join(data, f)))
    desc = {}
    for k, v in read("big_tool_des.json").items():
        desc[normal(k)] = v or ""
    for k, v in read("plugin_des.json").items():
        desc.setdefault(normal(k), v or "")
    for p in read("plugin_info.json"):
        for key in ("name_for_human", "name_for_model"):
            if p.get(key):
                desc.setdefault(normal(p[key]), p.get("description_for_human") or "")
    with open(os.path.join(data, "all_clean_data.csv"), newline="") as f:
        rows = [(r[0], r[1]) for r in list(csv.reader(f))[1:]]
    return desc, rows


def arguments(**defaults):
    """The flags both scripts take, with their own defaults added."""
    ap = argparse.ArgumentParser()
    ap.add_argument("--inferd", default="target/release/inferd")
    ap.add_argument("--data", default="../shared/data/metatool")
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--train", type=int, default=20)
    ap.add_argument("--threads", type=int, default=2)
    for name, value in defaults.items():
        ap.add_argument(f"--{name}", type=int, default=value)
    return ap.parse_args()


def tool_defs(desc, names):
    """Function tools for `names`, described from the benchmark."""
    return [{"type": "function", "function": {"name": t, "description": desc.get(normal(t), ""),
                                               "parameters": {"type": "object", "properties": {}}}}
            for t in names]


def write_examples(tmp, train):
    """The labelled examples as `[routing.tools]` reads them; their path."""
    path = os.path.join(tmp, "examples.jsonl")
    with open(path, "w") as f:
        for q, t in train:
            f.write(json.dumps({"query": q, "tool": t}) + "\n")
    return path


def gateway_head(args, window=None):
    """A config's start: the chat model, MiniLM, and one tier of the model."""
    cap = f"context_window = {window}\n" if window else ""
    return (f'port = 0\nthreads = {args.threads}\n\n[[models]]\nname = "local"\nmodel = "{args.model}"\n\n'
            '[[models]]\nname = "minilm"\nmodel = "minilm-l6"\n\n'
            f'[[tiers]]\nname = "on-box"\nbackends = ["local"]\n{cap}\n')


def split(rows, per_tool, seed=7):
    """The tools, then rows shuffled by `seed`: the first `per_tool` of each
    tool are labelled examples, the rest the unseen test."""
    rows = list(rows)
    random.Random(seed).shuffle(rows)
    tools = sorted({t for _, t in rows})
    train, test, seen = [], [], {}
    for q, t in rows:
        if seen.get(t, 0) < per_tool:
            seen[t] = seen.get(t, 0) + 1
            train.append((q, t))
        else:
            test.append((q, t))
    return tools, train, test


def serve(inferd, config):
    proc = subprocess.Popen([inferd, "serve", "--config", config], stderr=subprocess.PIPE,
                            stdout=subprocess.DEVNULL, text=True)
    deadline = time.time() + 300
    for line in proc.stderr:
        m = re.search(r"ready: (http://[0-9.:]+)/v1", line)
        if m:
            # Keep draining so the server never blocks on its log.
            threading.Thread(target=lambda: [None for _ in proc.stderr], daemon=True).start()
            return proc, m.group(1)
        if time.time() > deadline:
            break
    proc.kill()
    sys.exit("inferd serve did not start")


def post(base, body):
    req = urllib.request.Request(base + "/v1/chat/completions", data=json.dumps(body).encode(),
                                 headers={"content-type": "application/json"})
    try:
        return json.load(urllib.request.urlopen(req, timeout=300))
    except urllib.error.HTTPError as e:
        sys.exit(f"{e.code}: {e.read().decode()}")


def pct(xs, p):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(p / 100 * (len(xs) - 1))))]


def main():
    args = arguments(queries=300)
    desc, rows = load(args.data)
    tools, train, test = split(rows, args.train)
    test = test[:args.queries]
    defs = tool_defs(desc, tools)
    tmp = tempfile.mkdtemp()
    examples = write_examples(tmp, train)
    by_tool = {}
    for q, t in train:
        by_tool.setdefault(t, []).append(q)
    intents = "".join(
        f'[[routing.intents.intent]]\nname = {json.dumps(t)}\ndescription = {json.dumps(desc.get(normal(t), ""))}\n'
        f'examples = {json.dumps(by_tool.get(t, []))}\ntools = [{json.dumps(t)}]\n\n' for t in tools)
    configs = {
        "tools": gateway_head(args, 2048) + f'[routing.tools]\nmodel = "minilm"\ntop_k = 5\nexamples_file = {json.dumps(examples)}\n',
        "intent": gateway_head(args, 2048) + '[routing.intents]\nmodel = "minilm"\nthreshold = -1\n\n' + intents,
        "context": gateway_head(args, 512) + '[routing.context]\noutput_reserve = 8\n',
    }
    history = []
    for i in range(40):
        history += [{"role": "user", "content": f"Turn {i}: what about item {i}?"},
                    {"role": "assistant", "content": f"Item {i} is noted."}]
    print(f"{len(tools)} tools, {len(train)} labelled examples ({args.train} per tool), "
          f"{len(test)} unseen test queries; seed 7", flush=True)
    print("\n| stage | requests | p50 ms | p99 ms | quality |\n| --- | --- | --- | --- | --- |")
    for stage, text in configs.items():
        path = os.path.join(tmp, f"{stage}.toml")
        open(path, "w").write(text)
        proc, base = serve(args.inferd, path)
        try:
            times, good = [], 0
            for q, t in test:
                body = {"model": "auto", "max_tokens": 1, "temperature": 0,
                        "messages": [{"role": "user", "content": q}]}
                if stage == "tools":
                    body["tools"] = defs
                if stage == "context":
                    body["messages"] = history + body["messages"]
                route = post(base, body)["route"]
                times.append(route["stages_ms"][stage])
                if stage == "tools":
                    good += t in route["tools"]["kept"]
                elif stage == "intent":
                    good += route["intent"]["name"] == t
                else:
                    good += route["context"]["prompt_after"] <= 512 - 1
            quality = {"tools": "recall@5", "intent": "top-1", "context": "fits"}[stage]
            print(f"| {stage} | {len(times)} | {pct(times, 50):.2f} | {pct(times, 99):.2f} | "
                  f"{quality} {good / len(test):.3f} |", flush=True)
        finally:
            proc.terminate()
            proc.wait(timeout=30)


if __name__ == "__main__":
    main()
