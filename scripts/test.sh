#!/usr/bin/env bash
# The whole test suite, from a bare Debian machine with only the Rust toolchain:
# installs what the tests use (real redis-server, nginx with the stream module and Prometheus; the chart
# tools come from PyPI into a private virtualenv), then runs every test and every chart check.
set -euo pipefail
cd "$(dirname "$0")/.."

missing=()
command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
command -v redis-cli >/dev/null 2>&1 || missing+=(redis-tools)
command -v nginx >/dev/null 2>&1 || missing+=(nginx)
[ -e /usr/lib/nginx/modules/ngx_stream_module.so ] || missing+=(libnginx-mod-stream)
# promtool (rule unit tests, scripts/check-chart.sh) and a real Prometheus (tests/prometheus.rs).
# ss: tests/storm.rs reads the chat listener's accept queue length.
command -v ss >/dev/null 2>&1 || missing+=(iproute2)
{ command -v prometheus >/dev/null 2>&1 && command -v promtool >/dev/null 2>&1; } || missing+=(prometheus)
if [ ${#missing[@]} -gt 0 ]; then
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

# Every redis-server / nginx / switchboard process that exists now; at the end the run fails
# if it left any other one running (scripts/leftovers.sh: by pid, only this run's, none killed).
# The tests get their own TMPDIR so that test Redis servers (which run in a directory under it)
# are recognisably this run's.
export SB_TEST_TMPDIR
SB_TEST_TMPDIR="$(mktemp -d -t switchboard-test.XXXXXX)"
before="$SB_TEST_TMPDIR.before"
bash scripts/leftovers.sh list > "$before"
finish() {
  status=$?
  bash scripts/leftovers.sh check "$before" || status=1
  rm -rf "$SB_TEST_TMPDIR" "$before"
  exit $status
}
trap finish EXIT

# Chart checks first: they also set up the virtualenv whose Helm renders nginx.conf for the
# loopback topology tests (tests/topology.rs).
bash scripts/check-chart.sh
# The fuzz tests (tests/fuzz_targets.rs, tests/fuzz_live.rs) run their short CI pass here,
# about 10 s in all; scripts/fuzz.sh runs the long one (docs/fuzzing.md).
TMPDIR="$SB_TEST_TMPDIR" cargo test --locked --all-targets "$@"
# Issue 15's drain scenario, small: 2,000 clients through nginx in front of 3 debug nodes, one
# drained; fails unless nothing acknowledged is lost and every client is back within 10 s
# (scripts/drain-bench.sh; docs/benchmarks.md has the full-size runs).
CHECK=1 CLIENTS=2000 DRAIN_AT=8 DRAIN_SECS=6 BIN=target/debug/switchboard OUT="$SB_TEST_TMPDIR/drain" \
  bash scripts/drain-bench.sh >/dev/null
