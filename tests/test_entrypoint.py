"""The image's multi-node recipe, run outside Docker: docker/entrypoint.sh as root on two test
hosts (network namespaces, tests/netns.py), each in a mount namespace set up like a container of
the image: /etc/ssh and /etc/pam.d as docker/ssh-setup.sh leaves them, no host keys, a user 'dap'
with its own /home, the ssh keys mounted at /run/dap-keys owned by a foreign uid. Like a container
started from a login session by a runtime without CAP_AUDIT_CONTROL, each "container" has a
loginuid set and lacks that capability, which is where pam_loginuid refuses logins.

The documented recipe then runs: `docker exec -u dap` on the first host (here nsenter + setpriv)
starts launch/horovodrun.sh with SSH_PORT set to a non-default port, and horovodrun reaches the
second host's sshd through it and trains there as 'dap'.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import netns
import pytest
from conftest import BIN, REPO

pytestmark = pytest.mark.multirank
SSH_PORT = 2299  # neither ssh's 22 nor the image's 2222: only the launcher's --ssh-port finds it
DAP_UID, KEY_UID, LOGINUID = 2000, 4242, 4343
CAP_AUDIT_CONTROL = 30
# what is under test is how the ranks start, not DaP: one full-data epoch
TRAIN = ["--strategy", "full", "--epochs", "1", "--lr-steps", "none",
         "--batch-size", "32", "--no-progress", "--workers", "1", "--metrics-port", "0"]
ENV = {"OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": "", "PYTHONUNBUFFERED": "1", "NETWORK_INTERFACE": "eth0",
       "SSH_PORT": str(SSH_PORT), "PYTHONPATH": str(REPO), "PATH": f"{BIN}:/usr/sbin:/usr/bin:/sbin:/bin"}


def _hidden_ancestor(path: Path):
    """The one ancestor of `path` that others cannot enter (e.g. /root, holding a pyenv Python),
    and its child on the way to `path`; None if there is none. More than one: unsupported."""
    found = [p for p in reversed(path.parents) if p != Path("/") and not os.stat(p).st_mode & stat.S_IXOTH]
    if len(found) > 1:
        pytest.skip(f"{path}: more than one folder on its path is closed to other users ({found})")
    if not found:
        return None
    top = found[0]
    return top, top / path.relative_to(top).parts[0]


def _box(root: Path, name: str, shared: Path, pam_patched: bool = True) -> Path:
    """A container's /etc pieces for one host: ssh and pam as the image has them, a 'dap' user."""
    box = root / name
    etc = box / "etc"
    etc.mkdir(parents=True)
    shutil.copytree("/etc/ssh", etc / "ssh", symlinks=True)
    for key in (etc / "ssh").glob("ssh_host_*"):
        key.unlink()  # as in the image: the entrypoint makes them
    shutil.copytree("/etc/pam.d", etc / "pam.d", symlinks=True)
    if pam_patched:
        subprocess.run(["sh", str(REPO / "docker" / "ssh-setup.sh"), str(etc)], check=True)
    for f, line in (("passwd", f"dap:x:{DAP_UID}:{DAP_UID}::/home/dap:/bin/sh\n"), ("group", f"dap:x:{DAP_UID}:\n"),
                    ("shadow", "dap:*:20000:0:99999:7:::\n")):
        (etc / f).write_text(Path("/etc", f).read_text() + line)
    return box


