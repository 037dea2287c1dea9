"""GPU part `micro`, one process, no Horovod: DALI `mixed` decode alone, the ResNet-50 step on synthetic
tensors and fed by DALI (eager and compiled), the subset-change cost, device memory over 50 changes."""

from __future__ import annotations

import os
import statistics
import time
from pathlib import Path

import numpy as np

from dap_hvd.bench.gpu.jobs import BATCH, jpeg_dataset

A100_ANCHOR = 2470  # NVIDIA's published PyTorch ResNet-50 AMP img/s on one A100-80GB
CHANGES = 50  # subset changes through the persistent pipeline; the first 5 warm it
REBUILDS = 10  # pipelines built for a list; the first 2 warm the libraries


class Rig:
    """ResNet-50 (bf16, channels_last) with its optimizer, and DALI pipelines over one JPEG folder, on GPU 0."""

    def __init__(self, work: Path, steps: int):
        import torch

        from dap_hvd.data.loaders import Loaders
        from dap_hvd.engine import Precision
        from dap_hvd.models import build_model

        self.torch = torch
        self.dev = torch.device("cuda", 0)
        torch.cuda.set_device(self.dev)
        torch.backends.cudnn.benchmark = True
        root = jpeg_dataset(work / "micro-jpegs", classes=1, train_per_class=16 * BATCH, val_per_class=1)
        self.files = sorted(str(p) for p in (root / "train" / "c000").glob("*.jpg"))
        self.tags = np.arange(len(self.files), dtype=np.int64)
        self.threads = max(2, min(8, os.cpu_count() or 2))
        self.steps = steps
        self.model = build_model("resnet50", 1000).to(self.dev)
        self.compiled = torch.compile(self.model, dynamic=False)  # what --compile runs (shares the parameters)
        self.opt = torch.optim.SGD(self.model.parameters(), lr=0.1, momentum=0.9)
        self.precision = Precision(self.dev, torch.bfloat16, True)
        self.labels = torch.randint(0, 1000, (BATCH,), device=self.dev)
        self.synthetic = torch.randn(BATCH, 3, 224, 224, device=self.dev).contiguous(
            memory_format=torch.channels_last)
        self.persistent = Loaders("dali")

    def spec(self, n=None):
        from dap_hvd.data.spec import LoaderSpec

        n = len(self.files) if n is None else n
        return LoaderSpec(files=self.files[:n], tags=self.tags[:n], batch_size=BATCH, image_size=224, train=True,
                          seed=0, workers=self.threads, device="gpu", device_id=0, channels_last=True,
                          pin_memory=True)

    def sync(self) -> None:
        self.torch.cuda.synchronize()

    def loader_rate(self) -> float:
        """DALI decode and augmentation alone, a pipeline built for the folder."""
        from dap_hvd.data.loaders import make_loader

        loader = make_loader("dali", self.spec())
        n, t = 0, time.perf_counter()
        for b in loader:
            n += b.images.shape[0]
        self.sync()
        rate = n / (time.perf_counter() - t)
        loader.close()
        return rate

    def step(self, net, images) -> None:
        F = self.torch.nn.functional
        self.opt.zero_grad(set_to_none=True)
        with self.precision.autocast():
            loss = F.cross_entropy(net(self.precision.to_device(images)).float(), self.labels[:len(images)])
        loss.backward()
        self.opt.step()

    def synthetic_rate(self, net) -> float:
        for _ in range(5):
            self.step(net, self.synthetic)
        self.sync()
        t = time.perf_counter()
        for _ in range(self.steps):
            self.step(net, self.synthetic)
        self.sync()
        return self.steps * BATCH / (time.perf_counter() - t)

    def fed_rate(self, net, passes: int = 4) -> float:
        """The run's way: one persistent pipeline fed a new list each pass; timed after a warm pass."""
        n, t = 0, None
        for k in range(passes + 1):
            loader = self.persistent.open(self.spec())
            for b in loader:
                self.step(net, b.images)
                if k == 1 and t is None:
                    self.sync()
                    t = time.perf_counter()
                elif t is not None:
                    n += b.images.shape[0]
            loader.close()
        self.sync()
        return n / (time.perf_counter() - t)

    def switch_seconds(self, rebuild: bool) -> float:
        """A new file list, to its first batch on the GPU."""
        from dap_hvd.data.loaders import make_loader

        t = time.perf_counter()
        loader = make_loader("dali", self.spec(2 * BATCH)) if rebuild else self.persistent.open(self.spec(2 * BATCH))
        next(iter(loader))
        self.sync()
        loader.close()
        return time.perf_counter() - t

    def compile(self) -> dict:
        """Compile forward and backward once; without it the rates are eager only, and the reason is kept."""
        t = time.perf_counter()
        try:
            self.step(self.compiled, self.synthetic)
            self.sync()
            error = None
        except Exception as e:
            self.compiled, error = None, f"{type(e).__name__}: {str(e)[:400]}"
        return dict(compile_seconds=time.perf_counter() - t, compile_error=error)


