"""The run folder: one job at a time, only runs are moved aside, a symlinked --out keeps its link,
and a fresh run never writes into (or moves) a folder that is not a run, nor the dataset."""

import os
import re
import signal
import socket
import subprocess
import time

import pytest
from conftest import DAP_HVD, PY, run, spawn, wait_until
from test_train import COMMON, SCHED, short, summary, train

from dap_hvd import DapError
from dap_hvd.rundir import LOCK_NAME, archive, claim, newest_checkpoint

pytestmark = pytest.mark.multirank


def _fake_run(d, epochs=(1,)):
    (d / "checkpoints").mkdir(parents=True)
    (d / "config.yaml").write_text("strategy: dap\n")
    for e in epochs:
        (d / "checkpoints" / f"epoch-{e:04d}.pt").write_bytes(b"x")


def test_a_fresh_run_refuses_folders_that_are_not_runs_and_the_dataset(tmp_path):
    data = tmp_path / "data"
    (data / "train").mkdir(parents=True)
    mine = tmp_path / "myproject"  # the newcomer's folder: notes and a train.log of their own
    (mine / "notes").mkdir(parents=True)
    (mine / "notes.txt").write_text("mine")
    (mine / "train.log").write_text("my log\n")
    home = tmp_path / "home"  # `--out ~` with a stray checkpoints/ folder
    (home / "checkpoints").mkdir(parents=True)
    (home / "checkpoints" / "epoch-0001.pt").write_bytes(b"x")
    refusals = {mine: "holds notes, notes.txt, and is not a dap-hvd run",
                home: r"holds checkpoints/ \(without config.yaml\)",
                data: "is the --data folder", data / "runs" / "x": "lies inside the --data folder",
                tmp_path: "holds the --data folder"}
    for out, why in refusals.items():
        with pytest.raises(DapError, match=rf"^--out: {re.escape(str(out))} {why}"):
            claim(out, "--out", data)
    assert (mine / "train.log").read_text() == "my log\n" and not (mine / LOCK_NAME).exists()
    assert not (data / "runs").exists() and not (home / LOCK_NAME).exists()
    # what a fresh run may use: a new or empty folder, its own leftovers, a run (moved aside later)
    ok = {"new": lambda d: None, "empty": lambda d: d.mkdir(), "run": _fake_run,
          "leftover": lambda d: (d.mkdir(), (d / "config.yaml").write_text("x"), (d / "train.log").write_text("x"))}
    for name, make in ok.items():
        make(tmp_path / name)
        claim(tmp_path / name, "--out", data).release()
    assert archive(tmp_path / "leftover") is None and archive(tmp_path / "empty") is None
    moved = archive(tmp_path / "run")
    assert moved.parent == tmp_path and sorted(os.listdir(tmp_path / "run")) == [LOCK_NAME]
    assert newest_checkpoint(moved).epoch == 1


