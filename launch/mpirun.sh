#!/usr/bin/env bash
# DaP training under OpenMPI's mpirun (Horovod over MPI, mpi4py's COMM_WORLD handed to hvd.init).
#
#   launch/mpirun.sh [-H host1:4,host2:4 | --hostfile FILE] [-np N] -- [dap-hvd train flags]
#
# One rank per slot, bound to its socket's cores; the environment the ranks need is forwarded
# with -x (mpirun does not forward it by itself to other nodes). Env: as for horovodrun.sh.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
source "$here/common.sh"

prepare_launch "$@"
set -- "${TRAIN_ARGS[@]}"
cmd=(mpirun -np "$np" --bind-to "${MPI_BIND:-socket}" --map-by "${MPI_MAP:-slot}" --oversubscribe
     -mca pml ob1 -mca btl ^openib)
[ "$(id -u)" -eq 0 ] && cmd+=(--allow-run-as-root)
if [ -n "$hostfile" ]; then cmd+=(--hostfile "$hostfile"); else cmd+=(-H "$hosts"); fi
# Between nodes, keep MPI's own traffic (daemons and TCP transport) on the chosen interface too.
[ -n "${NETWORK_INTERFACE:-}" ] && cmd+=(-mca btl_tcp_if_include "$NETWORK_INTERFACE"
                                         -mca oob_tcp_if_include "$NETWORK_INTERFACE")
# mpirun passes no environment to remote ranks unless told: forward ours, and every HOROVOD_*,
# NCCL_*, DALI_*, GLOO_* and UCX_* setting.
for var in PATH LD_LIBRARY_PATH PYTHONPATH DAP_HVD_CACHE OMP_NUM_THREADS CUDA_VISIBLE_DEVICES \
           $(compgen -e | grep -E '^(HOROVOD|NCCL|DALI|GLOO|UCX)_' || true); do
  [ -n "${!var:-}" ] && cmd+=(-x "$var")
done
cmd+=("$DAP_HVD" train --mpi --metrics-port "$METRICS_PORT" "$@")
run_or_print "${cmd[@]}"
