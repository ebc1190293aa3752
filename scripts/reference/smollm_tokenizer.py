"""Shared Hugging Face tokenizer construction for the SmolLM2 reference fixtures.

Both fixture scripts import this module so that the tokenizer fixture and the
model fixture are tokenized identically.

The tokenizer is Hugging Face's own implementation (transformers' GGUF loader,
which builds a `tokenizers` byte-level BPE from the GGUF vocab and merges),
with one correction: transformers' GGUF converter has no entry for
`tokenizer.ggml.pre = "smollm"`, so it falls back to a plain GPT-2 ByteLevel
pre-tokenizer and never splits digits apart. The published SmolLM2
`tokenizer.json` (and llama.cpp's `smollm` pre-tokenizer) split every digit
into its own piece first, so the pre-tokenizer is replaced with

    Sequence([Digits(individual_digits=True),
              ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=True)])

and the decoder is set to ByteLevel, as in the published tokenizer.
"""

from __future__ import annotations

import hashlib
import os

from gguf import GGUFReader
from tokenizers import decoders, pre_tokenizers

# Token type 3 in a GGUF vocabulary means "control" (a special token).
GGUF_TOKEN_TYPE_CONTROL = 3


def smollm_pre_tokenizer():
    return pre_tokenizers.Sequence(
        [
            pre_tokenizers.Digits(individual_digits=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=True),
        ]
    )


def read_gguf_tokenizer_metadata(gguf_path: str) -> dict:
    """The GGUF tokenizer fields the fixtures depend on, read with the `gguf` package."""
    reader = GGUFReader(gguf_path)
    fields = reader.fields

    def get(key, default=None):
        f = fields.get(key)
        return f.contents() if f is not None else default

    tokens = get("tokenizer.ggml.tokens")
    types = get("tokenizer.ggml.token_type")
    return {
        "model": get("tokenizer.ggml.model"),
        "pre": get("tokenizer.ggml.pre"),
        "tokens": tokens,
        "token_type": types,
        "bos_token_id": get("tokenizer.ggml.bos_token_id"),
        "eos_token_id": get("tokenizer.ggml.eos_token_id"),
        "add_bos_token": get("tokenizer.ggml.add_bos_token"),
        "chat_template": get("tokenizer.chat_template"),
        "special_ids": [i for i, t in enumerate(types) if t == GGUF_TOKEN_TYPE_CONTROL],
    }


def load_tokenizer(gguf_path: str):
    """Hugging Face tokenizer for the SmolLM2 GGUF, with the SmolLM2 digit rule restored.

    Returns (tokenizer, info) where info describes what was loaded.
    """
    from transformers import AutoTokenizer

    gguf_path = os.path.abspath(gguf_path)
    meta = read_gguf_tokenizer_metadata(gguf_path)
    if meta["model"] != "gpt2":
        raise SystemExit(f"expected tokenizer.ggml.model=gpt2, got {meta['model']!r}")
    if meta["pre"] != "smollm":
        raise SystemExit(f"expected tokenizer.ggml.pre=smollm, got {meta['pre']!r}")

    directory, name = os.path.split(gguf_path)
    tok = AutoTokenizer.from_pretrained(directory, gguf_file=name)

    backend = tok.backend_tokenizer
    backend.pre_tokenizer = smollm_pre_tokenizer()
    backend.decoder = decoders.ByteLevel()
    if backend.normalizer is not None:
        raise SystemExit(f"unexpected normalizer: {backend.normalizer}")

    # Every control token of the GGUF must be a special added token so that its
    # text in the input maps to its id and is never split by BPE.
    added = tok.added_tokens_decoder
    tokens = meta["tokens"]
    for i in meta["special_ids"]:
        t = added.get(i)
        if t is None or t.content != tokens[i] or not t.special or t.normalized:
            raise SystemExit(f"control token {i} {tokens[i]!r} is not a special added token: {t!r}")
    extra = sorted(set(added) - set(meta["special_ids"]))
    if extra:
        raise SystemExit(f"unexpected added tokens: {[(i, added[i].content) for i in extra]}")

    # Sanity checks for the digit rule and special-token matching.
    assert len(encode(tok, "12345")) == 5, encode(tok, "12345")
    assert encode(tok, "<|im_start|>user")[0] == 1, encode(tok, "<|im_start|>user")
    assert encode(tok, "<|endoftext|>") == [0]
    assert encode(tok, "") == []

    info = {
        "special_ids": meta["special_ids"],
        "bos_token_id": meta["bos_token_id"],
        "eos_token_id": meta["eos_token_id"],
        "add_bos_token": meta["add_bos_token"],
        "chat_template": meta["chat_template"],
        "vocab_size": len(tokens),
    }
    return tok, info


def encode(tok, text: str) -> list[int]:
    """Token ids for `text`, never adding BOS/EOS (the GGUF says add_bos_token=false)."""
    return tok(text, add_special_tokens=False)["input_ids"]


def decode(tok, ids) -> str:
    """Raw decoded text: special tokens kept, no clean-up of spaces before punctuation."""
    return tok.decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False)


def render_chat(chat_template: str, messages, add_generation_prompt: bool = True) -> str:
    """Render the GGUF's chat template with jinja2 (as transformers does)."""
    import jinja2
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, undefined=jinja2.StrictUndefined)
    return env.from_string(chat_template).render(messages=messages, add_generation_prompt=add_generation_prompt)


def sha256_file(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def versions() -> str:
    import tokenizers
    import transformers
    import gguf  # noqa: F401
    from importlib.metadata import version

    return (
        f"transformers {transformers.__version__}, tokenizers {tokenizers.__version__}, "
        f"gguf {version('gguf')}"
    )
