#!/usr/bin/env python3
"""Embedding throughput and single-query latency of all-MiniLM-L6-v2 with
sentence-transformers, on the sentences `inferd-embed`'s example measures:

    HF_HUB_OFFLINE=1 .st-venv/bin/python scripts/reference/bench_embeddings.py --threads 1
    cargo run --release -p inferd-embed --example embed_throughput -- --threads 1

Same set-up as make_embedding_fixture.py (its docstring has the pip command).
Runs `model.encode(sentences, batch_size=B)` in float32 on CPU with
`torch.set_num_threads(T)`; every sentence of a batch has about 16 tokens, so
padding costs sentence-transformers next to nothing here.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from sentence_transformers import SentenceTransformer

from make_embedding_fixture import default_model_dir


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model-dir", default=default_model_dir())
    ap.add_argument("--threads", type=int, default=1, help="torch.set_num_threads (default 1)")
    ap.add_argument("--secs", type=float, default=3.0, help="time spent on each measurement (default 3)")
    args = ap.parse_args()

    torch.set_num_threads(args.threads)
    model = SentenceTransformer(args.model_dir, device="cpu")
    model.eval()
    sentences = [f"Sentence number {i}: the quick brown fox jumps over the lazy dog." for i in range(1024)]
    lengths = [len(model.tokenizer(s)["input_ids"]) for s in sentences]
    print(f"sentence-transformers, torch {torch.__version__.split('+')[0]}, {torch.get_num_threads()} thread(s), "
          f"{sum(lengths) / len(lengths):.1f} tokens per sentence")
    mean_tokens = sum(lengths) / len(lengths)

    with torch.inference_mode():
        for batch in (1, 32, 256):
            model.encode(sentences[:batch], batch_size=batch)
            done, nxt = 0, 0
            start = time.perf_counter()
            while time.perf_counter() - start < args.secs:
                texts = [sentences[(nxt + j) % len(sentences)] for j in range(batch)]
                nxt += batch
                done += len(model.encode(texts, batch_size=batch))
            rate = done / (time.perf_counter() - start)
            print(f"batch {batch:>3}: {rate:>8.1f} embeddings/s ({rate * mean_tokens:.0f} tokens/s)")

        query = sentences[7]
        times = []
        start = time.perf_counter()
        while time.perf_counter() - start < args.secs or len(times) < 20:
            t = time.perf_counter()
            model.encode([query], batch_size=1)
            times.append((time.perf_counter() - t) * 1e3)
    times.sort()
    p90 = times[int((len(times) - 1) * 0.9)]
    print(f"one {lengths[7]}-token query (tokenize + embed): p50 {statistics.median(times):.2f} ms, "
          f"p90 {p90:.2f} ms over {len(times)} runs")


if __name__ == "__main__":
    main()
