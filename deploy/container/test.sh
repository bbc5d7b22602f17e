#!/usr/bin/env bash
# CI step for the container image: build it (deploy/container/build.sh), then run it with
# `buildah run --isolation chroot`, as the image's non-root user, on loopback only:
#   1. the image holds no shell; the process runs as uid 65532;
#   2. `gatehouse certs` writes a dev PKI into a mounted folder;
#   3. `gatehouse check` passes on the repository's example config with those certs, and on
#      the Kubernetes config with files where the Deployment mounts them;
#   4. `gatehouse demo --port 0` provides an OIDC issuer and an mTLS echo backend;
#   5. `gatehouse serve` with its own config (listener certificate from step 2, the demo's
#      issuer and backend) answers /healthz and /readyz, forwards a public request and a
#      token-bearing one (the backend sees the identity and row-filter headers and the
#      gateway's client certificate), refuses one without a token, counts them in
#      /metrics and writes audit lines into the image's audit folder;
#   6. SIGTERM: serve drains and exits 0.
# Prints the image size (from build.sh) and the resident memory of the idle gateway.
#   SKIP_BUILD=1 deploy/container/test.sh    # test an image built before
set -euo pipefail
cd "$(dirname "$0")/../.."
export DEBIAN_FRONTEND=noninteractive

version=$(sed -n 's/^version = "\(.*\)"$/\1/p' Cargo.toml | head -1)
IMAGE=${IMAGE:-localhost/gatehouse:$version}
export IMAGE
[ "${SKIP_BUILD:-0}" = 1 ] || deploy/container/build.sh
command -v curl >/dev/null 2>&1 || { apt-get update -qq && apt-get install -y -qq curl >/dev/null; }

B=(buildah --storage-driver vfs)
work=$(mktemp -d)
ctr=""
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
  [ -z "$ctr" ] || { "${B[@]}" umount "$ctr" >/dev/null 2>&1 || true; "${B[@]}" rm "$ctr" >/dev/null || true; }
  rm -rf "$work"
}
trap cleanup EXIT
fail() { echo "container test FAILED: $*" >&2; exit 1; }
step() { echo "== $*"; }

ctr=$("${B[@]}" from --pull=never "$IMAGE")
run() { "${B[@]}" run --isolation chroot "$@"; }
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
# The gateway process under a `buildah run` (chroot isolation shares this pid namespace).
find_gatehouse() {
  local c
  for c in $(pgrep -P "$1" 2>/dev/null); do
    if [ "$(cat "/proc/$c/comm" 2>/dev/null)" = gatehouse ]; then echo "$c"; return 0; fi
    find_gatehouse "$c" && return 0
  done
  return 1
}
gatehouse_pid() {
  for _ in $(seq 100); do find_gatehouse "$1" && return 0; sleep 0.1; done
  return 1
}

step "1. image contents"
mnt=$("${B[@]}" mount "$ctr")
files=$(cd "$mnt" && find . -type f | sort)
echo "$files" | sed 's/^/   /'
for forbidden in bin/sh bin/bash usr/bin/apt usr/bin/dpkg; do
  [ ! -e "$mnt/$forbidden" ] || fail "the image contains /$forbidden"
done
if run "$ctr" -- /bin/sh -c true 2>/dev/null; then fail "a shell ran inside the image"; fi
run "$ctr" -- /usr/local/bin/gatehouse --version

step "2. gatehouse certs"
mkdir -p "$work/etc/certs" "$work/etc/config" "$work/etc/secrets" "$work/tmp"
chown -R 65532:65532 "$work/etc" "$work/tmp"
run -v "$work/etc/certs:/etc/gatehouse/certs" "$ctr" -- gatehouse certs --out /etc/gatehouse/certs
[ -s "$work/etc/certs/server.crt" ] || fail "certs wrote no server.crt"

step "3. gatehouse check"
run -v "$PWD/config:/etc/gatehouse/config:ro" -v "$work/etc/certs:/etc/gatehouse/certs:ro" \
  "$ctr" -- gatehouse check -c /etc/gatehouse/config/gatehouse.toml
