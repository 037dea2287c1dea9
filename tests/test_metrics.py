"""Prometheus metrics: live endpoints of a 2-rank job, parsed with prometheus_client's parser,
agree with summary.json; a taken port is a clear error."""

import json
import socket
import subprocess
import time
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

from conftest import DAP_HVD, HOROVODRUN, _env, run
from dap_hvd.discovery import parse_hosts, write_sd_file

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
           "--out", str(out), "--epochs", "3", "--warmup", "1", "--interval", "1", "--keep", "0.7", "--reuse", "3", "--lr-steps", "none",
           "--batch-size", "16", "--no-progress", "--workers", "1", "--metrics-port", str(base),
           "--metrics-host", "127.0.0.1", "--metrics-linger", "30", "--run-id", "t1"]
    proc = subprocess.Popen(cmd, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline, final = time.time() + 180, None
        while time.time() < deadline:
            if (out / "summary.json").exists():
                s = json.loads((out / "summary.json").read_text())
                if s["epochs_completed"] == 3 and s.get("compute_ratio_planned") is not None and s["top1"] is not None:
                    final = s
                    break
            assert proc.poll() is None, proc.stdout.read()
            time.sleep(0.5)
        assert final, "training did not finish in time"
        time.sleep(1.0)
        by_rank = {r: scrape(base + r) for r in (0, 1)}
    finally:
        proc.kill()
        proc.wait()
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


def test_port_in_use_is_a_clear_error(tiny_data, tmp_path):
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen()
    port = s.getsockname()[1]
    try:
        p = run([DAP_HVD, "train", "--data", str(tiny_data), "--out", str(tmp_path / "x"), "--epochs", "1",
                 "--reuse", "none", "--lr-steps", "none", "--metrics-port", str(port), "--metrics-host", "127.0.0.1"], timeout=120, check=False)
    finally:
        s.close()
    assert p.returncode == 2
    assert f"127.0.0.1:{port}" in p.stderr and "--metrics-port" in p.stderr and "Traceback" not in p.stderr


def test_service_discovery_file(tmp_path):
    hosts = parse_hosts("node1:2,node2:3")
    targets = write_sd_file(tmp_path / "sd.json", hosts, 9400, "r1")
    assert targets == ["node1:9400", "node1:9401", "node2:9400", "node2:9401", "node2:9402"]
    data = json.loads((tmp_path / "sd.json").read_text())
    assert data[0]["labels"] == {"job": "dap_hvd", "run_id": "r1"}
    assert parse_hosts("a slots=4\nb slots=2\n") == [("a", 4), ("b", 2)]
