#!/usr/bin/env bash
# A simulated N-node SLURM cluster on this one machine, beside the one-node dev cluster (which it leaves alone):
#
#   bash slurm/dev-cluster/start.sh --nodes 3    # = multinode.sh up 3   (idempotent; needs root)
#   bash slurm/dev-cluster/stop.sh --nodes       # = multinode.sh down   (tears down all it made)
#   SLURM_CONF=/etc/slurm-multi/slurm.conf sinfo # talk to it (sbatch, squeue, scontrol, fashiontune submit)
#
# Each node nodeNN is a network namespace ftnodeNN with its own address 10.77.0.(10+NN) on a veth pair whose
# host end sits on a bridge (ftmbr0, 10.77.0.1) that this script creates, and its own hostname (a UTS
# namespace), so that a job sees `hostname` = nodeNN and binds/connects like on separate hosts. One slurmd per
# node runs inside its namespaces; one slurmctld (port 6917) in the host namespace is reachable from every node
# through the bridge; munge (a unix socket) is shared. Node names resolve through a marked block that this
# script adds to /etc/hosts (and removes on `down`). Its own config (/etc/slurm-multi), ports, state and
# spool folders and job ids (from 700000) never collide with the one-node cluster's (/etc/slurm, node `vm`).
# Nothing leaves the machine: the bridge has no uplink and no route outside 10.77.0.0/24.
#
# Exits 3 when this machine cannot host it (not root), 1 when something broke (see /var/log/slurm/*multi*).
# Env: DEV_SLURM_MULTI_CPUS (CPUs each node advertises, default 4: two 2-task jobs may share a node), DEV_SLURM_MULTI_PARTITION (default multi).
set -euo pipefail
source "$(cd "$(dirname "$0")" && pwd)/common.conf.sh"

CONF_DIR=/etc/slurm-multi
CONF=$CONF_DIR/slurm.conf
export SLURM_CONF=$CONF
PARTITION="${DEV_SLURM_MULTI_PARTITION:-multi}"
CPUS="${DEV_SLURM_MULTI_CPUS:-4}"
NET=10.77.0
BRIDGE=ftmbr0
LOG_DIR=/var/log/slurm
STATE=/var/spool/slurmctld-multi
CTLD_PID=/run/slurmctld-multi.pid
HOSTS_BEGIN="# >>> fashiontune dev-cluster multinode (slurm/dev-cluster/multinode.sh) >>>"
HOSTS_END="# <<< fashiontune dev-cluster multinode <<<"
t0=$(date +%s)

die() { echo "dev-cluster (multinode): $*" >&2; exit 1; }
cannot() { echo "dev-cluster (multinode): cannot start here: $*" >&2; exit 3; }
say() { echo "dev-cluster (multinode): $*"; }

node() { printf 'node%02d' "$1"; }           # SLURM node name and hostname
netns() { printf 'ftnode%02d' "$1"; }        # its network namespace
addr() { echo "$NET.$((10 + $1))"; }         # its address
slurmd_pid() { echo "/run/slurmd-multi-$(node "$1").pid"; }
alive() { [[ -f $1 ]] && kill -0 "$(cat "$1")" 2>/dev/null; }

ready() {  # all N nodes schedulable (idle / mixed / allocated / completing)
  command -v sinfo >/dev/null 2>&1 && [[ -f $CONF ]] || return 1
  local n
  n=$(timeout 5 sinfo -h -p "$PARTITION" -N -o '%t' 2>/dev/null | grep -cE '^(idle|mix|alloc|comp)$') || return 1
  ((n == $1))
}

write_conf() {  # N -> $CONF.tmp
  local n=$1 mem i names
  mem=$(awk '/MemTotal/ {print int($2 / 1024)}' /proc/meminfo)
  mem=$((mem / n))
  names="$(node 1)"; ((n > 1)) && names="node[$(printf '%02d' 1)-$(printf '%02d' "$n")]"
  mkdir -p "$CONF_DIR"
  {
    cat <<EOF
# Written by slurm/dev-cluster/multinode.sh: a simulated $n-node cluster (network namespaces on one machine)
ClusterName=fashiontune-multi
SlurmctldHost=$(hostname)($NET.1)
SlurmctldPort=6917
SlurmdPort=6918
# cred_expire also sets how long a requeued job waits before it may start again (default 120 s; minimum 5).
AuthInfo=cred_expire=5
StateSaveLocation=$STATE
SlurmdSpoolDir=/var/spool/slurmd-multi/%n
SlurmctldPidFile=$CTLD_PID
SlurmdPidFile=/run/slurmd-multi-%n.pid
SlurmctldLogFile=$LOG_DIR/slurmctld-multi.log
SlurmdLogFile=$LOG_DIR/slurmd-multi-%n.log
FirstJobId=700000
# A node whose slurmd stops answering is DOWN after 10 s (its jobs: NODE_FAIL, requeued when --requeue).
SlurmdTimeout=10
EOF
    slurm_common_conf
    for ((i = 1; i <= n; i++)); do
      echo "NodeName=$(node "$i") NodeAddr=$(addr "$i") CPUs=$CPUS RealMemory=$mem State=UNKNOWN"
    done
    echo "PartitionName=$PARTITION Nodes=$names Default=YES MaxTime=7-00:00:00 State=UP"
  } >"$CONF.tmp"
}

hosts_block() {  # remove our block from /etc/hosts, then (with N) add one for N nodes; rewrite in place
  local n=${1:-0} i body
  body=$(awk -v b="$HOSTS_BEGIN" -v e="$HOSTS_END" '$0 == b {skip = 1} !skip {print} $0 == e {skip = 0}' /etc/hosts)
  if ((n > 0)); then
    body+=$'\n'"$HOSTS_BEGIN"
    for ((i = 1; i <= n; i++)); do body+=$'\n'"$(addr "$i") $(node "$i")"; done
    body+=$'\n'"$HOSTS_END"
  fi
  printf '%s\n' "$body" >/etc/hosts  # in place: /etc/hosts may be a bind mount (containers)
}

