"""Sections (e) `--only real` and (f) `--only long`: `dap-hvd compare` on real images (Fashion-MNIST).

A thin caller of compare: it writes the Fashion-MNIST folder (Debian's `dataset-fashion-mnist`), runs
compare there with a fixed recipe, and renders compare's report as the section.
  real  (e) 10 epochs on 6,000 images, three budgets: the short-schedule regime
  long  (f) 40 epochs on 6,000 images, the full 10,000-image test set, budget 0.75 for every entry and
        0.55 for the three best: the regime where full-data training converges. Sized for 2 shared cores
        (20 px: about half the pixels of 28; one rank per run, two runs at once)
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Callable, Optional

from dap_hvd.bench.jobs import BIN
from dap_hvd.bench.report import TITLES

# Every run's recipe: the small ResNet, global batch 128, lr 0.2 (1-epoch warm-up), one final evaluation.
RECIPE = ("--model", "resnet_small", "--min-crop-area", "0.35", "--lr", "0.2", "--lr-warmup-epochs", "1",
          "--keep-checkpoints", "1", "--workers", "1")
CONFIGS = {
    # Fashion-MNIST's own 28 px, 2 ranks x 64
    "real": dict(train_per_class=600, val_per_class=500, epochs=10, budgets=(0.85, 0.65, 0.5), top_k=None,
                 image_size=28, ranks=2, batch_size=64, parallel=1, policies=None),
    # 20 px, 1 rank x 128, two runs at once
    "long": dict(train_per_class=600, val_per_class=None, epochs=40, budgets=(0.75, 0.55), top_k=3,
                 image_size=20, ranks=1, batch_size=128, parallel=2, policies=None),
}
PLOTS = {"real": "pareto_real.png", "long": "pareto_long.png"}  # under bench/ beside BENCHMARKS.md


def ensure_fashion_mnist(log: Callable[[str], None]) -> Path:
    """The Debian package's folder; installs the package with apt-get when it is missing."""
    from dap_hvd.data.fashion_mnist import DEBIAN_DIR, DEBIAN_PACKAGE

    if not (DEBIAN_DIR / "train-images-idx3-ubyte.gz").is_file():
        log(f"real: {DEBIAN_DIR} is missing; installing it with `apt-get install -y {DEBIAN_PACKAGE}`")
        p = subprocess.run(["apt-get", "install", "-y", "-q", DEBIAN_PACKAGE], capture_output=True, text=True)
        if p.returncode != 0:
            raise RuntimeError(f"apt-get install {DEBIAN_PACKAGE} failed (rc {p.returncode}); install it as root, "
                               f"then run `dap-hvd bench --only real` again:\n{p.stderr[-2000:]}")
    return DEBIAN_DIR


def describe(name: str) -> str:
    """What the section's data and sizing are, for its BENCHMARKS.md text."""
    cfg = CONFIGS[name]
    size = "Fashion-MNIST's own 28 px" if cfg["image_size"] == 28 else \
        f"{cfg['image_size']} px (resized from 28, so the runs fit these 2 shared cores)"
    par = "" if cfg["parallel"] == 1 else f", {cfg['parallel']} runs at once (wall ratios carry the machine's load)"
    left = "" if cfg["policies"] is None or "random" in cfg["policies"] else \
        "; random drop on DaP's schedule is left to sections (d) and (e)"
    val = "the whole test set" if cfg["val_per_class"] is None else f"{cfg['val_per_class']} test images"
    return (f"{cfg['train_per_class']} training images per class and {val}, {size}, `resnet_small`, "
            f"{cfg['ranks']} rank{'s' if cfg['ranks'] > 1 else ''} × batch {cfg['batch_size']} per run{par}{left}.")


def settings(name: str, data: Path, seeds: int, policies=None):
    """The compare a bench section runs."""
    from dap_hvd.compare.plan import ORDER, Settings

    cfg = CONFIGS[name]
    chosen = policies or cfg["policies"] or [p for p in ORDER if p != "full"]
    size = str(cfg["image_size"])
    recipe = (*RECIPE, "--image-size", size, "--val-resize", size, "--batch-size", str(cfg["batch_size"]))
    return Settings(data=str(data), epochs=cfg["epochs"], budgets=cfg["budgets"],
                    policies=("full", *[p for p in ORDER if p in chosen and p != "full"]), seeds=seeds,
                    top_k=cfg["top_k"], np=cfg["ranks"], hosts=f"localhost:{cfg['ranks']}", train_args=recipe)


def run(name: str, out: Path, seeds: int, log: Callable[[str], None], policies=None) -> dict:
    """The section's compare in `out` (resumed when it holds an earlier, interrupted one); its report."""
    from dap_hvd.compare.runner import STATE, run_compare
    from dap_hvd.data.catalog import cache_root
    from dap_hvd.data.fashion_mnist import FashionSpec, write_fashion_mnist

    cfg = CONFIGS[name]
    source = ensure_fashion_mnist(log)
    spec = FashionSpec(cfg["train_per_class"], cfg["val_per_class"])
    data = write_fashion_mnist(cache_root() / f"fashion-mnist-{spec.train_per_class}-{spec.val_per_class}", spec,
                               source=source)
    return run_compare(settings(name, data, seeds, policies), out, resume=(out / STATE).is_file(),
                       parallel=cfg["parallel"], log=log)


def measure(name: str, compare_dir: Path, seeds: int, policies: Optional[list]) -> dict:
    """Fashion-MNIST, every policy: `dap-hvd compare` in COMPARE_DIR/NAME, which keeps each run's
    figures as it ends, so an interrupted section resumes there."""
    os.environ.update(OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="")  # as the other CPU sections' jobs
    os.environ["PATH"] = f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"
    return run(name, compare_dir / name, seeds, log=lambda line: print(line, flush=True), policies=policies)


def render(name: str, report: dict) -> Optional[str]:
    """compare's table and conclusions, recomputed from the runs by today's rules."""
    if not report.get("entries"):  # a result from before `compare`: keep the text it wrote
        return None
    from dap_hvd.compare.report import build_report
    from dap_hvd.compare.report import render as compare_text

    return ("Fashion-MNIST (real 28×28 product photos, MIT licence, Debian's `dataset-fashion-mnist`) "
            f"through `dap-hvd compare` on this machine: {describe(name)} "
            + compare_text(build_report(report))
            + f"\n![top-1 against compute and wall clock](bench/{PLOTS[name]})")


def plot(name: str, report: dict, markdown: Path) -> None:
    """The section's Pareto plot, in bench/ beside the markdown file."""
    if report.get("entries"):
        from dap_hvd.compare.report import plot as pareto

        pareto(report, markdown.parent / "bench" / PLOTS[name], title=TITLES[name])
