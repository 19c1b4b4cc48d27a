#!/usr/bin/env bash
# A/B of saturated 1:1 throughput through nginx (issue 9's scenario): one redis-server; for
# each round and each binary, two fresh nodes behind nginx (stream config rendered from the
# chart, least_conn) and `switchboard bench chat` with 1000 clients, 8 sends in flight each.
# The builds take turns on the same machine; compare the ratio of delivered/s.
#
#   scripts/throughput-ab.sh OLD_BIN NEW_BIN
#   ROUNDS=2 CLIENTS=1000 WINDOW=8 SECONDS_=10 BASE=18500 scripts/throughput-ab.sh A B
#   RATE=2000 scripts/throughput-ab.sh A B     # open loop at 2000 msg/s instead (latency)
#
# Passwords are hashed cheaply (registration is not what is measured). One line per run, then
# medians; JSON reports in $OUT (default target/throughput-ab).
set -euo pipefail
cd "$(dirname "$0")/.."
[ $# -eq 2 ] || { echo "usage: $0 OLD_BIN NEW_BIN" >&2; exit 2; }
bins=("$1" "$2")
ROUNDS=${ROUNDS:-2}
CLIENTS=${CLIENTS:-1000}
WINDOW=${WINDOW:-8}
RATE=${RATE:-0}
SECS=${SECONDS_:-10}
BASE=${BASE:-18500}           # redis BASE, nginx BASE+1, nodes BASE+11.., http BASE+21..
OUT=${OUT:-target/throughput-ab}
mkdir -p "$OUT"
run=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$run"; }
trap cleanup EXIT
ulimit -n "$(ulimit -Hn)"

redis-server --port "$BASE" --bind 127.0.0.1 --save "" --appendonly no --daemonize no >"$run/redis.log" 2>&1 &
redis_pid=$!
pids+=("$redis_pid")
for _ in $(seq 100); do redis-cli -p "$BASE" ping >/dev/null 2>&1 && break; sleep 0.1; done
bash scripts/render-nginx.sh --no-proxy-protocol --static "127.0.0.1:$((BASE + 11)),127.0.0.1:$((BASE + 12))" \
  --load-module /usr/lib/nginx/modules/ngx_stream_module.so --listen "127.0.0.1:$((BASE + 1))" \
  --pid "$run/nginx.pid" --error-log "$run/nginx.err notice" --access-log off >"$run/nginx.conf"
nginx -c "$run/nginx.conf" -g 'daemon off;' &
pids+=($!)

for round in $(seq "$ROUNDS"); do
  for i in 0 1; do
    bin=${bins[$i]}
    node_pids=()
    for n in 1 2; do
      env SWITCHBOARD_REDIS_URL="redis://127.0.0.1:$BASE" SWITCHBOARD_NODE_NAME="ab$i-$n" \
        SWITCHBOARD_LISTEN="127.0.0.1:$((BASE + 10 + n))" SWITCHBOARD_HTTP_LISTEN="127.0.0.1:$((BASE + 20 + n))" \
        SWITCHBOARD_SEND_RATE_PER_SEC=1000000 SWITCHBOARD_SEND_BURST=1000000 SWITCHBOARD_LOG=warn \
        SWITCHBOARD_ARGON2_MEMORY_KIB=64 SWITCHBOARD_ARGON2_ITERATIONS=1 \
        SWITCHBOARD_MAX_UNAUTHENTICATED_PER_ADDRESS=1000000 SWITCHBOARD_REGISTER_PER_ADDRESS_PER_HOUR=1000000 \
        SWITCHBOARD_LOGIN_FAILURES_MAX=1000000 \
        "$bin" serve >"$run/node$i-$n.log" 2>&1 &
      node_pids+=($!)
      pids+=($!)
    done
    for n in 1 2; do
      for _ in $(seq 100); do curl -sf "http://127.0.0.1:$((BASE + 20 + n))/readyz" >/dev/null 2>&1 && break; sleep 0.1; done
    done
    load=(--window "$WINDOW")
    [ "$RATE" != 0 ] && load=(--rate "$RATE")
    "${bins[1]}" bench chat --addr "127.0.0.1:$((BASE + 1))" -c "$CLIENTS" -d "$SECS" "${load[@]}" \
      --pids "${node_pids[0]},${node_pids[1]}" --redis-pids "$redis_pid" \
      --users-file "$run/users-$round-$i.jsonl" --json --quiet >"$OUT/r$round-$i.json"
    kill "${node_pids[@]}"; wait "${node_pids[@]}" 2>/dev/null || true
    redis-cli -p "$BASE" FLUSHALL >/dev/null
    python3 - "$OUT/r$round-$i.json" "$round" "$bin" <<'PY'
import json, sys
r = json.load(open(sys.argv[1])); c = r["cpu"]
print(f"round {sys.argv[2]} {sys.argv[3]}: {r['delivered_per_sec']:.0f} delivered/s, "
      f"node {c['nodes_total']['us_per_message']:.1f} + redis {c['redis_total']['us_per_message']:.1f} us/msg, "
      f"p99 {r.get('latency_p99_ms')} ms, lost {r.get('lost')}, dup {r.get('duplicated')}")
PY
  done
done
python3 - "$OUT" "$ROUNDS" "${bins[@]}" <<'PY'
import json, statistics, sys
out, rounds, bins = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
med = []
for i, b in enumerate(bins):
    rs = [json.load(open(f"{out}/r{k}-{i}.json")) for k in range(1, rounds + 1)]
    m = {"rate": statistics.median(r["delivered_per_sec"] for r in rs),
         "nodes": statistics.median(r["cpu"]["nodes_total"]["us_per_message"] for r in rs),
         "redis": statistics.median(r["cpu"]["redis_total"]["us_per_message"] for r in rs)}
    med.append(m)
    print(f"median {b}: {m['rate']:.0f} delivered/s, node {m['nodes']:.1f} + redis {m['redis']:.1f} us/msg")
print(f"new/old delivered/s: {med[1]['rate'] / med[0]['rate']:.2f}")
print(f"new/old us/msg: node {med[1]['nodes'] / med[0]['nodes']:.2f}, redis {med[1]['redis'] / med[0]['redis']:.2f}")
PY
