# Shared by the launch scripts (sourced, not run).
# Env they all read:
#   METRICS_PORT  base port of the ranks' /metrics (rank r: BASE + local rank); default 27400, plus
#                 a block of 16 per scheduler job (SLURM_JOB_ID, ...); 0 or off: no metrics
#   SD_FILE       the Prometheus targets file (default runs/prometheus-targets[-JOBID].json); the
#                 ranks write the ports they really serve on into it (DAP_HVD_SD_FILE)
#   SSH_PORT      port of the other hosts' sshd (the image sets 2222): horovodrun --ssh-port,
#                 mpirun -mca plm_rsh_args "-p PORT"
#   NETWORK_INTERFACE  the NIC between nodes (NCCL/Gloo/MPI); DRY_RUN=1 prints the environment
#                 exported and the command, and runs nothing
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
if [ -x "$repo/.venv/bin/dap-hvd" ]; then
  BIN="$repo/.venv/bin"
else
  BIN=$(dirname "$(command -v dap-hvd || echo ./dap-hvd)")
fi
DAP_HVD=${DAP_HVD:-$BIN/dap-hvd}
HOROVODRUN=${HOROVODRUN:-$BIN/horovodrun}
LAUNCH_ENV=()  # the variables this launcher exports, for DRY_RUN

launch_export() {  # VAR VALUE: export it, and remember it for the dry run's listing
  export "$1=$2"
  LAUNCH_ENV+=("$1")
}

