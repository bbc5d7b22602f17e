#!/usr/bin/env bash
# Whole-gateway load figures on loopback with wrk (TLS, HTTP/1.1, keep-alive).
#
# Starts `gatehouse demo` (issuer, mTLS echo backend, gateway), then measures in one run:
#   public    - a public route: TLS in, mTLS out, no token work
#   allowed   - a protected route with a valid token: the decision comes from the cache
#   denied    - no token: 401 problem answered by the gateway itself
# and prints each rate with its ratio to the public route. Bounded: DURATION seconds per
# case (default 10), loopback only; the demo is stopped at the end.
#
#   scripts/load.sh            # or: DURATION=5 CONNS=32 THREADS=1 scripts/load.sh
set -euo pipefail
cd "$(dirname "$0")/.."
DURATION=${DURATION:-10}
CONNS=${CONNS:-32}
THREADS=${THREADS:-1}
command -v wrk >/dev/null || { echo "wrk is needed: apt-get install -y wrk" >&2; exit 1; }
[ -n "${NO_BUILD:-}" ] || cargo build --release --quiet
out=$(mktemp)
./target/release/gatehouse demo --port 0 >"$out" 2>/dev/null &
demo=$!
trap 'kill -INT $demo 2>/dev/null; wait $demo 2>/dev/null; rm -f "$out"' EXIT
for _ in $(seq 100); do grep -q '^# 7' "$out" && break; sleep 0.2; done
base=$(grep -m1 -o 'https://localhost:[0-9]*' "$out")
token=$(grep -m1 -o 'Bearer [^"$]*"' "$out" | tr -d '"')
[ -n "$base" ] && [ -n "$token" ] || { echo "demo did not start" >&2; cat "$out" >&2; exit 1; }

run() { # name, path, extra wrk args...
  local name=$1 path=$2; shift 2
  local rps
  rps=$(wrk -t"$THREADS" -c"$CONNS" -d"${DURATION}s" "$@" "$base$path" | awk '/Requests\/sec/ {print $2}')
  printf '%-8s %10s req/s\n' "$name" "$rps" >&2
  echo "$rps"
}
echo "wrk -t$THREADS -c$CONNS -d${DURATION}s against $base ($(nproc) cores, gateway threads = cores)" >&2
public=$(run public /health)
allowed=$(run allowed /orders/42 -H "Authorization: $token")
denied=$(run denied /orders/42)
awk -v p="$public" -v a="$allowed" -v d="$denied" 'BEGIN {
  printf "ratios to public: allowed (cached decision, identity + row-filter headers) %.2f, denied (401 by the gateway) %.2f\n", a/p, d/p }'
