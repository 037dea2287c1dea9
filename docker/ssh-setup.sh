#!/bin/sh
# The image's ssh set-up, run once at build time by the Dockerfile; tests/test_entrypoint.py runs
# it on a copy of /etc to start the same sshd outside Docker.
#   docker/ssh-setup.sh [ETC]   (default /etc)
set -eu
etc=${1:-/etc}
# Keys only; the port comes from the entrypoint's `sshd -p $SSH_PORT`.
sed -i 's/^#\?PasswordAuthentication .*/PasswordAuthentication no/' "$etc/ssh/sshd_config"
# pam_loginuid writes /proc/self/loginuid, which needs CAP_AUDIT_CONTROL once a loginuid is set
# (a container started from a login session: sudo, rootful podman, a shell-started dockerd).
# Docker does not grant that capability, and "required" then refuses every ssh login.
sed -i 's/^session[[:space:]]\+required[[:space:]]\+pam_loginuid\.so/session optional pam_loginuid.so/' \
    "$etc/pam.d/sshd"
grep -q '^session[[:space:]]\+optional[[:space:]]\+pam_loginuid\.so' "$etc/pam.d/sshd"
# Containers of one job trust each other: their host keys are made per container at start.
mkdir -p "$etc/ssh/ssh_config.d"
cat > "$etc/ssh/ssh_config.d/dap-hvd.conf" <<'CONF'
Host *
    StrictHostKeyChecking no
    UserKnownHostsFile /dev/null
    LogLevel ERROR
CONF
