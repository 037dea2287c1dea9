"""What a run tells its user: the progress bar, one line per epoch, the final line, summary.json."""

from __future__ import annotations

import logging
import math
import os
import socket
import sys
import time
from typing import TYPE_CHECKING

from dap_hvd.hardware import jpeg_decoder

if TYPE_CHECKING:
    from dap_hvd.state import RunState
    from dap_hvd.train import Run

log = logging.getLogger("dap_hvd")

# How the epoch line names the policy's step (`action` in the epoch record) for the next epoch.
NEXT = {"drop": "drop to {n}", "pick": "pick all data", "prune": "prune to {n}", "draw": "draw {n}",
        "full": "all data"}


class Progress:
    """Rank 0's progress bar: images/s, loss, kept fraction. On a terminal it redraws in place
    twice a second; under horovodrun/mpirun/SLURM (a pipe) it prints a line every 15 s, and at
    least one per epoch, so short epochs show their rate too. Only a redraw reads the loss from
    the device, never every step."""

    def __init__(self, epoch: int, epochs: int, steps: int, world_size: int, kept: float):
        self.epoch, self.epochs, self.steps, self.world, self.kept = epoch, epochs, steps, world_size, kept
        self.t0 = self.last = time.perf_counter()
        self.images = 0
        self.printed = False
        self.tty = sys.stdout.isatty()
        self.every = 0.5 if self.tty else 15.0

    def update(self, step, n, loss_sum, loss_count, lr):
        self.images += n * self.world
        now = time.perf_counter()
        last_step = step == self.steps
        if now - self.last < self.every and not (last_step and not self.printed):
            return
        self.last, self.printed = now, True
        loss = float(loss_sum) / max(1, int(loss_count))
        bar = "#" * int(20 * step / self.steps)
        line = (f"epoch {self.epoch}/{self.epochs} [{bar:<20}] {step}/{self.steps} "
                f"{self.images / max(now - self.t0, 1e-9):.0f} img/s loss {loss:.3f} lr {lr:.3g} kept {self.kept:.1%}")
        sys.stdout.write(f"\r{line}" if self.tty else f"{line}\n")
        sys.stdout.flush()

    def close(self):
        if self.tty:
            sys.stdout.write("\n")
            sys.stdout.flush()


def log_epoch(record: dict, epochs: int, num_samples: int, next_size: int) -> None:
    """Rank 0's line for a finished epoch (its record), and what the next one trains."""
    r = record
    extra = (f" +{r['padding']} pad" if r["padding"] else "") + (f", {r['weighted']} weighted" if r["weighted"] else "")
    acc = "" if r["top1"] is None else f", top1 {r['top1']:.4f} top5 {r['top5']:.4f}"
    nxt = "end of run" if r["epoch"] == epochs else NEXT.get(r["after"], "same subset").format(n=next_size)
    log.info("epoch %d/%d: %d samples (%.1f%% of data)%s, loss %.4f, lr %.4g%s, %.1fs; next: %s", r["epoch"], epochs,
             r["samples"], 100 * r["subset"] / num_samples, extra, r["train_loss"], r["lr"], acc, r["seconds"], nxt)


def log_start(run: Run) -> None:
    """Rank 0's opening lines: the job, its data and plan, and what may surprise."""
    cfg, world = run.cfg, run.world
    log.info("%s: %d ranks x batch %d, lr %.4g, %s on %s, %d train / %d val samples, %d classes; planned compute %s",
             cfg.strategy, world.size, cfg.data.batch_size, run.base_lr, cfg.model_name, run.precision.device,
             len(run.data.universe), len(run.val.cat), run.data.cat.num_classes,
             run.plan.describe() + ("" if run.plan.exact else " (the lower bound in expectation)"))
    if len(run.data.excluded):
        log.warning("skipping %d bad training sample(s) (--on-bad-sample skip); see verify-data",
                    len(run.data.excluded))
    if cfg.strategy in ("dap", "random") and cfg.schedule.warmup >= cfg.schedule.epochs:
        log.warning("--warmup %d >= --epochs %d: every epoch is warm-up, so nothing is ever dropped (DaP is off)",
                    cfg.schedule.warmup, cfg.schedule.epochs)
    shard = math.ceil(len(run.data.universe) / world.size)
    if cfg.data.batch_size > shard:
        log.warning("--batch-size %d is larger than each rank's shard (%d samples): every epoch is one partial "
                    "step per rank", cfg.data.batch_size, shard)
    line, warn = jpeg_decoder(loader=cfg.data.loader, dali_device=cfg.data.dali_device,
                              gpu=run.precision.device.type == "cuda", hw_decoder_load=cfg.data.hw_decoder_load,
                              driver_capabilities=os.environ.get("NVIDIA_DRIVER_CAPABILITIES"))
    (log.warning if warn else log.info)(line)


