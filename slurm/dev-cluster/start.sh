#!/usr/bin/env bash
# Start a one-node SLURM cluster on this (Debian/Ubuntu) machine, without systemd: what the `slurm` tests
# and `fashiontune submit --cluster configs/cluster/slurm-cpu.yaml` run on.
#
#   bash slurm/dev-cluster/start.sh      # idempotent: returns at once when the node is already up
#   bash slurm/dev-cluster/stop.sh       # stops the daemons (packages and state stay)
#   bash slurm/dev-cluster/start.sh --nodes 3   # a second, simulated multi-node cluster (multinode.sh) beside it
#   bash slurm/dev-cluster/stop.sh --nodes      # tears that one down (the one-node cluster is left alone)
#
# Installs slurm-wlm + munge with apt if missing, writes /etc/slurm/slurm.conf from `slurmd -C`,
# creates a munge key, starts munged, slurmctld and slurmd as plain daemons and waits until `sinfo`
# shows the node usable. Exits 3 with the reason when this machine cannot host it (not root, no apt), 1 when
# something broke (a failed install, a daemon that died: see /var/log/slurm/).
# Env: DEV_SLURM_PARTITION (default "dev"), DEV_SLURM_MIN_CPUS (default 4: the node advertises at least
# this many CPUs so that a 2-task job and its dependent merge job can be scheduled on a 1-2 core CI box).
set -euo pipefail

NODES=0
case "${1:-}" in
  --nodes) NODES="${2:?--nodes needs a number}";;
  --nodes=*) NODES="${1#--nodes=}";;
  "") ;;
  *) echo "usage: $0 [--nodes N]" >&2; exit 2;;
esac
[[ "$NODES" =~ ^[0-9]+$ ]] || { echo "dev-cluster: --nodes $NODES is not a number" >&2; exit 2; }

PARTITION="${DEV_SLURM_PARTITION:-dev}"
MIN_CPUS="${DEV_SLURM_MIN_CPUS:-4}"
CONF_DIR=/etc/slurm
CONF="$CONF_DIR/slurm.conf"
LOG_DIR=/var/log/slurm
HERE="$(cd "$(dirname "$0")" && pwd)"
source "$HERE/common.conf.sh"
t0=$(date +%s)

die() { echo "dev-cluster: $*" >&2; exit 1; }
cannot() { echo "dev-cluster: cannot start here: $*" >&2; exit 3; }  # 3 = environment, not a bug: tests skip
say() { echo "dev-cluster: $*"; }

node_ready() {
  # idle / mixed / allocated (a previous job may still run) all mean "schedulable".
  command -v sinfo >/dev/null 2>&1 || return 1
  local st
  st=$(timeout 5 sinfo -h -p "$PARTITION" -N -o '%t' 2>/dev/null | head -n1) || return 1
  [[ "$st" =~ ^(idle|mix|alloc|comp)$ ]]
}

if ((NODES > 0)) && [[ "$(id -u)" != 0 ]]; then exec bash "$HERE/multinode.sh" up "$NODES"; fi  # it says why not
if [[ "$(id -u)" != 0 ]] && node_ready; then say "already up (not root: config left as is)"; exit 0; fi
[[ "$(id -u)" == 0 ]] || cannot "must run as root (it installs packages and starts daemons); run: sudo bash $0"

# --- packages -----------------------------------------------------------------------------------------
need=()
for bin in slurmctld:slurmctld slurmd:slurmd sinfo:slurm-client munged:munge; do
  command -v "${bin%%:*}" >/dev/null 2>&1 || need+=("${bin##*:}")
