"""Prometheus metrics: live endpoints of a 2-rank job, parsed with prometheus_client's parser,
agree with summary.json; counters move during an epoch; the endpoint lingers until a last scrape;
a taken port is one warning and another port, which the targets file then lists."""

import json
import logging
import socket
import stat
import subprocess
import threading
import time
import urllib.error
import urllib.request

import pytest
from conftest import DAP_HVD, HOROVODRUN, run, spawn
from prometheus_client.parser import text_string_to_metric_families

from dap_hvd import discovery
from dap_hvd.discovery import default_base_port, parse_hosts, record_ports, write_sd_file
from dap_hvd.metrics import LIVE_INTERVAL, Metrics

pytestmark = pytest.mark.multirank

EXPECTED = ["dap_samples_trained_total", "dap_images_per_second", "dap_step_seconds", "dap_data_wait_seconds",
            "dap_train_loss", "dap_learning_rate", "dap_epoch", "dap_subset_samples", "dap_kept_fraction_ratio",
            "dap_compute_ratio", "dap_selection_duration_seconds", "dap_selection_sent_bytes_total",
            "dap_top1_accuracy_ratio", "dap_top5_accuracy_ratio", "dap_checkpoint_duration_seconds",
            "dap_skipped_samples_total", "dap_policy_info", "dap_weighted_samples", "dap_scored_samples",
            "dap_amp_skipped_steps_total"]


def _free_base_port(n=2) -> int:
    for base in range(19400, 19900, 7):
        socks = []
        try:
            for i in range(n):
                s = socket.socket()
                s.bind(("127.0.0.1", base + i))
                socks.append(s)
            return base
        except OSError:
            continue
        finally:
            for s in socks:
                s.close()
    raise RuntimeError("no free ports")


def scrape(port: int) -> dict:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    samples = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            samples[(s.name, s.labels.get("rank"))] = (s.value, s.labels)
    return samples


