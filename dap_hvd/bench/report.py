"""BENCHMARKS.md as a document: its sections in order, their titles, and the helpers every section's
renderer shares (versions, mean ± std, the 'measured by' line, the marker-delimited section swap)."""

from __future__ import annotations

import re
import statistics
from pathlib import Path
from typing import Iterable

# The document's outline: a section new to BENCHMARKS.md is appended in this order.
SECTIONS = ("machine", "gpu", "startup", "overhead", "saving", "selection", "loaders", "accuracy", "redundancy",
            "real", "long")

TITLES = {"machine": "Machine and versions", "gpu": "GPU: ResNet-50 throughput and the DALI path",
          "startup": "Start-up time", "overhead": "(a) DaP overhead", "saving": "(b) End-to-end saving",
          "selection": "(c) Selection step at ImageNet scale", "loaders": "(c) Loader throughput",
          "accuracy": "(d) Accuracy at matched compute (Table 2(f))", "redundancy": "(d) Redundancy sweep (Table 4)",
          "real": "(e) Every policy on real images: Fashion-MNIST",
          "long": "(f) Long schedule: does pruning pay where training converges? Fashion-MNIST, 40 epochs"}

HEADER = """# Benchmarks

Written by `dap-hvd bench` (each section between its markers is replaced by the run that measured
it; raw figures in `bench/results.json`). Nothing here is typed by hand.
"""


def version(dist_name: str) -> str:
    """An installed distribution's version, without importing it (the wrappers own the imports)."""
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as installed

    try:
        return installed(dist_name)
    except PackageNotFoundError:
        return "not installed"


def mean_std(xs: Iterable[float]) -> str:
    """`mean ± std` to 3 places; a single value alone."""
    xs = list(xs)
    return f"{statistics.mean(xs):.3f} ± {statistics.stdev(xs):.3f}" if len(xs) > 1 else f"{xs[0]:.3f}"


def runs(xs: Iterable[float], fmt: str) -> str:
    """Every repeat's figure, comma-separated, for a table's 'runs' column."""
    return ", ".join(format(x, fmt) for x in xs)


def last_line(error: str, width: int) -> str:
    """A failure's last line, cut to `width`: what a table cell can hold."""
    return error.strip().splitlines()[-1][:width]


def measured_line(stamp: dict) -> str:
    return f"\n\n_Measured {stamp['date']} by `{stamp['command']}`._"


def write_markdown(path: Path, sections: dict) -> None:
    """Replace each given section between its markers (or append it); the rest of the file is kept."""
    text = path.read_text() if path.exists() else HEADER
    for name in SECTIONS:
        if name not in sections:
            continue
        block = f"<!-- bench:{name} -->\n## {TITLES[name]}\n\n{sections[name]}\n<!-- /bench:{name} -->"
        pattern = re.compile(rf"<!-- bench:{name} -->.*?<!-- /bench:{name} -->", re.S)
        if pattern.search(text):
            text = pattern.sub(lambda _, b=block: b, text)  # a function: the block's backslashes stay literal
        else:
            text = text.rstrip() + "\n\n" + block + "\n"
    path.write_text(text)
