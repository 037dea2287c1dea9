"""The dataset catalog: every sample's path, class and stable global index.

Accepts the ImageNet folder layout (root/<split>/<class>/<file>) or a file list ("path label"
per line, paths relative to the root). Global indices follow sorted class names, then sorted
file names, so they are the same on every rank and every run. Scanning 1.28M files is slow, so
the scan is cached in a manifest that is rebuilt when any class folder changes (a folder's mtime
changes whenever an entry is added, removed or renamed in it) or the file list changes.

One containment rule for both layouts and for the cached manifests: a sample's path, relative to
its root, is normalized lexically and must not be absolute or start with `..`. Symlinks are
followed wherever they point (a `train/` linked to another volume is a normal way to stage
ImageNet). File names must be UTF-8 (DALI and the digests need them as text).
No torch import.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np

from dap_hvd import DataError
from dap_hvd.files import write_atomic

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
MANIFEST_VERSION = 1


@dataclass(frozen=True)
class Catalog:
    root: Path  # paths are relative to this
    paths: tuple[str, ...]
    labels: np.ndarray  # int64 class of each global index
    classes: tuple[str, ...]
    named: bool = True  # classes are folder names; False for a file list, whose labels are numbers

    def __len__(self) -> int:
        return len(self.paths)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def files(self, indices: np.ndarray) -> list[str]:
        root = str(self.root)
        return [os.path.join(root, self.paths[i]) for i in indices]

    def labelled_by(self, classes: tuple[str, ...], source: str, named: bool = True) -> "Catalog":
        """This (validation) catalog with its labels mapped to the training `classes` by name,
        not by folder position: a val split that lacks one class must not shift every later class
        onto the wrong label. A class that training lacks cannot be scored, and is an error.
        When either side is a file list there are no names, only numbers: a file list's label k
        means the k-th class folder in sorted order, so labels are kept, and must be in range."""
        if not (named and self.named):
            if len(self.labels) and int(self.labels.max()) >= len(classes):
                raise DataError(f"{self.root}: validation label {int(self.labels.max())} is out of range for the "
                                f"{len(classes)} training classes of {source}")
            return Catalog(self.root, self.paths, self.labels, tuple(classes), named=named and self.named)
        unknown = [c for c in self.classes if c not in classes]
        if unknown:
            shown = ", ".join(unknown[:5]) + (f" (and {len(unknown) - 5} more)" if len(unknown) > 5 else "")
            raise DataError(f"{self.root}: class(es) {shown} are not among the training classes of {source}")
        index = {c: i for i, c in enumerate(classes)}
        mapping = np.array([index[c] for c in self.classes], dtype=np.int64)
        return Catalog(self.root, self.paths, mapping[self.labels], tuple(classes))

    def digest(self, excluded: Optional[np.ndarray] = None) -> str:
        """sha256 of what a run trains on: relative paths, labels and the excluded indices. Every
        rank (and a resumed run) must see the same one, or global indices mean different images."""
        h = hashlib.sha256()
        h.update("\n".join(self.paths).encode())
        h.update(np.asarray(self.labels, dtype="<i8").tobytes())
        h.update(np.asarray(excluded if excluded is not None else [], dtype="<i8").tobytes())
        return h.hexdigest()


def first_difference(mine: tuple[str, ...], theirs: tuple[str, ...]) -> str:
    """Where two path lists part ways, in words (for a dataset mismatch between ranks)."""
    for i, (a, b) in enumerate(zip(mine, theirs)):
        if a != b:
            return f"sample {i} is {a!r} here and {b!r} on rank 0"
    if len(mine) != len(theirs):
        i = min(len(mine), len(theirs))
        extra = mine[i] if len(mine) > i else theirs[i]
        return (f"{len(mine)} samples here and {len(theirs)} on rank 0; the first unmatched one is {extra!r} "
                f"({'only here' if len(mine) > i else 'only on rank 0'})")
    return "the same paths, but different labels or excluded samples"


def dataset_mismatch(what: str, paths: tuple[str, ...], root_paths: tuple[str, ...], *, rank: int, host: str,
                     differing: list[int]) -> str:
    """The error a rank raises when the ranks in `differing` hold another `what` dataset than
    rank 0 (whose paths are `root_paths`). Every rank fails, none stalls: a differing rank names
    its host and its first differing path, the others point to those ranks' errors."""
    if rank in differing:
        return (f"rank {rank} on {host}: the {what} dataset differs from rank 0's: "
                f"{first_difference(paths, root_paths)}; every rank must see the same files")
    return (f"rank(s) {differing} hold a different {what} dataset from rank 0's (their own errors name the host "
            f"and the first differing path); every rank must see the same files")


def cache_root() -> Path:
    """DAP_HVD_CACHE, default ~/.cache/dap-hvd (a writable fallback if it is not: cachedir.py)."""
    from dap_hvd.cachedir import cache_root as writable_cache_root

    return writable_cache_root()


def _cache_dir() -> Path:
    return cache_root() / "manifests"


