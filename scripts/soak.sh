#!/usr/bin/env bash
# Soak: a release gatehouse under mixed traffic for MINUTES (default 10), then checks.
#
# Builds the release binary and the driver (examples/soak.rs) if needed, then runs the
# driver: it starts the devkit issuer and mTLS echo backend in its own process and
# `gatehouse serve` as a child with a generated config, and sends valid tokens (a hot set,
# a pool of 5000, fresh ones), refused ones (bad signature, expired, wrong audience, no
# token, no role), public requests and slow clients (trickled heads, slowloris, no TLS
# handshake, a burst of 300 every minute); SIGHUP every 30 s, a server certificate
# rotation at 40% of the run, an upstream restart at 60%. At the end it prints the
# outcomes per class of request, RSS start/peak/end, open fds start/end, audit lines
# against requests answered, and exits 1 when a check fails (0 when all pass).
#
#   scripts/soak.sh            # 10 minutes
#   scripts/soak.sh 2          # a quick one
#   scripts/soak.sh 10 --rate 500 --tokens 20000 --keep   # driver options after MINUTES
#
# Not part of `cargo test`. Loopback only; everything it starts is stopped at the end and
# its temporary directory removed (kept with --keep, or when a check fails).
set -euo pipefail
cd "$(dirname "$0")/.."
MINUTES=${1:-10}
shift || true
[ -n "${NO_BUILD:-}" ] || cargo build --release --quiet --bin gatehouse --example soak
exec ./target/release/examples/soak --minutes "$MINUTES" --gatehouse ./target/release/gatehouse "$@"
