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


def build_lr_schedule(*, base_lr: float, epoch_steps: list[int], warmup_epochs: float, full_epoch_steps: int,
                      lr_steps: tuple[int, ...], mode: str) -> LRSchedule:
    """`epoch_steps[e-1]` is the number of steps in epoch e (from the plan)."""
    starts = [0]
    for s in epoch_steps:
        starts.append(starts[-1] + s)
    # The decay 'at epoch r' applies from the first step after epoch r, i.e. the start of r+1.
    decay = tuple(sorted(starts[r] for r in lr_steps if r < len(starts)))
    return LRSchedule(base_lr=base_lr, warmup_steps=int(round(warmup_epochs * full_epoch_steps)),
                      total_steps=starts[-1], mode=mode, decay_steps=decay)
