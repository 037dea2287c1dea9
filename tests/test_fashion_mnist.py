"""The Fashion-MNIST converter, on IDX files the test writes (the suite needs no Debian package)."""

import gzip
import hashlib

import numpy as np
import pytest
from PIL import Image

from dap_hvd import DataError
from dap_hvd.data.catalog import load_catalog
from dap_hvd.data.fashion_mnist import CLASSES, FashionSpec, read_idx, write_fashion_mnist


def _idx(path, array, gz=True):
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    data = header + array.astype(np.uint8).tobytes()
    (path.with_name(path.name + ".gz") if gz else path).write_bytes(gzip.compress(data, mtime=0) if gz else data)


@pytest.fixture
def idx_source(tmp_path):
    rng = np.random.default_rng(0)
    src = tmp_path / "idx"
    src.mkdir()
    for stem, n in (("train", 60), ("t10k", 20)):
        labels = np.arange(n) % 10
        images = rng.integers(0, 256, size=(n, 28, 28))
        images[:, 0, 0] = labels  # each image carries its label in a pixel, to check the folders
        _idx(src / f"{stem}-images-idx3-ubyte", images, gz=stem == "train")
        _idx(src / f"{stem}-labels-idx1-ubyte", labels, gz=stem == "train")
    return src


def _tree_digest(root):
    h = hashlib.sha256()
    for p in sorted(root.rglob("*.png")):
        h.update(str(p.relative_to(root)).encode() + p.read_bytes())
    return h.hexdigest()


def test_writes_the_imagenet_layout_with_class_named_folders(idx_source, tmp_path):
    root = write_fashion_mnist(tmp_path / "fm", FashionSpec(), source=idx_source)
    train, val = load_catalog(root, "train"), load_catalog(root, "val")
    assert train.classes == tuple(sorted(CLASSES)) and len(train) == 60 and len(val) == 20
    for path in list(root.glob("train/*/*.png"))[:20]:
        label = np.asarray(Image.open(path))[0, 0]
        assert path.parent.name == CLASSES[label]


def test_subsets_are_class_balanced_deterministic_and_reused(idx_source, tmp_path):
    spec = FashionSpec(train_per_class=3, val_per_class=1, seed=5)
    a = write_fashion_mnist(tmp_path / "a", spec, source=idx_source)
    b = write_fashion_mnist(tmp_path / "b", spec, source=idx_source)
    assert _tree_digest(a) == _tree_digest(b)  # same arguments, same bytes
    assert all(len(list((a / "train" / c).iterdir())) == 3 for c in CLASSES)
    assert len(list(a.glob("val/*/*.png"))) == 10
    other = write_fashion_mnist(tmp_path / "c", FashionSpec(train_per_class=3, val_per_class=1, seed=6),
                                source=idx_source)
    assert _tree_digest(other) != _tree_digest(a)
    mtime = (a / "fashion-mnist.json").stat().st_mtime_ns
    write_fashion_mnist(a, spec, source=idx_source)  # written before: reused as it is
    assert (a / "fashion-mnist.json").stat().st_mtime_ns == mtime
    with pytest.raises(DataError, match="fewer than 7 asked"):
        write_fashion_mnist(tmp_path / "d", FashionSpec(train_per_class=7), source=idx_source)


def test_bad_or_missing_idx_files_are_named(idx_source, tmp_path):
    with pytest.raises(DataError, match=r"no train-images-idx3-ubyte.*apt-get install dataset-fashion-mnist"):
        write_fashion_mnist(tmp_path / "x", source=tmp_path)
    broken = idx_source / "t10k-labels-idx1-ubyte"
    broken.write_bytes(broken.read_bytes()[:-3])
    with pytest.raises(DataError,
                       match=r"t10k-labels-idx1-ubyte: holds 17 bytes of data, its header says shape \(20,\)"):
        read_idx(broken)
    with pytest.raises(DataError, match="t10k-labels-idx1-ubyte"):
        write_fashion_mnist(tmp_path / "y", source=idx_source)
    assert not (tmp_path / "y").exists()  # nothing half-written is left under the name


def test_never_replaces_a_folder_it_did_not_write(idx_source, tmp_path, capsys):
    """The rule make-sample-data has: a typo such as `make-fashion-mnist /datasets/imagenet`
    must not wipe a dataset (it did: an unconditional rmtree, exit 0)."""
    from dap_hvd.cli import main

    imagenet = tmp_path / "imagenet"
    (imagenet / "train" / "n01440764").mkdir(parents=True)
    (imagenet / "train" / "n01440764" / "a.JPEG").write_bytes(b"precious")
    (imagenet / "LICENSE.txt").write_text("LICENSE")
    afile = tmp_path / "notes.txt"
    afile.write_text("precious")
    args = ["--source", str(idx_source), "--train-per-class", "2", "--val-per-class", "1"]
    for target in (imagenet, afile):
        assert main(["make-fashion-mnist", str(target), *args]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "was not written by make-fashion-mnist" in err[0] and "--force" in err[0]
    assert (imagenet / "train" / "n01440764" / "a.JPEG").read_bytes() == b"precious"
    assert (imagenet / "LICENSE.txt").is_file() and afile.read_text() == "precious"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp folder or lock left
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["make-fashion-mnist", str(empty), *args]) == 0
    again = ["make-fashion-mnist", str(empty), "--seed", "3", *args]
    assert main(again) == 0  # its own dataset (another subset): replaced without --force
    assert main(["make-fashion-mnist", str(imagenet), "--force", *args]) == 0
    assert not (imagenet / "LICENSE.txt").exists() and len(list(imagenet.glob("train/*/*.png"))) == 20


def test_a_short_run_on_fashion_mnist_just_works_with_defaults_that_fit(idx_source, tmp_path):
    """The README's recipe: `--data FMNIST --epochs 4` with nothing else gives resnet_small at the
    images' 28 px and the default preset scaled to 4 epochs, and says so."""
    import json
    import subprocess
    import sys

    data, out = tmp_path / "fm", tmp_path / "run"
    write_fashion_mnist(data, FashionSpec(train_per_class=6, val_per_class=2), source=idx_source)
    p = subprocess.run([sys.executable, "-m", "dap_hvd", "train", "--data", str(data), "--epochs", "4", "--out",
                        str(out), "--no-progress", "--workers", "1", "--batch-size", "16"],
                       capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-3000:]
    assert f"small images (28 px) in {data}: resnet_small at 28 px" in p.stdout
    assert "'imagenet' preset (120 epochs) scaled to 4" in p.stdout
    s = json.loads((out / "summary.json").read_text())
    assert s["model"] == "resnet_small" and s["epochs_completed"] == 4
