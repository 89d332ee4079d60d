#!/usr/bin/env bash
# Stop the one-node dev SLURM cluster started by start.sh (slurmd, slurmctld, munged). Packages, config and
# job state stay; start.sh brings it back. `--quiet` for use from start.sh. `--nodes`: see multinode.sh.
set -uo pipefail
# `--nodes`: the simulated multi-node cluster of `start.sh --nodes N` instead (this one-node cluster stays up).
[[ "${1:-}" == --nodes* ]] && exec bash "$(dirname "$0")/multinode.sh" down
quiet=0; [[ "${1:-}" == --quiet ]] && quiet=1
say() { ((quiet)) || echo "dev-cluster: $*"; }

stop_pidfile() {  # name pidfile: SIGTERM, wait up to 10 s, then SIGKILL
  local name=$1 pidfile=$2 pid
  [[ -f $pidfile ]] || return 0
  pid=$(cat "$pidfile")
  if kill -0 "$pid" 2>/dev/null; then
    kill "$pid" 2>/dev/null
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
    kill -0 "$pid" 2>/dev/null && kill -9 "$pid" 2>/dev/null
    say "stopped $name (pid $pid)"
  fi
  rm -f "$pidfile"
}

stop_pidfile slurmd /run/slurmd.pid
stop_pidfile slurmctld /run/slurmctld.pid
if [[ "${1:-}" != --quiet ]]; then
  stop_pidfile munged /run/munge/munged.pid
fi
exit 0
