#!/usr/bin/env bash
# The canonical comparison: inferd against llama.cpp's llama-server on the same
# GGUF, the same thread count, in one run, with `inferd bench` alternating levels
# between the two. Writes benchmarks/canonical/{sweep,shared_prefix,poisson}/
# (results.json, report.md, PNG and SVG plots).
#
#   LLAMA_SERVER=/path/to/llama-server benchmarks/canonical.sh
#
# llama-server is not built here: build it from the llama.cpp tree bundled in the
# llama-cpp-python==0.3.36 sdist (GGML_NATIVE=OFF, AMX off). Knobs (environment):
# THREADS (2), REQUESTS (24 per level and target), OUT (benchmarks/canonical),
# INFERD (target/release/inferd), MODEL (the default model's GGUF).
set -euo pipefail
cd "$(dirname "$0")/.."

: "${LLAMA_SERVER:?set LLAMA_SERVER to a llama-server binary}"
THREADS=${THREADS:-2}
REQUESTS=${REQUESTS:-24}
OUT=${OUT:-benchmarks/canonical}
INFERD=${INFERD:-target/release/inferd}
[ -x "$INFERD" ] || cargo build --release -p inferd
MODEL=${MODEL:-$("$INFERD" models path smollm2-135m)}
[ -f "$MODEL" ] || "$INFERD" models fetch smollm2-135m
INFERD_PORT=${INFERD_PORT:-18081}
LLAMA_PORT=${LLAMA_PORT:-18082}

pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT

"$INFERD" serve --model "$MODEL" --port "$INFERD_PORT" --threads "$THREADS" 2>"$OUT.inferd.log" &
pids+=($!)
"$LLAMA_SERVER" -m "$MODEL" -a smollm2-135m -t "$THREADS" -np 8 -cb -c 16384 --port "$LLAMA_PORT" >"$OUT.llama.log" 2>&1 &
pids+=($!)
for port in "$INFERD_PORT" "$LLAMA_PORT"; do
  for _ in $(seq 1 120); do
    curl -sf "http://127.0.0.1:$port/health" >/dev/null && break
    sleep 0.5
  done
  curl -sf "http://127.0.0.1:$port/health" >/dev/null || { echo "server on :$port did not come up" >&2; exit 1; }
done

bench() {
  "$INFERD" bench --target "inferd=http://127.0.0.1:$INFERD_PORT" --target "llama.cpp=http://127.0.0.1:$LLAMA_PORT" \
    --ignore-eos "$@"
}
mkdir -p "$OUT"
bench --concurrency 1,2,4,8,16 --requests "$REQUESTS" --seed 1000 --input-tokens 230 --output-tokens 128 --slo ttft=1s,tpot=100ms --out "$OUT/sweep"
bench --seed 2000 --workload shared-prefix --prefix-tokens 1000 --input-tokens 32 --output-tokens 128 --concurrency 8 \
  --requests 16 --slo ttft=1s,tpot=100ms --out "$OUT/shared_prefix"
bench --rate 0.25,0.5,1 --requests "$REQUESTS" --seed 3000 --input-tokens 230 --output-tokens 128 --slo ttft=1s,tpot=100ms --out "$OUT/poisson"
rm -f "$OUT.inferd.log" "$OUT.llama.log"
