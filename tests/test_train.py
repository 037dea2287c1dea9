"""`dap-hvd train` end to end with 2 real Gloo ranks on the sample data."""

import json
import math
import os
import re
import shutil
import signal
import subprocess
import time

import pytest
from conftest import DAP_HVD, HOROVODRUN, horovodrun, mpirun, run, spawn

from dap_hvd.policy.policies import selection_digest
from dap_hvd.policy.schedule import Schedule, plan

pytestmark = pytest.mark.multirank
SCHED = ["--epochs", "6", "--warmup", "1", "--interval", "1", "--keep", "0.7", "--reuse", "4", "--lr-steps", "4"]
COMMON = ["--batch-size", "16", "--lr", "0.2", "--lr-warmup-epochs", "1", "--no-progress", "--workers", "1"]


# The same run length and LR decay for the policies that do not read DaP's schedule (which
# refuse its flags).
LENGTH = ["--epochs", "6", "--lr-steps", "4"]


def train(data, out, *extra, np_=2, timeout=300, check=True):
    extra = list(map(str, extra))
    strategy = extra[extra.index("--strategy") + 1] if "--strategy" in extra else "dap"
    sched = SCHED if strategy in ("dap", "random") else LENGTH
    args = [DAP_HVD, "train", "--data", data, "--out", out, *sched, *COMMON, *extra]
    return horovodrun(np_, args, timeout=timeout, check=check)


def short(epochs):
    """A schedule of `epochs` epochs (W=1), with no LR decay."""
    return ["--epochs", str(epochs), "--reuse", str(epochs) if epochs > 1 else "none", "--lr-steps", "none"]


def summary(out):
    return json.loads((out / "summary.json").read_text())


@pytest.fixture(scope="module")
def dap_run(tiny_data, tmp_path_factory):
    """One uninterrupted 6-epoch DaP run, shared by the tests that compare against it."""
    out = tmp_path_factory.mktemp("dap") / "full"
    train(tiny_data, out)
    return out


@pytest.mark.parametrize("strategy", ["dap", "random", "full"])
def test_two_rank_training_matches_plan(tiny_data, tmp_path, dap_run, strategy):
    out = dap_run if strategy == "dap" else tmp_path / strategy
    if strategy != "dap":
        train(tiny_data, out, "--strategy", strategy)
    s = summary(out)
    assert s["strategy"] == strategy and s["world_size"] == 2 and len(s["epochs"]) == 6
    n, gb = s["num_samples"], s["global_batch"]
    sched = Schedule(6, 1, 1, 0.7, None, (4,)) if strategy != "full" else Schedule(6, 6, 1, 1.0)
    planned = plan(sched, num_samples=n)
    for e, p in zip(s["epochs"], planned.epochs):
        assert abs(e["samples"] - p.size) < gb  # within one global batch (padding only)
        assert e["subset"] == p.size
        assert e["samples"] == e["subset"] + e["padding"] and 0 <= e["padding"] < 2  # counted exactly
    assert s["compute_ratio_planned"] == s["compute_ratio_planned_run"] == pytest.approx(planned.compute_ratio)
    assert abs(s["compute_ratio_measured"] - s["compute_ratio_planned"]) < 6 * gb / (6 * n)
    # the drop due after the final epoch is made too: an extension continues from it as planned
    assert [e["after"] for e in s["epochs"]] == (["stay", "drop", "drop", "pick", "drop", "drop"] if strategy != "full"
                                                 else ["stay"] * 6)
    # one model on every rank, at the start and at the end
    assert len(s["replicas"]["start"]) == 2 and len(set(s["replicas"]["start"])) == 1
    assert len(s["replicas"]["end"]) == 2 and len(set(s["replicas"]["end"])) == 1
    assert s["samples_trained"] == sum(e["samples"] for e in s["epochs"])
    assert 0.2 < s["top1"] <= 1 and s["top1"] <= s["top5"] <= 1  # chance is 0.1
    assert s["epochs"][0]["selection_digest"] == selection_digest(list(range(n)))
    if strategy == "full":
        assert s["compute_ratio_measured"] == pytest.approx(1.0, abs=0.01)
    else:
        assert s["compute_ratio_measured"] < 0.9
    assert (out / "train.log").is_file() and (out / "config.yaml").is_file()
    assert len(list((out / "checkpoints").glob("epoch-*.pt"))) == 2  # last K kept


