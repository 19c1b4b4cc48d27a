#!/usr/bin/env bash
# Instructions redis-server executes per delivered 1:1 message, end to end, for two builds:
# for each round and each binary, a fresh redis-server under callgrind (everything counted:
# event loop, request parsing, scripts, pub/sub, acks, the bench's logins), one node of that
# binary on it, and `switchboard bench chat` at a low fixed rate that valgrind keeps up with.
# Repeatable on a noisy machine, unlike CPU time; kernel time (syscalls) is not counted.
#
#   scripts/redis-cost-ab.sh OLD_BIN NEW_BIN
#   ROUNDS=2 CLIENTS=20 RATE=200 SECONDS_=20 BASE=18400 scripts/redis-cost-ab.sh A B
set -euo pipefail
cd "$(dirname "$0")/.."
[ $# -eq 2 ] || { echo "usage: $0 OLD_BIN NEW_BIN" >&2; exit 2; }
bins=("$1" "$2")
ROUNDS=${ROUNDS:-2}
CLIENTS=${CLIENTS:-20}
RATE=${RATE:-200}
SECS=${SECONDS_:-20}
BASE=${BASE:-18400}           # redis BASE, node BASE+11, http BASE+21
OUT=${OUT:-target/redis-cost-ab}
mkdir -p "$OUT"
run=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$run"; }
trap cleanup EXIT

for round in $(seq "$ROUNDS"); do
  for i in 0 1; do
    bin=${bins[$i]}
    valgrind --tool=callgrind --callgrind-out-file="$OUT/cg-$round-$i.out" \
      redis-server --port "$BASE" --bind 127.0.0.1 --save "" --appendonly no --dir "$run" \
      >"$run/valgrind.log" 2>&1 &
    vg=$!
    pids+=("$vg")
    for _ in $(seq 300); do redis-cli -p "$BASE" ping >/dev/null 2>&1 && break; sleep 0.1; done
    env SWITCHBOARD_REDIS_URL="redis://127.0.0.1:$BASE" SWITCHBOARD_NODE_NAME="cg$i" \
      SWITCHBOARD_LISTEN="127.0.0.1:$((BASE + 11))" SWITCHBOARD_HTTP_LISTEN="127.0.0.1:$((BASE + 21))" \
      SWITCHBOARD_SEND_RATE_PER_SEC=1000000 SWITCHBOARD_SEND_BURST=1000000 SWITCHBOARD_LOG=warn \
      SWITCHBOARD_MAX_UNAUTHENTICATED_PER_ADDRESS=1000000 SWITCHBOARD_REGISTER_PER_ADDRESS_PER_HOUR=1000000 \
      SWITCHBOARD_LOGIN_FAILURES_MAX=1000000 SWITCHBOARD_REDIS_TIMEOUT_MS=10000 \
      SWITCHBOARD_ARGON2_MEMORY_KIB=64 SWITCHBOARD_ARGON2_ITERATIONS=1 \
      "$bin" serve >"$run/node$i.log" 2>&1 &
    node=$!
    pids+=("$node")
    for _ in $(seq 300); do (exec 3<>"/dev/tcp/127.0.0.1/$((BASE + 11))") 2>/dev/null && break; sleep 0.1; done
    "${bins[1]}" bench chat --addr "127.0.0.1:$((BASE + 11))" -c "$CLIENTS" -d "$SECS" --rate "$RATE" \
      --users-file "$run/users-$round-$i.jsonl" --json --quiet >"$OUT/r$round-$i.json"
    kill "$node"; wait "$node" 2>/dev/null || true
    redis-cli -p "$BASE" INFO commandstats | tr -d '\r' >"$OUT/r$round-$i.commandstats"
    kill -INT "$vg"; wait "$vg" 2>/dev/null || true
    total=$(callgrind_annotate "$OUT/cg-$round-$i.out" 2>/dev/null | awk '/PROGRAM TOTALS/ && !n {gsub(",", "", $1); print $1; n = 1}')
    python3 - "$OUT/r$round-$i.json" "$round" "$bin" "$total" <<'PY'
import json, sys
path, rnd, bin, total = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
r = json.load(open(path))
r["redis_instructions"] = total
r["redis_instructions_per_delivered"] = total / r["delivered"]
json.dump(r, open(path, "w"), indent=2)
print(f"round {rnd} {bin}: {r['delivered']} delivered, lost {r['lost']}, dup {r['duplicated']}, "
      f"redis-server {total:,} instructions = {total / r['delivered']:,.0f} per delivered message")
PY
  done
done
python3 - "$OUT" "$ROUNDS" "${bins[@]}" <<'PY'
import json, statistics, sys
out, rounds, bins = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
med = [statistics.median(json.load(open(f"{out}/r{k}-{i}.json"))["redis_instructions_per_delivered"]
                         for k in range(1, rounds + 1)) for i in range(2)]
for b, m in zip(bins, med):
    print(f"median {b}: {m:,.0f} redis-server instructions per delivered message")
print(f"new/old: {med[1] / med[0]:.3f}")
PY
