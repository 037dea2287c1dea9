"""Small files written whole or not at all: a temp file with a unique name beside the target,
then a rename. Two writers of one path (two jobs sharing DAP_HVD_CACHE) never share a temp file,
and a reader never sees half a file, or one file of a pair from another write. No torch import."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def publish_mode(path: Path) -> None:
    """mkstemp creates files 0600; give them the mode any other file of the user would get, so
    a team can share a run folder."""
    os.chmod(path, 0o666 & ~_umask())


def write_atomic(path: Path, data: bytes) -> None:
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        publish_mode(Path(tmp))
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
