"""Shared fixtures. Multi-rank tests launch real processes with horovodrun / mpirun, each
under a timeout, so a failing rank fails the test instead of hanging it."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
HOROVODRUN = str(BIN / "horovodrun")
DAP_HVD = str(BIN / "dap-hvd")
PY = sys.executable


def child_env(extra=None):
    env = dict(os.environ)
    env.setdefault("OMP_NUM_THREADS", "1")
    env["PYTHONUNBUFFERED"] = "1"
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    # MPI as root in containers/CI, and more slots than cores.
    env.update(OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1", OMPI_MCA_rmaps_base_oversubscribe="1")
    # 2-3 ranks on one host: on a machine with fewer GPUs they would have to share one, which the
    # trainer refuses; the suite tests the CPU path (the GPU path has its own benchmark).
    env["CUDA_VISIBLE_DEVICES"] = ""
    env.update(extra or {})
    return env


def spawn(cmd, **popen_kw) -> subprocess.Popen:
    """Start a command in the background, in the tests' environment; the test must end it."""
    return subprocess.Popen(cmd, env=child_env(), **popen_kw)


def wait_until(done, timeout: float, failure: str) -> None:
    """Poll `done()` every 0.2 s; fail the test with `failure` if it does not hold within `timeout` s."""
    deadline = time.monotonic() + timeout
    while not done():
        if time.monotonic() > deadline:
            pytest.fail(f"{failure} (waited {timeout} s)")
        time.sleep(0.2)


def run(cmd, timeout=300, env=None, cwd=REPO, check=True) -> subprocess.CompletedProcess:
    """Run a command with a hard timeout; on failure show its output in the test report."""
    try:
        p = subprocess.run(cmd, cwd=cwd, env=child_env(env), capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as e:
        out = (e.stdout or b"").decode(errors="replace") if isinstance(e.stdout, bytes) else (e.stdout or "")
        err = (e.stderr or b"").decode(errors="replace") if isinstance(e.stderr, bytes) else (e.stderr or "")
        pytest.fail(f"timed out after {timeout}s: {' '.join(map(str, cmd))}\n{out[-3000:]}\n{err[-3000:]}")
    if check and p.returncode != 0:
        pytest.fail(f"exit {p.returncode}: {' '.join(map(str, cmd))}\n"
                    f"--- stdout\n{p.stdout[-4000:]}\n--- stderr\n{p.stderr[-4000:]}")
    return p


def horovodrun(np_, args, timeout=300, env=None, check=True):
    return run([HOROVODRUN, "--gloo", "-np", str(np_), "-H", f"localhost:{np_}", *map(str, args)],
               timeout=timeout, env=env, check=check)


def mpirun(np_, args, timeout=300, env=None, check=True):
    return run(["mpirun", "--allow-run-as-root", "--oversubscribe", "-np", str(np_), "--bind-to", "none",
                *map(str, args)], timeout=timeout, env=env, check=check)


def rank_json(stdout: str, tag: str) -> dict:
    """Every 'TAG {json}' printed by the ranks -> {rank: payload}. Decodes each occurrence where
    it stands: under mpirun the ranks share one pipe, so lines from two ranks can run together."""
    out, decoder, pos = {}, json.JSONDecoder(), 0
    while (pos := stdout.find(tag, pos)) != -1:
        payload, end = decoder.raw_decode(stdout, pos + len(tag))
        out[payload["rank"]] = payload
        pos = end
    return out


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory) -> Path:
    """A small sample dataset: 10 classes x 40 train / 12 val, 48-px images."""
    from dap_hvd.data.sample_data import SampleSpec, make_sample_data

    root = tmp_path_factory.mktemp("data") / "tiny"
    return make_sample_data(root, SampleSpec(num_classes=10, train_per_class=40, val_per_class=12, redundancy=4,
                                             hard_fraction=0.15, image_size=48, seed=0))


@pytest.fixture
def data_copy(tiny_data, tmp_path) -> Path:
    dst = tmp_path / "data"
    shutil.copytree(tiny_data, dst)
    return dst


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("DAP_HVD_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))
