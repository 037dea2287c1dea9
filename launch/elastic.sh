#!/usr/bin/env bash
# Elastic DaP training: horovodrun keeps the job going while hosts come and go.
#
#   launch/elastic.sh --discovery SCRIPT [--min-np N] [--max-np M] [-np N] -- [dap-hvd train flags]
#
# SCRIPT prints the hosts usable now, one "host:slots" per line; horovodrun runs it every few
# seconds (launch/discover_hosts.sh reads a file, or SLURM's node list). The job starts with -np
# ranks (default: what SCRIPT lists now) and runs with between --min-np (default 1) and --max-np
# (default -np) ranks:
#   - a lost host: the survivors roll back to the last epoch end, re-shard the selection for the
#     new world size and continue, the LR following the global batch by the linear rule;
#   - a host listed again (after its blacklist cool-down, COOLDOWN seconds, "MIN MAX") joins at
#     the next epoch end;
#   - fewer than --min-np ranks for ELASTIC_TIMEOUT seconds (default 60): the job ends non-zero.
#     Horovod's own default is 600 s, and survivors can wait in re-initialisation that long
#     (horovod#3494); the run's checkpoints are intact and --resume continues it.
# Env as for horovodrun.sh (NETWORK_INTERFACE, METRICS_PORT, SD_FILE, SSH_PORT), plus ELASTIC_TIMEOUT, COOLDOWN.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
source "$here/common.sh"

discovery="" min_np=1 max_np="" np=""
while [ $# -gt 0 ]; do
  case "$1" in
    --discovery|--host-discovery-script) discovery=$2; shift 2;;
    --min-np) min_np=$2; shift 2;;
    --max-np) max_np=$2; shift 2;;
    -np) np=$2; shift 2;;
    --) shift; break;;
    *) break;;
  esac
done
[ -n "$discovery" ] || { echo "elastic.sh: --discovery SCRIPT is required (see launch/discover_hosts.sh)" >&2; exit 2; }
[ -x "$discovery" ] || { echo "elastic.sh: --discovery $discovery: not an executable file" >&2; exit 2; }
hosts_now=$("$discovery") || { echo "elastic.sh: --discovery $discovery failed" >&2; exit 2; }
[ -n "$hosts_now" ] || { echo "elastic.sh: --discovery $discovery lists no hosts" >&2; exit 2; }
host_text=$hosts_now
[ -n "$np" ] || np=$(total_slots "$hosts_now")
[ -n "$max_np" ] || max_np=$np
write_sd "$hosts_now"
nccl_env
cmd=("$HOROVODRUN" --gloo -np "$np" --min-np "$min_np" --max-np "$max_np" --host-discovery-script "$discovery"
     --elastic-timeout "${ELASTIC_TIMEOUT:-60}")
[ -n "${COOLDOWN:-}" ] && cmd+=(--blacklist-cooldown-range $COOLDOWN)
[ -n "${NETWORK_INTERFACE:-}" ] && cmd+=(--network-interface "$NETWORK_INTERFACE")
[ -n "${SSH_PORT:-}" ] && cmd+=(--ssh-port "$SSH_PORT")
cmd+=("$DAP_HVD" train --elastic --metrics-port "$METRICS_PORT" "$@")
run_or_print "${cmd[@]}"