def test_live_metrics_agree_with_summary(tiny_data, tmp_path):
    base, out = _free_base_port(), tmp_path / "m"
    cmd = [HOROVODRUN, "--gloo", "-np", "2", "-H", "localhost:2", DAP_HVD, "train", "--data", str(tiny_data),
           "--out", str(out), "--epochs", "3", "--warmup", "1", "--interval", "1", "--keep", "0.7", "--reuse", "3",
           "--lr-steps", "none",
           "--batch-size", "16", "--no-progress", "--workers", "1", "--metrics-port", str(base),
           "--metrics-host", "127.0.0.1", "--metrics-linger", "60", "--run-id", "t1"]
    proc = spawn(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    by_rank, done_at = {}, None
    try:
        # Scrape all along, as Prometheus does. After training each endpoint stays up until the
        # next scrape (not --metrics-linger's 60 s), so each rank's last scrape has the final values.
        deadline = time.time() + 420  # a loaded 2-core machine took over 240 s
        while proc.poll() is None:
            assert time.time() < deadline, "training did not finish in time"
            for r in (0, 1):
                try:
                    by_rank[r] = scrape(base + r)
                except (OSError, urllib.error.URLError):
                    pass  # not up yet, or gone
            if done_at is None and (out / "summary.json").exists():
                s = json.loads((out / "summary.json").read_text())
                done_at = time.time() if s["epochs_completed"] == 3 and s["top1"] is not None else None
            time.sleep(0.5)
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode == 0 and done_at is not None, proc.stdout.read()
    # a linger not ended by the scrapes would last the full 60 s after the run's end
    assert time.time() - done_at < 55, "the endpoints lingered after their last scrape"
    final = json.loads((out / "summary.json").read_text())
    last = final["epochs"][-1]
    for r, m in by_rank.items():
        names = {name for name, _ in m}
        for metric in EXPECTED:
            assert any(n == metric or n.startswith(metric + "_") for n in names), f"{metric} missing on rank {r}"
        value, labels = m[("dap_samples_trained_total", str(r))]
        assert labels == {"rank": str(r), "run_id": "t1"}
        assert value == final["samples_trained"] / 2  # equal shards: each rank trained half
        assert m[("dap_epoch", str(r))][0] == 3
        assert m[("dap_policy_info", str(r))] == (1.0, {"rank": str(r), "run_id": "t1", "strategy": "dap"})
        assert m[("dap_scored_samples", str(r))][0] == final["score_table"]["scored"] > 0
        assert m[("dap_top1_accuracy_ratio", str(r))][0] == pytest.approx(final["top1"])
        assert m[("dap_subset_samples", str(r))][0] == last["subset"]
        assert m[("dap_compute_ratio", str(r))][0] == pytest.approx(final["compute_ratio_measured"])
        assert m[("dap_learning_rate", str(r))][0] == pytest.approx(last["lr"])
        assert m[("dap_train_loss", str(r))][0] == pytest.approx(last["train_loss"], rel=1e-5)
        assert m[("dap_step_seconds_count", str(r))][0] == sum(
            -(-e["samples"] // 32) for e in final["epochs"])  # one observation per step
        assert m[("dap_selection_duration_seconds_count", str(r))][0] == 1  # W=1: drop after 2; 3 is a pick


def test_a_taken_port_is_one_warning_and_training_goes_on(tiny_data, tmp_path):
    """A metrics port another program holds (dcgm-exporter on 9400, say): the rank serves on a
    free port, says so once, and writes it into the launcher's targets file (DAP_HVD_SD_FILE)."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen()
    port = s.getsockname()[1]
    sd = tmp_path / "targets.json"
    write_sd_file(sd, [("localhost", 1)], port)
    try:
        p = run([DAP_HVD, "train", "--data", str(tiny_data), "--out", str(tmp_path / "x"), "--epochs", "1",
                 "--warmup", "1", "--reuse", "none", "--lr-steps", "none", "--no-progress", "--metrics-port", str(port),
                 "--metrics-host", "127.0.0.1"], env={"DAP_HVD_SD_FILE": str(sd)}, timeout=180)
    finally:
        s.close()
    warnings = [line for line in (p.stdout + p.stderr).splitlines() if "metrics port" in line]
    assert len(warnings) == 1 and f"127.0.0.1:{port} is taken" in warnings[0], p.stderr
    used = int(warnings[0].split("serving on ")[1].split()[0])
    assert used != port and json.loads(sd.read_text())[0]["targets"] == [f"localhost:{used}"]
    assert "Traceback" not in p.stderr
    assert json.loads((tmp_path / "x" / "summary.json").read_text())["epochs_completed"] == 1


def _busy_port() -> socket.socket:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen()
    return s


def test_live_counts_move_during_an_epoch_and_end_exact(caplog):
    """The step loop's host-side counts reach the endpoint every LIVE_INTERVAL seconds (no
    device sync); the epoch's end makes the counter exact. A fake clock drives the interval; the
    server and the scrape are real."""
    now = [0.0]
    base = _free_base_port(1)
    m = Metrics(rank=0, local_rank=0, run_id="live", port=base, host="127.0.0.1", clock=lambda: now[0])
    try:
        def samples():
            return scrape(base)[("dap_samples_trained_total", "0")][0]

        for t in (0.5, 1.0, 1.5):
            now[0] = t
            m.observe_step(step_seconds=0.1, wait_seconds=0.0, samples=16)
        assert samples() == 0  # within the interval: nothing published yet
        now[0] = LIVE_INTERVAL + 0.5
        m.observe_step(step_seconds=0.1, wait_seconds=0.0, samples=16)
        assert samples() == 64
        assert scrape(base)[("dap_images_per_second", "0")][0] == pytest.approx(64 / (LIVE_INTERVAL + 0.5))
        now[0] = LIVE_INTERVAL + 1.0
        m.observe_step(step_seconds=0.1, wait_seconds=0.0, samples=16)
        m.epoch_done(samples=80, seconds=4.0)
        assert samples() == 80 and scrape(base)[("dap_images_per_second", "0")][0] == 20.0
        m.observe_step(step_seconds=0.1, wait_seconds=0.0, samples=16)  # the next epoch starts from there
        m.epoch_done(samples=16, seconds=1.0)
        assert samples() == 96
    finally:
        m.close()


def test_linger_waits_for_one_scrape_and_only_if_someone_scrapes():
    base = _free_base_port(1)
    m = Metrics(rank=0, local_rank=0, run_id="l", port=base, host="127.0.0.1")
    try:
        t = time.monotonic()
        m.linger(30)  # never scraped: nobody is watching, no wait
        assert time.monotonic() - t < 1
        scrape(base)
        threading.Timer(1.0, scrape, (base,)).start()
        t = time.monotonic()
        m.linger(30)
        assert 0.8 < time.monotonic() - t < 10  # until the next scrape, not the 30 s
    finally:
        m.close()


def test_taken_port_falls_back_with_one_warning(caplog):
    busy = _busy_port()
    port = busy.getsockname()[1]
    try:
        with caplog.at_level(logging.WARNING, logger="dap_hvd"):
            m = Metrics(rank=3, local_rank=0, run_id="f", port=port, host="127.0.0.1")
        try:
            assert m.port not in (0, port) and ("dap_epoch", "3") in scrape(m.port)
            assert len(caplog.records) == 1 and f"127.0.0.1:{port} is taken" in caplog.text
            assert f"serving on {m.port} instead" in caplog.text
        finally:
            m.close()
    finally:
        busy.close()


def test_service_discovery_file(tmp_path):
    hosts = parse_hosts("node1:2,node2:3")
    sd = tmp_path / "sd.json"
    targets = write_sd_file(sd, hosts, 27400, "r1")
    assert targets == ["node1:27400", "node1:27401", "node2:27400", "node2:27401", "node2:27402"]
    data = json.loads(sd.read_text())
    assert data[0]["labels"] == {"job": "dap_hvd", "run_id": "r1"}
    assert parse_hosts("a slots=4\nb slots=2\n") == [("a", 4), ("b", 2)]
    # readable by a Prometheus running as another user (mkstemp alone makes 0600)
    assert stat.S_IMODE(sd.stat().st_mode) == 0o644
    # the ports the ranks really serve on, in rank order
    assert record_ports(sd, [27400, 27401, 27400, 40001, 27402]) == [
        "node1:27400", "node1:27401", "node2:27400", "node2:40001", "node2:27402"]
    assert json.loads(sd.read_text())[0]["targets"][3] == "node2:40001" and json.loads(sd.read_text())[0]["labels"]
    assert stat.S_IMODE(sd.stat().st_mode) == 0o644
    assert record_ports(sd, [1, 2]) is None and record_ports(tmp_path / "none.json", [1]) is None


def test_default_port_avoids_exporters_and_other_jobs():
    assert default_base_port({}) == 27400
    # every port a job can take is outside Prometheus's exporter range (dcgm-exporter: 9400),
    # the Linux ephemeral range, Kubernetes NodePorts and torchrun's 29400/29500
    last = discovery.DEFAULT_BASE_PORT + discovery.JOB_PORT_BLOCKS * discovery.JOB_PORT_STRIDE - 1
    assert not (9100 <= discovery.DEFAULT_BASE_PORT <= 9999) and last < 29400
    ports = {default_base_port({"SLURM_JOB_ID": str(j)}) for j in range(1000, 1064)}
    assert len(ports) == 64 and min(ports) == 27400 and max(ports) + discovery.JOB_PORT_STRIDE - 1 == last
    assert default_base_port({"SLURM_JOB_ID": "1001"}) == 27400 + (1001 % 64) * 16
    assert default_base_port({"PBS_JOBID": "1001.pbs-server"}) == default_base_port({"SLURM_JOB_ID": "1001"})
    assert default_base_port({"LSB_JOBID": "x"}) == 27400
