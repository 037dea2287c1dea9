#!/usr/bin/env bash
# Multi-node (or single-node) DaP training with horovodrun.
#
#   launch/horovodrun.sh [-H host1:4,host2:4 | --hostfile FILE] [-np N] [--mpi] -- [dap-hvd train flags]
#
# Defaults: all local GPUs (or 2 slots on a CPU box), Gloo controller. Env you may set:
#   METRICS_PORT (9400; rank r serves on METRICS_PORT + local_rank), SD_FILE (where the Prometheus
#   targets file goes, default runs/prometheus-targets.json), NCCL_SOCKET_IFNAME /
#   GLOO_SOCKET_IFNAME (the NIC to use between nodes), DRY_RUN=1 (print, do not run).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
source "$here/common.sh"

prepare_launch "$@"
set -- "${TRAIN_ARGS[@]}"
cmd=("$HOROVODRUN" "$controller" -np "$np")
if [ -n "$hostfile" ]; then cmd+=(--hostfile "$hostfile"); else cmd+=(-H "$hosts"); fi
[ -n "${NETWORK_INTERFACE:-}" ] && cmd+=(--network-interface "$NETWORK_INTERFACE")
cmd+=("$DAP_HVD" train --metrics-port "$METRICS_PORT" "$@")
run_or_print "${cmd[@]}"
