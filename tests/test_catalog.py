"""Catalog: stable global indices, cached manifest with staleness detection, safe file lists."""

import os
import time

import pytest

from dap_hvd import DataError
from dap_hvd.data.catalog import dataset_mismatch, first_difference, load_catalog


def test_indices_are_stable_and_sorted(tiny_data):
    a = load_catalog(tiny_data, "train", cache=False)
    b = load_catalog(tiny_data, "train")  # writes the manifest
    c = load_catalog(tiny_data, "train")  # reads it
    assert a.paths == b.paths == c.paths and len(a) == 400 and a.num_classes == 10
    assert list(a.classes) == sorted(a.classes)
    assert a.labels[0] == 0 and a.labels[-1] == 9 and (a.labels[:-1] <= a.labels[1:]).all()


def test_manifest_is_rebuilt_when_a_class_folder_changes(data_copy):
    before = load_catalog(data_copy, "train")
    cls = data_copy / "train" / before.classes[3]
    time.sleep(0.01)
    (cls / "zzz_new.jpg").write_bytes((data_copy / "train" / before.paths[0]).read_bytes())
    os.utime(cls, ns=(time.time_ns(), time.time_ns() + 10**9))  # coarse-mtime filesystems
    after = load_catalog(data_copy, "train")
    assert len(after) == len(before) + 1 and any(p.endswith("zzz_new.jpg") for p in after.paths)


def test_file_list_rejects_paths_outside_root_and_bad_lines(tiny_data, tmp_path):
    first = load_catalog(tiny_data, "train").paths[0]
    good = tmp_path / "ok.txt"
    good.write_text(f"train/{first} 3\n")
    cat = load_catalog(tiny_data, "train", file_list=str(good))
    assert len(cat) == 1 and cat.labels.tolist() == [3]
    bad = tmp_path / "bad.txt"
    bad.write_text(f"../../etc/passwd 0\ntrain/{first} x\nno_label_here\n")
    with pytest.raises(DataError) as e:
        load_catalog(tiny_data, "train", file_list=str(bad))
    msg = str(e.value)
    assert "outside the data root" in msg and "bad.txt:2" in msg and "bad.txt:3" in msg


def test_missing_split_is_a_clear_error(tmp_path):
    with pytest.raises(DataError, match="no 'train' folder"):
        load_catalog(tmp_path, "train")


def _layout(root, split, classes, per_class=2):
    for c in classes:
        d = root / split / c
        d.mkdir(parents=True)
        for i in range(per_class):
            (d / f"{c}{i}.jpg").write_bytes(b"x")


def test_validation_labels_follow_class_names_not_folder_positions(tmp_path):
    _layout(tmp_path, "train", ["ant", "bee", "cat"])
    _layout(tmp_path, "val", ["ant", "cat"])  # bee missing: fine, but cat must stay class 2
    train = load_catalog(tmp_path, "train", cache=False)
    val = load_catalog(tmp_path, "val", cache=False).labelled_by(train.classes, "train")
    assert dict(zip(val.paths, val.labels.tolist())) == {"ant/ant0.jpg": 0, "ant/ant1.jpg": 0,
                                                        "cat/cat0.jpg": 2, "cat/cat1.jpg": 2}
    assert val.classes == train.classes
    _layout(tmp_path, "val2", ["ant", "dog"])
    with pytest.raises(DataError, match="dog"):
        load_catalog(tmp_path, "val2", cache=False).labelled_by(train.classes, "train")


def test_dataset_digest_covers_paths_labels_and_exclusions(tmp_path):
    _layout(tmp_path, "train", ["ant", "bee"])
    cat = load_catalog(tmp_path, "train", cache=False)
    base = cat.digest()
    assert base == load_catalog(tmp_path, "train", cache=False).digest()
    assert cat.digest(excluded=[1]) != base
    (tmp_path / "train" / "bee" / "bee1.jpg").rename(tmp_path / "train" / "bee" / "bee9.jpg")
    other = load_catalog(tmp_path, "train", cache=False)
    assert other.digest() != base
    assert "bee/bee9.jpg" in first_difference(other.paths, cat.paths)
    assert "only on rank 0" in first_difference(cat.paths[:-1], cat.paths)


def test_a_dataset_mismatch_names_the_differing_rank_its_host_and_path_and_points_the_others_to_it():
    """What each rank raises when rank 2 holds another dataset (dist.check_same_dataset's
    message, without Horovod): rank 2 names its host and its first differing path, every other
    rank names rank 2."""
    root = ("ant/a0.jpg", "bee/b0.jpg")
    mine = ("ant/a0.jpg", "bee/b9.jpg")
    odd = dataset_mismatch("train", mine, root, rank=2, host="node7", differing=[2])
    assert odd.startswith("rank 2 on node7: the train dataset differs from rank 0's: ")
    assert "sample 1 is 'bee/b9.jpg' here and 'bee/b0.jpg' on rank 0" in odd
    for rank in (0, 1):
        other = dataset_mismatch("train", root, root, rank=rank, host="node0", differing=[2])
        assert other.startswith("rank(s) [2] hold a different train dataset from rank 0's") and "node" not in other


