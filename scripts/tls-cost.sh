#!/usr/bin/env bash
# What TLS on the node costs, in one run on loopback: one redis-server; per round and per mode
# (plain, then tls) a fresh node of the same binary, `switchboard bench logins` (token logins/s:
# each is a new connection, so with TLS a handshake) and `switchboard bench chat` at a fixed
# rate with the node's CPU time per delivered message. The certificate is ECDSA P-256 (as the
# chart's cert-manager Certificate), made here with openssl. Prints medians and tls/plain.
#
#   scripts/tls-cost.sh [BIN]            (default target/release/switchboard)
#   ROUNDS=2 CLIENTS=200 RATE=2000 SECONDS_=8 LOGIN_CONC=8 scripts/tls-cost.sh BIN
#
# The bench keeps one TLS client configuration for all its connections, as a real client
# does, so its reconnections resume TLS sessions (no certificate signature and check).
set -euo pipefail
cd "$(dirname "$0")/.."
bin=${1:-target/release/switchboard}
ROUNDS=${ROUNDS:-2}
CLIENTS=${CLIENTS:-200}
RATE=${RATE:-2000}
SECS=${SECONDS_:-8}
LOGIN_CONC=${LOGIN_CONC:-8}
run=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
  rm -rf "$run"
}
trap cleanup EXIT
ulimit -n "$(ulimit -Hn)"
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 1 -subj /CN=localhost \
  -addext subjectAltName=DNS:localhost -addext basicConstraints=critical,CA:FALSE \
  -keyout "$run/tls.key" -out "$run/tls.crt" 2>/dev/null
rport=$(free_port)
redis-server --port "$rport" --bind 127.0.0.1 --save '' --appendonly no --dir "$run" >"$run/redis.log" 2>&1 &
pids+=($!)
for _ in $(seq 100); do redis-cli -p "$rport" ping >/dev/null 2>&1 && break; sleep 0.1; done

for round in $(seq "$ROUNDS"); do
  for mode in plain tls; do
    nport=$(free_port); hport=$(free_port)
    tls_env=(); tls_args=()
    if [ "$mode" = tls ]; then
      tls_env=(SWITCHBOARD_TLS_CERT_FILE="$run/tls.crt" SWITCHBOARD_TLS_KEY_FILE="$run/tls.key")
      tls_args=(--ca "$run/tls.crt" --server-name localhost)
    fi
    env SWITCHBOARD_REDIS_URL="redis://127.0.0.1:$rport" SWITCHBOARD_NODE_NAME="tls-cost-$mode" \
      SWITCHBOARD_LISTEN="127.0.0.1:$nport" SWITCHBOARD_HTTP_LISTEN="127.0.0.1:$hport" \
      SWITCHBOARD_SEND_RATE_PER_SEC=1000000 SWITCHBOARD_SEND_BURST=1000000 SWITCHBOARD_LOG=warn \
      SWITCHBOARD_ARGON2_MEMORY_KIB=64 SWITCHBOARD_ARGON2_ITERATIONS=1 \
      SWITCHBOARD_MAX_UNAUTHENTICATED_PER_ADDRESS=1000000 SWITCHBOARD_REGISTER_PER_ADDRESS_PER_HOUR=1000000 \
      SWITCHBOARD_LOGIN_FAILURES_MAX=1000000 "${tls_env[@]}" \
      "$bin" serve >"$run/node-$mode.log" 2>&1 &
    node=$!
    pids+=("$node")
    for _ in $(seq 100); do curl -sf "http://127.0.0.1:$hport/readyz" >/dev/null 2>&1 && break; sleep 0.1; done
    common=(--json --quiet --addr "127.0.0.1:$nport" --users-file "$run/users.jsonl" "${tls_args[@]}")
    "$bin" bench logins "${common[@]}" -c "$LOGIN_CONC" -d 6 >"$run/logins-$mode-$round.json"
    "$bin" bench chat "${common[@]}" -c "$CLIENTS" --rate "$RATE" -d "$SECS" --settle 2 \
      --pids "$node" >"$run/chat-$mode-$round.json"
    kill "$node"; wait "$node" 2>/dev/null || true
    python3 - "$run" "$mode" "$round" <<'EOF'
import json, sys
run, mode, rnd = sys.argv[1:]
l = json.load(open(f"{run}/logins-{mode}-{rnd}.json"))
c = json.load(open(f"{run}/chat-{mode}-{rnd}.json"))
print(f"round {rnd} {mode:5}: token logins/s {l['token_logins_per_sec']:8.0f}  password logins/s "
      f"{l['password_logins_per_sec']:7.0f}  node CPU µs/msg {c['cpu']['nodes_total']['us_per_message']:6.1f}  "
      f"delivered/s {c['delivered_per_sec']:6.0f}  p99 {c['latency_p99_ms']:.2f} ms  lost {c['lost']}")
EOF
  done
done

python3 - "$run" "$ROUNDS" <<'EOF'
import json, statistics, sys
run, rounds = sys.argv[1], int(sys.argv[2])
def med(mode, f):
    return statistics.median(f(mode, r) for r in range(1, rounds + 1))
tok = lambda m, r: json.load(open(f"{run}/logins-{m}-{r}.json"))["token_logins_per_sec"]
pw = lambda m, r: json.load(open(f"{run}/logins-{m}-{r}.json"))["password_logins_per_sec"]
cpu = lambda m, r: json.load(open(f"{run}/chat-{m}-{r}.json"))["cpu"]["nodes_total"]["us_per_message"]
p99 = lambda m, r: json.load(open(f"{run}/chat-{m}-{r}.json"))["latency_p99_ms"]
print(f"medians of {rounds} rounds:        plain      tls   tls/plain")
for name, f in (("token logins/s", tok), ("password logins/s", pw), ("node CPU µs/message", cpu), ("latency p99 ms", p99)):
    a, b = med("plain", f), med("tls", f)
    print(f"  {name:22} {a:9.1f} {b:9.1f}   {b / a:5.2f}x")
EOF
