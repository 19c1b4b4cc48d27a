#!/usr/bin/env bash
# The benchmark set-up of docs/benchmarks.md, all on loopback: one redis-server, two nodes,
# nginx (stream, config rendered from the Helm chart) in front; then every scenario of
# `switchboard bench`, each with the CPU seconds every process used. Results: $OUT/*.json.
#
#   bash scripts/bench.sh            # everything (about 5 minutes)
#   SCENARIOS="chat2k chat50k" bash scripts/bench.sh
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-target/bench}
BASE=${BASE:-17000}            # ports: redis BASE, nginx BASE+1, nodes BASE+11.., http BASE+21..
SCENARIOS=${SCENARIOS:-"redis chat2k chat50k chatmax samenode crossnode logins group idle"}
mkdir -p "$OUT"
run=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$run"; }
trap cleanup EXIT

command -v redis-server >/dev/null && command -v nginx >/dev/null && [ -e /usr/lib/nginx/modules/ngx_stream_module.so ] || {
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server redis-tools nginx libnginx-mod-stream; }
cargo build --release --locked -q
[ -x "${SWITCHBOARD_CHART_VENV:-$HOME/.cache/switchboard/chart-venv}/bin/python" ] || bash scripts/check-chart.sh >/dev/null
bin=target/release/switchboard
ulimit -n "$(ulimit -Hn)"

redis-server --port "$BASE" --bind 127.0.0.1 --save "" --appendonly no --daemonize no >"$run/redis.log" 2>&1 &
pids+=($!); redis_pid=$!
sleep 0.5
# Every client comes from 127.0.0.1: the per-address sign-up and login limits are lifted.
node() { # name port http [extra env...]
  local name=$1 port=$2 http=$3; shift 3
  env SWITCHBOARD_REDIS_URL="redis://127.0.0.1:$BASE" SWITCHBOARD_NODE_NAME="$name" \
    SWITCHBOARD_LISTEN="127.0.0.1:$port" SWITCHBOARD_HTTP_LISTEN="127.0.0.1:$http" \
    SWITCHBOARD_SEND_RATE_PER_SEC=1000000 SWITCHBOARD_SEND_BURST=1000000 SWITCHBOARD_LOG=warn \
    SWITCHBOARD_MAX_UNAUTHENTICATED_PER_ADDRESS=1000000 SWITCHBOARD_REGISTER_PER_ADDRESS_PER_HOUR=1000000 SWITCHBOARD_LOGIN_FAILURES_MAX=1000000 \
    "$@" "$bin" serve >"$run/$name.log" 2>&1 &
  pids+=($!)
  node_pid=$!
}
node n1 $((BASE+11)) $((BASE+21)); n1=$node_pid
node n2 $((BASE+12)) $((BASE+22)); n2=$node_pid
# Plain TCP to the nodes (some scenarios also connect to them directly), as measured so far.
bash scripts/render-nginx.sh --no-proxy-protocol --static "127.0.0.1:$((BASE+11)),127.0.0.1:$((BASE+12))" \
  --load-module /usr/lib/nginx/modules/ngx_stream_module.so --listen "127.0.0.1:$((BASE+1))" \
  --pid "$run/nginx.pid" --error-log "$run/nginx.err notice" --access-log off >"$run/nginx.conf"
nginx -c "$run/nginx.conf" -g 'daemon off;' &
pids+=($!); nginx_pid=$!
sleep 1
lb=127.0.0.1:$((BASE+1))
both=127.0.0.1:$((BASE+11)),127.0.0.1:$((BASE+12))
# The bench itself reads the nodes' and Redis's CPU over its measured window (the report's
# "cpu" object: CPU seconds, cores and µs per delivered message, per process and summed).
cpuargs=(--pids "$n1,$n2" --redis-pids "$redis_pid")

