"""Writing a dataset folder (make-sample-data, make-fashion-mnist): one rule for all of them.

- A folder (or a file) the command did not write is never replaced unless `--force` is given: a
  typo (`make-fashion-mnist /datasets/imagenet`) must not wipe a dataset.
- The new tree is built in a temp folder beside the target and renamed into place, so a crash
  never leaves a half dataset that looks complete.
- Writers of one folder take turns (an flock beside it): several nodes can share one cache, and
  every node's local rank 0 makes the sample data on first use.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from dap_hvd import DataError


def refuse_foreign(root: Path, ours: bool, force: bool, command: str) -> None:
    """DataError unless `root` is absent, an empty folder, ours (it holds the command's record),
    or `force` is given."""
    root = Path(root)
    if force or ours or not (root.is_symlink() or root.exists()):
        return
    if root.is_dir() and not any(root.iterdir()):
        return
    raise DataError(f"{root}: exists and was not written by {command}; refusing to replace it "
                    f"(choose an empty or new folder, or pass --force to overwrite it)")


@contextmanager
def writer_lock(root: Path) -> Iterator[None]:
    """An exclusive flock on .<name>.lock beside `root` while the block runs (blocking: the
    second writer waits, then finds the first one's dataset). The lock file stays: removing it
    would let a third writer lock a new file while the second still holds the old one."""
    root = Path(root)
    root.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(root.parent / f".{root.name}.lock", os.O_RDWR | os.O_CREAT, 0o666)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing drops the lock


def new_tree(root: Path) -> Path:
    """A temp folder beside `root` (same file system, so the final rename is atomic)."""
    return Path(tempfile.mkdtemp(prefix=f".{Path(root).name}.", dir=Path(root).parent))


def replace_tree(tmp: Path, root: Path) -> None:
    """Rename the finished `tmp` to `root`; whatever was at `root` goes only after that worked."""
    root = Path(root)
    if not (root.is_symlink() or root.exists()):
        os.replace(tmp, root)
        return
    old = Path(tempfile.mkdtemp(prefix=".old-", dir=root.parent))
    os.replace(root, old / "d")
    try:
        os.replace(tmp, root)
    except OSError:
        os.replace(old / "d", root)
        raise
    finally:
        shutil.rmtree(old, ignore_errors=True)