def test_dap_and_random_keep_different_samples(tiny_data, tmp_path, dap_run):
    train(tiny_data, tmp_path / "random", "--strategy", "random", *short(4))
    dap = [e["selection_digest"] for e in summary(dap_run)["epochs"]]
    rnd = [e["selection_digest"] for e in summary(tmp_path / "random")["epochs"]]
    assert dap[0] == rnd[0] and dap[2] != rnd[2]


def test_resume_is_exact_and_leaves_identical_replicas(tiny_data, tmp_path, dap_run):
    part = tmp_path / "part"
    train(tiny_data, part, "--stop-after", "3")  # stopped after epoch 3 (between the drops)
    stopped = summary(part)
    assert stopped["epochs_completed"] == 3
    # compute over the 3 epochs done, beside the plan for the same 3 epochs (not divided by 6)
    assert stopped["compute_ratio_measured"] == pytest.approx(stopped["compute_ratio_planned"], abs=0.01)
    assert stopped["compute_ratio_measured"] == pytest.approx((400 + 400 + 280) / (3 * 400), abs=0.01)
    p = horovodrun(2, [DAP_HVD, "train", "--resume", part, "--no-progress"], timeout=300)
    assert f"resuming {part} from epoch 3 (checkpoint {part / 'checkpoints' / 'epoch-0003.pt'})" in p.stdout
    full, resumed = summary(dap_run), summary(part)
    a, b = full["epochs"], resumed["epochs"]
    assert [e["epoch"] for e in b] == list(range(1, 7))
    assert [e["selection_digest"] for e in a] == [e["selection_digest"] for e in b]
    # DaP's scores are merged in its drop epochs (2, 3, 5 and the final 6), and come back from the checkpoint
    assert [e["scores_digest"] is not None for e in a] == [False, True, True, False, True, True]
    assert [e["scores_digest"] for e in a] == [e["scores_digest"] for e in b]
    assert resumed["score_table"] == full["score_table"]
    assert [e["train_loss"] for e in a] == pytest.approx([e["train_loss"] for e in b], rel=1e-7)
    assert [e["lr"] for e in a] == [e["lr"] for e in b]
    assert resumed["top1"] == full["top1"] and resumed["top5"] == full["top5"]
    # every rank's full state (parameters, buffers) hashed alike right after the resume broadcast
    assert len(resumed["replicas"]["start"]) == 2 and len(set(resumed["replicas"]["start"])) == 1
    assert resumed["replicas"]["end"] == full["replicas"]["end"]  # the very same model at the end
    # a finished run is extended by a larger --epochs, and trains exactly what `plan` says for 8
    # epochs: the drop due after epoch 6 was made when epoch 6 ended
    horovodrun(2, [DAP_HVD, "train", "--resume", part, "--epochs", "8", "--no-progress"], timeout=300)
    ext = summary(part)
    assert ext["epochs_completed"] == 8 and [e["selection_digest"] for e in ext["epochs"][:6]] == \
        [e["selection_digest"] for e in a]
    p = run([DAP_HVD, "plan", "--preset", "sample", *SCHED[:-2], "--epochs", "8", "--num-samples",
             str(ext["num_samples"]), "--json"])  # the sample data's preset; plan's own default is imagenet
    planned = json.loads(p.stdout)
    assert [e["subset"] for e in ext["epochs"]] == [e["size"] for e in planned["epochs"]]
    assert ext["compute_ratio_planned"] == pytest.approx(planned["compute_ratio"])


def test_resume_replays_each_ranks_dropout(tiny_data, tmp_path):
    """mobilenet_v2 draws dropout masks from each rank's torch RNG: only a restored per-rank RNG
    state makes the resumed epochs train exactly as the uninterrupted ones."""
    args = ["--model", "mobilenet_v2", *short(3)]
    train(tiny_data, tmp_path / "whole", *args)
    part = tmp_path / "part"
    train(tiny_data, part, *args, "--stop-after", "1")
    horovodrun(2, [DAP_HVD, "train", "--resume", part, "--no-progress"], timeout=300)
    a, b = summary(tmp_path / "whole")["epochs"], summary(part)["epochs"]
    assert [e["train_loss"] for e in a] == pytest.approx([e["train_loss"] for e in b], rel=1e-7)
    assert summary(part)["top1"] == summary(tmp_path / "whole")["top1"]