done
if ((${#need[@]})); then
  command -v apt-get >/dev/null 2>&1 || cannot "slurm/munge missing and no apt-get here: install ${need[*]} yourself"
  say "installing ${need[*]} with apt (quiet)"
  export DEBIAN_FRONTEND=noninteractive
  # No init system in a container: keep package scripts from trying to start the services.
  made_policy=0
  if [[ ! -e /usr/sbin/policy-rc.d ]]; then
    printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d && made_policy=1
  fi
  trap '[[ $made_policy == 1 ]] && rm -f /usr/sbin/policy-rc.d' EXIT
  aptlog=$(mktemp /tmp/dev-cluster-apt.XXXXXX.log)
  apt-get update -qq >"$aptlog" 2>&1 || { tail -n 20 "$aptlog" >&2; die "apt-get update failed (no network or mirror?); log: $aptlog"; }
  apt-get install -y -qq --no-install-recommends -o Dpkg::Use-Pty=0 "${need[@]}" >>"$aptlog" 2>&1 \
    || { tail -n 20 "$aptlog" >&2; die "apt-get install ${need[*]} failed; log: $aptlog"; }
  say "installed in $(( $(date +%s) - t0 )) s"
fi

# --- munge (one daemon for every cluster of this machine) -----------------------------------------------
start_munge() {
  if [[ ! -s /etc/munge/munge.key ]]; then
    mkdir -p /etc/munge
    if command -v mungekey >/dev/null 2>&1; then mungekey --create --keyfile=/etc/munge/munge.key --force
    else dd if=/dev/urandom bs=1 count=1024 of=/etc/munge/munge.key status=none; fi
  fi
  munge_user=root
  id munge >/dev/null 2>&1 && munge_user=munge
  mkdir -p /var/lib/munge /var/log/munge /run/munge
  chown -R "$munge_user" /etc/munge /run/munge /var/lib/munge /var/log/munge
  chmod 0700 /etc/munge && chmod 0400 /etc/munge/munge.key
  if ! munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then
    pkill_pidfile() { [[ -f $1 ]] && kill "$(cat "$1")" 2>/dev/null || true; }
    pkill_pidfile /run/munge/munged.pid
    if [[ $munge_user == munge ]]; then runuser -u munge -- /usr/sbin/munged
    else /usr/sbin/munged --force; fi
    for _ in $(seq 50); do munge -n 2>/dev/null | unmunge >/dev/null 2>&1 && break; sleep 0.1; done
    munge -n | unmunge >/dev/null || die "munged did not start (see /var/log/munge/munged.log)"
  fi
}

if ((NODES > 0)); then  # the simulated multi-node cluster: its own config, daemons and network namespaces
  start_munge
  exec bash "$HERE/multinode.sh" up "$NODES"
fi

# --- slurm.conf -----------------------------------------------------------------------------------------
# `slurmd -C` prints this machine's NodeName line (hostname, CPUs, sockets, RealMemory).
probe=$(slurmd -C 2>/dev/null | head -n1) || die "slurmd -C failed"
host=$(sed -n 's/.*NodeName=\([^ ]*\).*/\1/p' <<<"$probe")
cpus=$(sed -n 's/.*CPUs=\([0-9]*\).*/\1/p' <<<"$probe")
mem=$(sed -n 's/.*RealMemory=\([0-9]*\).*/\1/p' <<<"$probe")
[[ -n "$host" && -n "$cpus" && -n "$mem" ]] || die "could not parse 'slurmd -C' output: $probe"
(( cpus >= MIN_CPUS )) || cpus=$MIN_CPUS
mkdir -p "$CONF_DIR" "$LOG_DIR" /var/spool/slurmctld /var/spool/slurmd /run/munge
{
  cat <<EOF
# Written by slurm/dev-cluster/start.sh from \`slurmd -C\` ($probe)
ClusterName=fashiontune-dev
SlurmctldHost=$host(127.0.0.1)
# cred_expire also sets how long a requeued job waits before it may start again (default 120 s).
AuthInfo=cred_expire=10
StateSaveLocation=/var/spool/slurmctld
SlurmdSpoolDir=/var/spool/slurmd
SlurmctldPidFile=/run/slurmctld.pid
SlurmdPidFile=/run/slurmd.pid
SlurmctldLogFile=$LOG_DIR/slurmctld.log
SlurmdLogFile=$LOG_DIR/slurmd.log
EOF
  slurm_common_conf
  echo "NodeName=$host NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$mem State=UNKNOWN"
  echo "PartitionName=$PARTITION Nodes=$host Default=YES MaxTime=7-00:00:00 State=UP"
} >"$CONF.tmp"
conf_changed=1
if [[ -f "$CONF" ]] && cmp -s <(grep -v '^# Written' "$CONF") <(grep -v '^# Written' "$CONF.tmp"); then
  conf_changed=0
fi
mv "$CONF.tmp" "$CONF"
if ((conf_changed == 0)) && node_ready; then
  say "already up ($(sinfo -h -p "$PARTITION" -N -o '%N %t %c CPUs'))"
  exit 0
fi

start_munge

# --- slurm daemons ----------------------------------------------------------------------------------------
alive() { [[ -f $1 ]] && kill -0 "$(cat "$1")" 2>/dev/null; }
if ((conf_changed)); then
  # New config: restart whatever runs (state is kept; -c below only when slurmctld never ran).
  bash "$HERE/stop.sh" --quiet || true
fi
if ! alive /run/slurmctld.pid; then
  slurmctld || die "slurmctld failed to start (see $LOG_DIR/slurmctld.log)"
fi
for _ in $(seq 100); do scontrol ping >/dev/null 2>&1 && break; sleep 0.2; done
scontrol ping >/dev/null 2>&1 || die "slurmctld is not answering (see $LOG_DIR/slurmctld.log)"
if ! alive /run/slurmd.pid; then
  slurmd || die "slurmd failed to start (see $LOG_DIR/slurmd.log)"
fi

for _ in $(seq 150); do
  node_ready && break
  st=$(sinfo -h -p "$PARTITION" -N -o '%t' 2>/dev/null | head -n1 || true)
  # A node left drained/down by an earlier crash: put it back in service.
  [[ "$st" =~ ^(drain|down|drng|fail)\*?$ ]] && scontrol update nodename="$host" state=resume >/dev/null 2>&1 || true
  sleep 0.2
done
node_ready || die "node $host did not become idle: $(sinfo -N -l 2>&1 | tail -n +2); see $LOG_DIR/slurmd.log"
say "up in $(( $(date +%s) - t0 )) s: $(sinfo -h -p "$PARTITION" -N -o '%N %t %c CPUs %m MB')"
