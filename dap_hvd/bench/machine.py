"""The machine and the versions every figure was measured with."""

from __future__ import annotations

import os
import platform
import time

from dap_hvd.bench.report import version


def _cpu_model() -> str:
    with open("/proc/cpuinfo") as f:
        return next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), platform.processor())


def measure() -> dict:
    import torch

    return dict(cpu=_cpu_model(), cores=os.cpu_count(), python=platform.python_version(), torch=torch.__version__,
                dali=version("nvidia-dali-cuda130"), horovod=version("horovod"),
                date=time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                gpu=torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none")


def render(m: dict) -> str:
    return (f"Machine: {m['cpu']}, {m['cores']} cores, GPU: {m['gpu']}. Python {m['python']}, "
            f"torch {m['torch']}, DALI {m['dali']}, Horovod {m['horovod']}. Each section names the run that "
            f"measured it.")