def test_fp16_resume_restores_the_loss_scale_on_every_rank(tiny_data, tmp_path):
    import torch

    out = tmp_path / "fp16"
    train(tiny_data, out, "--amp", "fp16", *short(3), "--stop-after", "1")
    ckpt = torch.load(out / "checkpoints" / "epoch-0001.pt", weights_only=True)
    assert ckpt["scaler"]["_growth_tracker"] > 0  # a state that differs from a fresh scaler's
    horovodrun(2, [DAP_HVD, "train", "--resume", out, "--no-progress"], timeout=300)
    s = summary(out)
    # the digests cover parameters, buffers and the GradScaler state of each rank
    assert s["epochs_completed"] == 3 and len(set(s["replicas"]["start"])) == 1 and len(s["replicas"]["start"]) == 2
    # steps the GradScaler skipped are counted, not taken for divergence: it starts at 2^16 and halves
    # at each skipped step (it grows only after 2000 good ones), so the final scale tells their number
    ckpt = torch.load(sorted((out / "checkpoints").glob("*.pt"))[-1], weights_only=True)
    assert s["amp_skipped_steps"] == sum(e["skipped_steps"] for e in s["epochs"])
    assert ckpt["scaler"]["scale"] == 2.0 ** 16 * 0.5 ** s["amp_skipped_steps"]


@pytest.mark.parametrize("before,after", [(2, 1), (1, 2)])
def test_resume_on_another_world_size_keeps_the_lr_schedule(tiny_data, tmp_path, before, after):
    out = tmp_path / "ws"
    train(tiny_data, out, "--stop-after", "3", np_=before)
    horovodrun(after, [DAP_HVD, "train", "--resume", out, "--no-progress"], timeout=300)
    s = summary(out)
    assert s["epochs_completed"] == 6 and s["world_size"] == after
    assert [e["world_size"] for e in s["epochs"]] == [before] * 3 + [after] * 3
    lrs = [e["lr"] for e in s["epochs"]]
    base_after = 0.2 * after / before  # --lr 0.2 was set for `before` ranks; the linear rule carries it
    assert lrs[:3] == pytest.approx([0.2] * 3) and lrs[3] == pytest.approx(base_after)
    assert lrs[4:] == pytest.approx([0.1 * base_after] * 2)  # the decay after epoch 4, not earlier or later
    assert "linear rule" in (out / "train.log").read_text()


def test_a_changed_schedule_is_refused_on_resume(tiny_data, tmp_path):
    out = tmp_path / "chg"
    train(tiny_data, out, *short(3), "--stop-after", "1")
    p = horovodrun(2, [DAP_HVD, "train", "--resume", out, "--keep", "0.8", "--no-progress"], timeout=300, check=False)
    assert p.returncode != 0
    assert re.search(r"error on rank 0: --resume: .*keep \(--keep\): 0\.7 then, 0\.8 now", p.stderr)
    assert re.search(r"error on rank 1: --resume: .*keep", p.stderr)  # every rank stops, none hangs
    # the LR curve, the recipe, the input size and the precision are refused alike, every one named
    p = run([DAP_HVD, "train", "--resume", out, "--no-progress", "--lr-schedule", "cosine", "--lr-warmup-epochs", "3",
             "--label-smoothing", "0.2", "--weight-decay", "0.0005", "--momentum", "0.8", "--image-size", "24",
             "--amp", "bf16"], timeout=300, check=False)
    assert p.returncode == 2
    for changed in ("optim.lr_schedule (--lr-schedule): 'step' then, 'cosine' now",
                    "optim.lr_warmup_epochs (--lr-warmup-epochs): 1.0 then, 3.0 now",
                    "optim.label_smoothing (--label-smoothing): 0.1 then, 0.2 now",
                    "optim.weight_decay (--weight-decay): 0.0001 then, 0.0005 now",
                    "optim.momentum (--momentum): 0.9 then, 0.8 now", "data.image_size (--image-size): 32 then, 24 now",
                    "optim.amp (--amp): 'auto' then, 'bf16' now"):
        assert changed in p.stderr


