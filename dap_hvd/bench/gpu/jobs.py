"""What the GPU parts share: the generated JPEG sets, the batch, DaP's schedule, and `dap-hvd train` on one GPU."""

from __future__ import annotations

import json
import os
import subprocess
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Optional

import numpy as np

from dap_hvd.bench.jobs import BIN

BATCH = 256
# 64,000 images: epochs long enough that what every epoch pays once (pipeline feed, selection) stays small
BIG = dict(classes=100, train_per_class=640, val_per_class=10)
SMALL = dict(classes=50, train_per_class=100, val_per_class=10)
# One schedule for every run (full data ignores all but E): DaP keeps 70% at every epoch after the first.
SCHED = ["--warmup", "1", "--interval", "1", "--keep", "0.7", "--active", "none", "--reuse", "none",
         "--lr-steps", "none"]
DAP = ["--strategy", "dap", *SCHED]


def _field(args) -> bytes:
    """One JPEG of about 500x375, quality 90: a smooth random colour field (seeded by its index)."""
    import io

    from PIL import Image

    i, w, h = args
    small = np.random.default_rng(i).integers(0, 256, size=(h // 25, w // 25, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(small).resize((w, h), Image.BICUBIC).save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def jpeg_dataset(root: Path, classes: int, train_per_class: int, val_per_class: int, size=(500, 375)) -> Path:
    """An ImageNet-layout folder of such JPEGs, written in parallel; kept when it already matches."""
    marker = root / "dataset.json"
    want = dict(classes=classes, train_per_class=train_per_class, val_per_class=val_per_class, size=list(size))
    if marker.is_file() and json.loads(marker.read_text()) == want:
        return root
    jobs = []
    for split, per in (("train", train_per_class), ("val", val_per_class)):
        for c in range(classes):
            (root / split / f"c{c:03d}").mkdir(parents=True, exist_ok=True)
            jobs += [(root / split / f"c{c:03d}" / f"{k:04d}.jpg", len(jobs) + k) for k in range(per)]
    with ProcessPoolExecutor(max_workers=os.cpu_count()) as pool:
        for (path, _), data in zip(jobs, pool.map(_field, [(i, *size) for _, i in jobs], chunksize=64)):
            path.write_bytes(data)
    marker.write_text(json.dumps(want))
    return root


def _gpu_env() -> dict:
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    env.setdefault("CUDA_VISIBLE_DEVICES", "0")
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    return env


def run(cmd: list, log: Optional[Path], timeout: int) -> dict:
    """A command's rc, wall seconds and output tail; the whole output goes to `log`."""
    t = time.perf_counter()
    try:
        p = subprocess.run([str(c) for c in cmd], env=_gpu_env(), capture_output=True, text=True, timeout=timeout)
        rc, out = p.returncode, p.stdout + p.stderr
    except subprocess.TimeoutExpired as e:
        rc, out = "timeout", f"{e.stdout or ''}{e.stderr or ''}"
        out = out.decode(errors="replace") if isinstance(out, bytes) else out
    if log is not None:
        log.parent.mkdir(parents=True, exist_ok=True)
        log.write_text(" ".join(map(str, cmd)) + "\n\n" + out)
    return dict(rc=rc, seconds=time.perf_counter() - t, tail=_error(out), out=out)


def _error(out: str) -> str:
    """The lines that say what went wrong: our own error line if there is one, else the rank's
    last stderr lines (not horovodrun's traceback about a process that exited)."""
    lines = out.splitlines()
    ours = [ln for ln in lines if ": error:" in ln and "dap-hvd" in ln]
    rank = [ln for ln in lines if ln.startswith("[0]<stderr>")]
    return "\n".join(ours[-3:] or rank[-8:] or lines[-8:])


def horovodrun_one(*args) -> list:
    """`horovodrun --gloo -np 1` on this host, before `dap-hvd` and its arguments."""
    return [BIN / "horovodrun", "--gloo", "-np", "1", "-H", "localhost:1", BIN / "dap-hvd", *args]


def train(data: Path, out: Path, args: list, log: Optional[Path], timeout: int = 600) -> dict:
    """`horovodrun --gloo -np 1 dap-hvd train` on the GPU: its summary.json, or the failure."""
    cmd = horovodrun_one("train", "--data", data, "--out", out, "--no-progress", "--metrics-port", "0", *args)
    r = run(cmd, log, timeout)
    if r["rc"] != 0:
        return dict(ok=False, rc=r["rc"], seconds=r["seconds"], error=r["tail"])
    return dict(ok=True, seconds=r["seconds"], summary=json.loads((Path(out) / "summary.json").read_text()))


def rate(summary: dict) -> float:
    """Images/s of the last epoch's training loop (the first one also pays cuDNN's autotuning)."""
    last = summary["epochs"][-1]
    return last["samples"] / max(last["train_seconds"], 1e-9)
