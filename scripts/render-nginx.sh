#!/usr/bin/env bash
# Prints only the load balancer's nginx.conf, rendered from the Helm chart.
#
# For loopback tests on Debian's nginx 1.22 (no `resolve` in upstreams, stream module
# loaded dynamically):
#   scripts/render-nginx.sh --static 127.0.0.1:6001,127.0.0.1:6002 \
#     --load-module /usr/lib/nginx/modules/ngx_stream_module.so \
#     --listen 127.0.0.1:16000 --pid /tmp/sb/nginx.pid \
#     --error-log '/tmp/sb/error.log notice' --access-log off > /tmp/sb/nginx.conf
#   nginx -t -c /tmp/sb/nginx.conf
#   nginx -c /tmp/sb/nginx.conf -g 'daemon off;'
# Without --static it prints the cluster configuration (headless Service + resolver).
# PROXY headers to the nodes are on by default (nodes need proxy_protocol and
# proxy_trusted_cidrs covering nginx); --no-proxy-protocol turns them off.
# Other options: -f values.yaml, --set-json '{...}'; see --help.
set -euo pipefail
cd "$(dirname "$0")/.."
venv="${SWITCHBOARD_CHART_VENV:-$HOME/.cache/switchboard/chart-venv}"
[ -x "$venv/bin/python" ] || { echo "run scripts/check-chart.sh once first (it sets up $venv)" >&2; exit 1; }
exec "$venv/bin/python" scripts/chart_tool.py render-nginx "$@"
