#!/usr/bin/env bash
# Host discovery for launch/elastic.sh: print the hosts usable now, one "host:slots" per line.
#   HOSTS_FILE=FILE   the lines of FILE ("host:slots"; # comments), edited as nodes come and go
#   under SLURM       the job's nodes, SLURM_NTASKS_PER_NODE slots each (default 1)
# A cluster manager's API (Kubernetes, a cloud's instance group) would go here instead.
set -euo pipefail
if [ -n "${HOSTS_FILE:-}" ]; then
  sed -e 's/#.*//' -e 's/[[:space:]]//g' "$HOSTS_FILE" | grep -v '^$' || true
elif [ -n "${SLURM_JOB_NODELIST:-}" ]; then
  scontrol show hostnames "$SLURM_JOB_NODELIST" | sed "s/\$/:${SLURM_NTASKS_PER_NODE:-1}/"
else
  echo "discover_hosts.sh: set HOSTS_FILE, or run it inside a SLURM allocation" >&2
  exit 1
fi