def test_lr_on_resume_is_the_same_whether_or_not_the_global_batch_changed(tiny_data, tmp_path):
    import yaml

    out = tmp_path / "lr"
    args = [DAP_HVD, "train", "--data", tiny_data, "--out", out, *SCHED, *COMMON, *short(2)]
    p = run([*args, "--stop-after", "1", "--resume", "auto"], timeout=300)
    assert f"--resume auto: {out} holds no run to continue" in p.stdout and "starting a fresh run" in p.stdout
    shutil.copytree(out, tmp_path / "lr2")
    for folder, batch in ((out, "16"), (tmp_path / "lr2", "8")):  # global batch 16 as before, then 8
        p = run([DAP_HVD, "train", "--resume", folder, "--no-progress", "--batch-size", batch, "--lr", "0.05"],
                timeout=300)
        assert "replaces the run's base LR 0.2" in p.stdout
        s = summary(folder)
        # warm-up 1 epoch, no decay: epoch 2 runs at the base LR, --lr 0.05 in both cases
        assert s["epochs"][1]["lr"] == pytest.approx(0.05)
        assert yaml.safe_load((folder / "config.yaml").read_text())["optim"]["lr"] == 0.05
    # without --lr, the run's own LR follows the global batch (linear rule), as before
    p = run([DAP_HVD, "train", "--resume", out, "--no-progress", "--batch-size", "8", "--epochs", "3"], timeout=300)
    assert summary(out)["epochs"][2]["lr"] == pytest.approx(0.05 * 8 / 16)


def test_extending_an_infobatch_run_says_annealed_epochs_prune_again(tiny_data, tmp_path):
    out = tmp_path / "ib"
    run([DAP_HVD, "train", "--data", tiny_data, "--out", out, *COMMON, "--strategy", "infobatch", "--anneal", "0.5",
         "--epochs", "2", "--lr-steps", "none"], timeout=300)
    assert [e["after"] for e in summary(out)["epochs"]] == ["full", "end"]  # floor(0.5 x 2) = 1: epoch 2 anneals
    p = run([DAP_HVD, "train", "--resume", out, "--no-progress", "--epochs", "6", "--stop-after", "3"], timeout=300)
    assert "InfoBatch annealed epochs 2..2 on all data" in p.stdout
    assert "over --epochs 6, epochs 3..3 prune again (floor(0.5 x 6) = 3) and the last 3 anneal" in p.stdout


def test_an_exact_plan_that_differs_from_the_selection_is_an_error():
    """The check every epoch runs before training: for an exact plan the subset is the planned
    size (the LR grid and the planned compute hang on it), never silently rescaled."""
    from dap_hvd.policy.policies import make_policy
    from dap_hvd.policy.schedule import PlanMismatch

    exact = make_policy("dap", Schedule(8, 1, 1, 0.7, None, ())).plan(400)
    exact.check(3, 280)  # W=1: all 400 in epochs 1-2, then 280 after the drop after epoch 2
    with pytest.raises(PlanMismatch, match=r"epoch 3: the dap plan trains 280 samples, but the selection holds 400"):
        exact.check(3, 400)
    bounded = make_policy("infobatch", Schedule(8, 1, 1, 1.0)).plan(400)
    bounded.check(3, 250)  # InfoBatch's sizes depend on the scores: within bounds, not exact


def test_an_older_finished_run_without_its_final_drop_is_not_extended_off_plan():
    from dap_hvd.config import load_config
    from dap_hvd.resume import unmade_final_step

    cfg = load_config(None, {"epochs": 8, "warmup": 1, "interval": 1, "keep": 0.7, "reuse": "none",
                             "lr_steps": "none"})
    meta = dict(epoch=6, policy_state=dict(t_start=1, t_prev=6), history=[dict(after="end")])
    assert "without making the drop due after it" in unmade_final_step(meta, cfg)
    assert "epoch-0006.pt aside" in unmade_final_step(meta, cfg)
    assert unmade_final_step(dict(meta, history=[dict(after="drop")]), cfg) is None  # made: extends as planned
    assert unmade_final_step(dict(meta, policy_state=dict(t_start=1, t_prev=5)), cfg) is None  # nothing was due


def test_evaluate_reproduces_the_runs_top1_exactly(dap_run):
    top1 = summary(dap_run)["top1"]
    one = run([DAP_HVD, "evaluate", dap_run, "--json"], timeout=120)
    assert json.loads(one.stdout)["top1"] == top1 and json.loads(one.stdout)["epoch"] == 6
    two = horovodrun(2, [DAP_HVD, "evaluate", dap_run, "--json"], timeout=120)
    assert rank_payload(two.stdout)["top1"] == top1