def load_catalog(root: str | Path, split: str, file_list: Optional[str] = None,
                 cache: bool = True) -> Catalog:
    """The catalog of `root/split` (folder layout) or of `file_list` (relative to `root`)."""
    root = Path(root).resolve()
    if file_list:
        return _from_file_list(root, Path(file_list))
    split_dir = root / split
    if not split_dir.is_dir():
        raise DataError(f"{split_dir}: no '{split}' folder; expected the ImageNet layout "
                        f"{root}/{split}/<class>/<image> or a file list")
    manifest = _cache_dir() / (hashlib.sha256(str(split_dir).encode()).hexdigest()[:24] + ".json")
    class_dirs = sorted(_utf8(e) for e in _scan(split_dir) if _is(e, "dir") and not e.name.startswith("."))
    if not class_dirs:
        raise DataError(f"{split_dir}: has no class folders")
    stamps = {c: os.stat(split_dir / c).st_mtime_ns for c in class_dirs}
    if cache:
        cached = _read_manifest(manifest, str(split_dir), stamps)
        if cached is not None and _contained_all(cached["paths"]):
            return Catalog(split_dir, tuple(cached["paths"]), np.asarray(cached["labels"], dtype=np.int64),
                           tuple(cached["classes"]))
    paths, labels = [], []
    for label, cls in enumerate(class_dirs):
        names = sorted(_utf8(e) for e in _scan(split_dir / cls)
                       if e.name.lower().endswith(IMAGE_EXTENSIONS) and _is(e, "file"))
        paths.extend(f"{cls}/{n}" for n in names)
        labels.extend([label] * len(names))
    if not paths:
        raise DataError(f"{split_dir}: no image files ({', '.join(IMAGE_EXTENSIONS)}) in any class folder")
    if cache:
        _write_manifest(manifest, dict(version=MANIFEST_VERSION, split_dir=str(split_dir), stamps=stamps,
                                       classes=class_dirs, paths=paths, labels=labels))
    return Catalog(split_dir, tuple(paths), np.asarray(labels, dtype=np.int64), tuple(class_dirs))


def _scan(folder: Path) -> list:
    try:
        return list(os.scandir(folder))
    except OSError as e:
        raise DataError(f"{folder}: cannot list it ({e.strerror or e}); run `dap-hvd verify-data`") from None


def _is(entry: os.DirEntry, kind: str) -> bool:
    """entry.is_dir()/is_file(), with a link that cannot be followed (a loop) named, not a traceback."""
    try:
        return entry.is_dir() if kind == "dir" else entry.is_file()
    except OSError as e:
        raise DataError(f"{entry.path}: cannot be read ({e.strerror or e}; a symlink loop?); remove it, "
                        f"or run `dap-hvd verify-data` to list every such problem") from None


def shown(path: str) -> str:
    """A path fit to print and log: bytes that are not UTF-8 as \\xNN escapes."""
    return os.fsencode(path).decode("utf-8", "backslashreplace")


def _utf8(entry: os.DirEntry) -> str:
    """The entry's name, or a DataError naming it when the name is not UTF-8."""
    try:
        entry.name.encode()
    except UnicodeEncodeError:
        raise DataError(f"{shown(entry.path)}: the file name is not valid UTF-8; rename it (e.g. with "
                        f"`convmv -f latin1 -t utf8`), or leave it out with a file list") from None
    return entry.name


def contained(rel: str) -> Optional[str]:
    """The containment rule: `rel` normalized, or None when it is absolute or leaves its root."""
    norm = os.path.normpath(rel)
    if os.path.isabs(norm) or norm == ".." or norm.startswith("../") or norm == ".":
        return None
    return norm


def _contained_all(paths: list) -> bool:
    return all(isinstance(p, str) and contained(p) == p for p in paths)


def parse_file_list(root: Path, file_list: Path) -> tuple[list[str], list[int], list[str]]:
    """-> (paths, labels, problems). Problems name the file and line; a path listed twice is one."""
    root = root.resolve()
    if not file_list.is_file():
        raise DataError(f"{file_list}: file list does not exist")
    paths, labels, problems, first = [], [], [], {}
    for lineno, raw in enumerate(file_list.read_bytes().splitlines(), 1):
        where = f"{file_list}:{lineno}"
        try:
            line = raw.decode()
        except UnicodeDecodeError:
            problems.append(f"{where}: not valid UTF-8 ({raw[:80]!r})")
            continue
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        parts = line.rsplit(None, 1)
        if len(parts) != 2:
            problems.append(f"{where}: expected 'path label', got {line!r}")
            continue
        rel, label = parts
        try:
            label_i = int(label)
            if label_i < 0:
                raise ValueError
        except ValueError:
            problems.append(f"{where}: label {label!r} is not a non-negative integer")
            continue
        norm = contained(rel)
        if norm is None:
            problems.append(f"{where}: {rel!r} points outside the data root {root}")
            continue
        if norm in first:
            problems.append(f"{where}: {rel!r} is listed again (first on line {first[norm]}); each sample once")
            continue
        first[norm] = lineno
        if not (root / norm).is_file():
            problems.append(f"{where}: {rel!r} does not exist under {root}")
            continue
        paths.append(norm)
        labels.append(label_i)
    return paths, labels, problems


def _from_file_list(root: Path, file_list: Path) -> Catalog:
    paths, labels, problems = parse_file_list(root, file_list)
    if problems:
        more = f"\n  ... and {len(problems) - 10} more" if len(problems) > 10 else ""
        raise DataError("bad file list:\n  " + "\n  ".join(problems[:10]) + more)
    if not paths:
        raise DataError(f"{file_list}: lists no samples")
    num_classes = max(labels) + 1
    return Catalog(root, tuple(paths), np.asarray(labels, dtype=np.int64),
                   tuple(str(c) for c in range(num_classes)), named=False)


def _read_manifest(path: Path, split_dir: str, stamps: dict) -> Optional[dict]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if data.get("version") != MANIFEST_VERSION or data.get("split_dir") != split_dir or data.get("stamps") != stamps:
        return None  # stale: a class folder was added, removed or changed
    return data


def _write_manifest(path: Path, data: dict) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(path, json.dumps(data).encode())
    except OSError:
        pass  # a read-only cache only costs a rescan next time
