#!/usr/bin/env bash
# Resident memory of one node around bursts of large, rare allocations (docs/benchmarks.md,
# "Memory around bursts"), with DEFAULT argon2 parameters, on both backends. Each scenario gets
# a fresh node (release build); `switchboard bench ... --pid` reads its VmRSS before and after.
#
#   bash scripts/bench-memory.sh                         # every scenario, both backends
#   BACKENDS=embedded SCENARIOS=signup bash scripts/bench-memory.sh
#   BIN=/path/to/other/switchboard bash scripts/bench-memory.sh   # compare another build
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-target/bench-memory}
BASE=${BASE:-17300}            # ports: redis BASE, node BASE+1, http BASE+2
BACKENDS=${BACKENDS:-"embedded redis"}
SCENARIOS=${SCENARIOS:-"signup backlog groupview"}
mkdir -p "$OUT"
run=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$run"; }
trap cleanup EXIT

if [ -z "${BIN:-}" ]; then
  cargo build --release --locked -q
  BIN=target/release/switchboard
fi
ulimit -n "$(ulimit -Hn)"

for backend in $BACKENDS; do
  for scenario in $SCENARIOS; do
    url=""
    if [ "$backend" = redis ]; then
      redis-server --port "$BASE" --bind 127.0.0.1 --save "" --appendonly no >"$run/redis.log" 2>&1 &
      redis_pid=$!; pids+=("$redis_pid")
      sleep 0.5
      url="redis://127.0.0.1:$BASE"
    fi
    # Default argon2 parameters and slots; only the per-session send limit is raised so the
    # backlog can be filled quickly.
    env SWITCHBOARD_REDIS_URL="$url" SWITCHBOARD_NODE_NAME=mem \
      SWITCHBOARD_LISTEN="127.0.0.1:$((BASE+1))" SWITCHBOARD_HTTP_LISTEN="127.0.0.1:$((BASE+2))" \
      SWITCHBOARD_SEND_RATE_PER_SEC=1000000 SWITCHBOARD_SEND_BURST=1000000 SWITCHBOARD_LOG=warn \
      SWITCHBOARD_REGISTER_PER_ADDRESS_PER_HOUR=1000000 SWITCHBOARD_LOGIN_FAILURES_MAX=1000000 \
      SWITCHBOARD_MAX_UNAUTHENTICATED_PER_ADDRESS=1000000 \
      "$BIN" serve >"$run/node.log" 2>&1 &
    node_pid=$!; pids+=("$node_pid")
    sleep 1
    addr=127.0.0.1:$((BASE+1))
    case $scenario in
      signup) args=(signup -c 64 --count 2000) ;;
      backlog) args=(backlog -c 8 --count 10000) ;;
      groupview) args=(groupview -c 64 --count 1000 -d 10) ;;
      *) echo "unknown scenario $scenario" >&2; exit 2 ;;
    esac
    echo "== $backend $scenario: switchboard bench ${args[*]}"
    "$BIN" bench "${args[@]}" --addr "$addr" --pid "$node_pid" --json --quiet \
      --users-file "$run/users-$backend-$scenario.jsonl" | tee "$OUT/$backend-$scenario.json"
    kill "$node_pid"; wait "$node_pid" 2>/dev/null || true
    if [ "$backend" = redis ]; then kill "$redis_pid"; wait "$redis_pid" 2>/dev/null || true; fi
  done
done
echo "results in $OUT"
