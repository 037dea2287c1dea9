"""The engine: train one epoch, evaluate. Single-process code: the gradient allreduce hides in the
optimizer (Horovod's DistributedOptimizer), and the one step that must see it, the fp16 scaled
step, goes through dist.

Per-sample losses come out of the training forward pass (reduction='none') and feed the ledger
on the device. The host reads running totals only when the progress line redraws and once at the
epoch's end, never per step.
"""

from __future__ import annotations

import contextlib
import math
import time
from dataclasses import dataclass
from typing import NamedTuple, Optional

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
    def cudnn_autotune(enabled: bool):
        """cuDNN's autotuner (cudnn.benchmark) on or off inside the block; the caller's setting
        comes back on exit. The autotuner times every convolution algorithm the first time it meets
        an input shape, a cost paid again for each new shape. Full batches share one shape and keep
        it on; a DaP epoch ends in a partial batch of a new size nearly every epoch, which takes
        cuDNN's heuristic pick instead (the cost of both: BENCHMARKS.md, GPU)."""
        cudnn = torch.backends.cudnn
        before = cudnn.benchmark
        if not enabled:
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
    on the kept well-learned samples. The ledger never sees the weights (_selection_scores).

    `batch_size` is the configured per-rank batch: a batch is full when it has that many samples.
    (Without it, the first batch's size: wrong for a shard smaller than one batch, whose only
    batch is partial, and has a new size every epoch.) Full batches run `compiled` (_network)."""
    model.train()
    dev = precision.device
    sums = _Sums(dev)
    samples = steps = full = 0
    lr = lr_schedule(global_step)
    t_start = t_prev = time.perf_counter()
    data_seconds = 0.0
    for batch in loader:
        t_data = time.perf_counter()
        wait = t_data - t_prev
        data_seconds += wait
        lr = lr_schedule(global_step + steps * step_scale)
        for group in optimizer.param_groups:
            group["lr"] = lr
        images = precision.to_device(batch.images)
        indices, valid = decode_labels(batch.tags.to(dev, non_blocking=True))
        targets = class_of[indices]

        full = batch_size or full or len(batch.tags)
        is_full = len(batch.tags) == full
        with precision.cudnn_autotune(enabled=is_full):
            step = _train_step(_network(model, compiled, is_full), images, targets,
                               None if weight_of is None else weight_of[indices], optimizer=optimizer,
                               scaler=scaler, precision=precision, label_smoothing=label_smoothing)
        if ledger is not None:
            ledger.record(indices, _selection_scores(step, targets, label_smoothing), valid)
        sums.add(step, valid)
        n = images.shape[0]
        samples += n
        steps += 1
        t_prev = time.perf_counter()
        if metrics is not None:
            metrics.observe_step(step_seconds=t_prev - t_data, wait_seconds=wait, samples=n)
        if progress is not None:
            progress.update(steps, n, sums.loss, sums.count, lr)
        if max_steps is not None and steps >= max_steps:
            break
    finite = bool(_max_abs(list(model.parameters())).isfinite())
    return EpochStats(samples=samples, steps=steps, loss_sum=float(sums.loss), loss_count=int(sums.count),
                      skipped_steps=int(sums.skipped), finite_parameters=finite,
                      seconds=time.perf_counter() - t_start, data_seconds=data_seconds, last_lr=lr)


def _network(model: nn.Module, compiled: Optional[nn.Module], is_full: bool) -> nn.Module:
    """`compiled` (torch.compile of `model`, sharing its parameters) runs the full batches. The
    last, partial batch runs `model` eagerly: a graph compiled for one batch size would be
    recompiled for each epoch's new last size, which costs more than the eager step saves."""
    return compiled if compiled is not None and is_full else model


class _Step(NamedTuple):
    logits: torch.Tensor  # fp32
    per_sample: torch.Tensor  # the losses the gradient used (label-smoothed, unweighted)
    taken: Optional[torch.Tensor]  # fp16: a device bool, False when the GradScaler skipped the step


def _train_step(net: nn.Module, images: torch.Tensor, targets: torch.Tensor, weights: Optional[torch.Tensor], *,
                optimizer, scaler, precision: Precision, label_smoothing: float) -> _Step:
    """Forward, backward, optimizer step. `weights` scale each sample's loss in the gradient."""
    optimizer.zero_grad()
    with precision.autocast():
        logits = net(images)
    logits = logits.float()  # losses in fp32, also under bf16/fp16 autocast
    per_sample = F.cross_entropy(logits, targets, reduction="none", label_smoothing=label_smoothing)
    loss = per_sample.mean() if weights is None else (per_sample * weights).mean()
    if scaler is not None:
        return _Step(logits, per_sample, _scaled_step(optimizer, scaler, loss))
    loss.backward()
    optimizer.step()
    return _Step(logits, per_sample, None)


def _scaled_step(optimizer, scaler, loss: torch.Tensor) -> torch.Tensor:
    """fp16: the GradScaler's step on the allreduced gradients, unscaled once, reduced once.
    Returns a device bool, True when the step was taken: a step whose gradients overflow is
    skipped by the GradScaler, its loss-scale search, which is not divergence (_Sums)."""
    from dap_hvd import dist  # Horovod, lazily: only the fp16 step needs it here

    scaler.scale(loss).backward()
    with dist.reduced_gradients(optimizer):
        scaler.unscale_(optimizer)
        taken = gradients_finite(optimizer)  # the scaler's own test: it skips the step otherwise
        scaler.step(optimizer)
    scaler.update()
    return taken


def _selection_scores(step: _Step, targets: torch.Tensor, label_smoothing: float) -> torch.Tensor:
    """What the ledger records: plain softmax cross-entropy of the step's fp32 logits (the
    paper's selection signal, section 3.3), while the gradient uses the label-smoothed loss. The
    smoothed loss is not monotone in the model's confidence: a sample predicted with p=1.0 scores
    higher than one at p=0.68, so ranking by it would keep easy samples."""
    if label_smoothing == 0:
        return step.per_sample
    return F.cross_entropy(step.logits.detach(), targets, reduction="none")


class _Sums:
    """The epoch's running totals, on the device (no host sync per step). The losses of a step
    the fp16 GradScaler skipped are left out and the step counted, so the caller's finiteness
    check sees only the steps taken."""

    def __init__(self, device: torch.device):
        self.loss = torch.zeros((), device=device)
        self.count = torch.zeros((), device=device, dtype=torch.int64)
        self.skipped = torch.zeros((), device=device, dtype=torch.int64)

    def add(self, step: _Step, valid: torch.Tensor) -> None:
        # where, not a product: a NaN padding loss times 0 would still be NaN
        loss, count = torch.where(valid, step.per_sample.detach(), 0.0).sum(), valid.sum()
        if step.taken is not None:
            loss, count = torch.where(step.taken, loss, 0.0), count * step.taken
            self.skipped += ~step.taken
        self.loss += loss
        self.count += count


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
        with precision.cudnn_autotune(enabled=len(batch.tags) == full), precision.autocast():
            logits = model(images)
        k = min(5, logits.shape[1])
        top = logits.topk(k, dim=1).indices
        hit = top.eq(targets.unsqueeze(1))
        counts[0] += (hit[:, 0] & valid).sum()
        counts[1] += (hit.any(dim=1) & valid).sum()
        counts[2] += valid.sum()
    return counts
