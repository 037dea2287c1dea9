"""The engine: train one epoch, evaluate. Single-process code; Horovod hides in the optimizer.

Per-sample losses come out of the training forward pass (reduction='none') and feed the ledger
on the device. The host reads running totals only when the progress line redraws, never per step.
"""

from __future__ import annotations

import contextlib
import math
import time
from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import get_total_norm

from dap_hvd.data.sharding import decode_labels
from dap_hvd.data.spec import Loader
from dap_hvd.ledger import LossLedger
from dap_hvd.lr import LRSchedule


@dataclass(frozen=True)
class Precision:
    device: torch.device
    amp_dtype: Optional[torch.dtype]  # None: fp32
    channels_last: bool

    def autocast(self):
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp_dtype)

    def to_device(self, images: torch.Tensor) -> torch.Tensor:
        images = images.to(self.device, non_blocking=True)
        return images.contiguous(memory_format=torch.channels_last) if self.channels_last else images

    @staticmethod
    @contextlib.contextmanager
    def kernels(tuned: bool):
        """cuDNN's autotuner (cudnn.benchmark) times every convolution algorithm the first time it
        meets an input shape: 7-8 s for ResNet-50 on an H100, for each new shape. Full batches
        share one shape, but a DaP epoch ends in a partial batch of a new size nearly every epoch,
        which cost DaP epochs of about 9 s up to 8.6 s more there. Partial batches take cuDNN's
        heuristic pick instead: 0.2 s the first time on the same GPU (BENCHMARKS.md, GPU)."""
        cudnn = torch.backends.cudnn
        before = cudnn.benchmark
        if not tuned:
            cudnn.benchmark = False
        try:
            yield
        finally:
            cudnn.benchmark = before


@dataclass(frozen=True)
class EpochStats:
    samples: int  # trained by this rank, padding included
    steps: int
    loss_sum: float  # sum of per-sample training losses (valid samples of the steps taken)
    loss_count: int
    skipped_steps: int  # --amp fp16: steps the GradScaler skipped (inf/NaN gradients); their losses are left out
    finite_parameters: bool  # every parameter finite after the epoch (a NaN model must never be saved as good)
    seconds: float
    data_seconds: float  # time spent waiting for the loader
    last_lr: float
    global_step: float  # the LR position after the epoch


def train_one_epoch(*, model: nn.Module, loader: Loader, optimizer, label_smoothing: float,
                    lr_schedule: LRSchedule, global_step: int, class_of: torch.Tensor, precision: Precision,
                    step_scale: float = 1.0, ledger: Optional[LossLedger] = None,
                    weight_of: Optional[torch.Tensor] = None, scaler: Optional["torch.amp.GradScaler"] = None,
                    max_steps: Optional[int] = None, progress=None, metrics=None,
                    compiled: Optional[nn.Module] = None, batch_size: Optional[int] = None) -> EpochStats:
    """One pass over `loader`. `global_step` is where this epoch starts in the plan, so the LR
    follows the plan's epoch boundaries whatever happened before (a resume, another world size).
    Step k of the epoch takes the LR at global_step + k * step_scale: 1 where the plan knew the
    epoch's size, more where a policy (InfoBatch) made it shorter than the plan's full-data span.

    `weight_of` (by global index) scales each sample's loss in the gradient: InfoBatch's 1/(1-r)
    on the kept well-learned samples. The ledger never sees the weights.

    The gradient uses the label-smoothed loss; the ledger records plain softmax cross-entropy of
    the same fp32 logits (the paper's selection signal, section 3.3). The smoothed loss is not
    monotone in the model's confidence: a sample predicted with p=1.0 scores higher than one at
    p=0.68, so ranking by it would keep easy samples.

    `compiled` (torch.compile of `model`, sharing its parameters) runs the full batches. The
    last, partial batch runs `model` eagerly: a graph compiled for one batch size would be
    recompiled for each epoch's new last size, which costs more than the eager step saves.

    `batch_size` is the configured per-rank batch: a batch is full when it has that many samples.
    (Without it, the first batch's size: wrong for a shard smaller than one batch, whose only
    batch is partial, and has a new size every epoch.)

    Under fp16 (`scaler`), a step whose gradients overflow is skipped by the GradScaler: that is
    its loss-scale search, not divergence. Such steps are counted on the device, their losses
    left out of `loss_sum`, so the caller's finiteness check sees only the steps taken."""
    model.train()
    dev = precision.device
    loss_sum = torch.zeros((), device=dev)
    loss_count = torch.zeros((), device=dev, dtype=torch.int64)
    skipped = torch.zeros((), device=dev, dtype=torch.int64)
    samples = steps = full = 0
    start = global_step
    lr = lr_schedule(start)
    t_start = t_prev = time.perf_counter()
    data_seconds = 0.0
    for batch in loader:
        t_data = time.perf_counter()
        wait = t_data - t_prev
        data_seconds += wait
        lr = lr_schedule(start + steps * step_scale)
        for group in optimizer.param_groups:
            group["lr"] = lr
        images = precision.to_device(batch.images)
        indices, valid = decode_labels(batch.tags.to(dev, non_blocking=True))
        targets = class_of[indices]

        full = batch_size or full or len(batch.tags)
        is_full = len(batch.tags) == full
        net = compiled if compiled is not None and is_full else model
        with precision.kernels(tuned=is_full):
            optimizer.zero_grad()
            with precision.autocast():
                logits = net(images)
            logits = logits.float()  # losses in fp32, also under bf16/fp16 autocast
            per_sample = F.cross_entropy(logits, targets, reduction="none", label_smoothing=label_smoothing)
            loss = per_sample.mean() if weight_of is None else (per_sample * weight_of[indices]).mean()
            taken = None
            if scaler is not None:  # fp16: unscale after Horovod's allreduce, step without a 2nd sync
                scaler.scale(loss).backward()
                optimizer.synchronize()
                scaler.unscale_(optimizer)
                taken = gradients_finite(optimizer)  # the scaler's own test: it skips the step otherwise
                with optimizer.skip_synchronize():
                    scaler.step(optimizer)
                scaler.update()
            else:
                loss.backward()
                optimizer.step()

        if ledger is not None:
            score = per_sample if label_smoothing == 0 else F.cross_entropy(logits.detach(), targets, reduction="none")
            ledger.record(indices, score, valid)
        # where, not a product: a NaN padding loss times 0 would still be NaN
        batch_loss, batch_count = torch.where(valid, per_sample.detach(), 0.0).sum(), valid.sum()
        if taken is not None:
            batch_loss, batch_count = torch.where(taken, batch_loss, 0.0), batch_count * taken
            skipped += ~taken
        loss_sum += batch_loss
        loss_count += batch_count
        n = images.shape[0]
        samples += n
        steps += 1
        t_prev = time.perf_counter()
        if metrics is not None:
            metrics.observe_step(step_seconds=t_prev - t_data, wait_seconds=wait, samples=n)
        if progress is not None:
            progress.update(steps, n, loss_sum, loss_count, lr)
        if max_steps is not None and steps >= max_steps:
            break
    return EpochStats(samples=samples, steps=steps, loss_sum=float(loss_sum),
                      loss_count=int(loss_count), skipped_steps=int(skipped),
                      finite_parameters=bool(_max_abs(list(model.parameters())).isfinite()),
                      seconds=time.perf_counter() - t_start,
                      data_seconds=data_seconds, last_lr=lr, global_step=start + steps * step_scale)


