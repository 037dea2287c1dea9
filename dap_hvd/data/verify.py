"""Find every bad sample before it costs a GPU hour: `dap-hvd verify-data ROOT`."""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np

from dap_hvd import DataError
from dap_hvd.data.catalog import IMAGE_EXTENSIONS, parse_file_list
from dap_hvd.files import write_atomic


def check_image(path: str) -> Optional[str]:
    """None if `path` decodes completely; otherwise why not."""
    from PIL import Image, UnidentifiedImageError

    try:
        size = os.path.getsize(path)
        if size == 0:
            return "empty file"
        with Image.open(path) as im:
            im.verify()  # structure and checksums
        with Image.open(path) as im:
            im.load()  # a full decode catches truncation that verify() misses
            if im.width < 1 or im.height < 1:
                return "zero-sized image"
    except UnidentifiedImageError:
        return "not an image"
    except OSError as e:
        msg = str(e)
        return "truncated image" if "truncated" in msg.lower() else f"corrupt image ({msg})"
    except Exception as e:  # PIL raises many types for corrupt data
        return f"corrupt image ({type(e).__name__}: {e})"
    return None


BAD_DATA_HINT = "run `dap-hvd verify-data` on the dataset, or train with --on-bad-sample skip"


def describe_bad(paths: list[str]) -> Optional[str]:
    """One line naming the files of `paths` that do not decode (the first five), with what to do;
    None if every one decodes."""
    bad = find_bad(paths)
    if not bad:
        return None
    listed = "; ".join(f"{p}: {r}" for p, r in bad[:5])
    return f"bad file(s) in this rank's shard: {listed}; {BAD_DATA_HINT}"


def find_bad(paths: list[str], workers: int = 4) -> list[tuple[str, str]]:
    """(path, reason) for each path that does not decode, in input order."""
    with ThreadPoolExecutor(max_workers=workers) as pool:
        reasons = list(pool.map(check_image, paths, chunksize=64))
    return [(p, r) for p, r in zip(paths, reasons) if r]


def _kind(entry: os.DirEntry) -> str:
    """dir | file | loop (a link that cannot be followed) | other."""
    try:
        if entry.is_dir():
            return "dir"
        if entry.is_file():
            return "file"
        return "loop" if entry.is_symlink() else "other"
    except OSError:  # ELOOP: is_dir() follows the link and raises
        return "loop"


@dataclass
class Report:
    bad_files: list[tuple[str, str]] = field(default_factory=list)
    empty_classes: list[str] = field(default_factory=list)
    bad_lines: list[str] = field(default_factory=list)
    checked: int = 0

    @property
    def ok(self) -> bool:
        return not (self.bad_files or self.empty_classes or self.bad_lines)

    def render(self) -> str:
        lines = [f"{p}: {r}" for p, r in self.bad_files]
        lines += [f"{c}: empty class folder" for c in self.empty_classes]
        lines += self.bad_lines
        status = "OK" if self.ok else f"{len(lines)} problem(s)"
        return "\n".join(lines + [f"checked {self.checked} files: {status}"])


def verify_data(root: str, splits=("train", "val"), file_list: Optional[str] = None, workers: int = 4) -> Report:
    report = Report()
    rootp = Path(root).resolve()
    if file_list:
        paths, _, problems = parse_file_list(rootp, Path(file_list))
        report.bad_lines += problems
        full = [str(rootp / p) for p in paths]
    else:
        full = []
        present = [s for s in splits if (rootp / s).is_dir()]
        for split in splits:
            if split not in present:  # training needs both splits: a missing one is a problem too
                report.bad_lines.append(f"{rootp / split}: missing; expected the ImageNet layout "
                                        f"{rootp}/{split}/<class>/<image>")
        for split in present:
            for cls in sorted(os.scandir(rootp / split), key=lambda e: e.name):
                kind = _kind(cls)
                if kind != "dir" or cls.name.startswith("."):
                    if kind == "loop":
                        report.bad_files.append((cls.path, "unreadable (a symlink loop, or a dangling link)"))
                    continue
                entries = []
                for e in sorted(os.scandir(cls.path), key=lambda e: e.name):
                    kind = _kind(e)
                    if kind == "file":
                        entries.append(e.path)
                    elif kind == "loop":
                        report.bad_files.append((e.path, "unreadable (a symlink loop, or a dangling link)"))
                if not entries:
                    report.empty_classes.append(cls.path)
                for e in entries:
                    if e.lower().endswith(IMAGE_EXTENSIONS):
                        full.append(e)
                    else:
                        report.bad_files.append((e, "not an image file (unknown extension)"))
    report.checked = len(full) + len(report.bad_files)
    report.bad_files += find_bad(full, workers=workers)
    return report


