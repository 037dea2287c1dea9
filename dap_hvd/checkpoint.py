"""Checkpoints: atomic writes (temp file + rename), the last K kept, and safe loading
(torch.load(weights_only=True): tensors, numbers, strings and containers, never arbitrary
objects)."""

from __future__ import annotations

import os
import re
import tempfile
from pathlib import Path
from typing import Optional

import torch

from dap_hvd import DapError

_NAME = re.compile(r"^epoch-(\d{4,})\.pt$")


def checkpoint_dir(run_dir: Path) -> Path:
    return Path(run_dir) / "checkpoints"


def save_checkpoint(run_dir: Path, epoch: int, payload: dict, keep: int) -> Path:
    d = checkpoint_dir(run_dir)
    d.mkdir(parents=True, exist_ok=True)
    path = d / f"epoch-{epoch:04d}.pt"
    fd, tmp = tempfile.mkstemp(dir=d, prefix=".epoch-", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(payload, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    for old in list_checkpoints(run_dir)[:-keep]:
        old.unlink(missing_ok=True)
    return path


def list_checkpoints(run_dir: Path) -> list[Path]:
    d = checkpoint_dir(run_dir)
    if not d.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in d.iterdir() if (m := _NAME.match(p.name))]
    return [p for _, p in sorted(found)]


def load_latest(run_dir: Path) -> Optional[dict]:
    ckpts = list_checkpoints(run_dir)
    if not ckpts:
        return None
    try:
        return torch.load(ckpts[-1], map_location="cpu", weights_only=True)
    except Exception as e:
        raise DapError(f"--resume: cannot load checkpoint {ckpts[-1]}: {e}") from None
