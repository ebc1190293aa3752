#!/usr/bin/env python3
"""Make the SmolLM2 tokenizer reference fixture with Hugging Face tokenizers.

Usage:
    python make_tokenizer_fixture.py --gguf SmolLM2-135M-Instruct.Q4_1.gguf \
        --out crates/tokenizer/tests/fixtures/smollm2_tokenizer.json

Every case is encoded without BOS/EOS (add_special_tokens=False) and decoded
with special tokens kept. The case list is deterministic (fixed seed).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import smollm_tokenizer as st  # noqa: E402

SEED = 20240611

HAND_WRITTEN = [
    # Empty and whitespace-only.
    "",
    " ",
    "  ",
    "   ",
    "\t",
    "\n",
    "\n\n",
    "\n\n\n",
    "\t\t",
    " \n",
    "\n ",
    " \t \n \t\n",
    "\r\n",
    "\r\n\r\n",
    "a\r\nb",
    "hello   world",
    "hello    world   ",
    "trailing spaces   ",
    "   leading spaces",
    "  two leading",
    "tabs\tbetween\t\twords",
    "line one\nline two\n\nline four\n",
    "mixed \t\n  \n\t whitespace",
    "word\n\n\n\nword",
    "end with newline\n",
    "space before newline \nnext",
    "\u00a0non-breaking\u00a0space",
    "zero\u200bwidth\u200bspace",
    "ideographic\u3000space",
    # English prose.
    "Hello",
    "Hello world",
    "Hello, world!",
    "The quick brown fox jumps over the lazy dog.",
    "THE QUICK BROWN FOX JUMPS OVER THE LAZY DOG.",
    "It was the best of times, it was the worst of times, it was the age of wisdom, "
    "it was the age of foolishness, it was the epoch of belief, it was the epoch of incredulity.",
    "A paragraph of text. It has several sentences! Does it have a question? Yes; it does: three.",
    "Once upon a time, in a land far, far away, there lived a small robot named Pixel.",
    "Machine learning models are trained on large datasets to recognize patterns.",
    "What is the capital of France?",
    "Photosynthesis converts light energy into chemical energy stored in glucose.",
    # Contractions.
    "don't",
    "Don't",
    "DON'T",
    "I'LL",
    "I'll",
    "we've",
    "WE'VE",
    "they're",
    "she's",
    "he'd",
    "I'm",
    "it's its",
    "can't won't shouldn't",
    "rock 'n' roll",
    "'s 't 're 've 'm 'll 'd",
    "'S 'T 'RE 'VE 'M 'LL 'D",
    "the dog's bone and the dogs' bones",
    "''quoted''",
    "it\u2019s curly",
    # Digits and numbers.
    "0",
    "7",
    "12",
    "123",
    "12345",
    "1234567890",
    "00000",
    " 42",
    "  42",
    "a1b2c3",
    "abc123def",
    "3.14159",
    "-2.5e-10",
    "1,000,000",
    "1.000.000,50",
    "$1,234.56",
    "100%",
    "50/50",
    "+1 (555) 123-4567",
    "555-0199",
    "+44 20 7946 0958",
    "2024-01-15",
    "15/01/2024",
    "12:34:56",
    "2024-01-15T12:34:56.789Z",
    "Version 2.0.1-beta.3",
    "192.168.0.1",
    "0xDEADBEEF",
    "0b101010",
    "1st 2nd 3rd 4th",
    "\u0661\u0662\u0663 Arabic-Indic digits",
    "\uff11\uff12\uff13 fullwidth digits",
    "\u00bd \u00bc \u00b2 \u00b3",
    "\u2160 \u2161 \u2162 roman numerals",
    # Punctuation runs.
    "!!!",
    "???",
    "...",
    "?!?!",
    "---",
    "***",
    "###",
    "====",
    "!@#$%^&*()_+-=[]{}|;':\",./<>?`~",
    "Wait... what?!",
    "a -- b --- c",
    "(((nested)))",
    "\"quoted\" and 'single'",
    "\u201csmart quotes\u201d \u2018single\u2019",
    "em\u2014dash and en\u2013dash",
    "\u2026 ellipsis char",
    "<<>>",
    "->",
    "=>",
    "::",
    "//",
    "/* */",
    # Code.
    "def add(a, b):\n    return a + b\n",
    "def fib(n):\n\tif n < 2:\n\t\treturn n\n\treturn fib(n - 1) + fib(n - 2)\n",
    "class Foo:\n    def __init__(self, x: int) -> None:\n        self.x = x\n\n    def __repr__(self):\n"
    "        return f\"Foo({self.x!r})\"\n",
    "import numpy as np\nx = np.zeros((3, 4), dtype=np.float32)\nprint(x.shape)\n",
    "for i in range(10):\n    if i % 2 == 0:\n        print(i)\n    else:\n        continue\n",
    "fn main() {\n    let v: Vec<u32> = (0..10).collect();\n    println!(\"{:?}\", v);\n}\n",
    "impl<T: Clone> Foo<T> {\n\tpub fn new(x: &T) -> Self {\n\t\tSelf { x: x.clone() }\n\t}\n}\n",
    "#[derive(Debug, Clone, PartialEq)]\npub struct Point { x: f64, y: f64 }\n",
    "let x = match y { Some(v) => v, None => return Err(\"missing\".into()) };",
    "#include <stdio.h>\nint main(void) {\n    printf(\"Hello, %s!\\n\", \"world\");\n    return 0;\n}\n",
    "const f = (x) => x * 2;\nconsole.log([1, 2, 3].map(f));\n",
    "SELECT id, name FROM users WHERE age >= 18 ORDER BY name ASC;",
    "<!DOCTYPE html>\n<html>\n  <head><title>Test</title></head>\n  <body>\n    <p class=\"x\">Hi &amp; bye</p>\n"
    "  </body>\n</html>\n",
    "<div id=\"main\"><span>text</span><br/></div>",
    "{\"name\": \"Alice\", \"age\": 30, \"tags\": [\"a\", \"b\"], \"ok\": true, \"none\": null}",
    "{\n  \"key\": \"value\",\n  \"nested\": {\n    \"n\": 1.5e3,\n    \"list\": [1, 2, 3]\n  }\n}\n",
    "[{\"id\":1},{\"id\":2}]",
    "key: value\nlist:\n  - one\n  - two\n",
    "[package]\nname = \"inferd\"\nversion = \"0.1.0\"\n",
    "$ cargo build --release\n   Compiling foo v0.1.0\n",
    "if (a && b || !c) { x += 1; } else { x -= 1; }",
    "    indented with four spaces",
    "\tindented with a tab",
    "        eight spaces",
    "x=1;y=2;z=x+y",
    "snake_case_name camelCaseName PascalCaseName SCREAMING_CASE",
    "path/to/some/file.rs:42:13",
    "C:\\Users\\name\\Documents\\file.txt",
    "regex: ^[a-zA-Z0-9_.+-]+@[a-zA-Z0-9-]+\\.[a-zA-Z0-9-.]+$",
    # Markdown.
    "# Title\n\n## Subtitle\n\n- item one\n- item two\n\n1. first\n2. second\n",
    "**bold** and *italic* and `code` and ~~strike~~",
    "[link](https://example.com) and ![img](a.png)",
    "```python\nprint('hi')\n```",
    "> quoted line\n> another",
    "| a | b |\n|---|---|\n| 1 | 2 |\n",
    # URLs and emails.
    "https://www.example.com/path?query=1&other=two#frag",
    "http://localhost:8080/api/v1/items/42",
    "ftp://files.example.org/pub/file.tar.gz",
    "Visit https://huggingface.co/HuggingFaceTB/SmolLM2-135M-Instruct for details.",
    "user@example.com",
    "first.last+tag@sub.domain.co.uk",
    "Contact: support@company.io, sales@company.io",
    # Emoji.
    "\U0001F600",
    "\U0001F600\U0001F601\U0001F602",
    "I love pizza \U0001F355!",
    "\u2764\ufe0f",
    "\U0001F44D\U0001F3FD",
    "\U0001F468\u200d\U0001F469\u200d\U0001F467\u200d\U0001F466",
    "\U0001F3F3\ufe0f\u200d\U0001F308",
    "\U0001F1FA\U0001F1F8 \U0001F1EF\U0001F1F5 \U0001F1E9\U0001F1EA",
    "\U0001F9D1\u200d\U0001F4BB coding",
    "\u263a \u2603 \u2705 \u274c",
    "\U0001F680\U0001F680\U0001F680 launch",
    # CJK, Japanese, Korean.
    "\u4f60\u597d\uff0c\u4e16\u754c\uff01",
    "\u6211\u559c\u6b22\u5b66\u4e60\u4eba\u5de5\u667a\u80fd\u3002",
    "\u4e2d\u6587\u548cEnglish\u6df7\u5408",
    "\u3053\u3093\u306b\u3061\u306f\u4e16\u754c",
    "\u6771\u4eac\u306f\u65e5\u672c\u306e\u9996\u90fd\u3067\u3059\u3002",
    "\u30ab\u30bf\u30ab\u30ca\u3068\u3072\u3089\u304c\u306a",
    "\uc548\ub155\ud558\uc138\uc694",
    "\ud55c\uad6d\uc5b4 \ud14d\uc2a4\ud2b8\uc785\ub2c8\ub2e4.",
    # RTL and other scripts.
    "\u0645\u0631\u062d\u0628\u0627 \u0628\u0627\u0644\u0639\u0627\u0644\u0645",
    "\u0627\u0644\u0644\u063a\u0629 \u0627\u0644\u0639\u0631\u0628\u064a\u0629 \u062c\u0645\u064a\u0644\u0629",
    "\u05e9\u05dc\u05d5\u05dd \u05e2\u05d5\u05dc\u05dd",
    "\u0928\u092e\u0938\u094d\u0924\u0947 \u0926\u0941\u0928\u093f\u092f\u093e",
    "\u0939\u093f\u0928\u094d\u0926\u0940 \u092d\u093e\u0937\u093e",
    "\u041f\u0440\u0438\u0432\u0435\u0442, \u043c\u0438\u0440!",
    "\u041c\u043e\u0441\u043a\u0432\u0430 \u2014 \u0441\u0442\u043e\u043b\u0438\u0446\u0430 \u0420\u043e\u0441\u0441\u0438\u0438.",
    "\u0393\u03b5\u03b9\u03ac \u03c3\u03bf\u03c5 \u039a\u03cc\u03c3\u03bc\u03b5",
    "\u0e2a\u0e27\u0e31\u0e2a\u0e14\u0e35\u0e04\u0e23\u0e31\u0e1a",
    "Ti\u1ebfng Vi\u1ec7t c\u00f3 d\u1ea5u",
    # Accented Latin, combining marks.
    "caf\u00e9",
    "cafe\u0301",
    "na\u00efve r\u00e9sum\u00e9 fa\u00e7ade",
    "\u00c0 bient\u00f4t, \u00e7a va?",
    "Stra\u00dfe \u00fcber \u00e4rger \u00f6l",
    "Espa\u00f1a \u00bfQu\u00e9 tal? \u00a1Hola!",
    "S\u00e3o Paulo, Cora\u00e7\u00e3o",
    "\u0141\u00f3d\u017a Gda\u0144sk \u017b\u00f3\u0142w",
    "\u00c5ngstr\u00f6m \u00d8resund",
    # Special-token text.
    "<|im_start|>user\nhi<|im_end|>\n",
    "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n"
    "<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n",
    "<|endoftext|>",
    "text before<|endoftext|>text after",
    "end of doc.<|endoftext|><|endoftext|>",
    " <|im_start|> spaced <|im_end|> ",
    "<|im_start|><|im_end|>",
    "<|im_start",
    "<|im_start|",
    "im_start|>",
    "<|IM_START|>",
    "<| im_start |>",
    "<repo_name>inferd<file_sep>src/main.rs\nfn main() {}",
    "<filename>README.md\n<gh_stars>100",
    "<jupyter_start><jupyter_code>print(1)<jupyter_output>1<empty_output>",
    "<issue_start>bug<issue_comment>fixed<issue_closed>",
    "<reponame> <jupyter_text> <jupyter_script>",
    "<|endoftext|>12345<|im_end|>",
    # Long words and repeats.
    "supercalifragilisticexpialidocious",
    "pneumonoultramicroscopicsilicovolcanoconiosis",
    "Donaudampfschifffahrtselektrizit\u00e4tenhauptbetriebswerkbauunterbeamtengesellschaft",
    "a" * 100,
    "ab" * 60,
    "x" * 257,
    "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa bbbbbbbbbbbbbbbbbbbbbb",
    "ha" * 20 + "!",
    "=" * 80,
    "-" * 40 + "\n" + "-" * 40,
    " " * 32,
    "\n" * 12,
    "\t" * 8 + "x",
    "1" * 64,
    "\U0001F600" * 10,
    # Miscellaneous.
    "\u00a9 2024 \u00ae \u2122",
    "\u20ac100 \u00a350 \u00a51000 \u20b9500",
    "\u00b0C \u00b1 \u00d7 \u00f7 \u2260 \u2264 \u2265 \u221e \u221a \u03c0",
    "\u2200x \u2203y: x \u2208 S \u2227 y \u2209 S",
    "\u2190 \u2191 \u2192 \u2193 \u21d2",
    "\u250c\u2500\u2510\n\u2502 \u2502\n\u2514\u2500\u2518",
    "null\x00byte",
    "bell\x07 and escape\x1b[0m",
    "form\x0cfeed and vertical\x0btab",
    "\ufeffBOM at start",
    "\ufffd replacement char",
    "e\u0301\u0302\u0303 stacked combining",
    "\U0001D400\U0001D401 math bold",
    "\U00010348 gothic",
]

FRAGMENTS = [
    "hello", "world", "The", "the", "quick", "fox", "data", "model", "token", "inference",
    "don't", "I'LL", "we've", "it's", "12", "3.5", "2024", "1,000", "99%", "#42",
    "\u00e9t\u00e9", "na\u00efve", "\u4f60\u597d", "\u3053\u3093\u306b\u3061\u306f", "\uc548\ub155",
    "\u043f\u0440\u0438\u0432\u0435\u0442", "\u0645\u0631\u062d\u0628\u0627", "\u05e9\u05dc\u05d5\u05dd",
    "\u0928\u092e\u0938\u094d\u0924\u0947", "\U0001F600", "\U0001F44D\U0001F3FD",
    "\U0001F468\u200d\U0001F469\u200d\U0001F467", "\U0001F1EB\U0001F1F7", "<|im_start|>", "<|im_end|>",
    "<|endoftext|>", "fn", "def", "{", "}", "(", ")", "[]", "=>", "::", "->", "\"", "'", "...", "!?",
    "https://a.io/x?y=1", "me@x.org", "snake_case", "CamelCase", "ALLCAPS", "x" * 30,
]

SEPARATORS = ["", " ", "  ", "   ", "\n", "\n\n", "\t", " \n", "\n ", ", ", ". ", "\r\n", "-", "_", "/"]

UNICODE_RANGES = [
    (0x20, 0x7E),  # ASCII printable
    (0xA0, 0x17F),  # Latin-1 supplement, Latin extended-A
    (0x370, 0x3FF),  # Greek
    (0x400, 0x4FF),  # Cyrillic
    (0x590, 0x5FF),  # Hebrew
    (0x600, 0x6FF),  # Arabic
    (0x900, 0x97F),  # Devanagari
    (0x3040, 0x30FF),  # Hiragana, Katakana
    (0x4E00, 0x9FFF),  # CJK unified ideographs
    (0xAC00, 0xD7A3),  # Hangul syllables
    (0x1F300, 0x1F64F),  # emoji
    (0x2000, 0x206F),  # general punctuation (includes odd spaces)
]


def generated_cases(rng: random.Random) -> list[str]:
    out = []
    # Random fragment combinations.
    for _ in range(90):
        n = rng.randint(2, 8)
        parts = [rng.choice(FRAGMENTS) for _ in range(n)]
        s = parts[0]
        for p in parts[1:]:
            s += rng.choice(SEPARATORS) + p
        out.append(s)
    # Random code points from chosen Unicode blocks.
    for _ in range(40):
        lo, hi = rng.choice(UNICODE_RANGES)
        n = rng.randint(1, 24)
        chars = []
        for _ in range(n):
            if rng.random() < 0.15:
                chars.append(rng.choice([" ", "  ", "\n", "\t"]))
            else:
                chars.append(chr(rng.randint(lo, hi)))
        out.append("".join(chars))
    # Mixed-script random strings.
    for _ in range(20):
        chars = []
        for _ in range(rng.randint(3, 30)):
            lo, hi = rng.choice(UNICODE_RANGES)
            chars.append(chr(rng.randint(lo, hi)))
        out.append("".join(chars))
    # Random numbers in various formats.
    for _ in range(30):
        kind = rng.randrange(6)
        if kind == 0:
            s = str(rng.randint(0, 10 ** rng.randint(1, 15)))
        elif kind == 1:
            s = f"{rng.uniform(-1e4, 1e4):.{rng.randint(1, 6)}f}"
        elif kind == 2:
            s = f"{rng.randint(0, 10**9):,}"
        elif kind == 3:
            s = f"+{rng.randint(1, 99)} {rng.randint(100, 999)} {rng.randint(100, 999)} {rng.randint(1000, 9999)}"
        elif kind == 4:
            s = f"{rng.randint(1900, 2100)}-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}"
        else:
            s = f"{rng.choice(['v', 'x', 'id', 'n='])}{rng.randint(0, 999)}{rng.choice(['', 'ms', 'px', 'kg', '.0'])}"
        pre = rng.choice(["", " ", "a", "Total: ", "\n", "  "])
        post = rng.choice(["", " ", ".", "!", "\n", " items"])
        out.append(pre + s + post)
    # Random whitespace runs around words.
    ws = [" ", "\t", "\n", "\r\n", "\u00a0", "\u3000"]
    for _ in range(30):
        parts = []
        for _ in range(rng.randint(1, 5)):
            parts.append("".join(rng.choice(ws) for _ in range(rng.randint(0, 5))))
            parts.append(rng.choice(["word", "x", "42", "\u00e9", "\u4f60", "\U0001F600", "!", "don't"]))
        parts.append("".join(rng.choice(ws) for _ in range(rng.randint(0, 4))))
        out.append("".join(parts))
    # Random printable ASCII soup (punctuation-heavy).
    ascii_pool = "".join(chr(c) for c in range(0x20, 0x7F)) + "\n\t"
    for _ in range(20):
        out.append("".join(rng.choice(ascii_pool) for _ in range(rng.randint(1, 60))))
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--gguf", required=True, help="path to SmolLM2-135M-Instruct GGUF")
    ap.add_argument("--out", required=True, help="output JSON path")
    args = ap.parse_args()

    tok, info = st.load_tokenizer(args.gguf)

    rng = random.Random(SEED)
    texts = []
    seen = set()
    for t in HAND_WRITTEN + generated_cases(rng):
        if t not in seen:
            seen.add(t)
            texts.append(t)

    cases = []
    for text in texts:
        ids = st.encode(tok, text)
        cases.append({"text": text, "ids": ids, "decoded": st.decode(tok, ids)})

    roundtrip_fail = sum(1 for c in cases if c["decoded"] != c["text"])
    source = (
        "Hugging Face tokenizer built by transformers' GGUF loader (AutoTokenizer.from_pretrained(dir, gguf_file=...)) "
        "from SmolLM2-135M-Instruct GGUF vocab/merges, with the pre-tokenizer replaced by "
        "Sequence([Digits(individual_digits=True), ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=True)]) "
        "and decoder ByteLevel, as in the published SmolLM2 tokenizer.json; the 17 control tokens (ids 0-16) are "
        "special added tokens. ids = encode(text, add_special_tokens=False) (no BOS); "
        "decoded = decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False). "
        f"Deterministic case list (seed {SEED}). Made with {st.versions()}."
    )
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w", encoding="utf-8") as f:
        f.write("{\n")
        f.write(f"  \"source\": {json.dumps(source, ensure_ascii=False)},\n")
        f.write("  \"cases\": [\n")
        for i, c in enumerate(cases):
            sep = "," if i + 1 < len(cases) else ""
            f.write("    " + json.dumps(c, ensure_ascii=False) + sep + "\n")
        f.write("  ]\n}\n")

    print(f"wrote {len(cases)} cases to {args.out} ({os.path.getsize(args.out)} bytes); "
          f"{roundtrip_fail} cases do not round-trip exactly", file=sys.stderr)


if __name__ == "__main__":
    main()
