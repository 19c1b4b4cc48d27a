#!/usr/bin/env bash
# Redis CPU per delivered 1:1 message on Redis Cluster, 1 shard against 3 shards (no replicas,
# no AOF, redis_wait_replicas 0), and the same load on standalone Redis for reference: one
# node (release build), `switchboard bench chat` at a fixed rate, CPU time of every
# redis-server read from /proc by the bench (docs/scaling.md).
#
#   scripts/bench-cluster.sh                 CLIENTS=100 RATE=2000 SECONDS_=10 BASE=17400
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${BIN:-target/release/switchboard}
CLIENTS=${CLIENTS:-100}
RATE=${RATE:-2000}
SECS=${SECONDS_:-10}
BASE=${BASE:-17400}           # redis BASE..BASE+2 (bus +10000), node BASE+11, http BASE+21
OUT=${OUT:-target/bench-cluster}
[ -x "$BIN" ] || cargo build --release --locked -q
mkdir -p "$OUT"
run=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$run"; }
trap cleanup EXIT

redis() { # port, extra args...
  local port=$1; shift
  redis-server --port "$port" --bind 127.0.0.1 --save "" --appendonly no --dir "$run" "$@" >/dev/null 2>&1 &
  last=$!
  pids+=("$last")
  for _ in $(seq 100); do redis-cli -p "$port" ping >/dev/null 2>&1 && return; sleep 0.1; done
  echo "redis-server on $port did not start" >&2; exit 1
}

measure() { # label, env assignment for the node, redis pids (comma-separated)
  local label=$1 target=$2 rpids=$3
  env "$target" SWITCHBOARD_NODE_NAME="bc-$label" \
    SWITCHBOARD_LISTEN="127.0.0.1:$((BASE + 11))" SWITCHBOARD_HTTP_LISTEN="127.0.0.1:$((BASE + 21))" \
    SWITCHBOARD_SEND_RATE_PER_SEC=1000000 SWITCHBOARD_SEND_BURST=1000000 SWITCHBOARD_LOG=warn \
    SWITCHBOARD_MAX_UNAUTHENTICATED_PER_ADDRESS=1000000 SWITCHBOARD_REGISTER_PER_ADDRESS_PER_HOUR=1000000 \
    SWITCHBOARD_LOGIN_FAILURES_MAX=1000000 SWITCHBOARD_ARGON2_MEMORY_KIB=64 SWITCHBOARD_ARGON2_ITERATIONS=1 \
    "$BIN" serve >"$run/node-$label.log" 2>&1 &
  local node=$!
  pids+=("$node")
  for _ in $(seq 100); do curl -fs "127.0.0.1:$((BASE + 21))/readyz" >/dev/null 2>&1 && break; sleep 0.1; done
  "$BIN" bench chat --addr "127.0.0.1:$((BASE + 11))" -c "$CLIENTS" -d "$SECS" --rate "$RATE" \
    --users-file "$run/users-$label.jsonl" --pids "$node" --redis-pids "$rpids" --json --quiet >"$OUT/$label.json"
  kill "$node"; wait "$node" 2>/dev/null || true
  python3 - "$OUT/$label.json" "$label" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
c = r["cpu"]
shards = ", ".join(f"{p['us_per_message']:.1f}" for p in c["redis"] if "us_per_message" in p)
print(f"{sys.argv[2]:>12}: {r['delivered']} delivered, lost {r['lost']}, dup {r['duplicated']}; "
      f"redis µs CPU per message: total {c['redis_total']['us_per_message']:.1f} (per process: {shards}); "
      f"node {c['nodes_total']['us_per_message']:.1f}")
PY
}

# Standalone Redis, for reference.
redis "$BASE"
solo=$last
measure standalone "SWITCHBOARD_REDIS_URL=redis://127.0.0.1:$BASE" "$solo"
kill "$solo"; wait "$solo" 2>/dev/null || true

# One shard: one cluster master owning every slot.
redis "$BASE" --cluster-enabled yes --cluster-config-file "$run/n1-$BASE.conf"
one=$last
redis-cli -p "$BASE" CLUSTER ADDSLOTSRANGE 0 16383 >/dev/null
for _ in $(seq 100); do redis-cli -p "$BASE" CLUSTER INFO | grep -q cluster_state:ok && break; sleep 0.1; done
measure "1-shard" "SWITCHBOARD_REDIS_CLUSTER_NODES=redis://127.0.0.1:$BASE" "$one"
kill "$one"; wait "$one" 2>/dev/null || true; rm -f "$run"/n1-*.conf

# Three shards.
rp=()
for i in 0 1 2; do
  redis "$((BASE + i))" --cluster-enabled yes --cluster-config-file "$run/n3-$((BASE + i)).conf"
  rp+=("$last")
done
redis-cli --cluster create 127.0.0.1:"$BASE" 127.0.0.1:"$((BASE + 1))" 127.0.0.1:"$((BASE + 2))" \
  --cluster-replicas 0 --cluster-yes >/dev/null
for _ in $(seq 100); do redis-cli -p "$BASE" CLUSTER INFO | grep -q cluster_state:ok && break; sleep 0.1; done
measure "3-shards" "SWITCHBOARD_REDIS_CLUSTER_NODES=redis://127.0.0.1:$BASE,redis://127.0.0.1:$((BASE + 1))" \
  "$(IFS=,; echo "${rp[*]}")"
