"""The embedded sample dataset: deterministic bytes, a redundancy knob, the ImageNet layout."""

import hashlib
import os
from pathlib import Path

from dap_hvd.data.sample_data import SampleSpec, make_sample_data


def _tree_hash(root: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(root.rglob("*")):
        if p.is_file():
            h.update(str(p.relative_to(root)).encode() + p.read_bytes())
    return h.hexdigest()


def test_same_seed_same_bytes(tmp_path):
    spec = SampleSpec(num_classes=4, train_per_class=8, val_per_class=2, redundancy=2, image_size=32, seed=5)
    a = make_sample_data(tmp_path / "a", spec)
    b = make_sample_data(tmp_path / "b", spec)
    assert _tree_hash(a) == _tree_hash(b)
    c = make_sample_data(tmp_path / "c", SampleSpec(**{**spec.__dict__, "seed": 6}))
    assert _tree_hash(a) != _tree_hash(c)


def test_layout_and_redundancy(tmp_path):
    spec = SampleSpec(num_classes=3, train_per_class=12, val_per_class=4, redundancy=3, image_size=32)
    root = make_sample_data(tmp_path / "d", spec)
    classes = sorted(p.name for p in (root / "train").iterdir())
    assert len(classes) == 3 and classes == sorted(p.name for p in (root / "val").iterdir())
    files = sorted((root / "train" / classes[0]).iterdir())
    assert len(files) == 12 and len(list((root / "val" / classes[0]).iterdir())) == 4
    # 12 images from 4 distinct bases with 3 near-duplicates each
    assert len({f.name.split("_")[2] for f in files}) == 4


def test_idempotent_and_regenerates_on_spec_change(tmp_path):
    spec = SampleSpec(num_classes=2, train_per_class=4, val_per_class=2, redundancy=1, image_size=32)
    root = make_sample_data(tmp_path / "e", spec)
    stamp = (root / "sample-spec.json").stat().st_mtime_ns
    make_sample_data(root, spec)
    assert (root / "sample-spec.json").stat().st_mtime_ns == stamp
    make_sample_data(root, SampleSpec(**{**spec.__dict__, "train_per_class": 6}))
    assert len(list((root / "train").rglob("*.jpg"))) == 12


def test_never_replaces_what_it_did_not_write(tmp_path):
    from dap_hvd.cli import main

    real = tmp_path / "imagenet"
    (real / "train" / "n01").mkdir(parents=True)
    (real / "train" / "n01" / "a.JPEG").write_bytes(b"precious")
    afile = tmp_path / "notes.txt"
    afile.write_text("precious")
    for target in (real, afile):
        assert main(["make-sample-data", str(target), "--classes", "2", "--train-per-class", "2",
                     "--val-per-class", "1", "--redundancy", "1", "--image-size", "16"]) == 2
    assert (real / "train" / "n01" / "a.JPEG").read_bytes() == b"precious" and afile.read_text() == "precious"
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["make-sample-data", str(empty), "--classes", "2", "--train-per-class", "2", "--val-per-class", "1",
                 "--redundancy", "1", "--image-size", "16"]) == 0
    assert main(["make-sample-data", str(real), "--force", "--classes", "2", "--train-per-class", "2",
                 "--val-per-class", "1", "--redundancy", "1", "--image-size", "16"]) == 0
    assert not (real / "train" / "n01").exists() and (real / "sample-spec.json").is_file()


def test_nodes_sharing_a_cache_write_the_sample_data_once(tmp_path):
    """Every node's local rank 0 makes the sample data on first use; on a cache shared between
    nodes they must take turns: one writes it, the others find it (no ENOTEMPTY, no folder
    replaced under a node that is already reading it)."""
    import subprocess
    import sys
    import time

    root = tmp_path / "cache" / "sample"
    start = time.time() + 3
    code = ("import os, sys, time; from dap_hvd.data.sample_data import SampleSpec, make_sample_data\n"
            f"time.sleep(max(0, {start} - time.time()))\n"
            f"r = make_sample_data({str(root)!r}, SampleSpec(num_classes=4, train_per_class=40, val_per_class=4))\n"
            "print(os.stat(r).st_ino)\n")
    procs = [subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(3)]
    outs = [p.communicate(timeout=120) for p in procs]
    assert all(p.returncode == 0 for p in procs), [e[-800:] for _, e in outs]
    assert len({o.strip() for o, _ in outs}) == 1  # one folder: written once, found twice
    assert os.stat(root).st_ino == int(outs[0][0]) and len(list((root / "train").rglob("*.jpg"))) == 160