def test_a_symlink_loop_is_a_one_line_data_error(tmp_path):
    _layout(tmp_path, "train", ["ant"])
    (tmp_path / "train" / "loop").symlink_to(tmp_path / "train" / "loop")
    with pytest.raises(DataError, match=r"train/loop: cannot be read .*symlink loop"):
        load_catalog(tmp_path, "train", cache=False)


def test_a_training_file_list_keeps_numeric_labels_for_validation_folders(tmp_path):
    """File-list labels are numbers (label k = the k-th class folder, sorted); there are no names to map."""
    _layout(tmp_path, "train", ["ant", "bee", "cat"])
    _layout(tmp_path, "val", ["ant", "bee", "cat"])
    fl = tmp_path / "list.txt"
    fl.write_text("train/ant/ant0.jpg 0\ntrain/cat/cat0.jpg 2\n")
    train = load_catalog(tmp_path, "train", file_list=str(fl))
    assert not train.named and train.classes == ("0", "1", "2")
    val = load_catalog(tmp_path, "val", cache=False).labelled_by(train.classes, "list", named=train.named)
    assert val.labels.tolist() == [0, 0, 1, 1, 2, 2]
    with pytest.raises(DataError, match="out of range"):  # val has 3 classes, training knows 2
        load_catalog(tmp_path, "val", cache=False).labelled_by(train.classes[:2], "list", named=False)


def test_a_train_folder_linked_to_another_volume_works_in_both_layouts(tmp_path):
    """One containment rule: paths are checked lexically, so a `train/` symlink (a usual way to
    stage ImageNet on another volume) serves the file list as it serves the folder layout."""
    elsewhere = tmp_path / "volume2"
    _layout(elsewhere, "train", ["ant", "bee"])
    root = tmp_path / "root"
    root.mkdir()
    (root / "train").symlink_to(elsewhere / "train")
    fl = tmp_path / "list.txt"
    fl.write_text("train/ant/ant0.jpg 0\ntrain/./bee/bee1.jpg 1\n")
    listed = load_catalog(root, "train", file_list=str(fl))
    assert listed.paths == ("train/ant/ant0.jpg", "train/bee/bee1.jpg")
    assert len(load_catalog(root, "train", cache=False)) == 4
    bad = tmp_path / "bad.txt"
    bad.write_text(f"train/../../volume2/train/ant/ant0.jpg 0\n{elsewhere}/train/ant/ant1.jpg 0\n")
    with pytest.raises(DataError) as e:
        load_catalog(root, "train", file_list=str(bad))
    assert "bad.txt:1" in str(e.value) and "bad.txt:2" in str(e.value) and "outside the data root" in str(e.value)


def test_a_planted_manifest_cannot_point_outside_the_root(data_copy, tmp_path, monkeypatch):
    import json

    from dap_hvd.data.catalog import cache_root

    monkeypatch.setenv("DAP_HVD_CACHE", str(tmp_path / "cache"))
    honest = load_catalog(data_copy, "train")  # writes the manifest
    (manifest,) = (cache_root() / "manifests").glob("*.json")
    planted = json.loads(manifest.read_text())
    secret = tmp_path / "secret.jpg"
    secret.write_bytes(b"x")
    planted["paths"][0] = os.path.relpath(secret, data_copy / "train")
    manifest.write_text(json.dumps(planted))
    again = load_catalog(data_copy, "train")
    assert again.paths == honest.paths and not any(".." in p for p in again.paths)


def test_a_path_listed_twice_is_refused(tiny_data, tmp_path):
    first = load_catalog(tiny_data, "train").paths[0]
    fl = tmp_path / "dup.txt"
    fl.write_text(f"train/{first} 0\ntrain/./{first} 0\n")
    with pytest.raises(DataError, match=r"dup.txt:2: .* is listed again \(first on line 1\)"):
        load_catalog(tiny_data, "train", file_list=str(fl))


def test_a_file_name_that_is_not_utf8_is_a_data_error_naming_it(tmp_path):
    _layout(tmp_path, "train", ["ant"])
    bad = os.path.join(os.fsencode(tmp_path / "train" / "ant"), b"caf\xe9.jpg")
    with open(bad, "wb") as f:
        f.write(b"x")
    with pytest.raises(DataError, match=r"ant/caf\\xe9.jpg: the file name is not valid UTF-8"):
        load_catalog(tmp_path, "train", cache=False).digest()
    fl = tmp_path / "list.txt"
    fl.write_bytes(b"train/ant/ant0.jpg 0\ntrain/ant/caf\xe9.jpg 0\n")
    with pytest.raises(DataError, match=r"list.txt:2: not valid UTF-8"):
        load_catalog(tmp_path, "train", file_list=str(fl))