k8s=$work/k8s
mkdir -p "$k8s/config" "$k8s/tls" "$k8s/upstream" "$k8s/secrets"
cp deploy/kubernetes/base/gatehouse.toml "$k8s/config/"
cp "$work/etc/certs/server.crt" "$k8s/tls/tls.crt"; cp "$work/etc/certs/server.key" "$k8s/tls/tls.key"
cp "$work/etc/certs/ca.crt" "$k8s/upstream/ca.crt"
cp "$work/etc/certs/client.crt" "$k8s/upstream/tls.crt"; cp "$work/etc/certs/client.key" "$k8s/upstream/tls.key"
head -c 32 /dev/urandom | base64 >"$k8s/secrets/pseudonym.key"
chown -R 65532:65532 "$k8s"
run -v "$k8s/config:/etc/gatehouse/config:ro" -v "$k8s/tls:/etc/gatehouse/tls:ro" \
  -v "$k8s/upstream:/etc/gatehouse/upstream:ro" -v "$k8s/secrets:/etc/gatehouse/secrets:ro" \
  "$ctr" -- gatehouse check -c /etc/gatehouse/config/gatehouse.toml

step "4. gatehouse demo (issuer and mTLS echo backend)"
"${B[@]}" run --isolation chroot -v "$work/tmp:/tmp" "$ctr" -- gatehouse demo --port 0 >"$work/demo.out" 2>"$work/demo.err" &
demo_run=$!
pids+=("$demo_run")
for _ in $(seq 300); do grep -q '^# 7' "$work/demo.out" 2>/dev/null && break; sleep 0.2; done
grep -q '^# 7' "$work/demo.out" || { cat "$work/demo.out" "$work/demo.err" >&2; fail "the demo did not start"; }
demo_dir=$(sed -n 's/.*(config: \(.*\)\/gatehouse.toml).*/\1/p' "$work/demo.out" | head -1)
issuer=$(awk '$1 == "issuer" { print $2; exit }' "$work/demo.out")
echo_addr=$(sed -n 's/^  backend   https:\/\/\([^ ]*\) .*/\1/p' "$work/demo.out" | head -1)
token=$(grep -m1 -o 'Bearer [^"]*' "$work/demo.out" | head -1 | cut -d' ' -f2)
[ -n "$demo_dir" ] && [ -n "$issuer" ] && [ -n "$echo_addr" ] && [ -n "$token" ] ||
  { cat "$work/demo.out" >&2; fail "could not read the demo's issuer, backend and token"; }
echo "   issuer $issuer, backend $echo_addr, demo files $demo_dir"

step "5. gatehouse serve"
https=$(free_port); admin=$(free_port)
while [ "$admin" = "$https" ]; do admin=$(free_port); done
head -c 32 /dev/urandom | base64 >"$work/etc/secrets/pseudonym.key"
cat >"$work/etc/config/serve.toml" <<TOML
[server]
listen = "127.0.0.1:$https"
cert = "../certs/server.crt"          # from \`gatehouse certs\` (step 2)
key = "../certs/server.key"
drain_timeout_s = 5

[admin]
listen = "127.0.0.1:$admin"

[audit]
path = "/var/lib/gatehouse/audit"     # the image's audit folder, owned by the gateway user
pseudonym_key = { file = "../secrets/pseudonym.key" }

[issuers.demo]
issuer = "$issuer"
discovery = true
ca = "$demo_dir/certs/ca.crt"
audiences = ["api://orders"]

[roles.data-steward]
groups = ["sg-data-stewards"]

[upstreams.echo]
addrs = ["$echo_addr"]
sni = "localhost"
ca = "$demo_dir/certs/ca.crt"
client_cert = "$demo_dir/certs/client.crt"
client_key = "$demo_dir/certs/client.key"

[[routes]]
name = "health"
path_prefix = "/health"
upstream = "echo"
auth = "none"

