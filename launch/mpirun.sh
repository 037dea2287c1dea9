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
for var in PATH LD_LIBRARY_PATH PYTHONPATH DAP_HVD_CACHE OMP_NUM_THREADS HOROVOD_LOG_LEVEL \
           NCCL_DEBUG NCCL_SOCKET_IFNAME NCCL_IB_DISABLE NCCL_IB_HCA GLOO_SOCKET_IFNAME; do
  [ -n "${!var:-}" ] && cmd+=(-x "$var")
done
cmd+=("$DAP_HVD" train --mpi --metrics-port "$METRICS_PORT" "$@")
run_or_print "${cmd[@]}"
