"""Training at its edges, with 2 real Gloo ranks: a diverging run stops, `evaluate` scores what
the run scored, a fresh start leaves rank 0's initial weights alone, and the run's accounting
(elapsed time, RS2's warm-up, InfoBatch's bound, the interrupt message) says what it measures."""

import json
import math
import re
import signal
import subprocess

import numpy as np
import pytest
from conftest import DAP_HVD, horovodrun, run, spawn
from test_train import short, summary, train

pytestmark = pytest.mark.multirank


def length(epochs, strategy="full"):
    """`epochs` epochs with no LR decay; DaP's schedule flags only for the policies that read them."""
    return short(epochs) if strategy in ("dap", "random") else ["--epochs", str(epochs), "--lr-steps", "none"]


def _checkpoints(out):
    return sorted((out / "checkpoints").glob("epoch-*.pt")) if (out / "checkpoints").is_dir() else []


@pytest.mark.parametrize("strategy", ["full", "dap"])
def test_a_diverging_run_stops_in_the_epoch_it_diverged(tiny_data, tmp_path, strategy):
    """`full` never records scores, and DaP's epoch 1 is a warm-up epoch (no drop): neither had
    a finiteness check, so a NaN run trained, evaluated and checkpointed to its end, exit 0."""
    out = tmp_path / strategy
    p = train(tiny_data, out, "--strategy", strategy, *length(3, strategy), "--lr", "1e6", "--lr-warmup-epochs", "0",
              check=False)
    assert p.returncode != 0
    for rank in (0, 1):  # every rank stops, with the same one line, naming the epoch and what to try
        assert re.search(rf"dap-hvd train: error on rank {rank}: epoch 1: the training loss is (nan|inf): the run "
                         rf"has diverged, and stops without saving epoch 1; try a lower --lr", p.stderr), p.stderr
    assert _checkpoints(out) == []  # no NaN model saved as if it were good
    assert not (out / "summary.json").exists()


def test_evaluate_scores_exactly_what_the_run_scored(data_copy, tmp_path):
    """A bad validation file skipped by the run (--on-bad-sample skip) is skipped by `evaluate`
    too (it is stored in the checkpoint), and the model is rebuilt as the trainer built it, fp32
    head included (bf16 autocast here, as on a GPU)."""
    victim = sorted(sorted((data_copy / "val").iterdir())[1].iterdir())[2]
    victim.write_bytes(victim.read_bytes()[:600] + bytes(20000))
    out = tmp_path / "ev"
    # bf16 convolutions are slow on CPU: two steps of training are enough to score
    train(data_copy, out, "--on-bad-sample", "skip", "--amp", "bf16", "--strategy", "full", *length(1),
          "--max-steps-per-epoch", "2", timeout=600)
    s = summary(out)
    assert s["skipped_bad_val_samples"] == 1
    one = json.loads(run([DAP_HVD, "evaluate", out, "--json"], timeout=300).stdout)
    assert one["top1"] == s["top1"] and one["top5"] == s["top5"] and one["samples"] == 119
    from dap_hvd.evaluate import build_eval_model, load_for_eval
    from dap_hvd.models import Fp32Linear

    ckpt = load_for_eval(_checkpoints(out)[-1])
    assert ckpt["val_excluded"].tolist() == [14]  # class 1's third file: 12 val files per class
    assert isinstance(list(build_eval_model(ckpt["meta"]).modules())[-1], Fp32Linear)


def test_a_fresh_start_keeps_rank0s_initial_weights_and_elapsed_time_adds_up(tiny_data, tmp_path):
    """On a fresh run Horovod's broadcast_optimizer_state would take a zero-gradient step on every
    rank, rank 0 included: weight decay shrinks the initial weights by (1 - lr*wd). The state
    every rank holds after the start-up broadcast must be rank 0's freshly initialised model."""
    import torch
    import yaml

    from dap_hvd.dist import state_digest
    from dap_hvd.models import build_model, fp32_classifier

    out = tmp_path / "fresh"
    train(tiny_data, out, *short(2), "--stop-after", "1")
    first = summary(out)
    cfg = yaml.safe_load((out / "config.yaml").read_text())
    # rank 0's generator as the trainer seeds it, (seed, epoch 0, rank 0): see train._seed
    torch.manual_seed(int(np.random.SeedSequence([cfg["seed"], 0, 0]).generate_state(1)[0] % (2**31 - 1)))
    model = fp32_classifier(build_model(first["model"], 10, zero_gamma=cfg["optim"]["zero_gamma"]))
    assert first["replicas"]["start"] == [state_digest(model)] * 2

    # elapsed_seconds is the wall clock from start-up, over both jobs; epoch_seconds the epochs' own
    assert "wall_seconds" not in first
    assert first["elapsed_seconds"] > first["epoch_seconds"] == pytest.approx(first["epochs"][0]["seconds"])
    horovodrun(2, [DAP_HVD, "train", "--resume", out, "--no-progress"], timeout=300)
    both = summary(out)
    assert both["epoch_seconds"] == pytest.approx(sum(e["seconds"] for e in both["epochs"]))
    second_job = both["elapsed_seconds"] - first["elapsed_seconds"]
    assert second_job > both["epochs"][1]["seconds"]  # the second job's start-up counts too


