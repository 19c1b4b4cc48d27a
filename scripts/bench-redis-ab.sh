#!/usr/bin/env bash
# A/B of server CPU per delivered 1:1 message (docs/benchmarks.md, "Redis cost per message"):
# one redis-server, then for each round and each binary a fresh node on it and
# `switchboard bench chat` straight at the node (no nginx), with --pids / --redis-pids. The
# builds take turns on the same Redis, so a noisy machine affects both alike; compare ratios.
#
#   scripts/bench-redis-ab.sh OLD_BIN NEW_BIN
#   ROUNDS=3 CLIENTS=200 SECONDS_=10 RATE=0 BASE=18300 scripts/bench-redis-ab.sh A B
#
# RATE=0 is closed loop (--window 8); RATE=N an open loop of N messages/s. Prints one line per
# run and the medians per binary; JSON reports in $OUT (default target/bench-ab).
set -euo pipefail
cd "$(dirname "$0")/.."
[ $# -eq 2 ] || { echo "usage: $0 OLD_BIN NEW_BIN" >&2; exit 2; }
bins=("$1" "$2")
ROUNDS=${ROUNDS:-3}
CLIENTS=${CLIENTS:-200}
SECS=${SECONDS_:-10}
RATE=${RATE:-0}
BASE=${BASE:-18300}           # redis BASE, node BASE+11, http BASE+21
OUT=${OUT:-target/bench-ab}
mkdir -p "$OUT"
run=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$run"; }
trap cleanup EXIT

redis-server --port "$BASE" --bind 127.0.0.1 --save "" --appendonly no --daemonize no >"$run/redis.log" 2>&1 &
redis_pid=$!
pids+=("$redis_pid")
for _ in $(seq 100); do redis-cli -p "$BASE" ping >/dev/null 2>&1 && break; sleep 0.1; done

load=(--window 8)
[ "$RATE" != 0 ] && load=(--rate "$RATE")
for round in $(seq "$ROUNDS"); do
  for i in 0 1; do
    bin=${bins[$i]}
    env SWITCHBOARD_REDIS_URL="redis://127.0.0.1:$BASE" SWITCHBOARD_NODE_NAME="ab$i" \
      SWITCHBOARD_LISTEN="127.0.0.1:$((BASE + 11))" SWITCHBOARD_HTTP_LISTEN="127.0.0.1:$((BASE + 21))" \
      SWITCHBOARD_SEND_RATE_PER_SEC=1000000 SWITCHBOARD_SEND_BURST=1000000 SWITCHBOARD_LOG=warn \
      SWITCHBOARD_MAX_UNAUTHENTICATED_PER_ADDRESS=1000000 SWITCHBOARD_REGISTER_PER_ADDRESS_PER_HOUR=1000000 \
      SWITCHBOARD_LOGIN_FAILURES_MAX=1000000 \
      "$bin" serve >"$run/node$i.log" 2>&1 &
    node_pid=$!
    pids+=("$node_pid")
    for _ in $(seq 100); do (exec 3<>"/dev/tcp/127.0.0.1/$((BASE + 11))") 2>/dev/null && break; sleep 0.1; done
    redis-cli -p "$BASE" CONFIG RESETSTAT >/dev/null
    # The bench (a new binary's load generator for both, so the load is the same).
    "${bins[1]}" bench chat --addr "127.0.0.1:$((BASE + 11))" -c "$CLIENTS" -d "$SECS" "${load[@]}" \
      --pids "$node_pid" --redis-pids "$redis_pid" --users-file "$run/users-$round-$i.jsonl" --json --quiet \
      >"$OUT/r$round-$i.json"
    # Time inside Redis per command (registration and logins included, but they are few).
    redis-cli -p "$BASE" INFO commandstats | tr -d '\r' >"$OUT/r$round-$i.commandstats"
    kill "$node_pid"; wait "$node_pid" 2>/dev/null || true
    redis-cli -p "$BASE" FLUSHALL >/dev/null
    python3 - "$OUT/r$round-$i.json" "$round" "$bin" <<'PY'
import json, re, sys
r = json.load(open(sys.argv[1])); c = r["cpu"]
stats = open(sys.argv[1].replace(".json", ".commandstats")).read()
ev = re.search(r"cmdstat_evalsha:calls=(\d+),usec=(\d+),usec_per_call=([\d.]+)", stats)
r["evalsha"] = {"calls": int(ev[1]), "usec": int(ev[2]), "usec_per_call": float(ev[3])}
json.dump(r, open(sys.argv[1], "w"), indent=2)
print(f"round {sys.argv[2]} {sys.argv[3]}: delivered {c['messages']} in {c['window_seconds']:.2f} s, "
      f"node {c['nodes_total']['us_per_message']:.1f} us/msg, redis {c['redis_total']['us_per_message']:.1f} us/msg, "
      f"total {c['total']['us_per_message']:.1f} us/msg, EVALSHA {r['evalsha']['usec_per_call']:.2f} us/call, lost {r.get('lost')}, dup {r.get('duplicated')}")
PY
  done
done
python3 - "$OUT" "$ROUNDS" "${bins[@]}" <<'PY'
import json, statistics, sys
out, rounds, bins = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
med = {}
for i, b in enumerate(bins):
    rs = [json.load(open(f"{out}/r{k}-{i}.json"))["cpu"] for k in range(1, rounds + 1)]
    med[i] = {k: statistics.median(r[f"{k}_total"]["us_per_message"] for r in rs) for k in ("nodes", "redis")}
    med[i]["total"] = statistics.median(r["total"]["us_per_message"] for r in rs)
    med[i]["evalsha"] = statistics.median(json.load(open(f"{out}/r{k}-{i}.json"))["evalsha"]["usec_per_call"] for k in range(1, rounds + 1))
    print(f"median {b}: node {med[i]['nodes']:.1f}, redis {med[i]['redis']:.1f}, total {med[i]['total']:.1f} us/msg, EVALSHA {med[i]['evalsha']:.2f} us/call")
for k in ("nodes", "redis", "total", "evalsha"):
    print(f"new/old {k}: {med[1][k] / med[0][k]:.2f}")
PY
