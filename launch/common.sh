# Shared by the launch scripts (sourced, not run).
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
if [ -x "$repo/.venv/bin/dap-hvd" ]; then BIN="$repo/.venv/bin"; else BIN=$(dirname "$(command -v dap-hvd)"); fi
DAP_HVD=${DAP_HVD:-$BIN/dap-hvd}
HOROVODRUN=${HOROVODRUN:-$BIN/horovodrun}
METRICS_PORT=${METRICS_PORT:-9400}
SD_FILE=${SD_FILE:-runs/prometheus-targets.json}

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
    if [ "${DRY_RUN:-0}" = "1" ]; then  # a dry run writes nothing: say what it would write
      { printf 'would run: '; printf '%q ' "${cmd[@]}"; echo; } >&2
    else
      "${cmd[@]}" >&2
    fi
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

run_or_print() {  # DRY_RUN=1: print the command; else run it, and on failure end with dap-hvd's
                  # own one-line error(s), after whatever traceback the launcher printed
  if [ "${DRY_RUN:-0}" = "1" ]; then
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