def _rates(rig: Rig, repeats: int) -> dict:
    """Eager and compiled side by side, alternating, so drift hits both alike."""
    synth, synth_c, fed, fed_c = [], [], [], []
    for _ in range(repeats):
        synth.append(rig.synthetic_rate(rig.model))
        synth_c += [rig.synthetic_rate(rig.compiled)] if rig.compiled is not None else []
    for _ in range(repeats):
        fed.append(rig.fed_rate(rig.model))
        fed_c += [rig.fed_rate(rig.compiled)] if rig.compiled is not None else []
    compiled = dict(compiled_synthetic_rate=statistics.median(synth_c), compiled_synthetic_runs=synth_c,
                    compiled_fed_rate=statistics.median(fed_c), compiled_fed_runs=fed_c) if synth_c else {}
    return dict(synthetic_rate=statistics.median(synth), synthetic_runs=synth, fed_rate=statistics.median(fed),
                fed_runs=fed, compiled=compiled)


def _switches(rig: Rig) -> dict:
    rebuilds = [rig.switch_seconds(True) for _ in range(REBUILDS)]
    switches, memory = [], []
    for _ in range(CHANGES):  # the run's way: one persistent pipeline, a new list each time
        switches.append(rig.switch_seconds(False))
        free, total = rig.torch.cuda.mem_get_info(rig.dev)
        memory.append((total - free) / 2**20)
    return dict(switch_seconds=statistics.median(switches[5:]), switch_first=switches[0],
                rebuild_seconds=statistics.median(rebuilds[2:]), memory_mb=memory)


def measure(work: Path, repeats: int, steps: int = 30) -> dict:
    rig = Rig(work, steps)
    decode = [rig.loader_rate() for _ in range(repeats)]
    compiling = rig.compile()
    rates = _rates(rig, repeats)
    compiled = rates.pop("compiled")
    switches = _switches(rig)
    rig.persistent.close()
    return dict(threads=rig.threads, images=len(rig.files), decode_rate=statistics.median(decode), decode_runs=decode,
                **rates, **compiling, **compiled, **switches)


def _table(g: dict, compiled: bool) -> str:
    return ("| measurement | images/s |\n|---|---|\n"
            f"| DALI `mixed` decode + RandomResizedCrop alone | {g['decode_rate']:.0f} |\n"
            f"| training step on synthetic tensors (the ceiling) | {g['synthetic_rate']:.0f} |\n"
            f"| training step fed by DALI | {g['fed_rate']:.0f} |\n"
            + (f"| `--compile`: training step on synthetic tensors | {g['compiled_synthetic_rate']:.0f} |\n"
               f"| `--compile`: training step fed by DALI | {g['compiled_fed_rate']:.0f} |\n" if compiled else ""))


def _against_anchor(g: dict, compiled: bool) -> str:
    text = (f"DALI-fed / synthetic: **{g['fed_rate'] / g['synthetic_rate']:.3f}** eager"
            + (f", **{g['compiled_fed_rate'] / g['compiled_synthetic_rate']:.3f}** compiled" if compiled else "")
            + f" (goal: within 10%). Against NVIDIA's published PyTorch ResNet-50 AMP figure on one A100-80GB "
            f"({A100_ANCHOR:,} img/s): **{g['synthetic_rate'] / A100_ANCHOR:.2f}x** eager on synthetic tensors, "
            f"{g['fed_rate'] / A100_ANCHOR:.2f}x fed by DALI")
    if compiled:
        text += (f"; compiled **{g['compiled_synthetic_rate'] / A100_ANCHOR:.2f}x** on synthetic tensors, "
                 f"**{g['compiled_fed_rate'] / A100_ANCHOR:.2f}x** fed by DALI (compiled / eager, side by side: "
                 f"{g['compiled_synthetic_rate'] / g['synthetic_rate']:.2f}x; compiling took "
                 f"{g['compile_seconds']:.0f} s, once per process, with Inductor's on-disk cache as this machine "
                 f"had it)")
    return text + " (goal: 2x). MLPerf's tuned MXNet+DALI runs reach about 7,200 img/s per H100. "


def render(g: dict) -> str:
    compiled = "compiled_synthetic_rate" in g
    mem = g["memory_mb"]
    return (
        f"**Throughput**: bf16 autocast, channels_last, {g['images']} JPEGs of 500x375, DALI `mixed` decoding "
        f"with {g['threads']} threads, medians of {len(g['synthetic_runs'])}.\n\n"
        + _table(g, compiled) + "\n" + _against_anchor(g, compiled)
        + (f"torch.compile failed here: {g['compile_error']}. " if g.get("compile_error") else "")
        + f"A subset change, from a new file list to its first batch: "
        f"{g['switch_seconds']:.3f} s through the run's persistent pipeline (median of {CHANGES - 5}; the first "
        f"{g['switch_first']:.3f} s), against {g['rebuild_seconds']:.3f} s for a pipeline built for the list. "
        f"Device memory in use over {CHANGES} changes: {mem[0]:.0f} MB at the first, {mem[9]:.0f} MB at the "
        f"tenth, {mem[-1]:.0f} MB at the last.")
