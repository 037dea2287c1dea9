#!/usr/bin/env bash
# DaP training under OpenMPI's mpirun (Horovod over MPI, mpi4py's COMM_WORLD handed to hvd.init).
#
#   launch/mpirun.sh [-H host1:4,host2:4 | --hostfile FILE] [-np N] -- [dap-hvd train flags]
#
# One rank per slot. No MPI binding (MPI_BIND=none, Horovod's own advice): on GPU nodes each rank
# binds itself to its GPU's CPU cores (dap-hvd train --cpu-bind). No --oversubscribe: more ranks
# than slots is a mistake to see (OMPI_MCA_rmaps_base_oversubscribe=1 allows it). The environment
# the ranks need is forwarded with -x (mpirun does not forward it to other nodes by itself).
# Env: as for horovodrun.sh; SSH_PORT becomes -mca plm_rsh_args "-p PORT".
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
source "$here/common.sh"

prepare_launch "$@"
set -- "${TRAIN_ARGS[@]}"
cmd=(mpirun -np "$np" --bind-to "${MPI_BIND:-none}" --map-by "${MPI_MAP:-slot}" -mca pml ob1 -mca btl ^openib)
[ -n "${SSH_PORT:-}" ] && cmd+=(-mca plm_rsh_args "-p $SSH_PORT")
[ "$(id -u)" -eq 0 ] && cmd+=(--allow-run-as-root)
if [ -n "$hostfile" ]; then cmd+=(--hostfile "$hostfile"); else cmd+=(-H "$hosts"); fi
# Between nodes, keep MPI's own traffic (daemons and TCP transport) on the chosen interface too.
[ -n "${NETWORK_INTERFACE:-}" ] && cmd+=(-mca btl_tcp_if_include "$NETWORK_INTERFACE"
                                         -mca oob_tcp_if_include "$NETWORK_INTERFACE")
# mpirun passes no environment to remote ranks unless told: forward ours, and every HOROVOD_*,
# NCCL_*, DALI_*, GLOO_*, UCX_*, DAP_HVD_* setting and the compile caches and allocator settings
# (TORCHINDUCTOR_*, TRITON_*, PYTORCH_*).
for var in PATH LD_LIBRARY_PATH PYTHONPATH OMP_NUM_THREADS CUDA_VISIBLE_DEVICES CUDA_DEVICE_ORDER \
           $(compgen -e | grep -E '^(HOROVOD|NCCL|DALI|GLOO|UCX|DAP_HVD|TORCHINDUCTOR|TRITON|PYTORCH)_' || true); do
  [ -n "${!var:-}" ] && cmd+=(-x "$var")
done
cmd+=("$DAP_HVD" train --mpi --metrics-port "$METRICS_PORT" "$@")
run_or_print "${cmd[@]}"
