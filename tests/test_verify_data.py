"""verify-data finds planted corrupt, truncated, non-image and empty files, and exits non-zero."""

import subprocess
import sys

from dap_hvd.cli import main


def plant_bad_files(root):
    cls = sorted((root / "train").iterdir())
    good = sorted(cls[0].iterdir())[0].read_bytes()
    (cls[1] / "truncated.jpg").write_bytes(good[: len(good) // 2])
    (cls[2] / "garbage.jpg").write_bytes(b"this is not a jpeg" * 20)
    (cls[3] / "empty.jpg").write_bytes(b"")
    (cls[4] / "notes.txt").write_text("hello")
    (root / "train" / "c999_empty").mkdir()
    return {"truncated.jpg", "garbage.jpg", "empty.jpg", "notes.txt", "c999_empty"}


def test_clean_data_passes(tiny_data, capsys):
    assert main(["verify-data", str(tiny_data)]) == 0
    assert "OK" in capsys.readouterr().out


def test_finds_every_planted_problem(data_copy, capsys):
    planted = plant_bad_files(data_copy)
    assert main(["verify-data", str(data_copy)]) == 1
    out = capsys.readouterr().out
    for name in planted:
        assert name in out
    assert "truncated" in out and "empty" in out


def test_bad_file_list_lines(tiny_data, tmp_path):
    fl = tmp_path / "list.txt"
    fl.write_text("train/nope.jpg 1\n../x.jpg 2\n")
    p = subprocess.run([sys.executable, "-m", "dap_hvd", "verify-data", str(tiny_data), "--file-list", str(fl)],
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 1 and "list.txt:1" in p.stdout and "outside the data root" in p.stdout


def test_missing_val_and_symlink_loops_are_reported_not_crashed_on(data_copy, capsys):
    import shutil

    shutil.rmtree(data_copy / "val")
    cls = sorted((data_copy / "train").iterdir())[0]
    (cls / "a.jpg").symlink_to(cls / "b.jpg")
    (cls / "b.jpg").symlink_to(cls / "a.jpg")
    (data_copy / "train" / "loop").symlink_to(data_copy / "train" / "loop")
    assert main(["verify-data", str(data_copy)]) == 1
    out = capsys.readouterr().out
    assert f"{data_copy.resolve() / 'val'}: missing" in out
    assert "a.jpg: unreadable" in out and "loop: unreadable" in out