cpu() { # total utime+stime seconds of a pid and its children (nginx workers)
  local t=0 p
  for p in "$1" $(pgrep -P "$1" || true); do
    t=$(awk -v t="$t" '{print t + ($14 + $15) / 100}' "/proc/$p/stat" 2>/dev/null || echo "$t")
  done
  echo "$t"
}
measure() { # name, then the bench command; writes $OUT/name.json with a cpu split
  local name=$1; shift
  local r0 a0 b0 g0 s0 r1 a1 b1 g1
  r0=$(cpu "$redis_pid"); a0=$(cpu "$n1"); b0=$(cpu "$n2"); g0=$(cpu "$nginx_pid"); s0=$(date +%s.%N)
  "$@" --json --quiet --users-file "$run/users-$name.jsonl" >"$run/out.json" &
  local bp=$! bc=0
  while kill -0 "$bp" 2>/dev/null; do bc=$(cpu "$bp"); sleep 0.2; done
  wait "$bp"
  r1=$(cpu "$redis_pid"); a1=$(cpu "$n1"); b1=$(cpu "$n2"); g1=$(cpu "$nginx_pid")
  python3 - "$run/out.json" "$OUT/$name.json" "$name" "$r0" "$r1" "$a0" "$a1" "$b0" "$b1" "$g0" "$g1" "$bc" "$s0" <<'PY'
import json, sys, time
src, dst, name, r0, r1, a0, a1, b0, b1, g0, g1, bc, s0 = sys.argv[1:]
report = json.load(open(src))
wall = time.time() - float(s0)
report["cpu_seconds"] = {"redis": round(float(r1) - float(r0), 2), "node1": round(float(a1) - float(a0), 2),
                         "node2": round(float(b1) - float(b0), 2), "nginx": round(float(g1) - float(g0), 2),
                         "bench (approx.)": round(float(bc), 2), "wall": round(wall, 2)}
json.dump(report, open(dst, "w"), indent=2)
print(f"== {name}"); print(json.dumps(report, indent=2))
PY
}
want() { [[ " $SCENARIOS " == *" $1 "* ]]; }

if want redis; then
  for p in 1 16; do
    redis-benchmark -h 127.0.0.1 -p "$BASE" -n 1000000 -c 50 -P "$p" -q PUBLISH bench-ch msg 2>/dev/null \
      | tr '\r' '\n' | grep -v '^ *$' | tail -1 | tee "$OUT/redis-publish-P$p.txt"
  done
fi
want chat2k && measure chat2k $bin bench chat --addr "$lb" -c 1000 -d 10 --rate 2000 "${cpuargs[@]}"
want chat50k && measure chat50k $bin bench chat --addr "$lb" -c 1000 -d 10 --rate 50000 --settle 20 "${cpuargs[@]}"
want chatmax && measure chatmax $bin bench chat --addr "$lb" -c 1000 -d 10 --window 8 --settle 20 "${cpuargs[@]}"
want samenode && measure samenode $bin bench chat --addr "127.0.0.1:$((BASE+11))" -c 200 -d 10 --window 8 "${cpuargs[@]}"
want crossnode && measure crossnode $bin bench chat --addr "$both" -c 200 -d 10 --window 8 "${cpuargs[@]}"
want group && measure group $bin bench group --addr "$lb" -c 1000 --senders 1 -d 10 --window 16 --settle 20 "${cpuargs[@]}"
want logins && measure logins $bin bench logins --addr "$lb" -c 64 -d 10
if want idle; then
  # Users are registered first through a set-up node with cheap password hashing (19,000
  # argon2id hashes would take minutes and are not the subject), so the measured node starts
  # fresh and its memory holds only the idle connections.
  node n0 $((BASE+10)) $((BASE+20)) SWITCHBOARD_ARGON2_MEMORY_KIB=64 SWITCHBOARD_ARGON2_ITERATIONS=1 SWITCHBOARD_MAX_CONNECTIONS=25000
  n0=$node_pid
  sleep 1
  "$bin" bench idle --addr "127.0.0.1:$((BASE+10))" -c 19000 -d 0 --source-ips 4 --quiet \
    --users-file "$run/users-idle.jsonl" >/dev/null
  kill "$n0"
  node n3 $((BASE+13)) $((BASE+23)) SWITCHBOARD_MAX_CONNECTIONS=25000
  n3=$node_pid
  sleep 1
  measure idle $bin bench idle --addr "127.0.0.1:$((BASE+13))" -c 19000 -d 8 --source-ips 4 --pid "$n3"
fi
echo "results in $OUT"
