#!/usr/bin/env bash
# The whole test suite, from a bare Debian machine with only the Rust toolchain:
# installs what the tests use (real redis-server and nginx with the stream module; the chart
# tools come from PyPI into a private virtualenv), then runs every test and every chart check.
set -euo pipefail
cd "$(dirname "$0")/.."

missing=()
command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
command -v redis-cli >/dev/null 2>&1 || missing+=(redis-tools)
command -v nginx >/dev/null 2>&1 || missing+=(nginx)
[ -e /usr/lib/nginx/modules/ngx_stream_module.so ] || missing+=(libnginx-mod-stream)
if [ ${#missing[@]} -gt 0 ]; then
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

# Chart checks first: they also set up the virtualenv whose Helm renders nginx.conf for the
# loopback topology tests (tests/topology.rs).
bash scripts/check-chart.sh
cargo test --locked --all-targets "$@"
