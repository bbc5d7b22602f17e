#!/usr/bin/env bash
# Runs every fuzz target in fuzz/ (cargo-fuzz, libFuzzer) for SECONDS each (default 60)
# and fails when one finds a crash. Installs what it needs: a nightly toolchain (rustup)
# and cargo-fuzz (crates.io). See docs/fuzzing.md.
#
#   scripts/fuzz.sh [SECONDS]          every target
#   FUZZ_TARGETS="jwt host" scripts/fuzz.sh 600
#
# The committed seeds in fuzz/corpus/NAME are read, never written: what a run discovers
# goes to a scratch corpus (kept with FUZZ_KEEP_CORPUS=DIR). A crash leaves its input in
# fuzz/artifacts/NAME/ and the libFuzzer log in the scratch folder; the script prints
# both and exits 1.
set -euo pipefail
cd "$(dirname "$0")/.."

seconds="${1:-60}"
if ! [[ "$seconds" =~ ^[0-9]+$ ]] || [ "$seconds" -lt 1 ]; then
  echo "usage: scripts/fuzz.sh [SECONDS]  (a whole number of seconds per target)" >&2
  exit 2
fi

# The toolchain: libFuzzer's instrumentation needs nightly.
if ! rustup run nightly rustc --version >/dev/null 2>&1; then
  rustup toolchain install nightly --profile minimal
fi
if ! cargo fuzz --version >/dev/null 2>&1; then
  cargo install cargo-fuzz --locked
fi
echo "fuzzing with $(rustup run nightly rustc --version), $(cargo fuzz --version)"

targets="${FUZZ_TARGETS:-$(cd fuzz && cargo +nightly fuzz list)}"
logs=$(mktemp -d)
corpus="${FUZZ_KEEP_CORPUS:-$logs/corpus}"
keep_logs=""
cleanup() { [ -n "$keep_logs" ] || rm -rf "$logs"; }
trap cleanup EXIT

# One build for all targets (release with debug assertions, address sanitizer).
(cd fuzz && cargo +nightly fuzz build)

failed=()
for t in $targets; do
  work="$corpus/$t"
  mkdir -p "$work"
  echo "== $t: ${seconds}s"
  # The first corpus folder receives new inputs; the committed seeds are read only.
  if (cd fuzz && cargo +nightly fuzz run "$t" "$work" "corpus/$t" -- \
        -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1) \
        </dev/null >"$logs/$t.log" 2>&1; then
    grep -E '^(stat::number_of_executed_units|stat::peak_rss_mb)|Done [0-9]+ runs' \
      "$logs/$t.log" | sed "s/^/   /" || true
  else
    failed+=("$t")
    keep_logs=1
    echo "!! $t failed; last lines of its log ($logs/$t.log):"
    tail -n 40 "$logs/$t.log" | sed "s/^/   /"
    ls -1 "fuzz/artifacts/$t" 2>/dev/null | sed "s|^|   crash input: fuzz/artifacts/$t/|" || true
  fi
done

if [ "${#failed[@]}" -gt 0 ]; then
  echo "fuzzing failed for: ${failed[*]} (logs in $logs)"
  exit 1
fi
echo "fuzzing: every target ran ${seconds}s without a crash"
