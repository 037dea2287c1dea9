"""Checkpoints: atomic writes (files.write_atomic), the last K kept, and safe loading
(torch.load(weights_only=True): tensors, numbers, strings and containers, never arbitrary
objects). A newest checkpoint that cannot be read (a node died mid-copy, a full disk) falls back
to the one before it, with a warning."""

from __future__ import annotations

import re
from pathlib import Path
from typing import NamedTuple, Optional

import torch

from dap_hvd import DapError, first_line
from dap_hvd.files import write_atomic

_NAME = re.compile(r"^epoch-(\d{4,})\.pt$")
_TMP = re.compile(r"^\.epoch-.*\.tmp$")


def checkpoint_dir(run_dir: Path) -> Path:
    return Path(run_dir) / "checkpoints"


def save_checkpoint(run_dir: Path, epoch: int, payload: dict, keep: int) -> Path:
    d = checkpoint_dir(run_dir)
    d.mkdir(parents=True, exist_ok=True)
    path = d / f"epoch-{epoch:04d}.pt"
    write_atomic(path, lambda f: torch.save(payload, f))  # its temp file: .epoch-NNNN.pt.*.tmp (_TMP)
    for old in list_checkpoints(run_dir)[:-keep]:
        old.unlink(missing_ok=True)
    return path


def list_checkpoints(run_dir: Path) -> list[Path]:
    d = checkpoint_dir(run_dir)
    if not d.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in d.iterdir() if (m := _NAME.match(p.name))]
    return [p for _, p in sorted(found)]


def checkpoint_epoch(path: Path) -> int:
    """The epoch a checkpoint file holds, from its name (epoch-NNNN.pt)."""
    m = _NAME.match(Path(path).name)
    if m is None:
        raise ValueError(f"{path} is not named like a checkpoint (epoch-NNNN.pt)")
    return int(m.group(1))


def remove_stale_temps(run_dir: Path) -> list[Path]:
    """Temp files a killed save left behind (only the writer, rank 0, calls this)."""
    d = checkpoint_dir(run_dir)
    stale = [p for p in d.iterdir() if _TMP.match(p.name)] if d.is_dir() else []
    for p in stale:
        p.unlink(missing_ok=True)
    return stale


class Loaded(NamedTuple):
    path: Path
    ckpt: dict


def load_newest(run_dir: Path, warn=None) -> Optional[Loaded]:
    """The newest readable checkpoint and its path (None: there is none); `warn(message)` hears
    about each one skipped."""
    ckpts = list_checkpoints(run_dir)
    if not ckpts:
        return None
    problems = []
    for path in reversed(ckpts):
        try:
            ckpt = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:  # truncated, corrupt, or not ours: try the one before
            reason = first_line(e)
            problems.append(f"{path}: {reason}")
            if warn is not None:
                warn(f"--resume: cannot load {path} ({reason}); trying the one before it")
            continue
        return Loaded(path, ckpt)
    raise DapError("--resume: no readable checkpoint: " + "; ".join(problems))
