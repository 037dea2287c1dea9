"""The supervisor and the caches: a crash explanation that itself fails still ends in one line;
sidecar files are written whole, under unique temp names (two jobs may share DAP_HVD_CACHE)."""

import json
import re
import shutil
import signal
import subprocess
import threading

import pytest
from conftest import DAP_HVD, spawn, wait_until
from test_train import COMMON, SCHED

pytestmark = pytest.mark.multirank


def test_a_failure_while_explaining_a_crash_still_ends_in_one_line(data_copy, tmp_path):
    """The trainer dies by a signal; the parent explains it from the loader note, and here the
    data is gone meanwhile (load_catalog fails): still one line, no traceback."""
    out = tmp_path / "run"
    cmd = [DAP_HVD, "train", "--data", str(data_copy), "--out", str(out), *SCHED, *map(str, COMMON),
           "--epochs", "30", "--reuse", "20", "--lr-steps", "20"]
    proc = spawn(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        wait_until((out / "summary.json").exists, 120, "no epoch finished")
        (child,) = subprocess.run(["pgrep", "-P", str(proc.pid)], capture_output=True, text=True).stdout.split()
        shutil.move(data_copy, tmp_path / "gone")
        subprocess.run(["kill", "-SEGV", child], check=True)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 128 + signal.SIGSEGV, err[-2000:]
    assert "Traceback" not in err, err[-3000:]
    last = err.strip().splitlines()[-1]
    assert re.match(r"dap-hvd train: error on rank 0: the trainer crashed \(SIGSEGV\); finding out why failed too "
                    r"\(DataError: .*no 'train' folder", last), last


def test_json_sidecars_survive_concurrent_writers(tmp_path):
    """Two writers of one summary/scan file (two jobs sharing DAP_HVD_CACHE): each write lands
    whole; with one fixed temp name, one writer renamed the other's half-written file away."""
    from dap_hvd.rundir import write_json as _write_json

    path, errors = tmp_path / "scan.json", []

    def writer(tag):
        try:
            for i in range(300):
                _write_json(path, {"writer": tag, "i": i, "pad": "x" * 2000})
        except Exception as e:  # noqa: BLE001 - any failure is the finding
            errors.append(e)

    threads = [threading.Thread(target=writer, args=(t,)) for t in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors[:3]
    assert json.loads(path.read_text())["i"] == 299
    assert [p.name for p in tmp_path.iterdir()] == ["scan.json"]  # no temp file left