if [ -x "$BIN/python" ]; then  # the job's default port block and targets file name
  read -r default_port job < <("$BIN/python" -c 'import os
from dap_hvd.discovery import default_base_port, job_id
print(default_base_port(os.environ), job_id(os.environ) or "-")')
else  # no dap-hvd outside the container (MODE=pyxis): discovery.default_base_port, in bash
  job=${SLURM_JOB_ID:-${PBS_JOBID:-${LSB_JOBID:-${JOB_ID:-${FLUX_JOB_ID:--}}}}}
  digits=${job%%.*} digits=${digits//[!0-9]/}
  default_port=27400
  [ -n "$digits" ] && default_port=$((27400 + (10#$digits % 64) * 16))
fi
METRICS_PORT=${METRICS_PORT:-$default_port}
if [ "$job" = - ]; then
  SD_FILE=${SD_FILE:-runs/prometheus-targets.json}
else  # one file per job: concurrent jobs do not overwrite each other's targets
  SD_FILE=${SD_FILE:-runs/prometheus-targets-$job.json}
fi
SD_FILE=$(realpath -m "$SD_FILE")  # the ranks write into it from their own working directory

local_slots() {  # GPUs on this node, else 2 CPU ranks (-L would also list MIG devices)
  local n
  n=$(nvidia-smi --query-gpu=index --format=csv,noheader 2> /dev/null | wc -l || true)
  [ "${n:-0}" -gt 0 ] && echo "$n" || echo 2
}

total_slots() {  # "h1:4,h2:4" or hostfile text -> 8
  "$BIN/python" -c 'import sys; from dap_hvd.discovery import parse_hosts; print(sum(n for _, n in parse_hosts(sys.argv[1])))' "$1"
}

host_of_rank() {  # "h1:2,h2:2" 3 -> h2: horovodrun gives ranks to the hosts in list order
  "$BIN/python" -c 'import sys
from dap_hvd.discovery import parse_hosts
r = int(sys.argv[2])
for h, n in parse_hosts(sys.argv[1]):
    if r < n:
        print(h)
        break
    r -= n' "$1" "$2"
}

write_sd() {  # Prometheus file_sd targets for these hosts, so Grafana sees every rank
  if [ "$METRICS_PORT" != "0" ] && [ "$METRICS_PORT" != "off" ]; then
    local cmd=("$DAP_HVD" sd-file --hosts "$1" --base-port "$METRICS_PORT" --out "$SD_FILE" --run-id "${RUN_ID:-}")
    launch_export DAP_HVD_SD_FILE "$SD_FILE"
    if [ "${DRY_RUN:-0}" = "1" ]; then  # a dry run writes nothing: say what it would write
      { printf 'would run: '; printf '%q ' "${cmd[@]}"; echo; } >&2
    elif command -v "$DAP_HVD" > /dev/null; then
      "${cmd[@]}" >&2
    else  # dap-hvd lives only in the container (MODE=pyxis): the same file, written here
      mkdir -p "$(dirname "$SD_FILE")"
      sd_json "$1" > "$SD_FILE.tmp" && chmod 644 "$SD_FILE.tmp" && mv "$SD_FILE.tmp" "$SD_FILE"
    fi
  fi
}

sd_json() {  # "h1:2,h2:2" -> the targets JSON of discovery.write_sd_file, without Python
  local h n i sep="" out=""
  for item in ${1//,/ }; do
    h=${item%:*} n=${item##*:}
    for ((i = 0; i < n; i++)); do out+="$sep\"$h:$((METRICS_PORT + i))\""; sep=", "; done
  done
  printf '[{"targets": [%s], "labels": {"job": "dap_hvd"%s}}]\n' "$out" "${RUN_ID:+, \"run_id\": \"$RUN_ID\"}"
}

nccl_env() {  # sensible defaults; anything already set wins
  launch_export NCCL_DEBUG "${NCCL_DEBUG:-WARN}"
  launch_export HOROVOD_GLOO_TIMEOUT_SECONDS "${HOROVOD_GLOO_TIMEOUT_SECONDS:-120}"
  # CUDA's default order is fastest-first; nvidia-smi, NVML and the CPU binding count by PCI bus
  launch_export CUDA_DEVICE_ORDER "${CUDA_DEVICE_ORDER:-PCI_BUS_ID}"
  if [ -n "${NETWORK_INTERFACE:-}" ]; then
    launch_export NCCL_SOCKET_IFNAME "${NCCL_SOCKET_IFNAME:-$NETWORK_INTERFACE}"
    launch_export GLOO_SOCKET_IFNAME "${GLOO_SOCKET_IFNAME:-$NETWORK_INTERFACE}"
  fi
}

run_or_print() {  # DRY_RUN=1: print the environment exported and the command (a script one can
                  # run); else run it, and on failure end with dap-hvd's own one-line error(s),
                  # after whatever traceback the launcher printed
  if [ "${DRY_RUN:-0}" = "1" ]; then
    local var
    for var in "${LAUNCH_ENV[@]}"; do printf 'export %s=%q\n' "$var" "${!var}"; done
    printf '%q ' "$@"; echo
    return 0
  fi
  local errlog rc
  errlog=$(mktemp)
  # stdout straight through (fd 3); stderr through tee, so it is shown live and kept
  { "$@" 2>&1 1>&3 3>&- | tee "$errlog" >&2; echo "${PIPESTATUS[0]}" > "$errlog.rc"; } 3>&1 || true
  rc=$(cat "$errlog.rc")
  rm -f "$errlog.rc"
  if [ "$rc" -ne 0 ] && grep -q 'dap-hvd [a-z-]*: \(error\|interrupted\)' "$errlog"; then
    echo "dap-hvd: the job failed (exit $rc):" >&2
    grep -o 'dap-hvd [a-z-]*: \(error\|interrupted\).*' "$errlog" | awk '!seen[$0]++' >&2
  elif [ "$rc" -ne 0 ] && grep -q '^Process name: [0-9]*$' "$errlog"; then
    # A rank vanished without a word (SIGKILL, OOM killer, a lost node): say which, and where.
    local rank code where=""
    rank=$(grep -m1 '^Process name: ' "$errlog" | cut -d' ' -f3)
    code=$(grep -m1 '^Exit code: ' "$errlog" | cut -d' ' -f3)
    [ -n "${host_text:-}" ] && where=" on $(host_of_rank "$host_text" "$rank")"
    echo "dap-hvd: the job failed (exit $rc): rank $rank$where ended first, with exit code $code$(
      [ "$code" = 255 ] && echo ' (its ssh session broke: the host, or the process on it, died)')" >&2
  fi
  rm -f "$errlog"
  return "$rc"
}

prepare_launch() {  # parse args, write the scrape targets, set NCCL/Gloo env; train flags -> TRAIN_ARGS
  hosts="" hostfile="" np="" controller="--gloo"
  while [ $# -gt 0 ]; do
    case "$1" in
      -H|--hosts) hosts=$2; shift 2;;
      --hostfile) hostfile=$2; shift 2;;
      -np|--num-proc) np=$2; shift 2;;
      --mpi) controller="--mpi"; shift;;
      --) shift; break;;
      *) break;;
    esac
  done
  TRAIN_ARGS=("$@")
  [ -n "$hosts" ] || [ -n "$hostfile" ] || hosts="localhost:$(local_slots)"
  host_text=${hosts:-$(cat "$hostfile")}
  [ -n "$np" ] || np=$(total_slots "$host_text")
  write_sd "$host_text"
  nccl_env
}