def log_done(summary: dict, path) -> None:
    low, high = summary["compute_ratio_planned_min"], summary["compute_ratio_planned_max"]
    planned = f"{high:.3f}" if low == high else f"{low:.3f}..{high:.3f}, the lower bound in expectation"
    log.info("done: top1 %.4f top5 %.4f, compute %.3f of full data (planned %s), %.1fs -> %s", summary["top1"],
             summary["top5"], summary["compute_ratio_measured"], planned, summary["elapsed_seconds"], path)


def summary(run: Run, state: RunState) -> dict:
    """summary.json: the run's outcome, its compute measured and planned, over the completed epochs."""
    cfg, n, grid = run.cfg, len(run.data.universe), run.grid
    evals = [h for h in state.history if h["top1"] is not None]
    done, epochs = max(1, state.epoch), cfg.schedule.epochs
    exact = run.plan.exact
    return {
        "strategy": cfg.strategy, "model": cfg.model_name, "run_id": state.run_id, "world_size": run.world.size,
        "global_batch": cfg.data.batch_size * run.world.size, "num_samples": n,
        "skipped_bad_samples": int(len(run.data.excluded)),
        "skipped_bad_val_samples": int(len(run.val.cat) - len(run.val.usable)), "schedule": cfg.schedule.to_dict(),
        "lr_steps": list(cfg.lr_steps), "dataset_digest": run.data.digest,
        # measured and planned over the same completed epochs, so a stopped run is comparable
        "compute_ratio_measured": state.samples_trained / (n * done),
        # exact plans: one value; InfoBatch: None, and the bounds beside it
        "compute_ratio_planned": sum(grid.planned_max[:done]) / (n * done) if exact else None,
        "compute_ratio_planned_min": sum(grid.planned_min[:done]) / (n * done),
        "compute_ratio_planned_max": sum(grid.planned_max[:done]) / (n * done),
        # InfoBatch prunes by a coin flip per sample: its "min" is the expected size when all but one
        # sample score below the mean, so a run can measure less
        "compute_ratio_planned_min_note": None if exact else "in expectation: the measured ratio can be lower",
        "compute_ratio_planned_run": sum(grid.planned_max) / (n * epochs) if exact else None,
        "compute_ratio_planned_run_bounds": [sum(grid.planned_min) / (n * epochs),
                                             sum(grid.planned_max) / (n * epochs)],
        "policy": {"name": cfg.strategy, **cfg.policy_params},
        "score_table": {"scored": state.scores.scored(), "bytes": state.scores.nbytes,
                        "digest": state.scores.digest()},
        "samples_trained": state.samples_trained, "epochs_completed": state.epoch, "epochs": state.history,
        # --amp fp16: optimizer steps the GradScaler skipped (inf/NaN gradients), over the whole run
        "amp_skipped_steps": sum(h["skipped_steps"] for h in state.history),
        "top1": evals[-1]["top1"] if evals else None, "top5": evals[-1]["top5"] if evals else None,
        # the epochs' own time, and the wall clock from start-up (over every job of a resumed run)
        "epoch_seconds": state.epoch_seconds, "elapsed_seconds": state.elapsed_seconds,
        "host": socket.gethostname(), "replicas": state.replicas, "memberships": state.memberships,
    }
