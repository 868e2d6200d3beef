#!/usr/bin/env bash
# Stop the daemons .ci/slurm-up.sh started, each by the pid its own pid file records.
for pidfile in /run/slurmd.pid /run/slurmctld.pid /run/munge/munged.pid; do
  if [ -s "$pidfile" ]; then
    pid=$(cat "$pidfile")
    kill "$pid" 2>/dev/null && echo "stopped $(basename "$pidfile" .pid) ($pid)"
  fi
done
