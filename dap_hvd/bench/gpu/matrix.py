"""GPU part `matrix`: `dap-hvd train` (horovodrun, one rank) in each precision/layout/loader mode, a few
hundred steps each, with its evaluation."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

from dap_hvd.bench.gpu.jobs import BATCH, BIG, rate, train
from dap_hvd.bench.report import last_line

# Each mode is what a user would pass; "bf16 channels_last" is what `auto` picks on a GPU.
MODES = {
    "bf16, channels_last": ["--amp", "bf16", "--channels-last", "on"],
    "bf16, NCHW": ["--amp", "bf16", "--channels-last", "off"],
    "fp16 + GradScaler, channels_last": ["--amp", "fp16", "--channels-last", "on"],
    "bf16, --sync-bn": ["--amp", "bf16", "--sync-bn"],
    "bf16, channels_last, --loader torch": ["--amp", "bf16", "--channels-last", "on", "--loader", "torch"],
    "bf16, channels_last, --compile": ["--amp", "bf16", "--channels-last", "on", "--compile"],
}


def _mode(name: str, flags: list, data: Path, work: Path, logs: Optional[Path], steps: int) -> dict:
    slug = "".join(ch if ch.isalnum() else "-" for ch in name).strip("-")
    args = ["--model", "resnet50", "--batch-size", str(BATCH), "--strategy", "full", "--epochs", "2",
            "--max-steps-per-epoch", str(steps), "--lr-steps", "none", *flags]
    r = train(data, work / f"matrix-{slug}", args, logs and logs / f"matrix-{slug}.log")
    row = dict(mode=name, flags=" ".join(flags), ok=r["ok"], seconds=r["seconds"])
    if r["ok"]:
        s = r["summary"]
        row.update(steps=sum(h["samples"] for h in s["epochs"]) // BATCH, rate=rate(s),
                   top1=s["epochs"][-1]["top1"], loss=s["epochs"][-1]["train_loss"],
                   memory_mb=s["epochs"][-1].get("device_memory_mb"))
    else:
        row.update(error=r["error"][-600:])
    print(f"gpu matrix: {name}: " + (f"{row['rate']:.0f} img/s, {row['steps']} steps" if r["ok"] else
                                      f"FAILED (rc {r['rc']})"), flush=True)
    return row


def measure(data: Path, work: Path, logs: Optional[Path], steps: int = 150) -> list:
    return [_mode(name, flags, data, work, logs, steps) for name, flags in MODES.items()]


def _row(m: dict) -> str:
    if not m["ok"]:
        return f"| {m['mode']} | **failed**: {last_line(m['error'], 160)} | | | | |\n"
    return f"| {m['mode']} | ok | {m['steps']} | {m['rate']:.0f} | {m['loss']:.3f} | {m['top1']:.4f} |\n"


def render(rows: list, images: int) -> str:
    return (f"**`dap-hvd train` on the GPU** (`horovodrun --gloo -np 1`, {images:,} generated 500x375 JPEGs in "
            f"{BIG['classes']} classes of random colour fields, so top-1 stays at chance; 2 epochs capped by "
            "`--max-steps-per-epoch`, evaluated at the end; images/s of the second epoch's training loop):\n\n"
            "| mode | result | steps | images/s | last loss | top-1 |\n|---|---|---|---|---|---|\n"
            + "".join(_row(m) for m in rows))
