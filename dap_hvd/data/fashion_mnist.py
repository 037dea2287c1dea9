"""Fashion-MNIST (Xiao et al. 2017, MIT licence) in the ImageNet layout our loaders read.

Debian ships the original IDX files offline (`apt-get install dataset-fashion-mnist` puts them in
/usr/share/datasets/fashion-mnist/). `write_fashion_mnist` turns them into
OUT/{train,val}/<class name>/<index>.png, deterministically: the same arguments give the same
files, byte for byte, and a folder written before is reused when its record matches. A folder it did
not write is never replaced without --force (data/folders.py).
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Optional

import numpy as np

from dap_hvd import DataError
from dap_hvd.data.folders import new_tree, refuse_foreign, replace_tree, writer_lock

DEBIAN_DIR = Path("/usr/share/datasets/fashion-mnist")
DEBIAN_PACKAGE = "dataset-fashion-mnist"
CLASSES = ("t-shirt_top", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "ankle_boot")
_FILES = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
          "val": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}
_RECORD = "fashion-mnist.json"


@dataclass(frozen=True)
class FashionSpec:
    train_per_class: Optional[int] = None  # None: all 6,000 per class (60k)
    val_per_class: Optional[int] = None  # None: all 1,000 per class (10k)
    seed: int = 0  # which samples a subset takes (balanced per class)


def read_idx(path: Path) -> np.ndarray:
    """An IDX file (plain or .gz) as a uint8 array; a bad file is a DataError naming it."""
    try:
        raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    except (OSError, EOFError, gzip.BadGzipFile) as e:
        raise DataError(f"{path}: cannot read this IDX file ({e})") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
        raise DataError(f"{path}: not an unsigned-byte IDX file (magic {raw[:4].hex() or 'missing'})")
    ndim = raw[3]
    header = 4 + 4 * ndim
    shape = tuple(int.from_bytes(raw[4 + 4 * i:8 + 4 * i], "big") for i in range(ndim))
    if len(raw) != header + int(np.prod(shape)):
        raise DataError(f"{path}: holds {len(raw) - header} bytes of data, its header says shape {shape}")
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(shape)


def _find(source: Path, stem: str) -> Path:
    for name in (stem + ".gz", stem):
        if (source / name).is_file():
            return source / name
    raise DataError(f"{source}: no {stem}(.gz); install the Debian package with "
                    f"`apt-get install {DEBIAN_PACKAGE}`, or pass the folder holding the IDX files")


def _pick(labels: np.ndarray, per_class: Optional[int], seed: int, split: str) -> np.ndarray:
    """Indices of a class-balanced subset, in index order (all of them when per_class is None)."""
    if per_class is None:
        return np.arange(len(labels))
    rng = np.random.default_rng([seed, 0 if split == "train" else 1])
    chosen = []
    for c in range(len(CLASSES)):
        members = np.flatnonzero(labels == c)
        if per_class > len(members):
            raise DataError(f"{split}: class {CLASSES[c]} has {len(members)} images, fewer than {per_class} asked")
        chosen.append(rng.choice(members, size=per_class, replace=False))
    return np.sort(np.concatenate(chosen))


def _png(image: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(image, mode="L").save(buf, format="PNG", optimize=False)
    return buf.getvalue()


def write_fashion_mnist(out: Path, spec: FashionSpec = FashionSpec(), source: Path = DEBIAN_DIR,
                        force: bool = False) -> Path:
    """Write the dataset (or a class-balanced subset) under `out`; reuse it if written before."""
    out = Path(out)
    inputs = {split: (_find(source, a), _find(source, b)) for split, (a, b) in _FILES.items()}
    digest = hashlib.sha256(b"".join(p.read_bytes() for pair in inputs.values() for p in pair)).hexdigest()
    record = {"spec": asdict(spec), "source_sha256": digest, "classes": list(CLASSES)}
    refuse_foreign(out, _written(out) is not None, force, "make-fashion-mnist")  # before the lock file goes beside it
    with writer_lock(out):
        if not force and _written(out) == record:
            return out
        refuse_foreign(out, _written(out) is not None, force, "make-fashion-mnist")
        tmp = new_tree(out)
        try:
            _write_tree(tmp, inputs, spec)
            (tmp / _RECORD).write_text(json.dumps(record, indent=1))
            replace_tree(tmp, out)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
    return out


def _written(out: Path) -> Optional[dict]:
    """The record of a dataset this command wrote at `out`, or None."""
    try:
        return json.loads((out / _RECORD).read_text())
    except (OSError, ValueError):
        return None


def _write_tree(tmp: Path, inputs: dict, spec: FashionSpec) -> None:
    for split, (images_path, labels_path) in inputs.items():
        images, labels = read_idx(images_path), read_idx(labels_path)
        if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
            raise DataError(f"{images_path}, {labels_path}: {images.shape} images against {labels.shape} labels")
        if labels.max() >= len(CLASSES):
            raise DataError(f"{labels_path}: label {int(labels.max())} beyond the {len(CLASSES)} classes")
        per_class = spec.train_per_class if split == "train" else spec.val_per_class
        for name in CLASSES:
            (tmp / split / name).mkdir(parents=True)
        for i in _pick(labels, per_class, spec.seed, split):
            (tmp / split / CLASSES[labels[i]] / f"{i:05d}.png").write_bytes(_png(images[i]))