# Below this loss scale, fp16 gradients overflow even unscaled: a GradScaler that skipped every
# step of an epoch and got here is not searching for a scale any more (it starts at 2^16 and
# halves per skipped step), the model itself overflows.
MIN_LOSS_SCALE = 1.0


def divergence(loss_sum: float, *, nonfinite_parameters: bool, skipped: int, steps: int,
               loss_scale: Optional[float]) -> Optional[str]:
    """What says an epoch diverged, from its all-ranks totals, or None. A step the fp16 GradScaler
    skipped is not divergence (its loss is not in `loss_sum`); a whole epoch of skipped steps
    with the scale run down is."""
    if not math.isfinite(loss_sum):
        return f"the training loss is {loss_sum}"
    if nonfinite_parameters:
        return "the model's parameters are no longer finite"
    if loss_scale is not None and steps and skipped >= steps and loss_scale < MIN_LOSS_SCALE:
        return (f"the fp16 GradScaler skipped every step (inf/NaN gradients), and its loss scale fell to "
                f"{loss_scale:.3g}")
    return None


def _max_abs(tensors: list) -> torch.Tensor:
    """max |x| over the tensors, on their device: NaN if any is NaN, inf if any is inf (the max
    norm cannot overflow, unlike the 2-norm of large finite values). No host sync."""
    return get_total_norm(tensors, norm_type=float("inf")) if tensors else torch.zeros(())


def gradients_finite(optimizer) -> torch.Tensor:
    """A device bool: every gradient the optimizer would apply is finite."""
    grads = [p.grad for g in optimizer.param_groups for p in g["params"] if p.grad is not None]
    return _max_abs(grads).isfinite()


@torch.no_grad()
def evaluate(*, model: nn.Module, loader: Loader, class_of: torch.Tensor, precision: Precision,
             batch_size: Optional[int] = None) -> torch.Tensor:
    """Counts [top1_correct, top5_correct, samples] over this rank's valid samples. The caller
    sums them across ranks, so the accuracy is exact, not an average of per-rank averages.
    The caller averages BatchNorm statistics across ranks first (dist.average_batchnorm), so every
    rank scores the same model, the one the checkpoint holds."""
    model.eval()
    dev = precision.device
    counts = torch.zeros(3, dtype=torch.float64, device=dev)
    full = 0
    for batch in loader:
        images = precision.to_device(batch.images)
        indices, valid = decode_labels(batch.tags.to(dev))
        targets = class_of[indices]
        full = batch_size or full or len(batch.tags)
        with precision.kernels(tuned=len(batch.tags) == full), precision.autocast():
            logits = model(images)
        k = min(5, logits.shape[1])
        top = logits.topk(k, dim=1).indices
        hit = top.eq(targets.unsqueeze(1))
        counts[0] += (hit[:, 0] & valid).sum()
        counts[1] += (hit.any(dim=1) & valid).sum()
        counts[2] += valid.sum()
    return counts