net_up() {  # bridge + one namespace, veth pair and address per node (each step only if missing)
  local n=$1 i ns
  if ! ip link show "$BRIDGE" >/dev/null 2>&1; then
    ip link add "$BRIDGE" type bridge
    ip addr add "$NET.1/24" dev "$BRIDGE"
  fi
  ip link set "$BRIDGE" up
  for ((i = 1; i <= n; i++)); do
    ns=$(netns "$i")
    ip netns list | grep -qw "^$ns" || ip netns add "$ns"
    if ! ip link show "ftmv$i" >/dev/null 2>&1; then
      ip link add "ftmv$i" type veth peer name eth0 netns "$ns"
      ip link set "ftmv$i" master "$BRIDGE" up
      ip -n "$ns" addr add "$(addr "$i")/24" dev eth0
      ip -n "$ns" link set eth0 up
      ip -n "$ns" link set lo up
    fi
  done
}

start_slurmd() {  # inside its network namespace, with its own hostname (nsenter: `ip netns exec` would remount
  # /sys, hiding the cgroup mounts that slurmd probes)
  local i=$1
  mkdir -p "/var/spool/slurmd-multi/$(node "$i")"
  nsenter --net="/run/netns/$(netns "$i")" unshare --uts sh -c "hostname $(node "$i") && exec slurmd -f $CONF" \
    || die "slurmd of $(node "$i") failed to start (see $LOG_DIR/slurmd-multi-$(node "$i").log)"
}

up() {
  local n=$1 i st changed=1
  ((n >= 1)) || die "--nodes $n: give at least 1"
  if [[ "$(id -u)" != 0 ]]; then
    ready "$n" && { say "already up (not root: left as is)"; exit 0; }
    cannot "must run as root (network namespaces, daemons, /etc/hosts); run: sudo bash $0 up $n"
  fi
  command -v ip >/dev/null && command -v unshare >/dev/null || cannot "needs iproute2 (ip) and util-linux (unshare)"
  write_conf "$n"
  [[ -f $CONF ]] && cmp -s <(tail -n +2 "$CONF") <(tail -n +2 "$CONF.tmp") && changed=0
  if ((changed == 0)) && ready "$n"; then
    say "already up ($(sinfo -h -p "$PARTITION" -N -o '%N %t' | tr '\n' ' '))"; exit 0
  fi
  ((changed)) && down --quiet  # another node count or config: rebuild (job state and ids are kept)
  mv "$CONF.tmp" "$CONF"
  mkdir -p "$LOG_DIR" "$STATE"
  net_up "$n"
  hosts_block "$n"
  alive "$CTLD_PID" || slurmctld -f "$CONF" || die "slurmctld failed to start (see $LOG_DIR/slurmctld-multi.log)"
  for _ in $(seq 100); do scontrol ping >/dev/null 2>&1 && break; sleep 0.2; done
  scontrol ping >/dev/null 2>&1 || die "slurmctld is not answering (see $LOG_DIR/slurmctld-multi.log)"
  for ((i = 1; i <= n; i++)); do alive "$(slurmd_pid "$i")" || start_slurmd "$i"; done
  for _ in $(seq 150); do
    ready "$n" && break
    while read -r name st; do  # a node left down/drained by a killed slurmd or an earlier crash: back in service
      [[ "$st" =~ ^(drain|down|drng|fail)\*?$ ]] && scontrol update nodename="$name" state=resume >/dev/null 2>&1
    done < <(sinfo -h -p "$PARTITION" -N -o '%N %t' 2>/dev/null || true)
    sleep 0.2
  done
  ready "$n" || die "nodes not idle: $(sinfo -N -l 2>&1 | tail -n +2); see $LOG_DIR/slurmd-multi-*.log"
  say "up in $(( $(date +%s) - t0 )) s: $(sinfo -h -p "$PARTITION" -N -o '%N %t %c CPUs' | tr '\n' ';')" \
    "(SLURM_CONF=$CONF)"
}

stop_pid() {  # pidfile: SIGTERM, up to 10 s, then SIGKILL
  local f=$1 pid
  [[ -f $f ]] || return 0
  pid=$(cat "$f")
  if kill -0 "$pid" 2>/dev/null; then
    kill "$pid" 2>/dev/null || true
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
    kill -9 "$pid" 2>/dev/null || true
  fi
  rm -f "$f"
}

down() {
  local quiet=0 f ns
  [[ "${1:-}" == --quiet ]] && quiet=1
  [[ "$(id -u)" == 0 ]] || cannot "must run as root"
  for f in /run/slurmd-multi-*.pid; do [[ -e $f ]] && stop_pid "$f"; done
  stop_pid "$CTLD_PID"
  for ns in $(ip netns list 2>/dev/null | awk '/^ftnode[0-9]+/ {print $1}'); do
    pids=$(ip netns pids "$ns" 2>/dev/null || true)  # job processes left behind on that "node"
    [[ -n $pids ]] && kill -9 $pids 2>/dev/null || true
    ip netns del "$ns"
  done
  ip link show "$BRIDGE" >/dev/null 2>&1 && ip link del "$BRIDGE"
  hosts_block 0
  ((quiet)) || say "stopped (config $CONF and job state kept)"
}

case "${1:-}" in
  up) up "${2:?usage: $0 up N}";;
  down) down "${2:-}";;
  *) echo "usage: $0 up N | down" >&2; exit 2;;
esac