def _start(cluster, host: str, box: Path, keys: Path, env: dict) -> subprocess.Popen:
    """`docker run` of the image on `host`: the entrypoint, as root, with sshd, running sleep."""
    hidden = _hidden_ancestor(Path(os.path.realpath(sys.executable)))
    reopen = ""
    if hidden:  # the venv's Python lives under a closed folder: open a view of just its branch
        top, child = hidden
        reopen = (f"mkdir -p {box}/view && mount --bind {child} {box}/view && "
                  f"mount -t tmpfs -o mode=755 tmpfs {top} && mkdir -p {child} && mount --bind {box}/view {child} && ")
    script = (
        "set -e; "
        f"mount --bind {box}/etc/ssh /etc/ssh; mount --bind {box}/etc/pam.d /etc/pam.d; "
        f"for f in passwd group shadow; do mount --bind {box}/etc/$f /etc/$f; done; "
        "mount -t tmpfs -o mode=755 tmpfs /home; mkdir /home/dap; "
        f"chown {DAP_UID}:{DAP_UID} /home/dap; chmod 755 /home/dap; "
        "mount -t tmpfs -o mode=755 tmpfs /run; mkdir /run/dap-keys; "
        f"mount --bind -o ro {keys} /run/dap-keys; "  # docker run -v KEYS:/run/dap-keys:ro
        + reopen +
        f"echo {LOGINUID} > /proc/self/loginuid; "  # a container started from a login session...
        # ...by a runtime that does not grant CAP_AUDIT_CONTROL (Docker's default set lacks it)
        f"exec setpriv --bounding-set -audit_control -- {REPO}/docker/entrypoint.sh -- sleep 600")
    return subprocess.Popen(["ip", "netns", "exec", host, "unshare", "-m", "--propagation", "private",
                             "sh", "-c", script], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


# 120 s: the entrypoint makes host keys first (an RSA one among them), slow on a loaded machine
def _wait_sshd(cluster, proc: subprocess.Popen, addr: str, port: int = SSH_PORT, timeout: float = 120) -> None:
    deadline = time.time() + timeout
    while True:
        assert proc.poll() is None, f"the entrypoint ended: {proc.stdout.read()}"
        if cluster.launch(["bash", "-c", f"echo > /dev/tcp/{addr}/{port}"], timeout=10).returncode == 0:
            return
        if time.time() > deadline:
            proc.kill()
            pytest.fail(f"no sshd on {addr}:{port} after {timeout} s; the entrypoint said: {proc.communicate()[0]}")
        time.sleep(0.2)


def _exec_as_dap(cluster, proc: subprocess.Popen, cmd: list, env: dict, timeout: float):
    """`docker exec -u dap CONTAINER CMD`: into the container's namespaces, as its user."""
    return subprocess.run(["nsenter", "-t", str(proc.pid), "-m", "-n", "setpriv", "--reuid=dap", "--regid=dap",
                           "--init-groups", "env", "HOME=/home/dap", *map(str, cmd)],
                          env=env, capture_output=True, text=True, timeout=timeout, cwd=REPO)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    why = netns.unavailable() or next((f"{t} is missing" for t in ("unshare", "nsenter", "setpriv")
                                       if not shutil.which(t)), None)
    if why:
        if os.environ.get("DAP_HVD_REQUIRE_NETNS") == "1":
            pytest.fail(f"DAP_HVD_REQUIRE_NETNS=1 but {why}")
        pytest.skip(why)
    netns.sweep()
    c = netns.Cluster(tmp_path_factory.mktemp("entry-cluster"), hosts=2)
    try:
        yield c.up(sshd=False)
    finally:
        c.down()


@pytest.fixture
def shared(tiny_data):
    """What the hosts share (a cluster's shared file system), open to 'dap': data, output, cache."""
    d = Path(tempfile.mkdtemp(prefix="daphvd-entry-", dir="/tmp"))
    try:
        d.chmod(0o755)
        shutil.copytree(tiny_data, d / "data")
        subprocess.run(["chmod", "-R", "a+rX", str(d / "data")], check=True)  # some files are written 0600
        for sub in ("runs", "cache"):
            (d / sub).mkdir()
            os.chown(d / sub, DAP_UID, DAP_UID)
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


def test_two_containers_train_over_the_entrypoints_sshd(cluster, shared, tmp_path):
    keys = tmp_path / "keys"  # one key pair for the job, as the README has the operator make it
    keys.mkdir()
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(keys / "id_ed25519")], check=True)
    for f in [keys, *keys.iterdir()]:
        os.chown(f, KEY_UID, KEY_UID)  # the host user's uid, not the image's 'dap'
    (keys / "id_ed25519").chmod(0o600)
    env = {**ENV, "DAP_HVD_SSHD": "1", "DAP_HVD_CACHE": str(shared / "cache")}
    boxes = [_box(tmp_path, f"box{i}", shared) for i in range(2)]
    procs = [_start(cluster, h, b, keys, env) for h, b in zip(cluster.hosts, boxes)]
    try:
        for proc, addr in zip(procs, cluster.host_addrs):
            _wait_sshd(cluster, proc, addr)
        # the keys, installed for 'dap' from the foreign-owned mount
        ssh_dir = Path(f"/proc/{procs[1].pid}/root/home/dap/.ssh")
        modes = {p.name: (p.stat().st_uid, stat.S_IMODE(p.stat().st_mode)) for p in [ssh_dir, *ssh_dir.iterdir()]}
        assert modes == {".ssh": (DAP_UID, 0o700), "id_ed25519": (DAP_UID, 0o600), "id_ed25519.pub": (DAP_UID, 0o644),
                         "authorized_keys": (DAP_UID, 0o600)}, modes
        assert (keys / "id_ed25519").stat().st_uid == KEY_UID  # the mount itself is untouched
        # the "container" is the one where pam_loginuid would refuse: loginuid set, no CAP_AUDIT_CONTROL
        status = Path(f"/proc/{procs[1].pid}/status").read_text()
        cap_bnd = int(next(line.split()[1] for line in status.splitlines() if line.startswith("CapBnd")), 16)
        assert not cap_bnd & (1 << CAP_AUDIT_CONTROL)
        assert Path(f"/proc/{procs[1].pid}/loginuid").read_text().strip() == str(LOGINUID)

        t0 = time.time()
        out = shared / "runs" / "r"
        hosts = ",".join(f"{a}:1" for a in cluster.host_addrs)
        p = _exec_as_dap(cluster, procs[0], [REPO / "launch" / "horovodrun.sh", "-H", hosts, "--", "--data",
                                             shared / "data", "--out", out, *TRAIN], env={**ENV, "METRICS_PORT": "0"},
                         timeout=480)
        assert p.returncode == 0, f"exit {p.returncode}\n{p.stdout[-3000:]}\n{p.stderr[-5000:]}"
        print(f"the two-container job took {time.time() - t0:.1f} s")
        summary = json.loads((out / "summary.json").read_text())
        assert summary["world_size"] == 2 and summary["epochs_completed"] == 1
        assert (out / "summary.json").stat().st_uid == DAP_UID  # trained as 'dap', not root

        # The control: the same container with pam.d as Debian/Ubuntu ship it refuses the login.
        control = _box(tmp_path, "control", shared, pam_patched=False)
        procs.append(_start(cluster, cluster.hosts[1], control, keys, {**env, "SSH_PORT": str(SSH_PORT + 1)}))
        _wait_sshd(cluster, procs[-1], cluster.host_addrs[1], port=SSH_PORT + 1)
        for port, ok in ((SSH_PORT, True), (SSH_PORT + 1, False)):
            p = _exec_as_dap(cluster, procs[0], ["ssh", "-o", "BatchMode=yes", "-p", port, cluster.host_addrs[1],
                                                 "id -u"], env=ENV, timeout=60)
            assert (p.returncode == 0 and p.stdout.split() == [str(DAP_UID)]) == ok, (port, p.stdout, p.stderr)
    finally:
        for proc in procs:
            proc.kill()
            proc.wait()