def test_rs2_warms_up_over_all_data_epochs(tiny_data, tmp_path):
    """--lr-warmup-epochs counts all-data epochs for every policy: RS2's epochs are already its
    reduced ones, so one warm-up epoch spans about 3 of them at --fraction 0.3."""
    out = tmp_path / "rs2"
    train(tiny_data, out, "--strategy", "rs2", "--fraction", "0.3", *length(3))
    s = summary(out)
    full = math.ceil(math.ceil(400 / 2) / 16)  # steps per rank of an all-data epoch (--lr-warmup-epochs 1)
    rs2 = math.ceil(math.ceil(120 / 2) / 16)  # and of an RS2 epoch
    # an epoch's lr is its last step's, at position k*rs2 - 1 of the linear warm-up
    assert [e["lr"] for e in s["epochs"]] == pytest.approx([0.2 * min(1.0, k * rs2 / full) for k in (1, 2, 3)])
    assert s["compute_ratio_planned_min_note"] is None  # an exact plan


def test_infobatchs_lower_bound_is_labelled_an_expectation(tiny_data, tmp_path):
    out = tmp_path / "ib"
    train(tiny_data, out, "--strategy", "infobatch", *length(3))  # floor(0.875 * 3) = 2: epoch 2 prunes
    s = summary(out)
    assert "expectation" in s["compute_ratio_planned_min_note"]
    log = (out / "train.log").read_text()
    assert re.search(r"planned compute [\d.]+\.\.[\d.]+ \(the lower bound in expectation\)", log)
    assert re.search(r"done: .*planned [\d.]+\.\.[\d.]+, the lower bound in expectation\)", log)


def test_an_interrupt_names_the_newest_checkpoint_not_the_epoch_being_saved(tiny_data, tmp_path):
    """SIGTERM right after epoch 2's log line, while its (large) checkpoint is being written: the
    message names the newest checkpoint on disk, the one --resume continues."""
    out = tmp_path / "int"
    cmd = [DAP_HVD, "train", "--data", str(tiny_data), "--out", str(out), "--strategy", "full", "--model", "resnet152",
           *length(3), "--max-steps-per-epoch", "1", "--batch-size", "4", "--eval-every", "100",
           "--no-progress", "--workers", "1"]
    proc = spawn(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        for line in proc.stdout:
            if "epoch 2/3:" in line:
                proc.send_signal(signal.SIGTERM)
                break
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 130, err
    ckpts = _checkpoints(out)
    assert ckpts, "epoch 1's checkpoint should exist"
    newest = int(ckpts[-1].stem.split("-")[1])
    assert f"interrupted after epoch {newest} (newest checkpoint: {ckpts[-1]}); resume with: dap-hvd train " \
           f"--resume {out}" in err, err


def test_evaluate_refuses_to_guess_which_val_files_the_run_skipped(tmp_path):
    """The stored indices mean the run's validation catalog: on another one (other files or
    labels), `evaluate` says so instead of scoring a different set."""
    from dap_hvd import DapError
    from dap_hvd.evaluate import usable_val

    meta = {"val_digest": "abc"}
    assert usable_val(5, "abc", meta, np.array([1, 3]), tmp_path).tolist() == [0, 2, 4]
    assert usable_val(5, "other", meta, np.array([], dtype=np.int64), tmp_path).tolist() == [0, 1, 2, 3, 4]
    with pytest.raises(DapError, match="skipped 2 bad validation file"):
        usable_val(5, "other", meta, np.array([1, 3]), tmp_path)
