#!/usr/bin/env bash
# A one-node Slurm on 127.0.0.1 for CI (Debian's slurm-wlm + munge; no accounting daemon, so Snakemake must be
# told `--slurm-status-command squeue`). Two fake GPUs are declared as GRES so that `gpu: 1` schedules.
# Partitions are named like the slurm/ profile's defaults (cpu, gpu). Run as root. Stop with .ci/slurm-down.sh.
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive
if ! dpkg -s slurm-wlm munge >/dev/null 2>&1; then
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends slurm-wlm munge >/dev/null
fi
"$(dirname "$0")/slurm-down.sh" >/dev/null 2>&1 || true   # a cluster left from an earlier run
sleep 1
host=$(hostname -s)
# CPUs: four per core (at least 8). CI jobs are short and spend most of their life in Snakemake's and Python's
# start-up (three Snakemake processes per job: the submission's jobstep, srun's, the rule's) and waiting for sbatch
# and status checks; with one job per core the cores sat idle between jobs. No cgroups: nothing is enforced.
ncpu=$(( $(nproc) * 4 > 8 ? $(nproc) * 4 : 8 ))
mem_mb=$(( $(awk '/MemTotal/ {print $2}' /proc/meminfo) / 1024 * 3 / 4 ))
mkdir -p /etc/slurm /var/spool/slurmctld /var/spool/slurmd /var/log/slurm /run/munge /tmp/imputmae-fakegpu
rm -rf /var/spool/slurmctld/* /var/spool/slurmd/*
touch /tmp/imputmae-fakegpu/gpu0 /tmp/imputmae-fakegpu/gpu1
chown munge:munge /run/munge
[ -s /etc/munge/munge.key ] || mungekey --create --force
chown munge:munge /etc/munge/munge.key
chmod 0400 /etc/munge/munge.key
cat > /etc/slurm/slurm.conf <<CONF
ClusterName=imputmae-ci
SlurmctldHost=${host}(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
MpiDefault=none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
SchedulerType=sched/backfill
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
ReturnToService=2
SlurmdParameters=config_overrides
DefMemPerCPU=500
MinJobAge=600
StateSaveLocation=/var/spool/slurmctld
SlurmdSpoolDir=/var/spool/slurmd
SlurmctldPidFile=/run/slurmctld.pid
SlurmdPidFile=/run/slurmd.pid
SlurmctldLogFile=/var/log/slurm/slurmctld.log
SlurmdLogFile=/var/log/slurm/slurmd.log
GresTypes=gpu
NodeName=${host} NodeAddr=127.0.0.1 CPUs=${ncpu} RealMemory=${mem_mb} Gres=gpu:2 State=UNKNOWN
PartitionName=cpu Nodes=ALL Default=YES MaxTime=INFINITE State=UP
PartitionName=gpu Nodes=ALL MaxTime=INFINITE State=UP
CONF
echo "NodeName=${host} Name=gpu File=/tmp/imputmae-fakegpu/gpu[0-1]" > /etc/slurm/gres.conf
su -s /bin/sh munge -c /usr/sbin/munged
for _ in $(seq 1 40); do munge -n | unmunge >/dev/null 2>&1 && break; sleep 0.25; done
/usr/sbin/slurmctld
/usr/sbin/slurmd
for _ in $(seq 1 120); do
  sinfo -h -o '%T' 2>/dev/null | grep -qE '^(idle|mixed|allocated)' && break
  sleep 0.5
done
sinfo -N -o "%N %P %c %m %T %G"
