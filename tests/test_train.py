"""`dap-hvd train` end to end with 2 real Gloo ranks on the sample data."""

import json
import math
import re
import os
import signal
import subprocess
import time

import pytest

from conftest import DAP_HVD, HOROVODRUN, _env, horovodrun, mpirun, run
from dap_hvd.schedule import Schedule, plan
from dap_hvd.selection import selection_digest

pytestmark = pytest.mark.multirank
SCHED = ["--epochs", "6", "--warmup", "1", "--interval", "1", "--keep", "0.7", "--reuse", "4"]
COMMON = ["--batch-size", "16", "--lr", "0.2", "--lr-warmup-epochs", "1", "--no-progress", "--workers", "1"]


def train(data, out, *extra, np_=2, timeout=300, check=True):
    args = [DAP_HVD, "train", "--data", data, "--out", out, *SCHED, *COMMON, *map(str, extra)]
    return horovodrun(np_, args, timeout=timeout, check=check)


def summary(out):
    return json.loads((out / "summary.json").read_text())


@pytest.mark.parametrize("strategy", ["dap", "random", "full"])
def test_two_rank_training_matches_plan(tiny_data, tmp_path, strategy):
    out = tmp_path / strategy
    train(tiny_data, out, "--strategy", strategy)
    s = summary(out)
    assert s["strategy"] == strategy and s["world_size"] == 2 and len(s["epochs"]) == 6
    n, gb = s["num_samples"], s["global_batch"]
    sched = Schedule(6, 1, 1, 0.7 if strategy != "full" else 1.0, None, (4,))
    planned = plan(sched, num_samples=n)
    for e, p in zip(s["epochs"], planned.epochs):
        assert abs(e["samples"] - p.size) < gb  # within one global batch (padding only)
        assert e["subset"] == p.size
        assert e["samples"] == e["subset"] + e["padding"] and 0 <= e["padding"] < 2  # counted exactly
    assert s["compute_ratio_planned"] == pytest.approx(planned.compute_ratio)
    assert abs(s["compute_ratio_measured"] - s["compute_ratio_planned"]) < 6 * gb / (6 * n)
    assert s["samples_trained"] == sum(e["samples"] for e in s["epochs"])
    assert 0.2 < s["top1"] <= 1 and s["top1"] <= s["top5"] <= 1  # chance is 0.1
    assert s["epochs"][0]["selection_digest"] == selection_digest(list(range(n)))
    if strategy == "full":
        assert s["compute_ratio_measured"] == pytest.approx(1.0, abs=0.01)
    else:
        assert s["compute_ratio_measured"] < 0.9
    assert (out / "train.log").is_file() and (out / "config.yaml").is_file()
    assert len(list((out / "checkpoints").glob("epoch-*.pt"))) == 2  # last K kept


def test_dap_and_random_keep_different_samples(tiny_data, tmp_path):
    digests = {}
    for strategy in ("dap", "random"):
        train(tiny_data, tmp_path / strategy, "--strategy", strategy, "--epochs", "3", "--reuse", "3")
        digests[strategy] = [e["selection_digest"] for e in summary(tmp_path / strategy)["epochs"]]
    assert digests["dap"][0] == digests["random"][0] and digests["dap"][2] != digests["random"][2]


def test_resume_replays_the_same_selections(tiny_data, tmp_path):
    full, part = tmp_path / "full", tmp_path / "part"
    train(tiny_data, full)
    train(tiny_data, part, "--stop-after", "3")  # stopped after epoch 3 (between the drops)
    assert summary(part)["epochs_completed"] == 3
    horovodrun(2, [DAP_HVD, "train", "--resume", part, "--no-progress"], timeout=300)
    a, b = summary(full)["epochs"], summary(part)["epochs"]
    assert [e["epoch"] for e in b] == list(range(1, 7))
    assert [e["selection_digest"] for e in a] == [e["selection_digest"] for e in b]
    assert [e["train_loss"] for e in a] == pytest.approx([e["train_loss"] for e in b], rel=1e-4)
    assert summary(part)["top1"] == pytest.approx(summary(full)["top1"])
    # a finished run is extended by a larger --epochs
    horovodrun(2, [DAP_HVD, "train", "--resume", part, "--epochs", "8", "--no-progress"], timeout=300)
    ext = summary(part)
    assert ext["epochs_completed"] == 8 and [e["selection_digest"] for e in ext["epochs"][:6]] == \
        [e["selection_digest"] for e in a]


def test_checkpoints_load_with_weights_only(tiny_data, tmp_path):
    import torch

    train(tiny_data, tmp_path / "r", "--epochs", "2", "--reuse", "2")
    ckpt = torch.load(sorted((tmp_path / "r" / "checkpoints").glob("*.pt"))[-1], weights_only=True)
    assert {"model", "optimizer", "selection", "state", "torch_rng"} <= set(ckpt)
    assert ckpt["selection"].dtype == torch.int64 and json.loads(ckpt["state"])["epoch"] == 2


