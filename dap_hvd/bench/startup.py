"""Start-up time: `dap-hvd plan`, loading a config, cold imports, and a 2-rank training launch's milestones."""

from __future__ import annotations

import statistics
import subprocess
import sys
import time
from pathlib import Path

from dap_hvd.bench.jobs import BIN, env, launch_command

# Each line's import includes the ones above it that it needs.
STACK = ("numpy", "torch", "torch._dynamo", "torchvision", "horovod.torch", "nvidia.dali", "prometheus_client",
         "pydantic", "dap_hvd.train")
STRATEGIES = ("dap", "rs2", "infobatch")
CONFIG_CODE = ("import time; t = time.perf_counter(); from dap_hvd.config import load_config; "
               "load_config(None, {'data.root': '.', 'strategy': 'infobatch'}); print(time.perf_counter() - t)")


def _import_seconds(module: str) -> float:
    """Wall time of a cold `import module` in a fresh interpreter, less the interpreter's start."""
    code = f"import time; t = time.perf_counter(); import {module}; print(time.perf_counter() - t)"
    p = subprocess.run([sys.executable, "-c", code], env=env(), capture_output=True, text=True, timeout=300)
    return float(p.stdout.strip().splitlines()[-1])


def _timed_launch(args: list, timeout: int = 600) -> dict:
    """Seconds from launching `horovodrun -np 2 dap-hvd train ...` to its first log line, its first
    epoch line and its 'done' line, and from 'done' to the launcher's exit."""
    cmd = launch_command(2, args)
    t0 = time.perf_counter()
    marks = {}
    proc = subprocess.Popen(cmd, env=env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    for line in proc.stdout:
        now = time.perf_counter() - t0
        if "[rank 0] INFO" in line:
            marks.setdefault("first_log", now)
        if "INFO epoch 1/" in line:
            marks.setdefault("first_epoch", now)
        if "INFO done:" in line:
            marks.setdefault("done", now)
    rc = proc.wait(timeout=timeout)
    marks["exit"] = time.perf_counter() - t0
    if rc != 0 or len(marks) != 4:
        raise RuntimeError(f"start-up benchmark run failed (rc {rc}, saw {sorted(marks)}): {' '.join(cmd)}")
    return marks


def _plan_and_config(repeats: int) -> dict:
    """Median seconds of `dap-hvd plan` per strategy, and of loading a validated config, interleaved."""
    plan_runs = {s: [] for s in STRATEGIES}
    config_runs = []
    for _ in range(repeats):
        for strategy, runs in plan_runs.items():
            t = time.perf_counter()
            subprocess.run([str(BIN / "dap-hvd"), "plan", "--preset", "imagenet", "--strategy", strategy], env=env(),
                           capture_output=True, check=True, timeout=60)
            runs.append(time.perf_counter() - t)
        p = subprocess.run([sys.executable, "-c", CONFIG_CODE], env=env(), capture_output=True, text=True,
                           check=True, timeout=60)
        config_runs.append(float(p.stdout.strip().splitlines()[-1]))
    return dict(plan_seconds={k: statistics.median(v) for k, v in plan_runs.items()},
                config_seconds=statistics.median(config_runs))


def measure(data: Path, work: Path, repeats: int) -> dict:
    quick = _plan_and_config(repeats)
    imports = {m: statistics.median(_import_seconds(m) for _ in range(repeats)) for m in STACK}
    launches = [_timed_launch([BIN / "dap-hvd", "train", "--data", data, "--out", work / f"startup-{r}",
                               "--no-progress", "--workers", "1", "--epochs", "1", "--reuse", "none",
                               "--lr-steps", "none"]) for r in range(repeats)]
    med = {k: statistics.median(m[k] for m in launches) for k in launches[0]}
    return dict(repeats=repeats, **quick, imports=imports, launch=med, launches=launches)


def _plan_line(st: dict) -> str:
    plans = st["plan_seconds"] if isinstance(st["plan_seconds"], dict) else {"dap": st["plan_seconds"]}
    line = "\n`dap-hvd plan` answers in " + ", ".join(f"{v:.2f} s (`--strategy {k}`)" for k, v in plans.items())
    line += " from launch to exit, with no torch or pydantic import (target < 0.3 s)."
    if "config_seconds" in st:
        line += (f" Loading and validating a training config (pydantic, imported then) takes "
                 f"{st['config_seconds']:.2f} s in a fresh interpreter.")
    return line


def render(st: dict) -> str:
    la = st["launch"]
    rows = "".join(f"| `import {m}` | {v:.2f} |\n" for m, v in st["imports"].items())
    return (
        f"`horovodrun --gloo -np 2 dap-hvd train --epochs 1` on the sample data, from launch, median of "
        f"{st['repeats']} runs; each rank's imports run side by side on this machine's 2 cores.\n\n"
        "| milestone | seconds after launch |\n|---|---|\n"
        f"| first log line | {la['first_log']:.1f} |\n| epoch 1 done | {la['first_epoch']:.1f} |\n"
        f"| `done` | {la['done']:.1f} |\n| launcher exits | {la['exit']:.1f} ({la['exit'] - la['done']:.1f} after "
        f"`done`) |\n\n"
        "Cold imports in a fresh interpreter, one process, median (each line includes what it imports):\n\n"
        "| import | seconds |\n|---|---|\n" + rows + _plan_line(st))
