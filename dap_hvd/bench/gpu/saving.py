"""GPU part `saving`: full data against DaP for the same epochs: wall clock against compute, the
subset-change cost, and device memory per epoch."""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import Optional

from dap_hvd.bench.gpu.jobs import BATCH, BIG, DAP, train
from dap_hvd.bench.report import last_line


def _per_epoch(launch_seconds: float, s: dict) -> dict:
    """One run's figures, epoch by epoch (from its summary.json)."""
    epochs = s["epochs"]
    return dict(launch_seconds=launch_seconds, epoch_seconds=[h["seconds"] for h in epochs],
                train_seconds=[h["train_seconds"] for h in epochs],
                eval_seconds=[h["eval_seconds"] for h in epochs],
                samples=[h["samples"] for h in epochs],
                data_wait_seconds=[h["data_wait_seconds"] for h in epochs],
                selection_seconds=[h["selection_seconds"] for h in epochs],
                subset=[h["subset"] for h in epochs],
                memory_mb=[h.get("device_memory_mb") for h in epochs],
                peak_mb=[h.get("device_peak_mb") for h in epochs],
                compute_planned=s.get("compute_ratio_planned"), compute=s.get("compute_ratio_measured"))


def _steady_seconds(r: dict) -> float:
    """Epochs 2..E without evaluation: what DaP changes."""
    return sum(s - e for s, e in zip(r["epoch_seconds"][1:], r["eval_seconds"][1:]))


def measure(data: Path, work: Path, logs: Optional[Path], epochs: int = 6) -> dict:
    common = ["--model", "resnet50", "--batch-size", str(BATCH), "--epochs", str(epochs), "--eval-every", "100",
              "--amp", "bf16", "--channels-last", "on"]
    out = {}
    for name, flags in (("full", ["--strategy", "full", "--lr-steps", "none"]), ("dap", DAP)):
        r = train(data, work / f"saving-{name}", [*common, *flags], logs and logs / f"saving-{name}.log", timeout=900)
        if not r["ok"]:
            return dict(ok=False, error=f"{name}: {r['error'][-600:]}")
        out[name] = _per_epoch(r["seconds"], r["summary"])
    f, d = out["full"], out["dap"]
    out.update(ok=True, images=BIG["classes"] * BIG["train_per_class"], epochs=epochs,
               wall_ratio=sum(d["epoch_seconds"]) / sum(f["epoch_seconds"]),
               launch_ratio=d["launch_seconds"] / f["launch_seconds"],
               compute_ratio=d["compute"] if d["compute"] is not None else d["compute_planned"],
               # Epoch 1 (all data in both runs, plus the one-time start: cuDNN tuning, the first
               # pipeline) and the evaluation (the same validation set) cost both runs the same
               # seconds; they are left out of the goal's ratio, on both sides, and kept above.
               steady_wall_ratio=_steady_seconds(d) / _steady_seconds(f),
               steady_compute_ratio=sum(d["samples"][1:]) / sum(f["samples"][1:]))
    return out


def _notes(s: dict) -> str:
    """What the table implies: DaP's training time beyond its share of a full epoch, and memory."""
    f, d = s["full"], s["dap"]
    n = d["subset"][0]
    per_sample = statistics.median(t / n for t in f["train_seconds"][1:])  # a warm full epoch, per image
    excess = [t - per_sample * k for t, k in zip(d["train_seconds"][1:], d["subset"][1:])]
    peaks = [m for m in d["peak_mb"][1:] if m is not None]
    held = [m for m in d["memory_mb"][1:] if m is not None]
    memory = (f" Device memory per epoch after the first, as the subset shrinks: peak allocated "
              f"{min(peaks):.0f}..{max(peaks):.0f} MB, reserved {min(held):.0f}..{max(held):.0f} MB." if peaks else "")
    return (f"\n\nDaP's training loops took {sum(excess):.1f} s more than their subsets' share of a warm full epoch "
            f"(epochs 2-{len(d['subset'])}: " + ", ".join(f"{x:+.1f}" for x in excess) + " s)." + memory)


def _epoch_row(f: dict, d: dict, i: int) -> str:
    memory = "-" if d["memory_mb"][i] is None else format(d["memory_mb"][i], ".0f")
    return (f"| {i + 1} | {f['epoch_seconds'][i]:.1f} | {d['subset'][i]} | {d['epoch_seconds'][i]:.1f} | "
            f"{d['selection_seconds'][i]:.3f} | {d['data_wait_seconds'][i]:.2f} | {memory} |\n")


def render(s: dict) -> str:
    if not s.get("ok"):
        return f"**DaP's saving in wall clock: failed**: {last_line(s['error'], 200)}"
    f, d = s["full"], s["dap"]
    return (
        f"**DaP's saving in wall clock** ({s['images']:,} images, {s['epochs']} epochs, bf16, channels_last, "
        f"DaP p=0.7 every epoch after the first, evaluated once at the end). "
        f"Epochs 2-{s['epochs']}, where the two runs differ (their evaluation left out on both sides): "
        f"compute ratio **{s['steady_compute_ratio']:.3f}**, wall-clock ratio **{s['steady_wall_ratio']:.3f}** "
        f"({s['steady_wall_ratio'] - s['steady_compute_ratio']:+.3f}; goal: within 0.02). All epochs, "
        f"with epoch 1's one-time start and the evaluation, which cost both runs the same: compute "
        f"{s['compute_ratio']:.3f}, wall clock {s['wall_ratio']:.3f}"
        f"; launch to exit {s['launch_ratio']:.3f} ({d['launch_seconds']:.0f} s against "
        f"{f['launch_seconds']:.0f} s).\n\n"
        "| epoch | full: s | DaP: subset | DaP: s | DaP: selection s | DaP: data wait s | DaP: device MB |\n"
        "|---|---|---|---|---|---|---|\n" + "".join(_epoch_row(f, d, i) for i in range(len(d["subset"])))
        + _notes(s))
