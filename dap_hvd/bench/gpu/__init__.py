"""`dap-hvd bench --only gpu`: the GPU path, executed and measured on one GPU; one module per part.

Parts (`--gpu-parts`, any subset, in this order; each lands in bench/results.json as it ends, so a
session can run them in separate calls against the same `--gpu-data` folder):
  micro   DALI `mixed` decode alone, the ResNet-50 step (batch 256, bf16, channels_last) on
          synthetic tensors and fed by DALI, the subset-change cost, device memory over 50 changes
  matrix  `dap-hvd train` (horovodrun, one rank) in each precision/layout/loader mode, a few
          hundred steps each, with its evaluation
  resume  DaP stopped after epoch 2 and resumed: the resumed run trains exactly the checkpoint's
          selection, and `dap-hvd evaluate` reproduces the run's top-1
  saving  full data against DaP for the same epochs: wall clock against compute, the subset-change
          cost, and device memory per epoch
  partial the first step on a batch of a new size (an epoch's last): cuDNN's autotuner against its
          heuristics, which the trainer uses for partial batches (torch alone: no DALI, no Horovod)
Without a GPU the section is skipped with one line, and BENCHMARKS.md keeps an earlier GPU section.
The training data are random smooth colour fields at ImageNet-like size (500x375 JPEGs): they
measure speed, not accuracy.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, Optional

from dap_hvd.bench.gpu import matrix, micro, partial, resume, saving
from dap_hvd.bench.gpu.jobs import BATCH, BIG, SMALL, jpeg_dataset
from dap_hvd.bench.report import version

PARTS = ("micro", "matrix", "resume", "saving", "partial")


def _parts(gpu_parts: str) -> list[str]:
    wanted = set(gpu_parts.split(","))
    unknown = wanted - set(PARTS)
    if unknown:
        raise SystemExit(f"dap-hvd bench: --gpu-parts: unknown part(s) {sorted(unknown)}; choose from {list(PARTS)}")
    return [p for p in PARTS if p in wanted]


def _versions(torch) -> dict:
    driver = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                            capture_output=True, text=True).stdout.strip().splitlines()
    return dict(gpu=torch.cuda.get_device_name(0), driver=driver[0] if driver else "?", torch=torch.__version__,
                cuda=torch.version.cuda, dali=version("nvidia-dali-cuda130"), horovod=version("horovod"),
                batch=BATCH, cores=os.cpu_count(), python=sys.version.split()[0])


def _run_part(part: str, g: dict, work: Path, data_root: Path, logs: Optional[Path], repeats: int) -> None:
    if part == "micro":
        g.update(micro.measure(work, repeats))
    elif part == "matrix":
        g["matrix"] = matrix.measure(jpeg_dataset(data_root / "big", **BIG), work, logs)
        g["matrix_images"] = BIG["classes"] * BIG["train_per_class"]
    elif part == "resume":
        g["resume"] = resume.measure(jpeg_dataset(data_root / "small", **SMALL), work, logs)
    elif part == "saving":
        g["saving"] = saving.measure(jpeg_dataset(data_root / "big", **BIG), work, logs)
    elif part == "partial":
        g["partial"] = partial.measure()


def measure(work: Path, a, raw: dict, save: Callable[[], None]) -> Optional[dict]:
    """The parts `a.gpu_parts` names, each saved (`save`) as it ends, into raw["gpu"]; None without a GPU."""
    import torch

    if not torch.cuda.is_available():
        print("gpu: skipped: no CUDA device on this host (torch.cuda.is_available() is False); "
              "BENCHMARKS.md keeps any earlier GPU section", flush=True)
        return None
    parts = _parts(a.gpu_parts)
    data_root = Path(a.gpu_data) if a.gpu_data else work / "gpu-data"
    logs = Path(a.logs) if a.logs else None
    g = raw.setdefault("gpu", {})
    if set(parts) - {"partial"}:  # (partial alone needs neither DALI nor Horovod: keep their versions)
        g.update(_versions(torch))
    for part in parts:
        t = time.perf_counter()
        _run_part(part, g, work, data_root, logs, a.repeats)
        g.setdefault("part_seconds", {})[part] = time.perf_counter() - t
        g.setdefault("part_stamps", {})[part] = dict(date=raw["machine"]["date"], command=raw["command"])
        print(f"gpu: {part} done in {time.perf_counter() - t:.0f} s", flush=True)
        save()
    return g


def _stamps(stamps: dict) -> str:
    ordered = sorted(stamps.items(), key=lambda kv: kv[1]["date"])
    return "_Measured part by part: " + "; ".join(f"{part} {st['date']} by `{st['command']}`"
                                                  for part, st in ordered) + "._"


def render(g: dict) -> str:
    """The section: versions, then each part measured, then when each part was."""
    lines = [f"{g['gpu']}, driver {g['driver']}, CUDA {g.get('cuda', '?')}, torch {g['torch']}, DALI {g['dali']}, "
             f"Horovod {g['horovod']}, {g.get('cores', '?')} CPU cores. ResNet-50, batch {g['batch']}, one process."]
    if "synthetic_rate" in g:
        lines.append(micro.render(g))
    if g.get("matrix"):
        lines.append(matrix.render(g["matrix"], g["matrix_images"]))
    for key, part in (("resume", resume), ("saving", saving), ("partial", partial)):
        if g.get(key):
            lines.append(part.render(g[key]))
    if g.get("part_stamps"):
        lines.append(_stamps(g["part_stamps"]))
    return "\n\n".join(lines)
