# Shared by the launch scripts (sourced, not run).
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
if [ -x "$repo/.venv/bin/dap-hvd" ]; then BIN="$repo/.venv/bin"; else BIN=$(dirname "$(command -v dap-hvd)"); fi
DAP_HVD=${DAP_HVD:-$BIN/dap-hvd}
HOROVODRUN=${HOROVODRUN:-$BIN/horovodrun}
METRICS_PORT=${METRICS_PORT:-9400}
SD_FILE=${SD_FILE:-runs/prometheus-targets.json}

local_slots() {  # GPUs on this node, else 2 CPU ranks
  local n
  n=$(nvidia-smi -L 2> /dev/null | wc -l || true)
  [ "${n:-0}" -gt 0 ] && echo "$n" || echo 2
}

total_slots() {  # "h1:4,h2:4" or hostfile text -> 8
  "$BIN/python" -c 'import sys; from dap_hvd.discovery import parse_hosts; print(sum(n for _, n in parse_hosts(sys.argv[1])))' "$1"
}

write_sd() {  # Prometheus file_sd targets for these hosts, so Grafana sees every rank
  if [ "$METRICS_PORT" != "0" ] && [ "$METRICS_PORT" != "off" ]; then
    "$DAP_HVD" sd-file --hosts "$1" --base-port "$METRICS_PORT" --out "$SD_FILE" --run-id "${RUN_ID:-}" >&2
  fi
}

nccl_env() {  # sensible defaults; anything already set wins
  export NCCL_DEBUG=${NCCL_DEBUG:-WARN}
  export HOROVOD_GLOO_TIMEOUT_SECONDS=${HOROVOD_GLOO_TIMEOUT_SECONDS:-120}
  if [ -n "${NETWORK_INTERFACE:-}" ]; then
    export NCCL_SOCKET_IFNAME=${NCCL_SOCKET_IFNAME:-$NETWORK_INTERFACE}
    export GLOO_SOCKET_IFNAME=${GLOO_SOCKET_IFNAME:-$NETWORK_INTERFACE}
  fi
}

run_or_print() {
  if [ "${DRY_RUN:-0}" = "1" ]; then
    printf '%q ' "$@"; echo
  else
    exec "$@"
  fi
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