def explain_bad_data(e: Exception, rank: int, cat, indices: np.ndarray) -> DataError:
    """A loader's failure on this rank's shard as one DataError that names the file when it can:
    from the loader's tag, else by checking the shard's files with PIL."""
    from dap_hvd.data.spec import BadSampleError

    if isinstance(e, BadSampleError) and e.tag is not None:
        idx = e.tag if e.tag >= 0 else -e.tag - 1
        return DataError(f"rank {rank}: cannot decode {cat.files([idx])[0]}: {e.reason}; {BAD_DATA_HINT}")
    bad = describe_bad(cat.files(np.unique(indices)))
    err = DataError(f"rank {rank}: {bad}" if bad else f"rank {rank}: the data loader failed: {e}")
    err.unclean = bool(getattr(e, "broken", False))
    return err


def exclude_bad_samples(cat, digest: str, world, split: str, workers: int) -> np.ndarray:
    """--on-bad-sample skip: every rank checks its share of files; the union is excluded (sorted
    global indices, the same on every rank). The result is cached under DAP_HVD_CACHE, keyed by
    the catalog's digest, so a resume (or the next run on the same files) does not decode the
    whole dataset again."""
    import json
    import logging

    import torch

    from dap_hvd import dist

    log = logging.getLogger("dap_hvd")
    cache = scan_cache(cat, digest)
    cached = None
    if world.is_root and cache.is_file():
        try:
            cached = json.loads(cache.read_text())["bad"]
        except (OSError, ValueError, KeyError):
            cached = None
    cached = dist.broadcast_json(cached, name=f"bad_samples.{split}.cached")
    if cached is not None:
        bad = np.asarray(cached, dtype=np.int64)
        if world.is_root:
            log.info("--on-bad-sample skip: %d bad %s sample(s), from the scan cached in %s", len(bad), split, cache)
    else:
        mine = np.arange(world.rank, len(cat), world.size, dtype=np.int64)
        files = cat.files(mine)
        bad_paths = {p for p, _ in find_bad(files, workers=workers)}
        found = np.array([i for i, p in zip(mine, files) if p in bad_paths], dtype=np.int64)
        bad = np.sort(dist.allgather(torch.from_numpy(found), name=f"bad_samples.{split}").numpy())
        if world.is_root:
            try:
                cache.parent.mkdir(parents=True, exist_ok=True)
                write_atomic(cache, json.dumps({"root": str(cat.root), "bad": bad.tolist()}, indent=1).encode())
            except OSError:
                pass  # a read-only cache only costs a rescan next time
    if world.is_root:
        for i in bad:
            log.warning("skipping bad %s sample %s", split, cat.files([i])[0])
    return bad


def scan_cache(cat, digest: str) -> Path:
    """Keyed by the folder and its catalog (paths, labels), not by file contents: a file replaced in
    place under the same name keeps its verdict (`dap-hvd verify-data` checks contents)."""
    import hashlib

    from dap_hvd.data.catalog import cache_root

    key = hashlib.sha256(f"{cat.root}\n{digest}".encode()).hexdigest()
    return cache_root() / "bad-scans" / f"{key}.json"
