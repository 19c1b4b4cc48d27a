#!/usr/bin/env bash
# Server memory per idle logged-in connection, A/B: one redis-server, users registered once
# through a set-up node with cheap hashing, then each binary in turn serves N idle token
# logins (from 127.0.0.1..4) and `switchboard bench idle --pid` reports its RSS growth.
#
#   scripts/idle-memory.sh BIN [BIN...]        (N=19000 by default; N=2000 for a quick look)
#
# Prints "BIN: KiB per connection" lines (the bench's JSON reports are kept in $OUT).
set -euo pipefail
cd "$(dirname "$0")/.."
N=${N:-19000}
OUT=${OUT:-target/idle-memory}
bench=${BENCH:-target/release/switchboard}
mkdir -p "$OUT"
ulimit -n "$(ulimit -Hn)"
work=$(mktemp -d)
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT
rport=$(free_port)
redis-server --port "$rport" --bind 127.0.0.1 --save '' --appendonly no --dir "$work" >"$work/redis.log" 2>&1 &
pids+=($!)
for _ in $(seq 100); do redis-cli -p "$rport" ping >/dev/null 2>&1 && break; sleep 0.1; done
node() { # bin port http [env...]
  local b=$1 port=$2 http=$3; shift 3
  env SWITCHBOARD_REDIS_URL="redis://127.0.0.1:$rport" SWITCHBOARD_NODE_NAME="idle-$port" \
    SWITCHBOARD_LISTEN="127.0.0.1:$port" SWITCHBOARD_HTTP_LISTEN="127.0.0.1:$http" \
    SWITCHBOARD_LOG=warn SWITCHBOARD_MAX_CONNECTIONS=$((N + 5000)) \
    SWITCHBOARD_MAX_UNAUTHENTICATED_PER_ADDRESS=1000000 SWITCHBOARD_REGISTER_PER_ADDRESS_PER_HOUR=1000000 \
    SWITCHBOARD_LOGIN_FAILURES_MAX=1000000 "$@" "$b" serve >"$work/node-$port.log" 2>&1 &
  node_pid=$!
  pids+=("$node_pid")
  for _ in $(seq 100); do curl -sf "http://127.0.0.1:$http/readyz" >/dev/null 2>&1 && break; sleep 0.1; done
}
p=$(free_port); h=$(free_port)
node "$bench" "$p" "$h" SWITCHBOARD_ARGON2_MEMORY_KIB=64 SWITCHBOARD_ARGON2_ITERATIONS=1
"$bench" bench idle --addr "127.0.0.1:$p" -c "$N" -d 0 --source-ips 4 --quiet \
  --users-file "$work/users.jsonl" >/dev/null
kill "$node_pid"; wait "$node_pid" 2>/dev/null || true
i=0
for b in "$@"; do
  i=$((i + 1))
  p=$(free_port); h=$(free_port)
  node "$b" "$p" "$h"
  "$bench" bench idle --addr "127.0.0.1:$p" -c "$N" -d 8 --source-ips 4 --pid "$node_pid" --quiet --json \
    --users-file "$work/users.jsonl" >"$OUT/idle-$i.json"
  kill "$node_pid"; wait "$node_pid" 2>/dev/null || true
  python3 - "$b" "$OUT/idle-$i.json" <<'PY'
import json, sys
r = json.load(open(sys.argv[2]))
print(f"{sys.argv[1]}: {r['server_bytes_per_connection'] / 1024:.2f} KiB per connection "
      f"(RSS {r['server_rss_before_bytes'] >> 20} -> {r['server_rss_after_bytes'] >> 20} MiB)")
PY
done
