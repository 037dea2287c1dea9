"""(d) The redundancy sweep (the paper's Table 4): DaP's gap to full data as near-duplicates vary."""

from __future__ import annotations

from pathlib import Path

from dap_hvd.bench import accuracy
from dap_hvd.bench.report import mean_std


def measure(work: Path, seeds: int, levels=(1, 4, 12)) -> dict:
    """Table 4: DaP's gap to full data as the near-duplicate count varies, same image count."""
    from dap_hvd.data.sample_data import SampleSpec, make_sample_data

    out = {}
    for r in levels:
        data = make_sample_data(work / f"red{r}", SampleSpec(redundancy=r, seed=11))
        res = accuracy.measure(data, work / f"red{r}-runs", seeds, strategies=("full", "dap"))
        out[r] = res["runs"]
    return out


def _row(level, runs: dict) -> str:
    f = [r["top1"] for r in runs["full"]]
    d = [r["top1"] for r in runs["dap"]]
    gaps = [b - a for a, b in zip(f, d)]
    return f"| {level} | {mean_std(f)} | {mean_std(d)} | {mean_std(gaps)} |\n"


def render(red: dict) -> str:
    rows = "".join(_row(level, runs) for level, runs in red.items())
    return ("Table 4's question: does DaP's gap to full data depend on redundancy? Same 1,200 images, "
            "built from fewer distinct images with more near-duplicates each.\n\n"
            "| near-duplicates per image | full top-1 | DaP top-1 | DaP − full |\n|---|---|---|---|\n" + rows)
