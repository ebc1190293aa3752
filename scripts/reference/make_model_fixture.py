#!/usr/bin/env python3
"""Make the SmolLM2-135M-Instruct model reference fixture with Hugging Face transformers.

Usage:
    python make_model_fixture.py --gguf SmolLM2-135M-Instruct.Q4_1.gguf \
        --out crates/model/tests/fixtures/smollm2_reference.json [--threads 2]

The GGUF weights are dequantized to float32 by transformers' GGUF loader and
checked tensor by tensor against the `gguf` package's own dequantization.
The model runs on CPU in float32 with eager attention. For every prompt the
fixture records the top-5 next-token log-probabilities at every prompt
position (teacher forcing) and a forced 48-token greedy continuation.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import smollm_tokenizer as st  # noqa: E402

GREEDY_STEPS = 48
TOP_K = 5
DECIMALS = 5

LONG_PROSE = (
    "The lighthouse stood at the edge of the northern cliffs, where the land gave way to a restless grey sea. "
    "For more than a century it had guided fishing boats and cargo ships past the hidden rocks that lay just "
    "beneath the surface of the bay. The keeper, an old man named Tomas, had lived in the small stone cottage "
    "beside the tower for nearly forty years. Every evening, as the sun slipped below the horizon, he climbed "
    "the one hundred and twelve steps of the spiral staircase to light the great lamp at the top.\n\n"
    "In the early years, the work had been hard. The lamp burned oil, and the glass lenses had to be cleaned "
    "by hand each morning, because the soot from the flame dulled the beam. In winter, storms battered the "
    "tower for days at a time, and the wind howled through the gaps in the windows so loudly that Tomas "
    "could barely sleep. Still, he never once let the light go out. The sailors in the village said that as "
    "long as the old man was on the cliff, no ship would ever be lost in the bay.\n\n"
    "Then, one spring, a letter arrived from the harbour authority. The lighthouse was to be automated. An "
    "electric lamp would be installed, powered by solar panels and a bank of batteries, and a computer in a "
    "distant city would monitor it day and night. There would be no need for a keeper any longer. Tomas read "
    "the letter twice, folded it carefully, and placed it on the kitchen table beside his cup of tea. He did "
    "not feel angry, exactly. He felt something closer to the quiet sadness of watching the tide go out.\n\n"
    "The engineers came in June. They were young and cheerful, and they asked him many questions about the "
    "tower: how the wind behaved in autumn, where the salt spray reached, which windows leaked when it rained "
    "from the east. Tomas answered every question patiently. On their last day, the youngest engineer, a "
    "woman named Ada, asked him whether he would miss the work. He looked out at the water for a long time "
    "before he answered. \"I will miss the stairs,\" he said at last. \"Every night they reminded me that the "
    "light only shines because somebody climbs up to it.\"\n\n"
    "Ada did not forget those words. Years later, when she designed systems of her own, she always left room in them for a person to climb the stairs, even when nobody strictly needed to. "
    "Her colleagues sometimes teased her about it, but"
)

PYTHON_CODE = (
    "import heapq\n\n\n"
    "def dijkstra(graph, source):\n"
    "    \"\"\"Shortest path distances from source in a graph with non-negative weights.\"\"\"\n"
    "    dist = {node: float(\"inf\") for node in graph}\n"
    "    dist[source] = 0\n"
    "    queue = [(0, source)]\n"
    "    while queue:\n"
    "        d, node = heapq.heappop(queue)\n"
    "        if d > dist[node]:\n"
    "            continue\n"
    "        for neighbour, weight in graph[node]:\n"
    "            nd = d + weight\n"
    "            if nd < dist[neighbour]:\n"
)

RUST_CODE = (
    "use std::collections::HashMap;\n\n"
    "/// A simple least-recently-used cache with a fixed capacity.\n"
    "pub struct LruCache<K, V> {\n"
    "    capacity: usize,\n"
    "    map: HashMap<K, (V, u64)>,\n"
    "    tick: u64,\n"
    "}\n\n"
    "impl<K: std::hash::Hash + Eq + Clone, V> LruCache<K, V> {\n"
    "    pub fn new(capacity: usize) -> Self {\n"
    "        assert!(capacity > 0, \"capacity must be positive\");\n"
    "        Self { capacity, map: HashMap::new(), tick: 0 }\n"
    "    }\n\n"
    "    pub fn get(&mut self, key: &K) -> Option<&V> {\n"
    "        self.tick += 1;\n"
    "        let tick = self.tick;\n"
    "        match self.map.get_mut(key) {\n"
    "            Some(entry) => {\n"
    "                entry.1 = tick;\n"
    "                Some(&entry.0)\n"
    "            }\n"
    "            None => None,\n"
    "        }\n"
    "    }\n\n"
    "    pub fn len(&self) -> usize {\n"
)

SUMMARY_PASSAGE = (
    "Honeybees live in colonies that can contain tens of thousands of individuals. Each colony has a single "
    "queen, whose main role is to lay eggs, sometimes more than 1,500 in a single day during the peak of "
    "summer. Most of the bees in a hive are female workers. Young workers stay inside, cleaning cells, "
    "feeding larvae and building wax comb, while older workers fly out to collect nectar, pollen, water and "
    "plant resins. Male bees, called drones, do not gather food; their purpose is to mate with queens from "
    "other colonies. Foragers communicate the location of good flowers through the so-called waggle dance, "
    "in which the angle of the dance relative to vertical indicates the direction of the food source "
    "relative to the sun, and the duration of the waggle run indicates its distance. In autumn, colonies "
    "reduce their numbers and survive the winter by clustering together and eating stored honey."
)


def prompt_specs():
    """(name, kind, payload): payload is text for "raw", a message list for "chat"."""
    return [
        ("raw_capital", "raw", "The capital of France is"),
        ("raw_story_start", "raw", "Once upon a time, in a small village, there lived"),
        ("raw_numbers", "raw", "Counting in steps of seven: 7, 14, 21, 28, 35, 42,"),
        (
            "raw_json",
            "raw",
            '{"users": [{"id": 1, "name": "Alice", "email": "alice@example.com", "active": true},\n'
            '           {"id": 2, "name": "Bob", "email": "bob@example.com", "active": false},\n'
            '           {"id": 3, "name": "',
        ),
        ("chat_hello", "chat", [{"role": "user", "content": "Hi!"}]),
        ("chat_capital", "chat", [{"role": "user", "content": "What is the capital of Japan? Answer in one sentence."}]),
        ("raw_python", "raw", PYTHON_CODE),
        (
            "chat_system_recipe",
            "chat",
            [
                {"role": "system", "content": "You are a friendly cooking assistant. Keep answers short."},
                {"role": "user", "content": "How do I make a simple tomato sauce for pasta? List the main steps."},
            ],
        ),
        (
            "chat_multi_turn",
            "chat",
            [
                {"role": "user", "content": "Can you explain what photosynthesis is?"},
                {
                    "role": "assistant",
                    "content": "Photosynthesis is the process plants, algae and some bacteria use to turn light "
                    "energy into chemical energy. Using sunlight, they combine carbon dioxide from the air with "
                    "water to make glucose, and they release oxygen as a by-product.",
                },
                {"role": "user", "content": "Why is it important for animals, including humans?"},
            ],
        ),
        ("raw_rust", "raw", RUST_CODE),
        (
            "chat_summarize",
            "chat",
            [{"role": "user", "content": "Summarize the following text in two sentences.\n\n" + SUMMARY_PASSAGE}],
        ),
        ("raw_long_prose", "raw", LONG_PROSE),
    ]


def load_model(gguf_path: str, threads: int):
    from transformers import AutoModelForCausalLM
    from transformers.utils.quantization_config import GgufConfig

    torch.set_num_threads(threads)
    directory, name = os.path.split(os.path.abspath(gguf_path))
    model = AutoModelForCausalLM.from_pretrained(
        directory,
        gguf_file=name,
        dtype=torch.float32,
        attn_implementation="eager",
        quantization_config=GgufConfig(gguf_file=name, dequantize=True),
    )
    model.eval()
    for mod_name, mod in model.named_modules():
        if any(p is not None for p in getattr(mod, "_parameters", {}).values()):
            if type(mod) not in (torch.nn.Linear, torch.nn.Embedding) and "norm" not in type(mod).__name__.lower():
                raise SystemExit(f"unexpected module {mod_name}: {type(mod)} (weights not dequantized?)")
    for p_name, p in model.named_parameters():
        if p.dtype != torch.float32:
            raise SystemExit(f"{p_name} is {p.dtype}, expected float32")
    if model.config._attn_implementation != "eager":
        raise SystemExit(f"attention is {model.config._attn_implementation}, expected eager")
    tied = model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()
    return model, tied


def _unpermute_qk(w: np.ndarray, n_head: int) -> np.ndarray:
    """Undo llama.cpp's convert-time permutation of q/k rows (interleaved -> half-split RoPE layout)."""
    return w.reshape(n_head, w.shape[0] // n_head // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def verify_weights(model, gguf_path: str) -> int:
    """Compare every model parameter with the GGUF tensor dequantized by the `gguf` package."""
    from gguf import GGUFReader
    from gguf.quants import dequantize

    reader = GGUFReader(gguf_path)
    cfg = model.config
    params = dict(model.named_parameters())
    checked = 0
    for t in reader.tensors:
        w = dequantize(t.data, t.tensor_type).astype(np.float32)
        name = t.name
        if name == "token_embd.weight":
            hf = "model.embed_tokens.weight"
        elif name == "output_norm.weight":
            hf = "model.norm.weight"
        elif name == "output.weight":
            hf = "lm_head.weight"
        else:
            _, layer, rest = name.split(".", 2)
            sub = {
                "attn_norm.weight": "input_layernorm.weight",
                "ffn_norm.weight": "post_attention_layernorm.weight",
                "attn_q.weight": "self_attn.q_proj.weight",
                "attn_k.weight": "self_attn.k_proj.weight",
                "attn_v.weight": "self_attn.v_proj.weight",
                "attn_output.weight": "self_attn.o_proj.weight",
                "ffn_gate.weight": "mlp.gate_proj.weight",
                "ffn_up.weight": "mlp.up_proj.weight",
                "ffn_down.weight": "mlp.down_proj.weight",
            }[rest]
            hf = f"model.layers.{layer}.{sub}"
            if rest == "attn_q.weight":
                w = _unpermute_qk(w, cfg.num_attention_heads)
            elif rest == "attn_k.weight":
                w = _unpermute_qk(w, cfg.num_key_value_heads)
        got = params[hf].detach().numpy()
        if got.shape != w.shape or not np.array_equal(got, w):
            diff = np.abs(got - w).max() if got.shape == w.shape else "shape"
            raise SystemExit(f"weight mismatch {name} -> {hf}: {got.shape} vs {w.shape}, max diff {diff}")
        checked += 1
    return checked


def rnd(x: float) -> float:
    return round(float(x), DECIMALS)


@torch.no_grad()
def teacher_forced(model, ids: list[int]):
    logits = model(torch.tensor([ids]), use_cache=False).logits[0].float()
    lp = torch.log_softmax(logits, dim=-1)
    top = torch.topk(lp, TOP_K, dim=-1)
    return {
        "top_ids": top.indices.tolist(),
        "top_logprobs": [[rnd(v) for v in row] for row in top.values.tolist()],
    }


@torch.no_grad()
def greedy(model, ids: list[int], steps: int):
    from transformers import DynamicCache

    cache = DynamicCache(config=model.config)
    out_ids, top2_ids, top2_lp = [], [], []
    inp = torch.tensor([ids])
    pos = 0
    for _ in range(steps):
        n = inp.shape[1]
        position_ids = torch.arange(pos, pos + n).unsqueeze(0)
        out = model(input_ids=inp, cache=cache, use_cache=True, position_ids=position_ids)
        pos += n
        lp = torch.log_softmax(out.logits[0, -1].float(), dim=-1)
        top = torch.topk(lp, 2)
        nxt = int(top.indices[0])
        out_ids.append(nxt)
        top2_ids.append([int(i) for i in top.indices])
        top2_lp.append([rnd(v) for v in top.values.tolist()])
        inp = torch.tensor([[nxt]])
    return {"ids": out_ids, "top2_logprobs": top2_lp, "top2_ids": top2_ids}


@torch.no_grad()
def greedy_full_recompute_check(model, ids: list[int], expected: list[int], steps: int) -> bool:
    """Re-derive the first `steps` greedy tokens without a KV cache."""
    seq = list(ids)
    for i in range(steps):
        logits = model(torch.tensor([seq]), use_cache=False).logits[0, -1]
        nxt = int(torch.argmax(logits))
        if nxt != expected[i]:
            return False
        seq.append(nxt)
    return True


def dumps_compact(doc) -> str:
    """JSON with one line per prompt field: small, yet readable in a diff."""

    def c(x):
        return json.dumps(x, ensure_ascii=False, separators=(",", ":"))

    lines = ["{", f'"source":{c(doc["source"])},', f'"model_sha256":{c(doc["model_sha256"])},', '"prompts":[']
    for i, p in enumerate(doc["prompts"]):
        fields = [f"{c(k)}:{c(v)}" for k, v in p.items()]
        lines.append("{" + ",\n".join(fields) + "}" + ("," if i + 1 < len(doc["prompts"]) else ""))
    lines.append("]}")
    return "\n".join(lines) + "\n"


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--gguf", required=True, help="path to SmolLM2-135M-Instruct GGUF")
    ap.add_argument("--out", required=True, help="output JSON path")
    ap.add_argument("--threads", type=int, default=2, help="torch CPU threads (default 2)")
    args = ap.parse_args()

    torch.manual_seed(0)
    tok, info = st.load_tokenizer(args.gguf)
    model, tied = load_model(args.gguf, args.threads)
    n_checked = verify_weights(model, args.gguf)
    print(f"weights: {n_checked} GGUF tensors match the loaded fp32 model; lm_head tied to embeddings: {tied}",
          file=sys.stderr)

    prompts = []
    for name, kind, payload in prompt_specs():
        if kind == "chat":
            text = st.render_chat(info["chat_template"], payload, add_generation_prompt=True)
            via_hf = tok.apply_chat_template(payload, tokenize=False, add_generation_prompt=True)
            if via_hf != text:
                raise SystemExit(f"{name}: jinja2 rendering differs from tokenizer.apply_chat_template")
        else:
            text = payload
        ids = st.encode(tok, text)
        if st.decode(tok, ids) != text:
            raise SystemExit(f"{name}: prompt does not round-trip through the tokenizer")
        tf = teacher_forced(model, ids)
        gr = greedy(model, ids, GREEDY_STEPS)
        # The teacher-forced argmax at the last position must be the first greedy token.
        if tf["top_ids"][-1][0] != gr["ids"][0]:
            raise SystemExit(f"{name}: teacher-forced and greedy disagree on the first token")
        if not greedy_full_recompute_check(model, ids, gr["ids"], 4):
            print(f"warning: {name}: KV-cache greedy differs from full recompute in the first 4 steps", file=sys.stderr)
        prompts.append({
            "name": name,
            "kind": kind,
            "text": text,
            "prompt_ids": ids,
            "teacher_forced": tf,
            "greedy": gr,
        })
        cont = st.decode(tok, gr["ids"])
        min_margin = min(a - b for a, b in gr["top2_logprobs"])
        print(f"{name:22s} {kind:4s} {len(ids):4d} tokens  min top1-top2 margin {min_margin:.4f}  -> {cont!r}",
              file=sys.stderr)

    source = (
        "Hugging Face transformers LlamaForCausalLM loaded from the SmolLM2-135M-Instruct Q4_1 GGUF with "
        "AutoModelForCausalLM.from_pretrained(dir, gguf_file=..., dtype=float32, attn_implementation='eager', "
        "quantization_config=GgufConfig(dequantize=True)): weights dequantized to float32 (checked equal to "
        "gguf.quants.dequantize, q/k rows un-permuted), lm_head tied to token_embd. CPU, float32, eval, no_grad. "
        "Prompts tokenized with the shared SmolLM2 tokenizer (digits split, no BOS); chat prompts rendered from "
        "the GGUF tokenizer.chat_template with add_generation_prompt=True. teacher_forced[i] = top-5 of "
        "log_softmax(logits) after prompt_ids[0..=i]; greedy = 48 argmax steps with KV cache, not stopping at "
        f"EOS. Log-probs rounded to {DECIMALS} decimals. Made with torch {torch.__version__.split('+')[0]}, "
        f"{st.versions()}, numpy {np.__version__}."
    )
    doc = {"source": source, "model_sha256": st.sha256_file(args.gguf), "prompts": prompts}
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w", encoding="utf-8") as f:
        f.write(dumps_compact(doc))
    print(f"wrote {len(prompts)} prompts to {args.out} ({os.path.getsize(args.out)} bytes)", file=sys.stderr)


if __name__ == "__main__":
    main()
