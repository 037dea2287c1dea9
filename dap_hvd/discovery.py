"""Prometheus file-based service discovery for a Horovod host list (pure Python).

Rank r on a host serves on base_port + local_rank, so a host with n slots exposes n consecutive
ports. The launch scripts write this file from the same host list they hand to horovodrun /
mpirun / srun; Prometheus (docker/prometheus.yml) watches it. A rank that could not bind its
port serves on another one, and rank 0 writes the ports actually used back into the file.

The default base port: Prometheus's port registry has handed out all of 9100-9999 to exporters
(dcgm-exporter's 9400 runs on most GPU nodes), so dap-hvd stays out of it, below the Linux
ephemeral range (32768+) and Kubernetes' NodePorts (30000+), and away from torchrun's 29400/29500.
Each scheduler job gets its own block of JOB_PORT_STRIDE ports, so two jobs sharing a node do
not collide either.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Mapping, Optional

from dap_hvd import ConfigError
from dap_hvd.files import write_atomic

DEFAULT_BASE_PORT = 27400
JOB_PORT_STRIDE = 16  # ports per job: local ranks per node (8 GPUs, or up to 16 CPU ranks)
JOB_PORT_BLOCKS = 64  # 27400-28423
# The job id variables of SLURM, PBS/Torque, LSF, Grid Engine and Flux, in that order.
JOB_ID_VARS = ("SLURM_JOB_ID", "PBS_JOBID", "LSB_JOBID", "JOB_ID", "FLUX_JOB_ID")
TARGETS_MODE = 0o644  # Prometheus often runs as another user (the official image: nobody)


def job_id(env: Mapping[str, str]) -> Optional[str]:
    """The scheduler's job id, or None outside a scheduler job."""
    for var in JOB_ID_VARS:
        if env.get(var):
            return env[var]
    return None


def default_base_port(env: Mapping[str, str]) -> int:
    """DEFAULT_BASE_PORT, offset by a block per scheduler job (by the job id's digits)."""
    jid = job_id(env)
    digits = re.sub(r"\D", "", (jid or "").split(".")[0])  # PBS: "1234.server"
    if not digits:
        return DEFAULT_BASE_PORT
    return DEFAULT_BASE_PORT + (int(digits) % JOB_PORT_BLOCKS) * JOB_PORT_STRIDE


def parse_hosts(spec: str) -> list[tuple[str, int]]:
    """'h1:4,h2:4' (horovodrun -H) or a hostfile's text ('h1 slots=4' lines) -> [(host, slots)]."""
    out = []
    items = spec.replace("\n", ",").split(",")
    for item in items:
        item = item.split("#", 1)[0].strip()
        if not item:
            continue
        if "slots=" in item:
            host, slots = item.split()[0], item.split("slots=", 1)[1].split()[0]
        elif ":" in item:
            host, slots = item.rsplit(":", 1)
        else:
            host, slots = item, "1"
        try:
            n = int(slots)
            if n < 1:
                raise ValueError
        except ValueError:
            raise ConfigError(f"--hosts: bad slot count in {item!r}") from None
        out.append((host.strip(), n))
    if not out:
        raise ConfigError("--hosts: no hosts given")
    return out


def write_sd_file(path: str | Path, hosts: list[tuple[str, int]], base_port: int, run_id: str = "") -> list[str]:
    targets = [f"{h}:{base_port + i}" for h, n in hosts for i in range(n)]
    labels = {"job": "dap_hvd"}
    if run_id:
        labels["run_id"] = run_id
    _write_targets(Path(path), [{"targets": targets, "labels": labels}])
    return targets


def _write_targets(path: Path, groups: list) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, json.dumps(groups, indent=1).encode(), mode=TARGETS_MODE)  # never half a file


def record_ports(path: str | Path, ports: list[int]) -> Optional[list[str]]:
    """Put the ports the ranks serve on (`ports[rank]`) into the launcher's targets file, whose
    targets are in rank order (hosts in list order, then local ranks: the order horovodrun,
    mpirun --map-by slot and srun's block distribution give ranks). Returns the new targets, or
    None when the file is missing, unreadable or lists another number of targets."""
    path = Path(path)
    try:
        groups = json.loads(path.read_text())
        targets = groups[0]["targets"]
    except (OSError, ValueError, LookupError, TypeError):
        return None
    if len(targets) != len(ports):
        return None
    new = [f"{t.rsplit(':', 1)[0]}:{p}" for t, p in zip(targets, ports)]
    if new != targets:
        groups[0]["targets"] = new
        _write_targets(path, groups)
    return new
