"""Files written whole or not at all: one routine, `write_atomic`, for every file a reader may
meet mid-write (checkpoints, the exported backbone, manifests, Prometheus targets, JSON).

The data goes to a temp file with a unique name beside the target, is flushed to disk (fsync),
and is renamed over the target. Two writers of one path (two jobs sharing DAP_HVD_CACHE) never
share a temp file, a reader never sees half a file, and a crash leaves the old file or the new
one, never a truncated one under the real name. No torch import.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import BinaryIO, Callable, Optional, Union

Writer = Callable[[BinaryIO], None]


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_atomic(path: Path, data: Union[bytes, Writer], mode: Optional[int] = None) -> None:
    """Write `data` (bytes, or a function that writes into the open binary file, e.g. a
    torch.save) to `path`. The file gets `mode`, by default the one any other file of the user
    would get (mkstemp's is 0600), so a team can share a run folder."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            if callable(data):
                data(f)
            else:
                f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask() if mode is None else mode)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
