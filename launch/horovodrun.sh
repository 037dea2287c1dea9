#!/usr/bin/env bash
# Multi-node (or single-node) DaP training with horovodrun.
#
#   launch/horovodrun.sh [-H host1:4,host2:4 | --hostfile FILE] [-np N] [--mpi] -- [dap-hvd train flags]
#
# Defaults: all local GPUs (or 2 slots on a CPU box), Gloo controller. Env you may set (see
# common.sh): METRICS_PORT, SD_FILE, SSH_PORT (the other hosts' sshd, e.g. the image's 2222),
# NETWORK_INTERFACE, DRY_RUN=1 (print the environment and the command, run nothing).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
source "$here/common.sh"

prepare_launch "$@"
set -- "${TRAIN_ARGS[@]}"
cmd=("$HOROVODRUN" "$controller" -np "$np")
if [ -n "$hostfile" ]; then cmd+=(--hostfile "$hostfile"); else cmd+=(-H "$hosts"); fi
[ -n "${NETWORK_INTERFACE:-}" ] && cmd+=(--network-interface "$NETWORK_INTERFACE")
[ -n "${SSH_PORT:-}" ] && cmd+=(--ssh-port "$SSH_PORT")
cmd+=("$DAP_HVD" train --metrics-port "$METRICS_PORT" "$@")
run_or_print "${cmd[@]}"
