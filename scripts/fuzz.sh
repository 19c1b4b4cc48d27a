#!/usr/bin/env bash
# The long fuzz run: every target for SECONDS each (default 300). docs/fuzzing.md records runs.
#
#   scripts/fuzz.sh [SECONDS]
#
# frame_reader, request and session run under libFuzzer (cargo-fuzz, nightly toolchain) when both are
# installed (`rustup toolchain install nightly; cargo install cargo-fuzz`), otherwise under
# the stable seeded driver (tests/fuzz_targets.rs) for the same time. The live protocol fuzz
# (tests/fuzz_live.rs: two nodes, a real redis-server, several clients) runs last.
# New corpus entries go to tests/fuzz/corpus/ (not committed); a crash stops the run, its
# input is in tests/fuzz/artifacts/TARGET/: copy it to tests/fuzz/regressions/TARGET/ (the
# stable driver replays that directory in CI) together with the fix.
set -euo pipefail
cd "$(dirname "$0")/.."
secs="${1:-300}"
case "$secs" in '' | *[!0-9]*) echo "usage: $0 [SECONDS]" >&2; exit 2 ;; esac

export SB_TEST_TMPDIR
SB_TEST_TMPDIR="$(mktemp -d -t switchboard-fuzz.XXXXXX)"
before="$SB_TEST_TMPDIR.before"
bash scripts/leftovers.sh list > "$before"
finish() {
  status=$?
  bash scripts/leftovers.sh check "$before" || status=1
  rm -rf "$SB_TEST_TMPDIR" "$before"
  exit $status
}
trap finish EXIT

targets=(frame_reader request session)
if cargo +nightly --version >/dev/null 2>&1 && cargo fuzz --version >/dev/null 2>&1; then
  for t in "${targets[@]}"; do
    mkdir -p "tests/fuzz/corpus/$t"
    echo "== libFuzzer: $t for ${secs}s"
    # -fork/-jobs stay at 1: the machine is shared; one core per target.
    cargo +nightly fuzz run --fuzz-dir tests/fuzz "$t" "tests/fuzz/corpus/$t" "tests/fuzz/seeds/$t" \
      -- -max_total_time="$secs" -print_final_stats=1 -rss_limit_mb=2048 -timeout=10
  done
else
  echo "== no nightly toolchain or cargo-fuzz: stable driver for ${secs}s per target"
  SWITCHBOARD_FUZZ_SECS="$secs" TMPDIR="$SB_TEST_TMPDIR" \
    cargo test --test fuzz_targets -- --nocapture --test-threads 1
fi

echo "== live protocol fuzz for ${secs}s"
SWITCHBOARD_FUZZ_SECS="$secs" TMPDIR="$SB_TEST_TMPDIR" \
  cargo test --test fuzz_live -- --nocapture
