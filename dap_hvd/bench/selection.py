"""(c) The selection step at ImageNet scale: selection_step.py under `horovodrun`, 2 and 4 CPU ranks."""

from __future__ import annotations

import json
import sys
from typing import Optional

from dap_hvd.bench.jobs import horovodrun

STEP = "dap_hvd.bench.selection_step"


def measure(num_samples: int, worlds=(2, 4)) -> list:
    out = []
    for w in worlds:
        text = horovodrun(w, [sys.executable, "-m", STEP, "--num-samples", num_samples], 1200)
        out.append(json.loads(text.split("BENCH ", 1)[1].splitlines()[0]))
    return out


def _row(s: dict, key: str, r: dict) -> str:
    policy, merge = key.split("/")
    return (f"| {s['world_size']} | {policy} | {merge} | {r['median_seconds']:.3f} | "
            f"{r['min_seconds']:.3f} | {r['bytes_sent_rank0'] / 2**20:.1f} | {r['peak_extra_mb_rank0']:.1f} | "
            f"{r['kept'] / s['num_samples']:.3f} |\n")


def render(sel: list) -> Optional[str]:
    if "results" not in sel[0]:  # a result from before the step measured each policy: keep its text
        return None
    rows = "".join(_row(s, key, r) for s in sel for key, r in s["results"].items())
    s0 = sel[0]
    return (
        f"The step after a scored epoch for N = {s0['num_samples']:,} samples (ImageNet): merge the "
        f"per-sample losses, write them into the score table, run the policy on rank 0 (DaP: hardest 90% of the "
        f"subset; InfoBatch: below-mean pruning at r = 0.5 with its loss weights; SeTa: 1-D k-means of all N "
        f"scores (r = 0) into 5 groups, a window of 3), broadcast the selection "
        f"(int64 indices, and float32 weights for InfoBatch). CPU ranks under `horovodrun --gloo` on this "
        f"machine, median of {s0['repeats']} (slowest rank each time). Bytes: what rank 0 puts on the wire. "
        f"Memory: the score table holds {s0['score_table_mb']:.1f} MB on every rank (float32 loss + int32 "
        f"epoch per sample) beside the {s0['ledger_mb']:.1f} MB ledger; 'peak extra' is rank 0's RSS "
        f"growth during the step beyond both (targets: < 0.5 s with 2 ranks, < 64 MB).\n\n"
        "| ranks | policy | merge | median s | min s | MB sent | peak extra MB | kept |\n"
        "|---|---|---|---|---|---|---|---|\n" + rows)
