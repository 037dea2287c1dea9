"""(c) Loader throughput: DALI's CPU pipeline against torchvision's DataLoader, and a subset change's cost."""

from __future__ import annotations

import os
import statistics
import time
from pathlib import Path

import numpy as np

from dap_hvd.bench.report import runs


def measure(work: Path, repeats: int, images: int = 384) -> dict:
    """DALI CPU pipeline vs torchvision DataLoader on the same ImageNet-sized JPEGs, 224 crops,
    2 threads / 2 workers, alternating rounds."""
    from dap_hvd.data.catalog import load_catalog
    from dap_hvd.data.loaders import make_loader
    from dap_hvd.data.sample_data import SampleSpec, make_sample_data
    from dap_hvd.data.spec import LoaderSpec

    root = make_sample_data(work / "big", SampleSpec(num_classes=4, train_per_class=images // 4, val_per_class=2,
                                                      redundancy=1, image_size=448, seed=3))
    cat = load_catalog(root, "train", cache=False)
    idx = np.arange(len(cat), dtype=np.int64)
    sizes = [os.path.getsize(f) for f in cat.files(idx)]
    rates = {"dali": [], "torch": []}
    for r in range(repeats + 1):
        for kind in ("dali", "torch") if r % 2 == 0 else ("torch", "dali"):
            spec = LoaderSpec(files=cat.files(np.random.default_rng(r).permutation(idx)), tags=idx, batch_size=64,
                              image_size=224, train=True, seed=r, workers=2)
            t0 = time.perf_counter()
            loader = make_loader(kind, spec)
            n = sum(b.images.shape[0] for b in loader)
            loader.close()
            if r:  # round 0 warms the page cache and the libraries
                rates[kind].append(n / (time.perf_counter() - t0))
    switch = _switch_cost(cat, idx)
    return dict(images=len(idx), image_px="448x448", mean_jpeg_kb=statistics.mean(sizes) / 1024, repeats=repeats,
                dali_cpu=statistics.median(rates["dali"]), torch=statistics.median(rates["torch"]),
                dali_runs=rates["dali"], torch_runs=rates["torch"], **switch)


def _switch_cost(cat, idx: np.ndarray, changes: int = 20) -> dict:
    """A subset change, from the new file list to the first batch: a pipeline built for the new
    list (what every epoch paid before the pipeline became persistent) against the run's
    persistent pipeline fed the list, alternating, same lists."""
    from dap_hvd.data.loaders import Loaders, make_loader
    from dap_hvd.data.spec import LoaderSpec

    rng = np.random.default_rng(7)
    persistent = Loaders("dali")
    times = {"rebuild": [], "persistent": []}
    for i in range(changes + 2):
        sub = np.sort(rng.choice(idx, size=len(idx) // 2, replace=False))
        spec = LoaderSpec(files=cat.files(sub), tags=sub, batch_size=64, image_size=224, train=True, seed=i,
                          workers=2)
        for how in ("rebuild", "persistent") if i % 2 == 0 else ("persistent", "rebuild"):
            t0 = time.perf_counter()
            loader = make_loader("dali", spec) if how == "rebuild" else persistent.open(spec)
            next(iter(loader))
            seconds = time.perf_counter() - t0
            loader.close()
            if i >= 2:  # the first two warm the libraries and the persistent pipeline's build
                times[how].append(seconds)
    persistent.close()
    return dict(switch_changes=changes, switch_rebuild=statistics.median(times["rebuild"]),
                switch_persistent=statistics.median(times["persistent"]))


def _switch_text(ld: dict) -> str:
    if "switch_rebuild" not in ld:  # measured before the pipeline became persistent
        return ""
    return (f"\n\nA subset change (a new file list, to its first batch of 64), median of {ld['switch_changes']} "
            f"changes of half the images, alternating on the same lists: a pipeline built for the new list "
            f"(what every epoch paid before) **{ld['switch_rebuild']:.3f} s**; the run's persistent pipeline fed "
            f"the new list **{ld['switch_persistent']:.3f} s**.")


def render(ld: dict) -> str:
    return (
        f"Training pipeline (RandomResizedCrop 224, flip, normalize) over the same {ld['images']} JPEGs "
        f"({ld['image_px']}, {ld['mean_jpeg_kb']:.0f} KB mean), batch 64, 2 decode threads / 2 workers, "
        f"{ld['repeats']} alternating rounds, median.\n\n"
        "| loader | images/s | runs |\n|---|---|---|\n"
        f"| DALI (CPU) | {ld['dali_cpu']:.0f} | {runs(ld['dali_runs'], '.0f')} |\n"
        f"| torchvision DataLoader | {ld['torch']:.0f} | {runs(ld['torch_runs'], '.0f')} |\n\n"
        f"DALI/torchvision: **{ld['dali_cpu'] / ld['torch']:.2f}x**. GPU decode (nvJPEG) is measured by "
        "`dap-hvd bench --only gpu` on a GPU host." + _switch_text(ld))
