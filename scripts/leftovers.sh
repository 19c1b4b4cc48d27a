#!/usr/bin/env bash
# Finds redis-server, nginx, prometheus and switchboard processes a test run left behind.
#
#   scripts/leftovers.sh list > before.txt     # before the tests: every such pid
#   scripts/leftovers.sh check before.txt      # after: fails listing the new ones
#
# "New" is by pid: not in the list taken before. It counts only processes of this run:
# working directory inside this checkout (test binaries, node processes and nginx run there)
# or inside $TMPDIR when the run has its own (scripts/test.sh gives it one; test Redis servers
# run in a directory under it), so other checkouts' tests on a shared machine do not count.
# Zombies are skipped: they hold no port and are reaped by their new parent. Nothing is killed.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd -P)"

# Prints "pid comm" for every live redis-server / nginx / prometheus / switchboard process.
list() {
  local d pid comm state
  for d in /proc/[0-9]*; do
    pid="${d#/proc/}"
    comm="$(cat "$d/comm" 2>/dev/null)" || continue
    case "$comm" in redis-server | nginx | prometheus | switchboard) ;; *) continue ;; esac
    state="$(sed -e 's/.*) //' "$d/stat" 2>/dev/null | cut -d' ' -f1)" || continue
    [ "$state" = Z ] && continue
    echo "$pid $comm"
  done
}

# True if the process works inside this checkout or this run's temporary directory.
ours() {
  local cwd
  cwd="$(readlink "/proc/$1/cwd" 2>/dev/null)" || return 1
  cwd="${cwd% (deleted)}"
  case "$cwd" in "$root" | "$root"/*) return 0 ;; esac
  if [ -n "${SB_TEST_TMPDIR:-}" ]; then
    case "$cwd" in "$SB_TEST_TMPDIR" | "$SB_TEST_TMPDIR"/*) return 0 ;; esac
  fi
  return 1
}

case "${1:-}" in
  list) list ;;
  check)
    before="${2:?usage: leftovers.sh check BEFORE_FILE}"
    # A process stopped a moment ago may still be exiting: look again for up to 5 s.
    for _ in $(seq 50); do
      left=()
      while read -r pid comm; do
        grep -q "^$pid " "$before" && continue
        ours "$pid" && left+=("$pid")
      done < <(list)
      [ ${#left[@]} -eq 0 ] && { echo "leftovers: no redis-server, nginx or switchboard process left by this run"; exit 0; }
      sleep 0.1
    done
    echo "leftovers: ${#left[@]} process(es) started by this run are still running:" >&2
    ps -o pid,ppid,stat,etime,args -p "$(IFS=,; echo "${left[*]}")" >&2 || true
    exit 1
    ;;
  *) echo "usage: $0 list | check BEFORE_FILE" >&2; exit 2 ;;
esac