[[routes]]
name = "orders-read"
path_prefix = "/orders"
methods = ["GET", "HEAD"]
upstream = "echo"
allow_roles = ["data-steward"]
require_scopes = ["orders.read"]
[[routes.row_filters]]
header = "X-Row-Filter"
value = "region={claims.region}"
TOML
chown -R 65532:65532 "$work/etc"
"${B[@]}" run --isolation chroot -v "$work/etc/config:/etc/gatehouse/config:ro" -v "$work/etc/certs:/etc/gatehouse/certs:ro" \
  -v "$work/etc/secrets:/etc/gatehouse/secrets:ro" -v "$work/tmp:/tmp" \
  "$ctr" -- gatehouse --log-format json serve -c /etc/gatehouse/config/serve.toml \
  >"$work/serve.out" 2>"$work/serve.err" &
serve_run=$!
pids+=("$serve_run")
gh=$(gatehouse_pid "$serve_run") || fail "no gatehouse process under buildah run"
uid=$(awk '/^Uid:/ { print $2 }' "/proc/$gh/status")
[ "$uid" = 65532 ] || fail "serve runs as uid $uid, not 65532"
ready=""
for _ in $(seq 150); do
  if [ "$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$admin/readyz")" = 200 ]; then ready=1; break; fi
  kill -0 "$serve_run" 2>/dev/null || break
  sleep 0.2
done
[ -n "$ready" ] || { cat "$work/serve.err" >&2; fail "serve never answered /readyz 200"; }
rss_idle=$(awk '/^VmRSS:/ { printf "%.1f", $2 / 1024 }' "/proc/$gh/status")
[ "$(curl -sf "http://127.0.0.1:$admin/healthz")" = ok ] || fail "/healthz"

base="https://localhost:$https"
ca=$work/etc/certs/ca.crt
code=$(curl -s --cacert "$ca" -o "$work/public.json" -w '%{http_code}' "$base/health")
[ "$code" = 200 ] || fail "public route: $code $(cat "$work/public.json")"
grep -q '"path":"/health"' "$work/public.json" || fail "public route: the backend did not answer: $(cat "$work/public.json")"
code=$(curl -s --cacert "$ca" -H "Authorization: Bearer $token" -o "$work/orders.json" -w '%{http_code}' "$base/orders/42")
[ "$code" = 200 ] || fail "protected route with a token: $code $(cat "$work/orders.json")"
for want in '["x-auth-subject","alice"]' '["x-row-filter","region=eu-west"]' '"client_cn":"gatehouse-gateway"'; do
  grep -qF "$want" "$work/orders.json" || fail "the backend did not see $want: $(cat "$work/orders.json")"
done
code=$(curl -s --cacert "$ca" -o /dev/null -w '%{http_code}' "$base/orders/42")
[ "$code" = 401 ] || fail "protected route without a token: $code, want 401"
metrics=$(curl -sf "http://127.0.0.1:$admin/metrics")
for want in 'gatehouse_requests_total{method="GET",route="orders-read",status="200"} 1' \
            'gatehouse_requests_total{method="GET",route="orders-read",status="401"} 1' \
            'gatehouse_requests_total{method="GET",route="health",status="200"} 1' \
            'gatehouse_jwks_keys{issuer="demo"}'; do
  grep -qF "$want" <<<"$metrics" || fail "/metrics lacks $want"
done
rss_after=$(awk '/^VmRSS:/ { printf "%.1f", $2 / 1024 }' "/proc/$gh/status")

step "6. SIGTERM"
kill -TERM "$gh"
set +e
wait "$serve_run"
rc=$?
set -e
pids=("$demo_run")
[ "$rc" = 0 ] || { cat "$work/serve.err" >&2; fail "serve exited $rc after SIGTERM, want 0"; }
audit=$(cat "$mnt"/var/lib/gatehouse/audit/audit-*.jsonl 2>/dev/null || true)
[ "$(grep -c '"route":"orders-read"' <<<"$audit")" = 2 ] || fail "audit: want 2 orders-read lines, got: $audit"
grep -q '"decision":"allow"' <<<"$audit" || fail "audit: no allow line"
if grep -q alice <<<"$audit"; then fail "audit carries the raw subject"; fi

echo "container test passed: $IMAGE ran check, certs, demo and serve as uid 65532 without a shell;"
echo "  gatehouse serve resident memory: ${rss_idle} MiB idle after start, ${rss_after} MiB after the requests"
