#!/usr/bin/env python3
"""Measures the confidence-escalation signal on benchmarks/escalation/tasks.jsonl.

Starts two real processes: an upper tier (`inferd serve` of SmolLM2 on its own
port) and a gateway serving SmolLM2 in-process as the free tier with the upper
one as a priced upstream tier, escalation configured with a threshold nothing
falls below (so every answer is scored and none escalates). Every item is
asked of the gateway (`model: "auto"`: the local answer and its `route.confidence`)
and of the upper tier by name (`model: "big"`). Then, offline:

- the AUROC of each signal (mean_logprob, min_logprob, neg_entropy) for "the
  local answer is correct" (Mann-Whitney, ties counted half);
- accuracy against the fraction escalated, escalating the lowest-scored items
  first, with the upper tier's measured answers, with an upper tier that is
  always right (the ceiling of what a stronger model could add), and for
  escalating at random.

    python3 scripts/escalation/calibrate.py --inferd target/release/inferd \
        --out benchmarks/escalation [--plot]

`--plot` needs matplotlib (install it in a virtual environment of your own).
"""
import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
import urllib.request

SYSTEM = ("Answer with only the answer: a number, a word or a short name. "
          "No explanation.")
# Worked examples before each question (none of them is in the task set), so
# that a small model answers in the same short form.
SHOTS = [("What is 100 + 23?", "123"),
         ("What is the capital of Chad?", "N'Djamena"),
         ("How many inches are in 10 feet?", "120")]
SIGNALS = ["mean_logprob", "min_logprob", "neg_entropy"]


def post(base, body, timeout=120):
    req = urllib.request.Request(
        base + "/v1/chat/completions", data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=timeout) as r:
        return json.loads(r.read())


def start(cmd, env=None):
    """Starts `inferd serve ...` and returns (process, base URL) once ready."""
    p = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True,
                         env={**os.environ, "RUST_LOG": "info", **(env or {})})
    deadline = time.time() + 120
    while time.time() < deadline:
        line = p.stderr.readline()
        if not line:
            break
        m = re.search(r"ready: (http://\S+)", line)
        if m:
            base = m.group(1).rstrip("/")
            base = base[:-3] if base.endswith("/v1") else base
            # Keep draining its log so that it never blocks on a full pipe.
            import threading
            threading.Thread(target=lambda: [None for _ in p.stderr], daemon=True).start()
            return p, base
    p.kill()
    sys.exit(f"{' '.join(cmd)} did not become ready")


def correct(item, text):
    t = text.strip()
    low = t.lower()
    if item["numeric"]:
        # The last number: a worked answer ends with its result.
        found = re.findall(r"-?\d[\d,]*(?:\.\d+)?", t)
        if found:
            try:
                return float(found[-1].rstrip(",").replace(",", "")) == float(item["answers"][0])
            except ValueError:
                pass
        words = [a for a in item["answers"] if not a.isdigit()]
        return any(re.search(r"(?<!\w)" + re.escape(w.lower()) + r"(?!\w)", low) for w in words)
    for a in item["answers"]:
        # Chemical symbols and other short answers: case matters.
        hay, needle = (t, a) if len(a) <= 2 else (low, a.lower())
        if re.search(r"(?<![A-Za-z0-9])" + re.escape(needle) + r"(?![a-z0-9])", hay):
            return True
    return False


def auroc(pos, neg):
    """P(a positive scores above a negative), ties counted half."""
    if not pos or not neg:
        return None
    ranked = sorted([(s, 1) for s in pos] + [(s, 0) for s in neg])
    rank_sum, i = 0.0, 0
    while i < len(ranked):
        j = i
        while j < len(ranked) and ranked[j][0] == ranked[i][0]:
            j += 1
        mid = (i + 1 + j) / 2  # average 1-based rank of the tie group
        rank_sum += mid * sum(1 for k in range(i, j) if ranked[k][1] == 1)
        i = j
    return (rank_sum - len(pos) * (len(pos) + 1) / 2) / (len(pos) * len(neg))


