#!/usr/bin/env bash
# The cluster topology on loopback, for trying things by hand: redis-server (AOF on), N nodes,
# and nginx running the stream configuration the Helm chart renders (static loopback upstreams,
# since Debian's nginx 1.22 has no `resolve`). tests/topology.rs drives the same set-up.
#
#   scripts/cluster.sh up [N]        start Redis, N nodes (default 2) and nginx on :16000
#   scripts/cluster.sh scale N       add or drain nodes until N run; nginx follows
#   scripts/cluster.sh restart I     drain node I (SIGTERM) and start it again
#   scripts/cluster.sh kill I        SIGKILL node I (start it again with `restart I`)
#   scripts/cluster.sh redis-restart stop Redis hard and start it again on its AOF
#   scripts/cluster.sh status        what runs where
#   scripts/cluster.sh down          stop everything
#
# As in the chart, nginx sends PROXY headers and the nodes believe them from 127.0.0.0/8 only,
# so connect through nginx; the nodes refuse direct connections.
# Then: switchboard chat 127.0.0.1:16000, or switchboard bench chat --addr 127.0.0.1:16000.
set -euo pipefail
cd "$(dirname "$0")/.."
DIR=${SWITCHBOARD_CLUSTER_DIR:-/tmp/switchboard-cluster}
LB_PORT=${LB_PORT:-16000}
REDIS_PORT=${REDIS_PORT:-16379}
BIN=${BIN:-target/release/switchboard}
mkdir -p "$DIR"

node_port() { echo $((16100 + $1)); }
http_port() { echo $((18100 + $1)); }
running() { [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

start_redis() {
  redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --appendonly yes --appendfsync everysec \
    --dir "$DIR" --daemonize yes --pidfile "$DIR/redis.pid" --logfile "$DIR/redis.log"
  for _ in $(seq 50); do redis-cli -p "$REDIS_PORT" ping >/dev/null 2>&1 && return; sleep 0.1; done
  echo "redis did not start" >&2; exit 1
}

start_node() {
  local i=$1
  SWITCHBOARD_REDIS_URL="redis://127.0.0.1:$REDIS_PORT" SWITCHBOARD_NODE_NAME="node$i" \
    SWITCHBOARD_LISTEN="127.0.0.1:$(node_port "$i")" SWITCHBOARD_HTTP_LISTEN="127.0.0.1:$(http_port "$i")" \
    SWITCHBOARD_DRAIN_TIMEOUT_SECS="${DRAIN:-5}" \
    SWITCHBOARD_PROXY_PROTOCOL=true SWITCHBOARD_PROXY_TRUSTED_CIDRS=127.0.0.0/8 nohup "$BIN" serve >"$DIR/node$i.log" 2>&1 &
  echo $! >"$DIR/node$i.pid"
  for _ in $(seq 100); do
    curl -fs "127.0.0.1:$(http_port "$i")/readyz" >/dev/null 2>&1 && return
    sleep 0.1
  done
  echo "node $i not ready (see $DIR/node$i.log)" >&2
}

stop_node() { # SIGTERM, wait for the drain
  local pid; pid=$(cat "$DIR/node$1.pid")
  kill -TERM "$pid" 2>/dev/null || true
  while kill -0 "$pid" 2>/dev/null; do sleep 0.2; done
  rm -f "$DIR/node$1.pid"
}

nodes() { for f in "$DIR"/node*.pid; do [ -e "$f" ] && running "$f" && basename "$f" .pid | tr -d node; done | sort -n; }

render_nginx() {
  local servers=""
  for i in $(nodes); do servers+="${servers:+,}127.0.0.1:$(node_port "$i")"; done
  bash scripts/render-nginx.sh --static "$servers" --load-module /usr/lib/nginx/modules/ngx_stream_module.so \
    --listen "127.0.0.1:$LB_PORT" --pid "$DIR/nginx.pid" --error-log "$DIR/nginx.log notice" \
    --access-log off >"$DIR/nginx.conf"
  nginx -t -q -c "$DIR/nginx.conf"
  if running "$DIR/nginx.pid"; then nginx -c "$DIR/nginx.conf" -s reload; else nginx -c "$DIR/nginx.conf"; fi
}

case "${1:-}" in
  up)
    [ -x "$BIN" ] || cargo build --release --locked -q
    [ -x "${SWITCHBOARD_CHART_VENV:-$HOME/.cache/switchboard/chart-venv}/bin/python" ] || bash scripts/check-chart.sh >/dev/null
    running "$DIR/redis.pid" || start_redis
    for i in $(seq 0 $((${2:-2} - 1))); do running "$DIR/node$i.pid" || start_node "$i"; done
    render_nginx
    echo "chat through nginx: 127.0.0.1:$LB_PORT"
    ;;
  scale)
    want=$2; have=$(nodes | wc -l)
    for i in $(seq "$have" $((want - 1))); do start_node "$i"; done
    if [ "$have" -gt "$want" ]; then
      gone=$(nodes | tail -n $((have - want)))
      for i in $gone; do rm -f "$DIR/node$i.pid.keep"; mv "$DIR/node$i.pid" "$DIR/node$i.pid.keep"; done
      render_nginx # out of nginx first, then drain
      for i in $gone; do mv "$DIR/node$i.pid.keep" "$DIR/node$i.pid"; stop_node "$i"; done
    else
      render_nginx
    fi
    ;;
  restart) running "$DIR/node$2.pid" && stop_node "$2"; start_node "$2" ;;
  kill) kill -KILL "$(cat "$DIR/node$2.pid")"; rm -f "$DIR/node$2.pid" ;;
  redis-restart) kill -KILL "$(cat "$DIR/redis.pid")"; sleep 0.5; start_redis ;;
  status)
    running "$DIR/redis.pid" && echo "redis  127.0.0.1:$REDIS_PORT pid $(cat "$DIR/redis.pid")"
    for i in $(nodes); do echo "node$i  127.0.0.1:$(node_port "$i") metrics 127.0.0.1:$(http_port "$i") pid $(cat "$DIR/node$i.pid")"; done
    running "$DIR/nginx.pid" && echo "nginx  127.0.0.1:$LB_PORT pid $(cat "$DIR/nginx.pid")"
    ;;
  down)
    running "$DIR/nginx.pid" && nginx -c "$DIR/nginx.conf" -s quit
    for i in $(nodes); do stop_node "$i"; done
    running "$DIR/redis.pid" && kill "$(cat "$DIR/redis.pid")"
    ;;
  *) sed -n '2,15p' "$0"; exit 2 ;;
esac
