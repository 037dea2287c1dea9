#!/bin/sh
# The image's entrypoint. Started as root (the default), it can start sshd for multi-node
# horovodrun (DAP_HVD_SSHD=1), with host keys made for this container on first start (none are
# baked into the image, so nodes do not share them), then drops to the unprivileged user to run
# `dap-hvd ARGS`. `-- CMD ARGS` runs CMD instead (a shell, mpirun, ...), as that user too.
# Started as another user, it runs the command as that user, without sshd.
set -eu
user=${DAP_HVD_USER:-dap}
if [ "$(id -u)" = 0 ] && [ -z "${DAP_HVD_DROPPED:-}" ]; then
  if [ "${DAP_HVD_SSHD:-0}" = 1 ]; then
    ssh-keygen -A > /dev/null
    mkdir -p /run/sshd
    /usr/sbin/sshd -p "${SSHD_PORT:-2222}"
  fi
  HOME=$(getent passwd "$user" | cut -d: -f6)
  DAP_HVD_DROPPED=1
  export HOME DAP_HVD_DROPPED
  exec setpriv --reuid="$user" --regid="$(id -g "$user")" --init-groups -- "$0" "$@"
fi
if [ "${1:-}" = "--" ]; then
  shift
  exec "$@"
fi
exec dap-hvd "$@"