def rank_payload(stdout):
    line = next(ln for ln in stdout.splitlines() if '"top1"' in ln)
    return json.loads(line[line.index("{"):])


def test_ranks_with_different_datasets_fail_naming_the_file(tiny_data, tmp_path):
    other = tmp_path / "other"
    shutil.copytree(tiny_data, other)
    cls = sorted((other / "train").iterdir())[4]
    victim = sorted(cls.iterdir())[7]
    victim.rename(victim.with_name("renamed_" + victim.name))
    args = ["train", "--mpi", "--out", tmp_path / "mix", *SCHED, *COMMON]
    p = run(["mpirun", "--allow-run-as-root", "--oversubscribe", "--bind-to", "none",
             "-np", "1", DAP_HVD, *args, "--data", tiny_data, ":", "-np", "1", DAP_HVD, *args, "--data", other],
            timeout=180, check=False)
    assert p.returncode != 0
    err = p.stdout + p.stderr
    assert re.search(r"error on rank 1: rank 1 on \S+: the train dataset differs from rank 0's: .*renamed_", err)
    assert "error on rank 0: rank(s) [1] hold a different train dataset" in err
    assert "Traceback" not in err


def test_checkpoints_load_with_weights_only(dap_run):
    import torch

    ckpt = torch.load(sorted((dap_run / "checkpoints").glob("*.pt"))[-1], weights_only=True)
    assert {"model", "optimizer", "selection", "state", "rng"} <= set(ckpt)
    assert ckpt["selection"].dtype == torch.int64 and json.loads(ckpt["state"])["epoch"] == 6
    # each rank's own RNG stream, seeded by (seed, rank), saved by rank
    assert ckpt["rng"].shape[0] == 2 and not torch.equal(ckpt["rng"][0], ckpt["rng"][1])
    meta = json.loads(ckpt["state"])
    assert meta["world_size"] == 2 and meta["lr_steps"] == [4] and meta["model"] == "resnet_small"
    assert meta["config"]["data"]["image_size"] == 32  # resolved values, not nulls


