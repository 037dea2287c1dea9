"""Prometheus file-based service discovery for a Horovod host list (pure Python).

Rank r on a host serves on base_port + local_rank, so a host with n slots exposes n consecutive
ports. The launch scripts write this file from the same host list they hand to horovodrun /
mpirun / srun; Prometheus (docker/prometheus.yml) watches it.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

from dap_hvd import ConfigError


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
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")  # Prometheus must never read half a file
    with os.fdopen(fd, "w") as f:
        json.dump([{"targets": targets, "labels": labels}], f, indent=1)
    os.replace(tmp, path)
    return targets