def _plant_truncated(root):
    cls = sorted((root / "train").iterdir())[2]
    victim = sorted(cls.iterdir())[5]
    data = victim.read_bytes()
    victim.write_bytes(data[: len(data) // 3])
    return victim


@pytest.mark.parametrize("loader", ["dali", "torch"])
def test_bad_file_stops_training_naming_it(data_copy, tmp_path, loader):
    victim = _plant_truncated(data_copy)
    p = train(data_copy, tmp_path / "bad", "--loader", loader, "--epochs", "2", "--reuse", "2", check=False)
    assert p.returncode != 0
    # our one-line error names the rank and the file (horovodrun adds its own launcher traceback)
    assert re.search(rf"dap-hvd train: error on rank \d: .*{re.escape(victim.name)}", p.stderr)


def test_skip_bad_samples_excludes_and_counts(data_copy, tmp_path):
    victim = _plant_truncated(data_copy)
    out = tmp_path / "skip"
    p = train(data_copy, out, "--on-bad-sample", "skip", "--epochs", "2", "--reuse", "2")
    s = summary(out)
    assert s["skipped_bad_samples"] == 1 and s["num_samples"] == 399
    assert victim.name in (out / "train.log").read_text() + p.stdout + p.stderr


def test_mpirun_training_with_mpi4py_comm(tiny_data, tmp_path):
    out = tmp_path / "mpi"
    mpirun(2, [DAP_HVD, "train", "--mpi", "--data", tiny_data, "--out", out, *SCHED, *COMMON, "--epochs", "2",
               "--reuse", "2"], timeout=300)
    assert summary(out)["world_size"] == 2


def test_a_dead_rank_ends_the_job(tiny_data, tmp_path):
    out = tmp_path / "dead"
    cmd = [HOROVODRUN, "--gloo", "-np", "2", "-H", "localhost:2", DAP_HVD, "train", "--data", str(tiny_data),
           "--out", str(out), *SCHED, *COMMON, "--epochs", "40", "--reuse", "20"]
    proc = subprocess.Popen(cmd, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    try:
        deadline = time.time() + 120
        while time.time() < deadline and not (out / "summary.json").exists():
            time.sleep(0.5)
        assert (out / "summary.json").exists(), "training never finished an epoch"
        pids = subprocess.run(["pgrep", "-f", f"train --data {tiny_data} --out {out}"], capture_output=True,
                              text=True).stdout.split()
        victims = [int(p) for p in pids if int(p) != proc.pid]
        assert victims, "found no rank processes"
        os.kill(victims[-1], signal.SIGKILL)
        rc = proc.wait(timeout=120)
        assert rc != 0
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            pytest.fail("the job hung after a rank died")


def test_recipe_options_run_end_to_end(tiny_data, tmp_path):
    """The options CI can exercise on CPU: the torch loader, cosine LR, bf16 autocast,
    channels_last (inputs only: Horovod needs contiguous parameters), fp16 gradient compression,
    Nesterov, colour jitter and PCA lighting, from a YAML config."""
    cfg = tmp_path / "c.yaml"
    cfg.write_text("optim: {nesterov: true, lr_schedule: cosine, amp: bf16, channels_last: 'on',"
                   " fp16_allreduce: true}\ndata: {loader: torch, color_jitter: 0.2, pca_lighting: 0.1}\n")
    out = tmp_path / "opts"
    train(tiny_data, out, "--config", cfg, "--epochs", "3", "--reuse", "3")
    s = summary(out)
    assert len(s["epochs"]) == 3 and all(math.isfinite(e["train_loss"]) for e in s["epochs"])
    lrs = [e["lr"] for e in s["epochs"]]
    assert lrs[0] > lrs[1] > lrs[2] > 0  # cosine decays to ~0 over the planned steps
    import yaml

    saved = yaml.safe_load((out / "config.yaml").read_text())
    assert saved["optim"]["amp"] == "bf16" and saved["data"]["loader"] == "torch"


def test_sync_bn_without_gpu_is_a_clear_error(tiny_data, tmp_path):
    p = run([DAP_HVD, "train", "--data", tiny_data, "--out", tmp_path / "s", "--sync-bn", "--epochs", "1",
             "--reuse", "1"], timeout=120, check=False)
    assert p.returncode == 2 and "--sync-bn" in p.stderr and "Traceback" not in p.stderr


def test_a_fresh_run_moves_an_earlier_one_aside(tiny_data, tmp_path):
    out = tmp_path / "again"
    for _ in range(2):
        train(tiny_data, out, "--epochs", "1", "--reuse", "1", np_=1)
    kept = [p for p in tmp_path.iterdir() if p.name.startswith("again.")]
    assert len(kept) == 1 and (kept[0] / "summary.json").exists()
    assert [p.name for p in (out / "checkpoints").iterdir()] == ["epoch-0001.pt"]
