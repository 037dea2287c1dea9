"""Learning-rate schedule as a pure function of the global step (timm-style: no hidden state).

DaP epochs are shorter than full epochs, so "epoch e starts at step e * steps_per_epoch" is
wrong. The trainer passes the exact step at which each epoch starts (from the plan), and every
boundary is expressed in steps:
  * gradual warm-up (Goyal et al.): linear from ~0 to the base LR over `warmup_steps`;
  * step: x0.1 at the start of each epoch after an lr_steps epoch (the paper ties these to R);
  * cosine: from the base LR to 0 over the planned total steps.
"""

from __future__ import annotations

import bisect
import itertools
import math
from dataclasses import dataclass


@dataclass(frozen=True)
class LRSchedule:
    base_lr: float
    warmup_steps: int
    total_steps: int
    mode: str  # step | cosine
    decay_steps: tuple[int, ...] = ()  # global steps at which the step schedule multiplies by 0.1

    def __call__(self, step: int) -> float:
        if self.mode == "cosine":
            lr = 0.5 * self.base_lr * (1 + math.cos(math.pi * min(step, self.total_steps) / max(1, self.total_steps)))
        else:
            lr = self.base_lr * 0.1 ** bisect.bisect_right(self.decay_steps, step)
        if step < self.warmup_steps:
            lr *= (step + 1) / self.warmup_steps
        return lr


@dataclass(frozen=True)
class StepGrid:
    """The run's step grid, from the plan: where each epoch starts and how many steps it spans.

    Exact plans give the real steps; where sizes depend on the scores (InfoBatch) the grid is the
    plan's upper bound, and a shorter epoch walks its span faster (engine's step_scale), so the
    decays fall at the same epochs. `planned_min`/`planned_max` are the samples per epoch the plan
    promises (a step cap included); they are equal when the plan is exact."""

    epoch_steps: tuple[int, ...]  # [e-1]: the steps of epoch e
    full_epoch_steps: int  # an all-data epoch: the unit of --lr-warmup-epochs, for every policy
    planned_min: tuple[int, ...]
    planned_max: tuple[int, ...]

    @classmethod
    def from_plan(cls, sizes_max: list[int], sizes_min: list[int], num_samples: int, world_size: int,
                  batch_size: int, max_steps: int = 0) -> "StepGrid":
        """Each rank trains ceil(size / world) samples per epoch in batches of `batch_size`,
        at most `max_steps` (0: no cap) steps."""
        def steps(size: int) -> int:
            n = math.ceil(math.ceil(size / world_size) / batch_size)
            return min(n, max_steps) if max_steps else n

        cap = max_steps * batch_size * world_size if max_steps else None
        return cls(epoch_steps=tuple(steps(n) for n in sizes_max), full_epoch_steps=steps(num_samples),
                   planned_min=tuple(n if cap is None else min(n, cap) for n in sizes_min),
                   planned_max=tuple(n if cap is None else min(n, cap) for n in sizes_max))

    def start(self, epoch: int) -> int:
        """The global step at which `epoch` (1-based) starts."""
        return sum(self.epoch_steps[:epoch - 1])

    def lr_schedule(self, base_lr: float, cfg) -> LRSchedule:
        """The run's schedule (cfg: --lr-warmup-epochs, --lr-steps, --lr-schedule) on this grid. The
        warm-up is in all-data epochs, whatever the policy trains in its first epoch: RS2's first
        epoch is already its reduced one."""
        return build_lr_schedule(base_lr=base_lr, epoch_steps=list(self.epoch_steps),
                                 warmup_epochs=cfg.lr_warmup_epochs, full_epoch_steps=self.full_epoch_steps,
                                 lr_steps=cfg.lr_steps, mode=cfg.optim.lr_schedule)


def build_lr_schedule(*, base_lr: float, epoch_steps: list[int], warmup_epochs: float, full_epoch_steps: int,
                      lr_steps: tuple[int, ...], mode: str) -> LRSchedule:
    """`epoch_steps[e-1]` is the number of steps in epoch e (from the plan)."""
    starts = (0, *itertools.accumulate(epoch_steps))
    # The decay 'at epoch r' applies from the first step after epoch r, i.e. the start of r+1.
    decay = tuple(sorted(starts[r] for r in lr_steps if r < len(starts)))
    return LRSchedule(base_lr=base_lr, warmup_steps=int(round(warmup_epochs * full_epoch_steps)),
                      total_steps=starts[-1], mode=mode, decay_steps=decay)
