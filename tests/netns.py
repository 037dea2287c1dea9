"""Test hosts in network namespaces: a small cluster on one machine.

Each "host" is a network namespace with its own address on a private bridge and its own sshd,
reached with a key made for the test. The bridge lives in a namespace of its own, so the root
namespace has no route to any of them; a "launcher" namespace on the same bridge runs horovodrun
or mpirun. The file system is shared, as on a cluster with a shared home: same venv, same data.

Everything is named with one prefix per cluster and removed by `down()` (killing the sshds and
deleting the namespaces deletes their links); `sweep()` removes what a killed test run left.
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import subprocess
import time
from pathlib import Path

PREFIX = "daphvd"
SSHD = "/usr/sbin/sshd"


def unavailable() -> str | None:
    """Why this machine cannot make the cluster, or None."""
    if os.geteuid() != 0:
        return "network namespaces need root (CAP_NET_ADMIN); run the suite as root, as CI does"
    for tool in ("ip", "ssh", "ssh-keygen", SSHD):
        if not shutil.which(tool):
            return f"{tool} is missing: scripts/setup.sh installs openssh-server and iproute2"
    probe = f"{PREFIX}probe{secrets.token_hex(2)}"
    p = subprocess.run(["ip", "netns", "add", probe], capture_output=True, text=True)
    if p.returncode != 0:
        return f"cannot create a network namespace: {p.stderr.strip()}"
    subprocess.run(["ip", "netns", "del", probe], capture_output=True)
    return None


def _ip(*args: str) -> None:
    p = subprocess.run(["ip", *args], capture_output=True, text=True)
    if p.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)}: {p.stderr.strip()}")


def sweep() -> None:
    """Remove namespaces (and so their sshds' network) left by an earlier, killed run."""
    names = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout.split()
    for name in names:
        if name.startswith(PREFIX):
            for pid in _pids(name):
                _kill(pid)
            subprocess.run(["ip", "netns", "del", name], capture_output=True)


def _pids(ns: str) -> list[int]:
    out = subprocess.run(["ip", "netns", "pids", ns], capture_output=True, text=True).stdout
    return [int(x) for x in out.split()]


def _kill(pid: int, sig=signal.SIGKILL) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass


class Cluster:
    """`hosts` namespaces with sshd, one launcher namespace, one switch namespace with the bridge."""

    def __init__(self, root: Path, hosts: int = 2):
        self.root = Path(root)
        self.tag = f"{PREFIX}{secrets.token_hex(2)}"
        net = 10 + secrets.randbelow(200)
        self.switch = f"{self.tag}sw"
        self.launcher = f"{self.tag}l"
        self.hosts = [f"{self.tag}h{i}" for i in range(hosts)]
        self.addr = {ns: f"10.{net}.0.{i + 2}" for i, ns in enumerate([self.launcher, *self.hosts])}
        self.ssh_dir = self.root / "ssh"
        self.bin = self.root / "bin"  # `ssh` here wraps the real one with the cluster's config
        self._sshd: list[subprocess.Popen] = []

    @property
    def host_addrs(self) -> list[str]:
        return [self.addr[h] for h in self.hosts]

    # ------------------------------------------------------------------ up / down

    def up(self, sshd: bool = True) -> "Cluster":
        """The namespaces and the bridge; with `sshd`, the test's own sshd on each host (False:
        the caller starts its own, e.g. the image's entrypoint)."""
        _ip("netns", "add", self.switch)
        _ip("-n", self.switch, "link", "add", "br0", "type", "bridge")
        _ip("-n", self.switch, "link", "set", "br0", "up")
        for i, ns in enumerate([self.launcher, *self.hosts]):
            _ip("netns", "add", ns)
            port = f"p{i}"
            _ip("link", "add", "eth0", "netns", ns, "type", "veth", "peer", "name", port, "netns", self.switch)
            _ip("-n", self.switch, "link", "set", port, "master", "br0")
            _ip("-n", self.switch, "link", "set", port, "up")
            _ip("-n", ns, "addr", "add", f"{self.addr[ns]}/24", "dev", "eth0")
            _ip("-n", ns, "link", "set", "eth0", "up")
            _ip("-n", ns, "link", "set", "lo", "up")
        if sshd:
            self._keys()
            for ns in self.hosts:
                self._start_sshd(ns)
            self._wait_ssh()
        return self

    def down(self) -> None:
        for p in self._sshd:
            _kill(p.pid)
        for ns in [self.launcher, *self.hosts, self.switch]:
            for pid in _pids(ns):
                _kill(pid)
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)

    # ------------------------------------------------------------------ ssh

    def _keys(self) -> None:
        d = self.ssh_dir
        d.mkdir(parents=True, exist_ok=True)
        for name in ("id", "host_key"):
            for old in (d / name, d / f"{name}.pub"):
                old.unlink(missing_ok=True)
            subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(d / name)], check=True)
        shutil.copy(d / "id.pub", d / "authorized_keys")
        (d / "config").write_text(
            f"Host *\n  User root\n  IdentityFile {d / 'id'}\n  IdentitiesOnly yes\n  BatchMode yes\n"
            f"  UserKnownHostsFile /dev/null\n  StrictHostKeyChecking no\n  LogLevel ERROR\n  ConnectTimeout 10\n")
        self.bin.mkdir(parents=True, exist_ok=True)
        wrapper = self.bin / "ssh"
        wrapper.write_text(f"#!/bin/sh\nexec {shutil.which('ssh')} -F {d / 'config'} \"$@\"\n")
        wrapper.chmod(0o755)

    def _start_sshd(self, ns: str) -> None:
        d = self.ssh_dir
        cfg = d / f"sshd-{ns}.conf"
        cfg.write_text(
            f"ListenAddress {self.addr[ns]}\nPort 22\nHostKey {d / 'host_key'}\n"
            f"AuthorizedKeysFile {d / 'authorized_keys'}\nPidFile {d / f'sshd-{ns}.pid'}\n"
            "PermitRootLogin prohibit-password\nPasswordAuthentication no\nKbdInteractiveAuthentication no\n"
            "UsePAM no\nStrictModes no\nAcceptEnv *\nMaxStartups 100\nMaxSessions 100\n")
        Path("/run/sshd").mkdir(exist_ok=True)  # sshd's privilege-separation directory
        log = open(d / f"sshd-{ns}.log", "w")
        self._sshd.append(subprocess.Popen(["ip", "netns", "exec", ns, SSHD, "-D", "-e", "-f", str(cfg)],
                                           stdout=log, stderr=subprocess.STDOUT))

    def _wait_ssh(self, timeout: float = 20) -> None:
        deadline = time.time() + timeout
        for ns in self.hosts:
            while True:
                p = self.launch(["ssh", self.addr[ns], "true"], timeout=15)
                if p.returncode == 0:
                    break
                if time.time() > deadline:
                    log = (self.ssh_dir / f"sshd-{ns}.log").read_text()
                    raise RuntimeError(f"sshd in {ns} ({self.addr[ns]}) not reachable: {p.stderr}\n{log}")
                time.sleep(0.2)

    # ------------------------------------------------------------------ running things

    def env(self, extra: dict | None = None) -> dict:
        env = dict(os.environ)
        env["PATH"] = f"{self.bin}{os.pathsep}{env.get('PATH', '')}"
        env.update(extra or {})
        return env

    def launch(self, cmd: list, timeout: float, env: dict | None = None, cwd=None) -> subprocess.CompletedProcess:
        """Run `cmd` in the launcher namespace (with the cluster's ssh first on PATH)."""
        return subprocess.run(["ip", "netns", "exec", self.launcher, *map(str, cmd)], env=self.env(env), cwd=cwd,
                              capture_output=True, text=True, timeout=timeout)

    def popen(self, cmd: list, env: dict | None = None, cwd=None, **kw) -> subprocess.Popen:
        return subprocess.Popen(["ip", "netns", "exec", self.launcher, *map(str, cmd)], env=self.env(env), cwd=cwd,
                                **kw)

    def pids(self, host: str, needle: str) -> list[int]:
        """Processes in `host`'s namespace whose command line contains `needle`."""
        out = []
        for pid in _pids(host):
            try:
                cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
            except OSError:
                continue
            if needle in cmdline:
                out.append(pid)
        return out

    def kill(self, host: str, needle: str, sig=signal.SIGKILL) -> list[int]:
        pids = self.pids(host, needle)
        for pid in pids:
            _kill(pid, sig)
        return pids
