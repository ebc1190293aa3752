#!/usr/bin/env python3
"""Load for llama.cpp's llama-server, shaped like `inferd bench-engine`, so the two
can be compared until `inferd bench` (which drives any OpenAI server) exists.

Closed loop: at each concurrency C, C client threads each send `--rounds` streaming
requests back to back to llama-server's native `/completion` endpoint with a
token-id prompt of `--prompt-tokens` random ids and `n_predict=--max-tokens`,
`ignore_eos=true`. Reports aggregate output tok/s and TTFT p50/p99 (first streamed
token), then the shared-prefix case: N concurrent requests on a common prompt of
`--shared-prefix-tokens` ids plus a 24-token suffix each, cold, then warm.

Standard library only.  Example:
    llama-server -m MODEL.gguf -t 2 -np 8 -cb -c 16384 --port 18080 &
    python3 benchmarks/llama_server_load.py --url http://127.0.0.1:18080
"""

import argparse
import http.client
import json
import random
import statistics
import threading
import time
import urllib.parse


def percentile(values, p):
    v = sorted(values)
    if not v:
        return float("nan")
    return v[min(len(v) - 1, round(p / 100 * (len(v) - 1)))]


def stream_completion(url, prompt, max_tokens):
    """Returns (ttft_seconds, output_tokens) for one streaming request."""
    u = urllib.parse.urlparse(url)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=600)
    body = json.dumps({
        "prompt": prompt, "n_predict": max_tokens, "ignore_eos": True, "stream": True,
        "temperature": 0, "cache_prompt": True,
    })
    t0 = time.perf_counter()
    conn.request("POST", "/completion", body, {"Content-Type": "application/json"})
    resp = conn.getresponse()
    if resp.status != 200:
        raise RuntimeError(f"HTTP {resp.status}: {resp.read()[:200]!r}")
    ttft, tokens = None, 0
    for raw in resp:
        line = raw.decode().strip()
        if not line.startswith("data: "):
            continue
        event = json.loads(line[6:])
        if event.get("stop"):
            tokens = event.get("tokens_predicted", tokens)
            break
        if ttft is None:
            ttft = time.perf_counter() - t0
        tokens += 1
    conn.close()
    return ttft, tokens


def run_clients(url, per_client_prompts, max_tokens):
    results, lock = [], threading.Lock()

    def client(prompts):
        for p in prompts:
            r = stream_completion(url, p, max_tokens)
            with lock:
                results.append(r)

    t0 = time.perf_counter()
    threads = [threading.Thread(target=client, args=(ps,)) for ps in per_client_prompts]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results, time.perf_counter() - t0


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--url", default="http://127.0.0.1:18080")
    ap.add_argument("--concurrency", default="1,2,4,8,16")
    ap.add_argument("--prompt-tokens", type=int, default=230)
    ap.add_argument("--max-tokens", type=int, default=128)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--shared-prefix-tokens", type=int, default=1000)
    ap.add_argument("--shared-prefix-requests", type=int, default=8)
    ap.add_argument("--vocab", type=int, default=49152)
    args = ap.parse_args()
    rng = random.Random(1)
    ids = lambda n: [rng.randrange(100, args.vocab - 100) for _ in range(n)]

    print(f"concurrency sweep: prompt {args.prompt_tokens} tokens, {args.max_tokens} output tokens, {args.rounds} rounds per client")
    print("| concurrency | requests | output tok/s | TTFT p50 ms | TTFT p99 ms |")
    print("| ---: | ---: | ---: | ---: | ---: |")
    for c in [int(x) for x in args.concurrency.split(",")]:
        prompts = [[ids(args.prompt_tokens) for _ in range(args.rounds)] for _ in range(c)]
        results, wall = run_clients(args.url, prompts, args.max_tokens)
        ttft = [r[0] * 1e3 for r in results]
        out = sum(r[1] for r in results)
        print(f"| {c} | {len(results)} | {out / wall:.1f} | {percentile(ttft, 50):.0f} | {percentile(ttft, 99):.0f} |", flush=True)

    if args.shared_prefix_tokens:
        system = ids(args.shared_prefix_tokens)
        batch = lambda: [[system + ids(24)] for _ in range(args.shared_prefix_requests)]
        cold, _ = run_clients(args.url, batch(), 16)
        warm, _ = run_clients(args.url, batch(), 16)
        c50 = statistics.median(r[0] * 1e3 for r in cold)
        w50 = statistics.median(r[0] * 1e3 for r in warm)
        print(f"\nshared prefix: {args.shared_prefix_requests} concurrent requests on a {args.shared_prefix_tokens}-token common prompt (+24-token suffix each)")
        print("| cache | TTFT p50 ms | TTFT p99 ms |")
        print("| --- | ---: | ---: |")
        print(f"| cold | {c50:.0f} | {percentile([r[0] * 1e3 for r in cold], 99):.0f} |")
        print(f"| warm | {w50:.0f} | {percentile([r[0] * 1e3 for r in warm], 99):.0f} |")
        print(f"warm/cold TTFT p50 ratio {w50 / c50:.3f}")


if __name__ == "__main__":
    main()
