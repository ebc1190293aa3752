#!/usr/bin/env bash
# Replica balancing, side by side in one `inferd bench` run: three gateways
# (round_robin, least_outstanding, cache_aware), each in front of its own
# REPLICAS `inferd serve` processes of SmolLM2-135M on one thread each, so
# that every policy starts from cold caches. The bench's levels alternate
# between the gateways; only the measured one's replicas are busy.
#
#   cargo build --release -p inferd && bash benchmarks/balancing/run.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
INFERD=${INFERD:-target/release/inferd}
REPLICAS=${REPLICAS:-3}
BASE_PORT=${BASE_PORT:-18100}
OUT=${OUT:-benchmarks/balancing}
tmp=$(mktemp -d)
pids=()
trap 'kill "${pids[@]}" 2>/dev/null || true; rm -rf "$tmp"' EXIT

wait_ready() {
  for _ in $(seq 300); do
    curl -sf "http://127.0.0.1:$1/health" > /dev/null && return 0
    sleep 0.2
  done
  echo "port $1 did not become ready" >&2
  exit 1
}

port=$BASE_PORT
targets=()
for policy in round_robin least_outstanding cache_aware; do
  config="$tmp/$policy.toml"
  echo "port = $port" > "$config"
  gw_port=$port
  port=$((port + 1))
  names=()
  for r in $(seq "$REPLICAS"); do
    "$INFERD" serve --port "$port" --threads 1 --model small=smollm2-135m 2> "$tmp/$policy-$r.log" &
    pids+=($!)
    printf '\n[[upstreams]]\nname = "r%s"\nbase_url = "http://127.0.0.1:%s/v1"\nmodel = "small"\ncontext_window = 8192\n' \
      "$r" "$port" >> "$config"
    names+=("\"r$r\"")
    wait_ready "$port"
    port=$((port + 1))
  done
  printf '\n[[tiers]]\nname = "pool"\nbackends = [%s]\nbalance = "%s"\n' \
    "$(IFS=,; echo "${names[*]}")" "$policy" >> "$config"
  "$INFERD" serve --config "$config" 2> "$tmp/$policy-gateway.log" &
  pids+=($!)
  wait_ready "$gw_port"
  targets+=(--target "$policy=http://127.0.0.1:$gw_port")
done

"$INFERD" bench "${targets[@]}" --model pool --workload multi-turn --turns 8 \
  --input-tokens 48 --output-tokens 24 --ignore-eos --concurrency 3,6 --requests 12 \
  --quiet --out "$OUT/multi-turn"
# The same conversations arriving at fixed rates (open loop): every policy
# carries the same load, so TTFT is compared at the same throughput.
"$INFERD" bench "${targets[@]}" --model pool --workload multi-turn --turns 8 \
  --input-tokens 48 --output-tokens 24 --ignore-eos --rate 0.3,0.45 --requests 16 \
  --quiet --out "$OUT/multi-turn-rate"
"$INFERD" bench "${targets[@]}" --model pool --workload shared-prefix --prefix-tokens 1000 \
  --input-tokens 50 --output-tokens 16 --ignore-eos --concurrency 6 --requests 48 \
  --quiet --out "$OUT/shared-prefix"
