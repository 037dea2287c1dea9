"""Multi-host runs on test hosts in network namespaces (tests/netns.py): horovodrun and mpirun
across two "hosts" reached over ssh, each with its own address on a private bridge.

- The launch scripts run DaP to the end across the hosts. With the same seed and world size, the
  selection and score digests equal the single-host run's. The Prometheus targets list both
  hosts' addresses.
- A training process SIGKILLed on one host mid-epoch ends the job non-zero within 90 s, and
  `--resume` completes it across the hosts, matching the uninterrupted run.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time
from pathlib import Path

import netns
import pytest
from conftest import REPO, run

pytestmark = pytest.mark.multirank
EPOCHS = 8
COMMON = ["--warmup", "1", "--interval", "1", "--keep", "0.7", "--lr-steps", "none", "--batch-size", "16",
          "--no-progress", "--workers", "1", "--seed", "3"]
TRAIN = ["--epochs", str(EPOCHS), "--reuse", "none", *COMMON]
# The host-comes-back run must still be training when the host can rejoin: Horovod's discovery
# (every second), the blacklist cool-down (1-2 s) and the notification take seconds, while an
# epoch of TRAIN on this data takes well under one (TRAIN's 8 epochs once ended before the host
# was back). So 20 epochs, whose DaP cycles hold 70% of the data and bring all of it back
# (--reuse): every DaP event happens at both world sizes.
ELASTIC_EPOCHS = 20
ELASTIC_TRAIN = ["--epochs", str(ELASTIC_EPOCHS), "--active", "2", "--reuse", "6,11,16", *COMMON]
# The ranks' environment on every host: one thread each (the single-host run has two ranks on
# this host, the multi-host run one per host), no GPU.
ENV = {"OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": "", "PYTHONUNBUFFERED": "1", "NETWORK_INTERFACE": "eth0"}


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    why = netns.unavailable()
    if why:
        if os.environ.get("DAP_HVD_REQUIRE_NETNS") == "1":  # CI: these tests must run
            pytest.fail(f"DAP_HVD_REQUIRE_NETNS=1 but {why}")
        pytest.skip(why)
    netns.sweep()
    c = netns.Cluster(tmp_path_factory.mktemp("cluster"), hosts=2)
    try:
        yield c.up()
    finally:
        c.down()


def _on_one_host(tiny_data, out: Path, train: list) -> dict:
    """The reference: the same job, 2 ranks on this host."""
    run([str(REPO / "launch" / "horovodrun.sh"), "-H", "localhost:2", "--", "--data", str(tiny_data), "--out", str(out),
         *train], env={**ENV, "METRICS_PORT": "0", "NETWORK_INTERFACE": ""}, timeout=300)
    return json.loads((out / "summary.json").read_text())


@pytest.fixture(scope="module")
def single_host(tiny_data, tmp_path_factory) -> dict:
    return _on_one_host(tiny_data, tmp_path_factory.mktemp("single") / "run", TRAIN)


@pytest.fixture(scope="module")
def single_host_elastic(tiny_data, tmp_path_factory) -> dict:
    return _on_one_host(tiny_data, tmp_path_factory.mktemp("single_elastic") / "run", ELASTIC_TRAIN)


def _hosts(cluster) -> str:
    return ",".join(f"{a}:1" for a in cluster.host_addrs)


def _launcher_env(cluster, tmp_path: Path, script: str) -> dict:
    env = {**ENV, "SD_FILE": str(tmp_path / "targets.json"), "METRICS_PORT": "9460"}
    if script == "mpirun.sh":
        # OpenMPI starts its daemons over the cluster's ssh (the launcher keeps it to eth0)
        env.update(OMPI_MCA_plm_rsh_agent=str(cluster.bin / "ssh"), OMPI_ALLOW_RUN_AS_ROOT="1",
                   OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1")
    return env


def _digests(summary: dict) -> list:
    return [(h["epoch"], h["subset"], h["selection_digest"], h["scores_digest"]) for h in summary["epochs"]]


def _check(p: subprocess.CompletedProcess, what: str) -> None:
    assert p.returncode == 0, (f"{what}: exit {p.returncode}\n"
                               f"--- stdout\n{p.stdout[-3000:]}\n--- stderr\n{p.stderr[-5000:]}")


@pytest.mark.parametrize("script", ["horovodrun.sh", "mpirun.sh"])
def test_two_hosts_train_dap_to_the_end_like_one_host(script, cluster, tiny_data, single_host, tmp_path):
    out = tmp_path / "run"
    p = cluster.launch([REPO / "launch" / script, "-H", _hosts(cluster), "--", "--data", tiny_data, "--out", out,
                        "--metrics-host", "0.0.0.0", *TRAIN], env=_launcher_env(cluster, tmp_path, script),
                       timeout=300, cwd=REPO)
    _check(p, script)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["epochs_completed"] == EPOCHS
    # every epoch's selection, and the score table it came from, is the single-host run's
    assert _digests(summary) == _digests(single_host)
    assert [h["train_loss"] for h in summary["epochs"]] == [h["train_loss"] for h in single_host["epochs"]]
    targets = json.loads((tmp_path / "targets.json").read_text())[0]["targets"]
    assert targets == [f"{a}:9460" for a in cluster.host_addrs]


def test_a_host_lost_mid_epoch_ends_the_job_and_resume_completes_it(cluster, tiny_data, single_host, tmp_path):
    out, env = tmp_path / "run", _launcher_env(cluster, tmp_path, "horovodrun.sh")
    cmd = [REPO / "launch" / "horovodrun.sh", "-H", _hosts(cluster), "--", "--data", tiny_data, "--out", out,
           "--metrics-port", "0", *TRAIN]
    log = open(tmp_path / "job.log", "w")
    job = cluster.popen(cmd, env=env, cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
    try:
        # wait for epoch 1's checkpoint, then for epoch 2 to be under way
        deadline = time.time() + 180
        while not list((out / "checkpoints").glob("epoch-0001.pt")) and job.poll() is None:
            assert time.time() < deadline, "epoch 1 never finished"
            time.sleep(0.2)
        assert job.poll() is None, (tmp_path / "job.log").read_text()[-3000:]
        time.sleep(1.0)
        killed = cluster.kill(cluster.hosts[1], "dap-hvd train", signal.SIGKILL)
        assert killed, "no training process found on the second host"
        t_kill = time.time()
        try:
            rc = job.wait(timeout=90)
        except subprocess.TimeoutExpired:
            tail = (tmp_path / "job.log").read_text()[-3000:]
            pytest.fail("the job did not end within 90 s of losing a host:\n" + tail)
        elapsed = time.time() - t_kill
    finally:
        if job.poll() is None:
            job.kill()
        log.close()
    text = (tmp_path / "job.log").read_text()
    print(f"job ended {elapsed:.1f} s after the kill, rc {rc}; its last lines:\n" + "\n".join(text.splitlines()[-4:]))
    assert rc != 0, text[-3000:]
    assert elapsed < 90
    # the launcher's last word names the rank that vanished and its host
    assert text.strip().splitlines()[-1].startswith(
        f"dap-hvd: the job failed (exit 1): rank 1 on {cluster.host_addrs[1]} ended first"), text[-2000:]
    # the job stopped in epoch 2 at the latest; what it saved is intact
    summary = json.loads((out / "summary.json").read_text())
    assert 1 <= summary["epochs_completed"] < EPOCHS

    p = cluster.launch([REPO / "launch" / "horovodrun.sh", "-H", _hosts(cluster), "--", "--resume", out,
                        "--metrics-port", "0", "--no-progress"], env=env, timeout=300, cwd=REPO)
    _check(p, "resume")
    summary = json.loads((out / "summary.json").read_text())
    assert summary["epochs_completed"] == EPOCHS
    assert _digests(summary) == _digests(single_host)
    assert summary["top1"] == single_host["top1"]


def _wait_for(pred, timeout: float, job, what: str, log: Path) -> None:
    deadline = time.time() + timeout
    while not pred():
        if job.poll() is not None:
            pytest.fail(f"the job ended (rc {job.returncode}) while waiting for {what}:\n{log.read_text()[-4000:]}")
        if time.time() > deadline:
            pytest.fail(f"timed out waiting for {what}:\n{log.read_text()[-4000:]}")
        time.sleep(0.2)


def _epochs_done(out: Path) -> int:
    try:
        return json.loads((out / "summary.json").read_text())["epochs_completed"]
    except (OSError, ValueError, KeyError):
        return 0


def _start_elastic(cluster, tiny_data, tmp_path: Path, min_np: int, extra_env: dict, train: list):
    """launch/elastic.sh over both hosts, listed in a hosts file the test edits; its output to job.log."""
    hosts_file, out, log_path = tmp_path / "hosts", tmp_path / "run", tmp_path / "job.log"
    hosts_file.write_text("".join(f"{a}:1\n" for a in cluster.host_addrs))
    env = {**_launcher_env(cluster, tmp_path, "horovodrun.sh"), "HOSTS_FILE": str(hosts_file), **extra_env}
    cmd = [REPO / "launch" / "elastic.sh", "--discovery", REPO / "launch" / "discover_hosts.sh",
           "--min-np", str(min_np), "--max-np", "2",
           "--", "--data", tiny_data, "--out", out, "--metrics-port", "0", *train]
    log = open(log_path, "w")
    job = cluster.popen(cmd, env=env, cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
    log.close()  # the child holds its own descriptor
    return job, hosts_file, out, log_path

def test_elastic_survives_a_lost_host_and_takes_it_back(cluster, tiny_data, single_host_elastic, tmp_path):
    """--elastic: a host SIGKILLed mid-epoch; the survivor rolls back to the last epoch end and
    finishes alone; the host, listed again, rejoins at an epoch end and trains the last epochs."""
    job, hosts_file, out, log_path = _start_elastic(cluster, tiny_data, tmp_path, 1,
                                                    {"COOLDOWN": "1 2", "ELASTIC_TIMEOUT": "60"}, ELASTIC_TRAIN)
    try:
        _wait_for(lambda: _epochs_done(out) >= 1, 180, job, "epoch 1", log_path)
        time.sleep(1.0)  # into epoch 2
        hosts_file.write_text(f"{cluster.host_addrs[0]}:1\n")  # the host is gone...
        assert cluster.kill(cluster.hosts[1], "dap-hvd train", signal.SIGKILL), "no trainer on the second host"
        lost_at = _epochs_done(out)
        _wait_for(lambda: _epochs_done(out) >= lost_at + 1, 180, job, "an epoch on the survivor", log_path)
        hosts_file.write_text("".join(f"{a}:1\n" for a in cluster.host_addrs))  # ...and back
        back_at = _epochs_done(out)
        rc = job.wait(timeout=300)
    finally:
        if job.poll() is None:
            job.kill()
    text = log_path.read_text()
    assert rc == 0, text[-4000:]
    summary = json.loads((out / "summary.json").read_text())
    hist = summary["epochs"]
    assert summary["epochs_completed"] == ELASTIC_EPOCHS
    assert [h["epoch"] for h in hist] == list(range(1, ELASTIC_EPOCHS + 1))
    sizes = [h["world_size"] for h in hist]
    print("world sizes", sizes, "listed again after epoch", back_at, "top1", summary["top1"], "uninterrupted",
          single_host_elastic["top1"], "memberships", summary["memberships"])
    assert sizes[0] == 2 and 1 in sizes, sizes
    assert sizes[-1] == 2, sizes  # back to 2 after 1
    # each restart is recorded with the commit it rolled back to
    m = summary["memberships"]
    assert [x["world_size"] for x in m][:2] == [2, 1] and m[-1]["world_size"] == 2, m
    assert m[1]["rolled_back_to"] == lost_at and m[1]["from_epoch"] == lost_at + 1, m
    # exact counts in every epoch, whatever the world size: each selected sample trained once,
    # plus the wrap-around padding of the last shard
    for h in hist:
        assert h["samples"] == h["subset"] + h["padding"] and h["padding"] < h["world_size"], h
    # the selections up to the loss are the uninterrupted run's; the run as a whole lands within
    # noise of it (tiny data, 48 px, 20 epochs)
    assert _digests(summary)[:lost_at] == _digests(single_host_elastic)[:lost_at]
    assert abs(summary["top1"] - single_host_elastic["top1"]) <= 0.15, (summary["top1"], single_host_elastic["top1"])


def test_elastic_below_min_np_ends_non_zero_instead_of_hanging(cluster, tiny_data, tmp_path):
    """horovod#3494: survivors below --min-np can wait in re-initialisation forever. The launcher
    bounds that wait (ELASTIC_TIMEOUT), and the job ends non-zero with its checkpoints intact."""
    job, hosts_file, out, log_path = _start_elastic(cluster, tiny_data, tmp_path, 2, {"ELASTIC_TIMEOUT": "15"}, TRAIN)
    try:
        _wait_for(lambda: _epochs_done(out) >= 1, 180, job, "epoch 1", log_path)
        hosts_file.write_text(f"{cluster.host_addrs[0]}:1\n")
        assert cluster.kill(cluster.hosts[1], "dap-hvd train", signal.SIGKILL), "no trainer on the second host"
        t_kill = time.time()
        try:
            rc = job.wait(timeout=120)
        except subprocess.TimeoutExpired:
            pytest.fail("below --min-np the job hung:\n" + log_path.read_text()[-4000:])
        elapsed = time.time() - t_kill
    finally:
        if job.poll() is None:
            job.kill()
    text = log_path.read_text()
    last = "\n".join(text.splitlines()[-3:])
    print(f"below min-np: ended {elapsed:.1f} s after the kill, rc {rc}; last lines:\n{last}")
    assert rc != 0, text[-3000:]
    deadline = time.time() + 20  # the survivor got SIGTERM with the job's end: it may still be exiting
    while cluster.pids(cluster.hosts[0], "dap-hvd train") and time.time() < deadline:
        time.sleep(0.2)
    assert cluster.pids(cluster.hosts[0], "dap-hvd train") == [], "a survivor was left running"
    assert _epochs_done(out) >= 1  # what was checkpointed is there for --resume


# ---- c23b: a bad file under --elastic ends the job, not host after host

def test_elastic_with_a_bad_file_ends_the_job_with_its_one_line_error(cluster, data_copy, tmp_path):
    """A bad file is not a lost host: Horovod's elastic driver blacklisted the rank's host and the
    survivor re-sharded, met the same file, and so on until below --min-np. Now the first rank
    to meet it announces the error, the survivor fails with the same line in the same round,
    and the job ends there: no re-formed world, both ranks naming the file."""
    victim = sorted((data_copy / "train").rglob("*.jpg"))[7]
    victim.write_bytes(b"this is not an image")
    job, _, out, log_path = _start_elastic(cluster, data_copy, tmp_path, 1,
                                           {"COOLDOWN": "1 2", "ELASTIC_TIMEOUT": "30"}, [*TRAIN, "--loader", "torch"])
    try:
        rc = job.wait(timeout=240)
    except subprocess.TimeoutExpired:
        job.kill()
        pytest.fail("the job hung:\n" + log_path.read_text()[-4000:])
    text = log_path.read_text()
    assert rc != 0, text[-3000:]
    assert "elastic: 1 rank(s) now" not in text, text[-3000:]  # no world re-formed around the file
    lines = re.findall(rf"dap-hvd train: error on rank (\d): rank (\d): cannot decode {re.escape(str(victim))}", text)
    assert {a for a, _ in lines} == {"0", "1"} and len({b for _, b in lines}) == 1, text[-3000:]
    assert text.strip().splitlines()[-1].startswith("dap-hvd train: error on rank"), text[-2000:]