def _plant_truncated(root):
    cls = sorted((root / "train").iterdir())[2]
    victim = sorted(cls.iterdir())[5]
    data = victim.read_bytes()
    victim.write_bytes(data[: len(data) // 3])
    return victim


@pytest.mark.parametrize("loader", ["dali", "torch"])
def test_bad_file_stops_training_naming_it(data_copy, tmp_path, loader):
    victim = _plant_truncated(data_copy)
    p = train(data_copy, tmp_path / "bad", "--loader", loader, *short(2), check=False)
    assert p.returncode != 0
    # our one-line error names the rank and the file (horovodrun adds its own launcher traceback)
    assert re.search(rf"dap-hvd train: error on rank \d: .*{re.escape(victim.name)}", p.stderr)


def test_skip_bad_samples_excludes_and_counts(data_copy, tmp_path):
    victim = _plant_truncated(data_copy)
    out = tmp_path / "skip"
    p = train(data_copy, out, "--on-bad-sample", "skip", *short(2))
    s = summary(out)
    assert s["skipped_bad_samples"] == 1 and s["num_samples"] == 399
    assert victim.name in (out / "train.log").read_text() + p.stdout + p.stderr
    # the next start on the same files does not decode the dataset again
    p = train(data_copy, tmp_path / "again", "--on-bad-sample", "skip", *short(1))
    assert "from the scan cached" in p.stdout and summary(tmp_path / "again")["num_samples"] == 399


def test_training_from_a_file_list(tiny_data, tmp_path):
    from dap_hvd.data.catalog import load_catalog

    cat = load_catalog(tiny_data, "train")
    fl = tmp_path / "half.txt"
    fl.write_text("".join(f"train/{p} {lab}\n" for p, lab in zip(cat.paths[::2], cat.labels[::2])))
    out = tmp_path / "list"
    train(tiny_data, out, "--train-list", fl, *short(2))
    s = summary(out)
    assert s["num_samples"] == 200 and s["top1"] > 0.15  # val scored against the list's numeric labels
    assert json.loads(run([DAP_HVD, "evaluate", out, "--json"], timeout=120).stdout)["top1"] == s["top1"]


def test_mpirun_training_with_mpi4py_comm(tiny_data, tmp_path):
    out = tmp_path / "mpi"
    mpirun(2, [DAP_HVD, "train", "--mpi", "--data", tiny_data, "--out", out, *SCHED, *COMMON, *short(2)], timeout=300)
    assert summary(out)["world_size"] == 2


def test_a_dead_rank_ends_the_job(tiny_data, tmp_path):
    out = tmp_path / "dead"
    cmd = [HOROVODRUN, "--gloo", "-np", "2", "-H", "localhost:2", DAP_HVD, "train", "--data", str(tiny_data),
           "--out", str(out), *SCHED, *COMMON, "--epochs", "40", "--reuse", "20", "--lr-steps", "20"]
    proc = spawn(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
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
    train(tiny_data, out, "--config", cfg, *short(3))
    s = summary(out)
    assert len(s["epochs"]) == 3 and all(math.isfinite(e["train_loss"]) for e in s["epochs"])
    lrs = [e["lr"] for e in s["epochs"]]
    assert lrs[0] > lrs[1] > lrs[2] > 0  # cosine decays to ~0 over the planned steps
    import yaml

    saved = yaml.safe_load((out / "config.yaml").read_text())
    assert saved["optim"]["amp"] == "bf16" and saved["data"]["loader"] == "torch"


def test_compiled_training_on_two_ranks_checkpoints_the_plain_model(tiny_data, tmp_path):
    """--compile with real inductor kernels under Horovod: the ranks stay identical (their state
    digests are checked at every epoch end), the checkpoint holds the plain model's keys, and
    `dap-hvd evaluate` (no compile) reproduces the run's top-1."""
    import torch

    out = tmp_path / "compiled"
    train(tiny_data, out, "--compile", *short(2), timeout=600)
    s = summary(out)
    assert len(s["epochs"]) == 2 and all(math.isfinite(e["train_loss"]) for e in s["epochs"])
    ckpt = torch.load(sorted((out / "checkpoints").glob("*.pt"))[-1], weights_only=True)
    assert not [k for k in ckpt["model"] if "_orig_mod" in k]
    assert json.loads(run([DAP_HVD, "evaluate", out, "--json"], timeout=120).stdout)["top1"] == s["top1"]


def test_sync_bn_without_gpu_is_a_clear_error(tiny_data, tmp_path):
    p = run([DAP_HVD, "train", "--data", tiny_data, "--out", tmp_path / "s", "--sync-bn", *short(1)],
            timeout=120, check=False)
    assert p.returncode == 2 and "--sync-bn" in p.stderr and "Traceback" not in p.stderr


def test_a_fresh_run_moves_an_earlier_one_aside(tiny_data, tmp_path):
    out = tmp_path / "again"
    for _ in range(2):
        p = train(tiny_data, out, *short(1), "--progress", np_=1)
    kept = [p for p in tmp_path.iterdir() if p.name.startswith("again.")]
    assert len(kept) == 1 and (kept[0] / "summary.json").exists()
    assert [p.name for p in (out / "checkpoints").iterdir()] == ["epoch-0001.pt"]
    # a 1-second epoch still shows its progress line (at least one per epoch)
    assert re.search(r"epoch 1/1 \[#+\] \d+/\d+ \d+ img/s", p.stdout)
    # W=1 >= E=1: the user is told DaP never drops
    assert "every epoch is warm-up" in (out / "train.log").read_text()


@pytest.mark.parametrize("policy", [("rs2", "--fraction", "0.3"), ("infobatch", "--prune-ratio", "0.5"), ("random",),
                                    ("seta", "--prune-ratio", "0.3")])
def test_policy_trains_to_its_plan_and_resumes_exactly(tiny_data, tmp_path, policy):
    """RS2 and random measure exactly their plans; InfoBatch and SeTa stay within their bounds.
    A run stopped after epoch 3 and resumed reproduces every selection, weight vector and score
    table bit for bit."""
    import torch

    from dap_hvd.policy.policies import make_policy

    name, *params = policy
    given = {params[0][2:].replace("-", "_"): float(params[1])} if params else {}
    whole, part = tmp_path / "whole", tmp_path / "part"
    train(tiny_data, whole, "--strategy", *policy)
    s = summary(whole)
    n, gb = s["num_samples"], s["global_batch"]
    planned = make_policy(name, Schedule(6, 1, 1, 0.7, None, (4,)), **given).plan(n)
    defaults = {"infobatch": {"anneal": 0.875}, "seta": {"anneal": 0.875, "groups": 5, "window": 0.6}}
    assert s["policy"] == {"name": name, **given, **defaults.get(name, {})}
    for e, pe in zip(s["epochs"], planned.epochs):
        assert pe.low_size <= e["subset"] <= pe.size
        assert e["samples"] == e["subset"] + e["padding"] and 0 <= e["padding"] < 2
    low, high = s["compute_ratio_planned_min"], s["compute_ratio_planned_max"]
    if name == "seta":
        ep = s["epochs"]
        # floor(0.875 * 6) = 5: epoch 1 the whole draw of 280, 2..5 a window of 3 of 5 loss groups of
        # a fresh draw, 6 a fresh draw of 280; no weights; scores of epochs 1..4 group epochs 2..5
        assert [e["subset"] for e in ep][::5] == [280, 280] and all(e["subset"] < 280 for e in ep[1:5])
        assert len({e["selection_digest"] for e in ep}) == 6
        assert all(e["weights_digest"] is None for e in ep)
        assert [e["scores_digest"] is not None for e in ep] == [True] * 4 + [False] * 2
        assert [e["after"] for e in ep] == ["prune"] * 4 + ["draw", "end"]
        assert low <= s["compute_ratio_measured"] < high
    elif name != "infobatch":
        assert [e["subset"] for e in s["epochs"]] == [e.size for e in planned.epochs]
        if name == "rs2":
            assert [e["subset"] for e in s["epochs"]] == [120] * 6  # 0.3 of 400, every epoch
        assert s["compute_ratio_planned"] == low == high == pytest.approx(planned.compute_ratio)
        assert abs(s["compute_ratio_measured"] - s["compute_ratio_planned"]) < 6 * gb / (6 * n)
        assert all(e["weights_digest"] is None and e["scores_digest"] is None for e in s["epochs"])
        assert s["score_table"]["scored"] == 0  # neither asks for scores: nothing is merged
    else:
        assert s["compute_ratio_planned"] is None and (low, high) == pytest.approx(planned.compute_bounds)
        assert low <= s["compute_ratio_measured"] < high
        ep = s["epochs"]
        # epoch 1 all data; 2..5 (floor(0.875 * 6) = 5) pruned and reweighted; 6 anneals on all data
        assert ep[0]["subset"] == n and ep[5]["subset"] == n and ep[5]["weights_digest"] is None
        assert all(e["subset"] < n and e["weighted"] > 0 and e["weights_digest"] for e in ep[1:5])
        assert [e["scores_digest"] is not None for e in ep] == [True] * 4 + [False] * 2
        assert [e["after"] for e in ep] == ["prune"] * 4 + ["full", "end"]
        assert s["score_table"]["scored"] == n
    ckpt = torch.load(sorted((whole / "checkpoints").glob("epoch-*.pt"))[-1], weights_only=True)
    assert ckpt["scores"].dtype == torch.float32 and ckpt["scored_epoch"].dtype == torch.int32
    assert ckpt["scores"].shape == ckpt["scored_epoch"].shape == (n,)

    train(tiny_data, part, "--strategy", *policy, "--stop-after", "3")
    horovodrun(2, [DAP_HVD, "train", "--resume", part, "--no-progress"], timeout=300)
    r = summary(part)
    for key in ("selection_digest", "weights_digest", "weighted", "scores_digest", "subset", "after", "lr"):
        assert [e[key] for e in s["epochs"]] == [e[key] for e in r["epochs"]], key
    assert [e["train_loss"] for e in s["epochs"]] == pytest.approx([e["train_loss"] for e in r["epochs"]], rel=1e-7)
    assert r["score_table"] == s["score_table"] and r["top1"] == s["top1"]
    if params:  # a changed policy parameter is refused on resume, naming old and new values
        p = horovodrun(2, [DAP_HVD, "train", "--resume", part, "--epochs", "8", "--no-progress",
                           params[0], "0.2"], timeout=300, check=False)
        assert p.returncode != 0 and "policy" in p.stdout + p.stderr and "0.2" in p.stdout + p.stderr