def curve(rows, signal, upper_key):
    """(fraction escalated, accuracy) escalating the lowest-scored first."""
    order = sorted(range(len(rows)), key=lambda i: rows[i][signal])
    n = len(rows)
    local = [r["local_correct"] for r in rows]
    upper = [r[upper_key] for r in rows]
    acc = sum(local)
    points = [(0.0, acc / n)]
    for k, i in enumerate(order, 1):
        acc += upper[i] - local[i]
        points.append((k / n, acc / n))
    return points


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--inferd", default="target/release/inferd")
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--tasks", default="benchmarks/escalation/tasks.jsonl")
    ap.add_argument("--out", default="benchmarks/escalation")
    ap.add_argument("--max-tokens", type=int, default=16)
    ap.add_argument("--plot", action="store_true")
    args = ap.parse_args()
    items = [json.loads(l) for l in open(args.tasks) if l.strip()]

    upper, upper_base = start([args.inferd, "serve", "--port", "0", "--threads", "1",
                               "--model", f"small={args.model}"])
    tmp = tempfile.mkdtemp()
    config = os.path.join(tmp, "gateway.toml")
    with open(config, "w") as f:
        f.write(f"""port = 0
threads = 1

[[models]]
name = "local"
model = "{args.model}"

[[upstreams]]
name = "remote"
base_url = "{upper_base}/v1"
model = "small"
price_in_per_mtok = 1.0

[[tiers]]
name = "on-box"
backends = ["local"]

[[tiers]]
name = "big"
backends = ["remote"]

[routing.escalation]
threshold = -1e9
""")
    gateway, base = start([args.inferd, "serve", "--config", config])
    rows = []
    try:
        for n, item in enumerate(items, 1):
            shots = [m for q, a in SHOTS for m in ({"role": "user", "content": q},
                                                   {"role": "assistant", "content": a})]
            body = {"messages": [{"role": "system", "content": SYSTEM}, *shots,
                                 {"role": "user", "content": item["question"]}],
                    "temperature": 0, "max_tokens": args.max_tokens}
            local = post(base, {**body, "model": "auto"})
            conf = local["route"].get("confidence")
            if conf is None or local["route"]["tier"] != "on-box":
                sys.exit(f"item {item['id']}: not scored by the local tier: {local['route']}")
            up = post(base, {**body, "model": "big"})
            la = local["choices"][0]["message"]["content"] or ""
            ua = up["choices"][0]["message"]["content"] or ""
            rows.append({
                "id": item["id"], "kind": item["kind"],
                "local_answer": la, "upper_answer": ua,
                "local_correct": int(correct(item, la)),
                "upper_correct": int(correct(item, ua)),
                "oracle_correct": 1,
                "tokens": conf["tokens"],
                "mean_logprob": conf["mean_logprob"],
                "min_logprob": conf["min_logprob"],
                "neg_entropy": -conf["mean_entropy"],
            })
            if n % 50 == 0:
                print(f"{n}/{len(items)}", file=sys.stderr)
    finally:
        gateway.kill()
        upper.kill()

    n = len(rows)
    summary = {"items": n, "local_accuracy": sum(r["local_correct"] for r in rows) / n,
               "upper_accuracy": sum(r["upper_correct"] for r in rows) / n,
               "by_kind": {}, "auroc": {}, "curves": {}}
    for kind in sorted({r["kind"] for r in rows}):
        rs = [r for r in rows if r["kind"] == kind]
        summary["by_kind"][kind] = {"items": len(rs),
                                    "local_accuracy": sum(r["local_correct"] for r in rs) / len(rs)}
    for s in SIGNALS:
        pos = [r[s] for r in rows if r["local_correct"]]
        neg = [r[s] for r in rows if not r["local_correct"]]
        summary["auroc"][s] = auroc(pos, neg)
        summary["curves"][s] = {
            "upper": curve(rows, s, "upper_correct"),
            "oracle": curve(rows, s, "oracle_correct"),
        }
    os.makedirs(args.out, exist_ok=True)
    # The file keeps each curve at 1% steps (the plot uses every point).
    saved = {**summary, "curves": {
        s: {k: [pts[round(f / 100 * n)] for f in range(101)] for k, pts in c.items()}
        for s, c in summary["curves"].items()}}
    with open(os.path.join(args.out, "results.json"), "w") as f:
        json.dump({"summary": saved, "rows": rows}, f)
        f.write("\n")

    lines = [f"{n} items; local accuracy {summary['local_accuracy']:.3f}, "
             f"upper tier {summary['upper_accuracy']:.3f}", ""]
    lines.append("| kind | items | local accuracy |\n|---|---|---|")
    for k, v in summary["by_kind"].items():
        lines.append(f"| {k} | {v['items']} | {v['local_accuracy']:.3f} |")
    lines.append("")
    lines.append("| signal | AUROC | accuracy at 10/20/30/50% escalated (ideal upper) |\n|---|---|---|")
    for s in SIGNALS:
        pts = summary["curves"][s]["oracle"]
        at = [pts[round(f * n)][1] for f in (0.1, 0.2, 0.3, 0.5)]
        lines.append(f"| {s} | {summary['auroc'][s]:.3f} | " + " / ".join(f"{a:.3f}" for a in at) + " |")
    lines.append("")
    lines.append("Thresholds that escalate 10/20/30/50% of these items:")
    for s in SIGNALS:
        v = sorted(r[s] for r in rows)
        lines.append(f"- {s}: " + " / ".join(f"{v[int(f * n)]:.3f}" for f in (0.1, 0.2, 0.3, 0.5)))
    base_acc = summary["local_accuracy"]
    lines.append("")
    lines.append("Random escalation with an ideal upper tier: accuracy = "
                 f"{base_acc:.3f} + f x {1 - base_acc:.3f}.")
    text = "\n".join(lines) + "\n"
    with open(os.path.join(args.out, "summary.md"), "w") as f:
        f.write(text)
    print(text)

    if args.plot:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        fig, ax = plt.subplots(figsize=(7, 5))
        for s in SIGNALS:
            xs, ys = zip(*summary["curves"][s]["oracle"])
            ax.plot(xs, ys, label=f"{s} (AUROC {summary['auroc'][s]:.2f}), ideal upper tier")
        xs, ys = zip(*summary["curves"]["mean_logprob"]["upper"])
        ax.plot(xs, ys, "--", label="mean_logprob, measured upper tier (same weights)")
        ax.plot([0, 1], [base_acc, 1.0], ":", color="gray", label="random escalation, ideal upper tier")
        ax.set_xlabel("fraction of requests escalated")
        ax.set_ylabel("accuracy")
        ax.set_title(f"Confidence escalation, SmolLM2-135M local, {n} items")
        ax.legend(fontsize=8, loc="lower right")
        ax.grid(alpha=0.3)
        fig.tight_layout()
        fig.savefig(os.path.join(args.out, "accuracy_vs_escalated.png"), dpi=110)


if __name__ == "__main__":
    main()
