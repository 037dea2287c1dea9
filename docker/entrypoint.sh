#!/bin/sh
# The image's entrypoint. Started as root (the default) it
#   - installs the ssh keys mounted at DAP_HVD_SSH_KEYS (default /run/dap-keys, e.g.
#     `-v ~/dap-keys:/run/dap-keys:ro`) into the user's ~/.ssh, owned by the user with modes
#     700/600: mounted files keep the host's uid, which sshd (StrictModes) and ssh refuse;
#   - starts sshd on SSH_PORT (default 2222) when DAP_HVD_SSHD=1, for multi-node horovodrun/mpirun,
#     with host keys made for this container (none are baked into the image, so nodes do not
#     share them), and makes SSH_PORT the ssh client's default port;
#   - drops to the unprivileged user (DAP_HVD_USER, default dap) to run `dap-hvd ARGS`, or with
#     `-- CMD ARGS` to run CMD (a shell, horovodrun, mpirun, ...).
# Started as another user (`docker run --user`, Apptainer, enroot), it runs the command as that
# user, without sshd. `docker exec` runs as root: use `docker exec -u dap`.
set -eu
user=${DAP_HVD_USER:-dap}
if [ "$(id -u)" = 0 ] && [ -z "${DAP_HVD_DROPPED:-}" ]; then
  home=$(getent passwd "$user" | cut -d: -f6)
  group=$(id -g "$user")
  keys=${DAP_HVD_SSH_KEYS:-/run/dap-keys}
  if [ -d "$keys" ]; then
    # Copy, never link: the copies must belong to the user whatever uid owns the mount.
    install -d -m 700 -o "$user" -g "$group" "$home/.ssh"
    found=0
    for f in "$keys"/*; do
      [ -f "$f" ] || continue
      name=$(basename "$f")
      case "$name" in
        *.pub) mode=644;;
        *) mode=600;;
      esac
      install -m "$mode" -o "$user" -g "$group" "$f" "$home/.ssh/$name"
      found=1
    done
    # One key pair for the whole cluster is the usual set-up: without an authorized_keys, the
    # mounted public keys are the ones allowed in.
    if [ "$found" = 1 ] && [ ! -f "$keys/authorized_keys" ] && ls "$keys"/*.pub > /dev/null 2>&1; then
      cat "$keys"/*.pub > "$home/.ssh/authorized_keys"
      chown "$user:$group" "$home/.ssh/authorized_keys"
      chmod 600 "$home/.ssh/authorized_keys"
    fi
    [ "$found" = 1 ] || echo "dap-hvd-entrypoint: warning: $keys holds no key files" >&2
  fi
  if [ "${DAP_HVD_SSHD:-0}" = 1 ]; then
    port=${SSH_PORT:-2222}
    ssh-keygen -A > /dev/null
    mkdir -p /run/sshd
    # the client side: plain `ssh HOST` (and a horovodrun given no --ssh-port) reaches the
    # other containers' sshd; Host * is the image's own config, so it does not touch the host's
    mkdir -p /etc/ssh/ssh_config.d
    printf 'Host *\n    Port %s\n' "$port" > /etc/ssh/ssh_config.d/dap-hvd-port.conf
    /usr/sbin/sshd -p "$port"
  fi
  HOME=$home
  DAP_HVD_DROPPED=1
  export HOME DAP_HVD_DROPPED
  exec setpriv --reuid="$user" --regid="$group" --init-groups -- "$0" "$@"
fi
if [ -z "${DAP_HVD_DROPPED:-}" ] && [ "${DAP_HVD_SSHD:-0}" = 1 ]; then
  echo "dap-hvd-entrypoint: warning: DAP_HVD_SSHD=1 ignored: sshd needs the container to start as root" >&2
fi
if [ "${1:-}" = "--" ]; then
  shift
  exec "$@"
fi
exec dap-hvd "$@"
