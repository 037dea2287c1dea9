"""Where dap-hvd keeps its caches (sample data, manifests, bad-sample scans, wheels). Stdlib only.

DAP_HVD_CACHE, default ~/.cache/dap-hvd. An image bakes DAP_HVD_CACHE for its own user; run as
another user (docker --user, Apptainer's read-only image, Pyxis/enroot) that folder cannot be
written, and every cache write would fail quietly: the manifest is rescanned at every start and
the sample data cannot be generated. So an unwritable folder falls back, with one warning, to
~/.cache/dap-hvd, or to a folder of this user's under the system's temporary folder.
"""

from __future__ import annotations

import functools
import logging
import os
import tempfile
from pathlib import Path
from typing import Optional

log = logging.getLogger("dap_hvd")


def cache_root() -> Path:
    return resolve(os.environ.get("DAP_HVD_CACHE") or None, os.path.expanduser("~"), os.getuid())


def _writable(path: Path) -> bool:
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError:
        return False
    return os.access(path, os.W_OK | os.X_OK)  # also False on a read-only mount, even for root


@functools.lru_cache(maxsize=None)  # one check, and one warning, per configured folder
def resolve(configured: Optional[str], home: str, uid: int) -> Path:
    default = Path(home) / ".cache" / "dap-hvd"
    first = Path(configured) if configured else default
    if _writable(first):
        return first
    for fallback in (default, Path(tempfile.gettempdir()) / f"dap-hvd-cache-{uid}"):
        if fallback != first and _writable(fallback):
            log.warning("cache folder %s is not writable (DAP_HVD_CACHE%s); using %s instead: mount a writable "
                        "folder there, or set DAP_HVD_CACHE", first, "" if configured else " unset", fallback)
            return fallback
    return first  # nothing writable: the cache writes fail, each one saying where