def test_the_lock_names_its_holder_and_ends_with_the_process(tmp_path):
    run_dir = tmp_path / "r"
    held = claim(run_dir, "--out")
    with pytest.raises(DapError, match=rf"--resume: {re.escape(str(run_dir))} is in use by another job \(host "
                                       rf"{re.escape(socket.gethostname())}, pid {os.getpid()}, started "):
        claim(run_dir, "--resume", fresh=False)
    held.release()
    claim(run_dir, "--resume", fresh=False).release()
    # a killed holder (SIGKILL: no clean-up at all) leaves nothing that blocks the next job
    code = (f"from dap_hvd.rundir import claim; import time; held = claim({str(run_dir)!r}, '--out'); "
            "print('held', flush=True); time.sleep(60)")
    proc = spawn([PY, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "held"
        with pytest.raises(DapError, match=f"pid {proc.pid}"):
            claim(run_dir, "--out")
    finally:
        proc.kill()
        proc.wait()
    claim(run_dir, "--out").release()


def test_a_second_job_on_a_live_run_folder_is_refused(tiny_data, tmp_path):
    """A duplicated sbatch or a requeue while the old job still runs: the second job (fresh, or
    --resume auto) is refused with one line naming the holder; the live folder is not moved and
    its checkpoints are not picked up."""
    out = tmp_path / "live"
    cmd = [DAP_HVD, "train", "--data", str(tiny_data), "--out", str(out), *SCHED, *map(str, COMMON),
           "--epochs", "40", "--reuse", "20", "--lr-steps", "20"]
    first = spawn(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        wait_until((out / "summary.json").exists, 120, "the first job finished no epoch")
        for extra in ([], ["--resume", "auto"]):
            p = run([*cmd, *extra], timeout=120, check=False)
            assert p.returncode == 2, p.stderr[-2000:]
            last = p.stderr.strip().splitlines()[-1]
            assert re.fullmatch(rf"dap-hvd train: error on rank 0: --(out|resume): {re.escape(str(out))} is in use "
                                rf"by another job \(host {re.escape(socket.gethostname())}, pid \d+, started .+\); "
                                r"wait for it to end, or choose another folder", last), last
            assert "Traceback" not in p.stderr
        assert first.poll() is None and not [q for q in tmp_path.iterdir() if q.name.startswith("live.")]
        first.send_signal(signal.SIGINT)
        first.communicate(timeout=60)
    finally:
        if first.poll() is None:
            first.kill()
            first.wait()
    assert first.returncode == 130
    assert summary(out)["epochs_completed"] >= 1 and (out / "config.yaml").is_file()


def test_a_symlinked_out_keeps_its_link(tiny_data, tmp_path):
    """runs/dap -> /scratch/...: the earlier run moves aside beside the link's target, and the
    link still points at the folder the new run writes."""
    target = tmp_path / "scratch" / "dap"
    target.mkdir(parents=True)
    link = tmp_path / "runs" / "dap"
    link.parent.mkdir()
    link.symlink_to(target)
    for _ in range(2):
        train(tiny_data, link, *short(1), np_=1)
    assert link.is_symlink() and link.resolve() == target.resolve()
    assert (target / "summary.json").is_file() and [p.name for p in (target / "checkpoints").iterdir()] == \
        ["epoch-0001.pt"]
    moved = [p for p in (tmp_path / "scratch").iterdir() if p.name.startswith("dap.")]
    assert len(moved) == 1 and (moved[0] / "checkpoints" / "epoch-0001.pt").is_file()
    assert sorted(p.name for p in (tmp_path / "runs").iterdir()) == ["dap"]


def test_out_onto_a_users_folder_or_the_dataset_is_one_line_and_changes_nothing(data_copy, tmp_path):
    mine = tmp_path / "myproject"
    mine.mkdir()
    (mine / "notes.txt").write_text("mine")
    (mine / "train.log").write_text("my log\n")
    for out in (mine, data_copy):
        p = run([DAP_HVD, "train", "--data", data_copy, "--out", out, *SCHED, *COMMON, *short(1)], timeout=120,
                check=False)
        assert p.returncode == 2 and "Traceback" not in p.stderr
        assert re.match(rf"dap-hvd train: error on rank 0: --out: {re.escape(str(out))} (holds|is the --data)",
                        p.stderr.strip().splitlines()[-1]), p.stderr[-1500:]
    assert sorted(os.listdir(mine)) == ["notes.txt", "train.log"] and (mine / "train.log").read_text() == "my log\n"
    assert sorted(os.listdir(data_copy)) == ["sample-spec.json", "train", "val"]
    assert [p.name for p in tmp_path.iterdir() if "." in p.name] == []  # nothing moved aside


def _rank_of(pid: int) -> str:
    with open(f"/proc/{pid}/environ", "rb") as f:
        env = dict(kv.split(b"=", 1) for kv in f.read().split(b"\0") if b"=" in kv)
    return env.get(b"HOROVOD_RANK", b"?").decode()


def test_a_rank_killed_mid_epoch_leaves_a_last_line_that_names_the_checkpoint(tiny_data, tmp_path):
    """SIGKILL of rank 1's trainer after an epoch was checkpointed: rank 0's last line must not
    say "nothing was checkpointed"; it names the checkpoint and how to resume (it did not: a
    second SIGTERM landed outside the loop's handler, and the message came from the exception)."""
    out = tmp_path / "killed"
    cmd = ["horovodrun", "--gloo", "-np", "2", "-H", "localhost:2", DAP_HVD, "train", "--data", str(tiny_data),
           "--out", str(out), *SCHED, *map(str, COMMON), "--epochs", "40", "--reuse", "20", "--lr-steps", "20"]
    proc = spawn(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        wait_until((out / "summary.json").exists, 120, "training never finished an epoch")
        time.sleep(1.0)  # into the next epoch
        pids = subprocess.run(["pgrep", "-f", f"dap_hvd train --data {tiny_data} --out {out}"], capture_output=True,
                              text=True).stdout.split()
        trainers = [int(p) for p in pids if _rank_of(int(p)) == "1"]
        assert trainers, "found no trainer of rank 1"
        os.kill(trainers[0], signal.SIGKILL)
        text, _ = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            pytest.fail("the job hung after a rank died")
    assert proc.returncode != 0
    assert "nothing was checkpointed" not in text, text[-3000:]
    rank0 = [ln for ln in text.splitlines() if re.search(r"\[0\]<std(err|out)>:dap-hvd train: (error|interrupted)", ln)]
    assert rank0, text[-3000:]
    done = newest_checkpoint(out)
    assert done is not None and f"--resume {out}" in rank0[-1] and f"epoch {done.epoch}" in rank0[-1], rank0
