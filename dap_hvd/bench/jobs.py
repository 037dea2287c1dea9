"""The suite's CPU jobs: `horovodrun --gloo` on this host, kept off any GPU."""

from __future__ import annotations

import json
import os
import subprocess
import sysconfig
from pathlib import Path

BIN = Path(sysconfig.get_path("scripts"))  # where pip put dap-hvd and horovodrun


def env() -> dict:
    """The CPU sections run 2-4 ranks on one host: keep them off a GPU they would have to share."""
    e = dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="")
    e["PATH"] = f"{BIN}{os.pathsep}{e.get('PATH', '')}"
    return e


def launch_command(np_: int, args: list) -> list[str]:
    return [str(BIN / "horovodrun"), "--gloo", "-np", str(np_), "-H", f"localhost:{np_}", *map(str, args)]


def horovodrun(np_: int, args: list, timeout: int = 900) -> str:
    """`horovodrun --gloo -np NP` on localhost; its stdout, or the failure with both outputs' tails."""
    cmd = launch_command(np_, args)
    p = subprocess.run(cmd, env=env(), capture_output=True, text=True, timeout=timeout)
    if p.returncode != 0:
        raise RuntimeError(f"benchmark job failed: {' '.join(cmd)}\n{p.stdout[-3000:]}\n{p.stderr[-3000:]}")
    return p.stdout


def train(data: Path, out: Path, *args) -> dict:
    """`dap-hvd train` on 2 Gloo ranks; its summary.json."""
    horovodrun(2, [BIN / "dap-hvd", "train", "--data", data, "--out", out, "--no-progress", "--workers", "1", *args])
    return json.loads((out / "summary.json").read_text())
