#!/usr/bin/env python3
"""Deterministic handlers on a mixed workload: the 539 questions of
benchmarks/escalation/tasks.jsonl (arithmetic, unit conversions, capitals,
short facts) sent through a gateway whose rules answer arithmetic and unit
conversions with code; everything else goes to the model.

Starts two real processes: an `inferd serve` of SmolLM2-135M (the upstream,
priced in the gateway's config like a small hosted model: 0.15 / 0.60 USD per
1M input / output tokens) and the gateway. Each question is asked of the
gateway; each question a rule answered is also asked of the upstream directly,
so the rule's answer and the model's can be compared on the same items.
Reports the share handled, accuracy (rules vs the model on the handled items;
the model on the rest), client-side latency p50/p99 of handled and model
answers, and the tokens and USD the rules saved.

    python3 scripts/rules/mixed.py --inferd target/release/inferd --out benchmarks/rules
"""
import argparse
import json
import os
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "escalation"))
from calibrate import SHOTS, SYSTEM, correct, post, start  # noqa: E402

RULES = r"""
[[rules]]
name = "math"
regex = '(?i)^what is (?P<input>[\d\s.+\-*/^()%]+(?:(?:times|plus|minus|divided by)[\d\s.]+)*)\?$'
builtin = "arithmetic"

[[rules]]
name = "units"
regex = '(?i)^how many (?P<to>[a-z ]+?) are in (?P<value>[\d.,]+) (?P<from>[a-z ]+?)\?$'
builtin = "convert"
"""


def pct(xs, p):
    xs = sorted(xs)
    if not xs:
        return float("nan")
    k = (len(xs) - 1) * p / 100
    lo, hi = int(k), min(int(k) + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (k - lo)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--inferd", default="target/release/inferd")
    ap.add_argument("--tasks", default="benchmarks/escalation/tasks.jsonl")
    ap.add_argument("--out", default="benchmarks/rules")
    args = ap.parse_args()
    items = [json.loads(l) for l in open(args.tasks) if l.strip()]
    upstream, up = start([args.inferd, "serve", "--port", "0", "--threads", "1",
                          "--model", "small=smollm2-135m"])
    config = os.path.join(tempfile.mkdtemp(), "rules.toml")
    with open(config, "w") as f:
        f.write(f"""port = 0

[[upstreams]]
name = "hosted"
base_url = "{up}/v1"
model = "small"
price_in_per_mtok = 0.15
price_out_per_mtok = 0.60

[[tiers]]
name = "pool"
backends = ["hosted"]
{RULES}""")
    gateway, gw = start([args.inferd, "serve", "--config", config])
    rows = []
    try:
        for item in items:
            shots = [m for q, a in SHOTS for m in ({"role": "user", "content": q},
                                                   {"role": "assistant", "content": a})]
            body = {"messages": [{"role": "system", "content": SYSTEM}, *shots,
                                 {"role": "user", "content": item["question"]}],
                    "temperature": 0, "max_tokens": 16}
            t0 = time.perf_counter()
            r = post(gw, {**body, "model": "auto"})
            ms = (time.perf_counter() - t0) * 1e3
            h = r["route"].get("handler") or {}
            text = r["choices"][0]["message"]["content"] or ""
            row = {"id": item["id"], "kind": item["kind"], "ms": ms,
                   "action": h.get("action"), "rule": h.get("rule"), "answer": text,
                   "correct": int(correct(item, text)),
                   "saved_tokens": h.get("saved_tokens", 0), "saved_usd": h.get("saved_usd", 0.0)}
            if h.get("action") == "answered":
                m = post(up, {**body, "model": "small"})
                mt = m["choices"][0]["message"]["content"] or ""
                row["model_answer"], row["model_correct"] = mt, int(correct(item, mt))
            rows.append(row)
    finally:
        gateway.kill()
        upstream.kill()

    handled = [r for r in rows if r["action"] == "answered"]
    failed = [r for r in rows if r["action"] == "failed"]
    model = [r for r in rows if r["action"] != "answered"]
    acc = lambda rs, k="correct": sum(r[k] for r in rs) / len(rs) if rs else float("nan")
    by_rule = {}
    for r in rows:
        if r["rule"]:
            by_rule.setdefault(r["rule"], {"answered": 0, "failed": 0})
            by_rule[r["rule"]][r["action"]] += 1
    summary = {
        "items": len(rows), "handled": len(handled), "failed_rules": len(failed),
        "by_rule": by_rule,
        "handled_accuracy_rules": acc(handled),
        "handled_accuracy_model": acc(handled, "model_correct"),
        "rest_accuracy_model": acc(model),
        "overall_accuracy": acc(rows),
        "overall_accuracy_model_only": (sum(r["model_correct"] for r in handled)
                                        + sum(r["correct"] for r in model)) / len(rows),
        "ms_handled_p50": pct([r["ms"] for r in handled], 50),
        "ms_handled_p99": pct([r["ms"] for r in handled], 99),
        "ms_model_p50": pct([r["ms"] for r in model], 50),
        "ms_model_p99": pct([r["ms"] for r in model], 99),
        "saved_tokens": sum(r["saved_tokens"] for r in handled),
        "saved_usd": sum(r["saved_usd"] for r in handled),
    }
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "mixed.json"), "w") as f:
        json.dump({"summary": summary, "rows": rows}, f)
        f.write("\n")
    print(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
