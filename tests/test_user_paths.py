"""What a user meets beyond the happy path: bad files in the first batch, errors in train.log,
a scheduler's restarts (auto-resume, truncated or stale checkpoints), Ctrl-C, shared folders,
and the exported backbone."""

import json
import os
import re
import shutil
import signal
import stat
import subprocess

import pytest
from conftest import DAP_HVD, horovodrun, run, spawn, wait_until
from test_train import COMMON, SCHED, short, summary, train

pytestmark = pytest.mark.multirank


def _running(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/status") as f:
            return "zombie" not in f.read().lower()
    except FileNotFoundError:
        return False


def _first_file(root, split="train"):
    cls = sorted((root / split).iterdir())[1]
    return sorted(cls.iterdir())[2]


def _header_plus_garbage(victim):
    data = victim.read_bytes()
    victim.write_bytes(data[:600] + os.urandom(20000))


def test_a_bad_jpeg_in_the_first_dali_batch_gives_the_one_line_error(data_copy, tmp_path):
    """A valid header followed by garbage can make DALI's batched decoder crash the process
    (SIGSEGV) or raise in the iterator's constructor; either way the user gets one line that
    names the file and the rank, never a traceback or a bare 'Segmentation fault'."""
    victim = _first_file(data_copy)
    _header_plus_garbage(victim)
    # one batch holds the whole shard, so the bad file is in the first batch
    for attempt in range(3):  # the crash is intermittent; each attempt must end the same way
        p = run([DAP_HVD, "train", "--data", data_copy, "--out", tmp_path / f"b{attempt}", *SCHED, *COMMON,
                 *short(1), "--batch-size", "512"], timeout=180, check=False)
        assert p.returncode == 2, p.stderr[-2000:]
        last = p.stderr.strip().splitlines()[-1]
        assert re.match(rf"dap-hvd train: error on rank 0: .*{re.escape(str(victim))}", last), last
        assert "Traceback" not in p.stderr
    p = horovodrun(2, [DAP_HVD, "train", "--data", data_copy, "--out", tmp_path / "two", *SCHED, *COMMON,
                       *short(1), "--batch-size", "256"], timeout=180, check=False)
    assert p.returncode != 0
    assert re.search(rf"dap-hvd train: error on rank \d: .*{re.escape(victim.name)}", p.stdout + p.stderr)


def test_skip_covers_the_validation_split(data_copy, tmp_path):
    _header_plus_garbage(_first_file(data_copy, "val"))
    out = tmp_path / "skipval"
    train(data_copy, out, "--on-bad-sample", "skip", *short(1))
    s = summary(out)
    assert s["skipped_bad_val_samples"] == 1 and s["skipped_bad_samples"] == 0
    assert s["epochs"][0]["top1"] is not None


def test_fatal_errors_reach_train_log_and_a_bad_out_is_one_line(tiny_data, tmp_path):
    out = tmp_path / "r"
    train(tiny_data, out, *short(2), "--stop-after", "1")
    p = horovodrun(2, [DAP_HVD, "train", "--resume", out, "--keep", "0.5", "--no-progress"], timeout=120, check=False)
    assert p.returncode != 0
    logged = (out / "train.log").read_text()
    assert "ERROR dap-hvd train: error on rank 0: --resume:" in logged and "keep" in logged
    assert "ERROR dap-hvd train: error on rank 1: --resume:" in logged
    afile = tmp_path / "a_file"
    afile.write_text("x")
    for bad in (afile, afile / "sub"):
        p = run([DAP_HVD, "train", "--data", tiny_data, "--out", bad, *SCHED, *COMMON, *short(1)], timeout=120,
                check=False)
        assert p.returncode == 2 and "Traceback" not in p.stderr
        assert re.search(rf"error on rank 0: --out: .*{re.escape(str(bad))}", p.stderr), p.stderr


def test_resume_auto_continues_a_requeued_run_and_starts_fresh_otherwise(tiny_data, tmp_path):
    out = tmp_path / "auto"
    args = [DAP_HVD, "train", "--data", tiny_data, "--out", out, *SCHED, *COMMON, *short(3), "--resume", "auto"]
    horovodrun(2, [*args, "--stop-after", "1"], timeout=300)  # nothing there yet: a fresh run
    assert summary(out)["epochs_completed"] == 1
    horovodrun(2, args, timeout=300)  # the requeue: continues after epoch 1, not from scratch
    s = summary(out)
    assert s["epochs_completed"] == 3 and [e["epoch"] for e in s["epochs"]] == [1, 2, 3]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith("auto.")]  # nothing moved aside


def test_an_earlier_run_is_moved_aside_only_after_start_up_succeeds(tiny_data, data_copy, tmp_path):
    out = tmp_path / "keep"
    train(tiny_data, out, *short(1))
    shutil.rmtree(data_copy / "val")
    p = train(data_copy, out, *short(1), check=False)  # start-up fails: no val split
    assert p.returncode != 0 and "no 'val' folder" in p.stdout + p.stderr
    assert (out / "summary.json").is_file() and not [q for q in tmp_path.iterdir() if q.name.startswith("keep.")]


