"""The note a supervised trainer leaves before it builds each loader: which shard of which split
it is about to read. If a decoder crashes the process (supervise.py says why nothing in-process can
catch that), the parent reads the note and names the bad file. numpy only: the parent imports
neither torch nor Horovod."""

from __future__ import annotations

import io
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np

from dap_hvd.files import write_atomic

ENV = "DAP_HVD_LOADER_NOTE"  # the note's path, set by the supervisor for its child


@dataclass(frozen=True)
class Note:
    root: str
    split: str
    file_list: Optional[str]
    indices: np.ndarray


def leave(root, split: str, file_list: Optional[str], indices: np.ndarray) -> None:
    """Child side: record the shard a loader is about to read (a no-op when unsupervised). One
    file, renamed into place: a crash mid-write never pairs one split's indices with another's
    catalog."""
    path = os.environ.get(ENV)
    if not path:
        return
    buf = io.BytesIO()
    np.savez(buf, indices=np.asarray(indices, dtype=np.int64),
             info=np.array(json.dumps(dict(root=str(root), split=split, file_list=file_list))))
    write_atomic(Path(path), buf.getvalue())


def read(path) -> Note:
    """Parent side: the child's last note."""
    with np.load(path) as saved:
        info, indices = json.loads(str(saved["info"])), saved["indices"]
    return Note(info["root"], info["split"], info["file_list"], indices)
