#!/usr/bin/env bash
# Instructions a node executes per delivered 1:1 message, counted by callgrind (repeatable on
# a noisy machine, unlike CPU time). One redis-server, one node under callgrind, the bench's
# chat scenario straight at the node at a fixed rate; counters are zeroed after the users are
# registered and dumped when sending ends, so set-up is left out (the token logins of the
# measured run are in, a few dozen against thousands of messages).
#
#   scripts/node-cost.sh [BIN] [CLIENTS] [MESSAGES_PER_SEC] [SECONDS]
#   (defaults: target/release/switchboard 20 200 10)
#   BENCH=path/to/switchboard scripts/node-cost.sh OLD_BIN   # A/B: the same load generator
#   TLS=1 scripts/node-cost.sh BIN    # the node terminates TLS (ECDSA P-256, made here)
#
# Prints "instructions per delivered message: N" (the node, every thread, user space).
# KEEP=DIR keeps the callgrind output there (callgrind_annotate DIR/cg.* shows where it goes).
set -euo pipefail
cd "$(dirname "$0")/.."
bin=${1:-target/release/switchboard}
clients=${2:-20}
rate=${3:-200}
secs=${4:-10}
bench=${BENCH:-$bin}
work=$(mktemp -d)
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
rport=$(free_port); nport=$(free_port); hport=$(free_port)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT
redis-server --port "$rport" --bind 127.0.0.1 --save '' --appendonly no --dir "$work" >"$work/redis.log" 2>&1 &
pids+=($!)
for _ in $(seq 100); do redis-cli -p "$rport" ping >/dev/null 2>&1 && break; sleep 0.1; done
tls_env=(); tls_args=()
if [ -n "${TLS:-}" ]; then
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 1 -subj /CN=localhost \
    -addext subjectAltName=DNS:localhost -addext basicConstraints=critical,CA:FALSE \
    -keyout "$work/tls.key" -out "$work/tls.crt" 2>/dev/null
  tls_env=(SWITCHBOARD_TLS_CERT_FILE="$work/tls.crt" SWITCHBOARD_TLS_KEY_FILE="$work/tls.key")
  tls_args=(--ca "$work/tls.crt" --server-name localhost)
fi
env SWITCHBOARD_REDIS_URL="redis://127.0.0.1:$rport" SWITCHBOARD_NODE_NAME=cost "${tls_env[@]}" \
  SWITCHBOARD_LISTEN="127.0.0.1:$nport" SWITCHBOARD_HTTP_LISTEN="127.0.0.1:$hport" \
  SWITCHBOARD_SEND_RATE_PER_SEC=1000000 SWITCHBOARD_SEND_BURST=1000000 SWITCHBOARD_LOG=warn \
  SWITCHBOARD_ARGON2_MEMORY_KIB=64 SWITCHBOARD_ARGON2_ITERATIONS=1 \
  SWITCHBOARD_REGISTER_PER_ADDRESS_PER_HOUR=1000000 SWITCHBOARD_LOGIN_FAILURES_MAX=1000000 \
  SWITCHBOARD_MAX_UNAUTHENTICATED_PER_ADDRESS=1000000 \
  valgrind --tool=callgrind --callgrind-out-file="$work/cg.%p" --dump-instr=no \
  "$bin" serve >"$work/node.log" 2>&1 &
vg=$!
pids+=("$vg")
for _ in $(seq 600); do
  curl -sf "http://127.0.0.1:$hport/readyz" >/dev/null 2>&1 && break; sleep 0.2
done
users="$work/users.jsonl"
# Register (and log in once) outside the measured window.
"$bench" bench chat --addr "127.0.0.1:$nport" -c "$clients" -d 1 --rate 20 --settle 2 --quiet \
  --users-file "$users" "${tls_args[@]}" >/dev/null
callgrind_control --zero "$vg" >/dev/null 2>&1
"$bench" bench chat --addr "127.0.0.1:$nport" -c "$clients" -d "$secs" --rate "$rate" --settle 3 \
  --quiet --json --users-file "$users" "${tls_args[@]}" >"$work/report.json"
callgrind_control --dump "$vg" >/dev/null 2>&1
sleep 1
delivered=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["delivered"])' "$work/report.json")
instr=$(for f in "$work"/cg.*; do callgrind_annotate "$f" 2>/dev/null | awk '/PROGRAM TOTALS/ {gsub(",", "", $1); print $1}'; done | sort -n | tail -1)
if [ -n "${KEEP:-}" ]; then mkdir -p "$KEEP" && cp "$work"/cg.* "$KEEP"/; fi
echo "delivered: $delivered"
echo "instructions (node, measured window): $instr"
python3 -c "import sys; print('instructions per delivered message:', round(int(sys.argv[1]) / int(sys.argv[2])))" "$instr" "$delivered"