def test_a_truncated_newest_checkpoint_falls_back_and_stale_temps_go(tiny_data, tmp_path):
    out = tmp_path / "trunc"
    train(tiny_data, out, *short(3), "--stop-after", "2")
    newest = out / "checkpoints" / "epoch-0002.pt"
    newest.write_bytes(newest.read_bytes()[:1000])
    stale = out / "checkpoints" / ".epoch-abc123.tmp"
    stale.write_bytes(b"half a save")
    horovodrun(2, [DAP_HVD, "train", "--resume", out, "--no-progress"], timeout=300)
    logged = (out / "train.log").read_text()
    assert "cannot load" in logged and "epoch-0002.pt" in logged and "trying the one before it" in logged
    assert "removed 1 temporary file" in logged and not stale.exists()
    assert [e["epoch"] for e in summary(out)["epochs"]] == [1, 2, 3]  # epoch 2 trained again from epoch 1


def test_files_follow_the_users_umask(tiny_data, tmp_path):
    out = tmp_path / "shared"
    cmd = " ".join(map(str, [DAP_HVD, "train", "--data", tiny_data, "--out", out, *SCHED, *COMMON, *short(1)]))
    run(["sh", "-c", f"umask 002 && exec {cmd}"], timeout=180)
    for f in [*(out / "checkpoints").iterdir(), out / "summary.json", out / "config.yaml"]:
        assert stat.S_IMODE(f.stat().st_mode) == 0o664, f


def test_ctrl_c_says_how_to_resume(tiny_data, tmp_path):
    out = tmp_path / "int"
    cmd = [DAP_HVD, "train", "--data", str(tiny_data), "--out", str(out), *SCHED, *map(str, COMMON),
           "--epochs", "30", "--reuse", "20", "--lr-steps", "20"]
    proc = spawn(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_until((out / "summary.json").exists, 120, "no epoch finished")
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130
    done = json.loads((out / "summary.json").read_text())["epochs_completed"]
    newest = out / "checkpoints" / f"epoch-{done:04d}.pt"
    line = f"interrupted after epoch {done} (newest checkpoint: {newest}); resume with: dap-hvd train --resume {out}"
    assert line in err and line in (out / "train.log").read_text()


def test_export_gives_a_torchvision_backbone_with_the_runs_top1(tiny_data, tmp_path):
    import numpy as np
    import torch
    import torchvision

    from dap_hvd.data.catalog import load_catalog
    from dap_hvd.data.spec import LoaderSpec
    from dap_hvd.data.torch_loader import TorchLoader
    from dap_hvd.engine import Precision, evaluate

    out = tmp_path / "r18"
    train(tiny_data, out, *short(1), "--model", "resnet18", "--loader", "torch", np_=1)
    top1 = summary(out)["top1"]
    for name in ("backbone.safetensors", "backbone.pt"):
        dst = tmp_path / name
        p = run([DAP_HVD, "export", out, "--out", dst], timeout=120)
        assert "torchvision.models.resnet18(num_classes=10)" in p.stdout
        if name.endswith(".safetensors"):
            from safetensors.torch import load_file

            weights = load_file(dst)
        else:
            weights = torch.load(dst, weights_only=True)
        info = json.loads((tmp_path / (name + ".json")).read_text())
        model = torchvision.models.resnet18(num_classes=info["num_classes"])
        model.load_state_dict(weights)  # strict: exactly the torchvision keys
        val = load_catalog(tiny_data, "val")
        assert list(val.classes) == info["classes"]
        idx = np.arange(len(val), dtype=np.int64)
        spec = LoaderSpec(files=val.files(idx), tags=idx, batch_size=16, image_size=info["image_size"], train=False,
                          seed=0, workers=1, val_resize=int(round(info["image_size"] * 256 / 224)))
        counts = evaluate(model=model, loader=TorchLoader(spec), class_of=torch.from_numpy(val.labels),
                          precision=Precision(torch.device("cpu"), None, False))
        assert float(counts[0] / counts[2]) == pytest.approx(top1, abs=1e-12)


def test_the_trainer_does_not_outlive_a_killed_launcher_process(tiny_data, tmp_path):
    """`dap-hvd train` runs the trainer as a child; SIGKILL on the parent (a scheduler's hard kill)
    must not leave the child training on, orphaned."""
    out = tmp_path / "orphan"
    cmd = [DAP_HVD, "train", "--data", str(tiny_data), "--out", str(out), *SCHED, *map(str, COMMON),
           "--epochs", "30", "--reuse", "20", "--lr-steps", "20"]
    proc = spawn(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_until((out / "summary.json").exists, 120, "no epoch finished")
        children = subprocess.run(["pgrep", "-P", str(proc.pid)], capture_output=True, text=True).stdout.split()
        assert children, "the trainer child was not found"
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
        child = int(children[0])
        wait_until(lambda: not _running(child), 60, "the trainer kept running after its parent was killed")
        assert "interrupted after epoch" in (out / "train.log").read_text()
    finally:
        subprocess.run(["pkill", "-9", "-f", f"--out {out}"])
