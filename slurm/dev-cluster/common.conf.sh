# The slurm.conf lines the one-node dev cluster (start.sh) and the simulated multi-node one (multinode.sh) share:
# one place, so that both behave the same where they are meant to. Sourced; prints to stdout.
slurm_common_conf() {
  cat <<'CONF'
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
# No cgroups in a container: track processes by parent pid, no task binding.
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerType=sched/builtin
SchedulerParameters=sched_interval=2
MpiDefault=none
ReturnToService=2
# Preemption/requeue: submitit requeues itself with `scontrol requeue`; kill stragglers fast.
JobRequeue=1
KillWait=5
KillOnBadExit=1
InactiveLimit=0
# No accounting database here: keep finished jobs visible to `scontrol show job` for an hour.
MinJobAge=3600
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
# A node may advertise more CPUs than it has (DEV_SLURM_MIN_CPUS, one machine split into nodes): trust this file.
SlurmdParameters=config_overrides
CONF
}
