"""GPU part `resume`: DaP stopped after epoch 2 and resumed trains exactly the checkpoint's selection, and
`dap-hvd evaluate` reproduces the run's top-1."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

from dap_hvd.bench.gpu.jobs import BATCH, DAP, horovodrun_one, run, train
from dap_hvd.bench.report import last_line


def _evaluated(ev: dict) -> Optional[dict]:
    """The JSON line `dap-hvd evaluate --json` printed (behind horovodrun's rank prefix), if it succeeded."""
    printed = [ln.split(">:", 1)[-1] for ln in ev["out"].splitlines() if ln.split(">:", 1)[-1].startswith("{")]
    return json.loads(printed[-1]) if ev["rc"] == 0 and printed else None


def measure(data: Path, work: Path, logs: Optional[Path]) -> dict:
    """DaP on the small set: an uninterrupted run, and one stopped after epoch 2 and resumed."""
    import torch

    from dap_hvd.checkpoint import list_checkpoints
    from dap_hvd.policy.policies import selection_digest

    args = ["--model", "resnet50", "--batch-size", str(BATCH // 2), "--epochs", "4", *DAP]
    whole = train(data, work / "resume-whole", args, logs and logs / "resume-whole.log")
    cut = train(data, work / "resume-cut", [*args, "--stop-after", "2"], logs and logs / "resume-cut.log")
    if not (whole["ok"] and cut["ok"]):
        return dict(ok=False, error=(whole.get("error") or cut.get("error"))[-600:])
    ckpt = list_checkpoints(work / "resume-cut")[-1]
    saved = selection_digest(torch.load(ckpt, map_location="cpu", weights_only=True)["selection"].numpy())
    more = train(Path(data), work / "resume-cut", ["--resume", work / "resume-cut"], logs and logs / "resume-more.log")
    if not more["ok"]:
        return dict(ok=False, error=more["error"][-600:])
    ev = run(horovodrun_one("evaluate", work / "resume-cut", "--json"), logs and logs / "resume-evaluate.log", 600)
    h, w = more["summary"]["epochs"], whole["summary"]["epochs"]
    evaluated = _evaluated(ev)
    return dict(ok=True, checkpoint_selection=saved, resumed_epoch3_selection=h[2]["selection_digest"],
                same_selection=saved == h[2]["selection_digest"],
                subsets=[x["subset"] for x in h], whole_subsets=[x["subset"] for x in w],
                first_epochs_equal=[x["train_loss"] for x in h[:2]] == [x["train_loss"] for x in w[:2]],
                top1=h[-1]["top1"], whole_top1=w[-1]["top1"],
                evaluate_top1=None if evaluated is None else evaluated.get("top1"),
                evaluate_error=None if ev["rc"] == 0 else ev["tail"][-600:])


def render(r: dict) -> str:
    if not r["ok"]:
        outcome = f"**failed**: {last_line(r['error'], 200)}"
    else:
        evaluated = "failed" if r["evaluate_top1"] is None else format(r["evaluate_top1"], ".4f")
        outcome = (f"the resumed run trained the checkpoint's selection: **{r['same_selection']}** "
                   f"(digest {r['checkpoint_selection'][:12]}); subsets {r['subsets']} (uninterrupted: "
                   f"{r['whole_subsets']}); top-1 {r['top1']:.4f}, `dap-hvd evaluate` on the run "
                   f"{evaluated}. The first two epochs' losses equal the uninterrupted run's: "
                   f"{r['first_epochs_equal']} (cuDNN's autotuned kernels need not be bit-reproducible across "
                   f"processes).")
    return ("**Checkpoint and resume** (DaP, p=0.7 every epoch after 1, ResNet-50, 5,000 images, stopped after "
            "epoch 2 and resumed to 4): " + outcome)
