#!/usr/bin/env bash
# Instruction count per call of send.lua inside redis-server, under callgrind (repeatable on a
# noisy machine, unlike wall time). One 1:1 send per call, no client_id, inbox over
# inbox_max_len so the trim check runs as in steady state.
#
#   scripts/script-cost.sh [SEND_LUA] [CALLS]      (defaults: src/store/lua/send.lua, 3000)
#   OLD=1 scripts/script-cost.sh old-send.lua      (a send.lua of 0.1.x: 12 arguments)
#   BUCKETS=25 scripts/script-cost.sh              (the sender's quota hash already holds 24
#                                                   older buckets of the window, as for a sender
#                                                   active every hour; default 0)
#   AGED=1 scripts/script-cost.sh                 (every entry counts as older than the retention
#                                                   cut-off: the steady state of an inbox over
#                                                   inbox_max_len whose oldest entries are older
#                                                   than inbox_retention_days, trimmed as it grows)
#   CID=1 scripts/script-cost.sh                  (every send with a new client_id, as the load
#                                                   generator sends them)
#   KEEP=/tmp/cg.out scripts/script-cost.sh        (keep the callgrind output, for
#                                                   callgrind_annotate --inclusive=yes)
#
# Needs valgrind, redis-server, redis-cli and redis-benchmark (Debian: valgrind, redis-server,
# redis-tools). Prints instructions per call counted inside evalGenericCommand.
set -euo pipefail
cd "$(dirname "$0")/.."
script=${1:-src/store/lua/send.lua}
calls=${2:-3000}
work=$(mktemp -d)
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
vg=""
cleanup() {
  [ -n "$vg" ] && kill "$vg" 2>/dev/null && wait "$vg" 2>/dev/null
  [ -n "${KEEP:-}" ] && [ -e "$work/cg.out" ] && cp "$work/cg.out" "$KEEP"
  rm -rf "$work"
}
trap cleanup EXIT
cat src/store/lua/common.lua "$script" > "$work/send.lua"
valgrind --tool=callgrind --callgrind-out-file="$work/cg.out" --toggle-collect=evalGenericCommand \
  redis-server --port "$port" --bind 127.0.0.1 --save '' --appendonly no --dir "$work" \
  > "$work/valgrind.log" 2>&1 &
vg=$!
for _ in $(seq 200); do redis-cli -p "$port" ping >/dev/null 2>&1 && break; sleep 0.1; done
r() { redis-cli -p "$port" "$@"; }
r HSET 'sb:{u:1}' name a >/dev/null
r HSET 'sb:{u:2}' name b >/dev/null
sha=$(r SCRIPT LOAD "$(cat "$work/send.lua")")
json='{"id":"01X","from":{"id":1,"name":"a"},"to":{"user":2},"text":"hello there, this is a benchmark message","ts":1}'
now=$(($(date +%s) * 1000))
for ((b = 1; b < ${BUCKETS:-0}; b++)); do
  r HSET 'sb:{u:1}:quota' $((now / 3600000 - b)) 1000 >/dev/null
done
cutoff="$((now - 2592000000))-18446744073709551615"
[ -n "${AGED:-}" ] && cutoff="$((now + 86400000))-0"
cid=""
rand=()
# redis-benchmark replaces __rand_int__ by a random 12-digit number on every call (-r).
[ -n "${CID:-}" ] && cid="c-__rand_int__" && rand=(-r 100000000)
args=(EVALSHA "$sha" 0 1 u 2 "$json" node-1-1 "$cid" 01X 1 1000 "$cutoff" 86400 -)
if [ -z "${OLD:-}" ]; then
  args+=(0123456789abcdef0123456789abcdef 40 67108864000 $((now / 3600000)) $((now / 3600000 - 24)) 100000)
fi
redis-benchmark -p "$port" -n "$calls" -c 1 -q "${rand[@]}" "${args[@]}" >/dev/null
got=$(r INFO commandstats | grep -o 'cmdstat_evalsha:calls=[0-9]*' | cut -d= -f2)
kill -INT "$vg"; wait "$vg" 2>/dev/null || true; vg=""
# awk reads all of callgrind_annotate's output (a grep -m1 would end the pipe early: SIGPIPE).
total=$(callgrind_annotate "$work/cg.out" 2>/dev/null | awk '/PROGRAM TOTALS/ && !n {gsub(",", "", $1); print $1; n = 1}')
echo "$script: $got calls, $((total / got)) instructions per call"
