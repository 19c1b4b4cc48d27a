#!/usr/bin/env bash
# Renders the Helm chart with its default values into k8s/base/ (a kustomize base).
# Run it after every chart change; scripts/check-chart.sh fails while k8s/ is stale.
#   scripts/render-k8s.sh            rewrite k8s/base
#   scripts/render-k8s.sh --check    only compare; exit 1 (with a diff) when out of step
set -euo pipefail
cd "$(dirname "$0")/.."
venv="${SWITCHBOARD_CHART_VENV:-$HOME/.cache/switchboard/chart-venv}"
[ -x "$venv/bin/python" ] || { echo "run scripts/check-chart.sh once first (it sets up $venv)" >&2; exit 1; }
exec "$venv/bin/python" scripts/chart_tool.py render-k8s "$@"
