"""`dap-hvd train`: the Horovod training service, top to bottom.

init -> pin device -> data (same on every rank) -> model -> scale LR -> DistributedOptimizer ->
resume -> broadcast state (optimizer, then parameters) -> for each epoch: shard the selection, train
(recording losses when the policy asks for scores), merge them into the score table, the policy
selects on rank 0 and broadcasts, average BatchNorm statistics, evaluate, checkpoint. Rank 0
alone writes files.

Each step has its room: selection.py (merge, select, broadcast), state.py (what a checkpoint
holds, resume), rundir.py (the run folder, logs), reporting.py (what the user reads),
hardware.py (device, precision), engine.py (the epoch's steps), evaluate.py (top-1).
"""

from __future__ import annotations

import logging
import os
import signal
import time
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple, Optional

import numpy as np
import torch

from dap_hvd import ConfigError, DapError, DivergedError, dist, first_line, metrics, notice, reporting, rundir
from dap_hvd import selection as select_step
from dap_hvd import state as run_state
from dap_hvd.checkpoint import checkpoint_epoch, list_checkpoints, save_checkpoint
from dap_hvd.config import TrainConfig
from dap_hvd.data.loaders import Loaders, spec_for
from dap_hvd.data.sharding import shard_for_rank
from dap_hvd.data.splits import TrainData, ValSplit, load_data
from dap_hvd.engine import EpochStats, Precision, divergence, train_one_epoch
from dap_hvd.evaluate import evaluate_split
from dap_hvd.hardware import choose_precision, decode_workers, device_memory, pin_device
from dap_hvd.ledger import LossLedger
from dap_hvd.lr import LRSchedule, StepGrid
from dap_hvd.models import build_classifier, param_groups
from dap_hvd.policy.policies import Context, Policy, selection_digest
from dap_hvd.policy.schedule import DROP, Plan
from dap_hvd.rng import rank_seed
from dap_hvd.state import Clock, RunState

log = logging.getLogger("dap_hvd")


@dataclass
class Run:
    """What every epoch needs, built once at start-up, so the epoch step takes one argument."""

    cfg: TrainConfig
    world: dist.World
    run_dir: Path
    precision: Precision
    policy: Policy
    data: TrainData
    val: ValSplit  # labelled by train's class names
    model: torch.nn.Module
    optimizer: torch.optim.Optimizer  # Horovod's DistributedOptimizer
    scaler: Optional[torch.amp.GradScaler]  # --amp fp16 only
    compiled: Optional[torch.nn.Module]  # --compile: `model` compiled, for full training batches
    plan: Plan
    grid: StepGrid  # the LR's step grid, from the plan
    base_lr: float
    lr_schedule: LRSchedule
    loaders: Loaders  # persistent per split (DALI), for the whole run
    clock: Clock
    metrics: Optional[object] = None  # metrics.Metrics, once the state is known (it carries the run id)

    def set_base_lr(self, base_lr: float) -> None:
        self.base_lr = base_lr
        self.lr_schedule = self.grid.lr_schedule(base_lr, self.cfg)


def main(cfg: TrainConfig, comm=None, notes: tuple = ()) -> int:
    """The process's exit code. `notes`: what the command line's defaults chose (a scaled preset,
    small-image defaults, --resume auto starting fresh), said once by rank 0."""
    clock = Clock()
    world = dist.init(comm)
    run_dir = Path(cfg.resume or cfg.out)
    rundir.setup_logging(world.rank)
    if world.is_root:
        for note in notes:
            log.info("%s", note)
    runlog = rundir.RunLog(world.rank)
    # SLURM and horovodrun stop jobs with SIGTERM: end like Ctrl-C, with a resume hint.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        if cfg.elastic:
            if os.environ.get("HOROVOD_ELASTIC") != "1":
                # Plain horovodrun/mpirun cannot re-form the job after a loss: a reset would wait forever.
                raise ConfigError("--elastic: needs horovodrun's elastic mode (--min-np/--max-np with "
                                  "--host-discovery-script); launch/elastic.sh starts it")
            summary = dist.run_elastic(
                lambda elastic: run_training(cfg, dist.current_world(), run_dir, runlog, elastic, clock))
            world = dist.current_world()
        else:
            summary = run_training(cfg, world, run_dir, runlog, clock=clock)
        if world.is_root:
            reporting.log_done(summary, run_dir / "summary.json")
        return 0
    except DapError as e:
        if cfg.elastic:  # not a lost host: the job ends, instead of losing host after host (notice.py)
            notice.announce_fatal(str(e))
        runlog.fatal(f"dap-hvd train: error on rank {runlog.rank}: {e}")
        if getattr(e, "unclean", False):
            # A failed DALI pipeline can crash the interpreter's teardown (SIGSEGV in a later
            # destructor): the error is reported and nothing is left to save, so skip it.
            os._exit(2)
        return 2
    except dist.CollectiveError as e:
        runlog.fatal(f"dap-hvd train: error on rank {runlog.rank}: a collective operation failed, most likely "
                     f"because another rank died or was killed ({first_line(e)}); "
                     f"{rundir.resume_hint(run_dir, world.is_root)}")
        return 1
    except Exception as e:  # a bug: say so where the user looks, then keep the traceback for the report
        runlog.fatal(f"dap-hvd train: unexpected error on rank {runlog.rank}: {type(e).__name__}: {e}")
        raise
    except KeyboardInterrupt:
        if world.is_root:
            runlog.fatal(f"dap-hvd train: {rundir.interrupted(run_dir)}")
        return 130
    finally:
        if runlog.lock is not None:
            runlog.lock.release()
        dist.shutdown()


def run_training(cfg: TrainConfig, world: dist.World, run_dir: Path, runlog: Optional[rundir.RunLog] = None,
                 elastic: Optional[dist.ElasticCommit] = None, clock: Optional[Clock] = None) -> dict:
    """The run, from its start or its last checkpoint; its summary. Under --elastic this is called
    again after every membership change, with the world as it is then and the last commit in
    `elastic`."""
    runlog = runlog or rundir.RunLog(world.rank)
    runlog.rank = world.rank
    committed = elastic.payload() if elastic is not None else None
    restart = elastic is not None and (committed is not None or elastic.resets > 0)
    claim_run_dir(cfg, world, run_dir, runlog, restart)
    if cfg.resume or restart:  # a resumed run's folder is its own from the start
        runlog.path = run_dir / "train.log"
    run = setup(cfg, world, run_dir, clock or Clock())
    if world.is_root and not restart:  # start-up worked: now this run takes the folder
        rundir.take(run_dir, fresh=not cfg.resume)
    state = run_state.resume(run, committed)
    if run.clock.before is None:
        run.clock.before = state.elapsed_seconds
    if elastic is not None:
        run_state.note_membership(run, state, elastic.resets)
    runlog.path = run_dir / "train.log"
    # Rank 0's replica for everyone, then proof of it: every rank's full state must hash alike.
    dist.broadcast_training_state(run.model, run.optimizer, run.scaler, resumed=state.epoch > 0)
    state.replicas["start"] = dist.check_replicas(run.model, run.scaler, when="start-up broadcast")
    if world.is_root:
        rundir.write_config(run_dir, cfg.resolved(run.base_lr))
        reporting.log_start(run)
    run.metrics = metrics.start(cfg, world, state.run_id, len(run.data.excluded))
    try:
        last = min(cfg.schedule.epochs, cfg.stop_after or cfg.schedule.epochs)
        for epoch in range(state.epoch + 1, last + 1):
            payload = train_epoch(run, state, epoch)
            if elastic is not None:
                elastic.stage(payload, epoch)
                elastic.commit()  # a host added or removed meanwhile: Horovod interrupts here
        run.metrics.linger(cfg.metrics_linger)  # until a last scrape has read the final values
    except KeyboardInterrupt:
        ckpts = list_checkpoints(run_dir) if world.is_root else []
        raise rundir.Interrupted(checkpoint_epoch(ckpts[-1]) if ckpts else 0, ckpts[-1] if ckpts else None) from None
    finally:
        run.metrics.close()
        run.loaders.close()
    state.replicas["end"] = dist.check_replicas(run.model, run.scaler, when="end of training")
    state.elapsed_seconds = run.clock.elapsed()
    summary = reporting.summary(run, state)
    if world.is_root:
        rundir.write_json(run_dir / "summary.json", summary)
    return summary


def claim_run_dir(cfg: TrainConfig, world: dist.World, run_dir: Path, runlog: rundir.RunLog, restart: bool) -> None:
    """Rank 0 checks and locks the run folder (rundir.claim); a refusal stops every rank at once,
    with the flag named. An --elastic restart is the same job: its folder is checked already, and
    a busy lock is held by this job's former rank 0."""
    problem = None
    if world.is_root and runlog.lock is None:
        try:
            runlog.lock = rundir.claim(run_dir, "--resume" if cfg.resume else "--out", cfg.data_root,
                                       fresh=not (cfg.resume or restart))
        except DapError as e:
            problem = None if restart else str(e)
    dist.agree(problem, name="out.verdict")


def setup(cfg: TrainConfig, world: dist.World, run_dir: Path, clock: Clock) -> Run:
    device = pin_device(world, cfg.cpu_bind)
    # Each rank its own stream (dropout masks must differ across ranks); the model's initial
    # weights come from rank 0 by broadcast, so they need no common seed.
    torch.manual_seed(rank_seed(cfg.seed, 0, world.rank))
    policy = cfg.make_policy()
    data, val = load_data(cfg, world, device)  # the same files on every rank, bad ones skipped

    # ---- model, recipe (Bag of Tricks), Horovod optimizer
    # fp32 logits, also under autocast: the selection ranks samples by losses computed from them
    model = build_classifier(cfg.model_name, data.cat.num_classes, zero_gamma=cfg.optim.zero_gamma)
    if cfg.optim.sync_bn:
        if device.type != "cuda":
            raise ConfigError(f"--sync-bn: Horovod's SyncBatchNorm runs on GPUs only, and rank {world.rank} has none")
        model = dist.sync_batchnorm(model)
    precision = choose_precision(cfg, device)
    # channels_last applies to the input batches only (engine.Precision.to_device): Horovod
    # rejects non-contiguous tensors in broadcast and allreduce (horovod#3491), so parameters and
    # gradients stay NCHW-contiguous; a channels_last input still makes PyTorch pick NHWC kernels.
    model = model.to(device)
    base_lr = cfg.base_lr(cfg.data.batch_size * world.size)  # linear scaling with the global batch
    optimizer = torch.optim.SGD(param_groups(model, cfg.optim.weight_decay, cfg.optim.no_bias_decay),
                                lr=base_lr, momentum=cfg.optim.momentum, nesterov=cfg.optim.nesterov)
    optimizer = dist.distributed_optimizer(optimizer, model, cfg.optim.fp16_allreduce)
    scaler = torch.amp.GradScaler(device.type) if precision.amp_dtype == torch.float16 else None
    # Compiled lazily, at the first full batch. It shares the parameters, so checkpoints, the
    # optimizer and Horovod's gradient hooks all see `model`. Its backward hands every gradient
    # over at once, so allreduces start after the backward instead of overlapping it.
    compiled = torch.compile(model, dynamic=False) if cfg.optim.compile else None
    if compiled is not None and world.is_root:
        log.info("--compile: the first full batch compiles the model's forward and backward (a minute or more)")

    # ---- the plan fixes every epoch's step count (or its upper bound): the LR is keyed to it
    plan = policy.plan(len(data.universe))
    grid = StepGrid.from_plan([e.size for e in plan.epochs], [e.low_size for e in plan.epochs],
                              len(data.universe), world.size, cfg.data.batch_size, cfg.max_steps_per_epoch or 0)
    return Run(cfg=cfg, world=world, run_dir=run_dir, precision=precision, policy=policy, data=data, val=val,
               model=model, optimizer=optimizer, scaler=scaler, compiled=compiled, plan=plan, grid=grid,
               base_lr=base_lr, lr_schedule=grid.lr_schedule(base_lr, cfg), loaders=Loaders(cfg.data.loader),
               clock=clock)


# ---------------------------------------------------------------------------- one epoch

def train_epoch(run: Run, state: RunState, epoch: int) -> Optional[dict]:
    """Train the selection, select the next one, evaluate, checkpoint. Returns the checkpoint
    payload (on rank 0, and on every rank under --elastic, which commits it)."""
    cfg, world = run.cfg, run.world
    t0 = time.perf_counter()
    trained = state.selection
    run.plan.check(epoch, len(trained.indices))  # an exact plan is what trains
    # Losses are recorded only in epochs whose scores the policy will use.
    ledger = LossLedger(trained.indices, run.precision.device) \
        if run.policy.reads_losses(epoch, state.policy_state) else None
    fitted = fit(run, state, epoch, ledger)
    totals = global_totals(run, fitted.stats, epoch)  # stops every rank together if the run diverged

    # Scores into the table (every rank), the policy's next selection (rank 0, broadcast). After
    # the final epoch too: the step due then (DaP's drop) is what a larger --epochs continues from.
    ctx = Context(epoch=epoch, universe=run.data.universe, current=trained, scores=state.scores.loss, seed=cfg.seed,
                  state=state.policy_state, final=epoch == cfg.schedule.epochs)
    nxt = select_step.select(run.policy, ctx, world, state.scores, ledger, cfg.merge)
    state.selection, state.policy_state = nxt.selection, nxt.policy_state

    # One model on every rank from here: what is evaluated is what is saved.
    dist.average_batchnorm(run.model)
    acc, t_eval = None, time.perf_counter()
    if epoch % cfg.eval_every == 0 or epoch in (cfg.schedule.epochs, cfg.stop_after):
        acc = evaluate_split(cfg, world, run.model, run.val, run.precision, run.loaders, epoch)
    eval_seconds = time.perf_counter() - t_eval

    seconds = time.perf_counter() - t0
    state.epoch, state.samples_trained = epoch, state.samples_trained + totals.samples
    state.epoch_seconds += seconds
    state.elapsed_seconds = run.clock.elapsed()
    subset = len(trained.indices)
    record = dict(
        epoch=epoch, world_size=world.size,
        # what trained: counts over all ranks, padding (wrap-around duplicates) apart
        samples=totals.samples, subset=subset, padding=fitted.shard_size * world.size - subset,
        weighted=0 if trained.weights is None else int(np.count_nonzero(trained.weights != 1)),
        selection_digest=selection_digest(trained.indices), weights_digest=trained.weights_digest(),
        scores_digest=nxt.scores_digest,
        # how it went, and the policy's step for the next epoch
        train_loss=totals.mean_loss, lr=fitted.stats.last_lr, skipped_steps=totals.skipped_steps,
        top1=None if acc is None else acc.top1, top5=None if acc is None else acc.top5, after=nxt.action,
        # where the time and the memory went
        seconds=seconds, train_seconds=fitted.stats.seconds, data_wait_seconds=fitted.stats.data_seconds,
        eval_seconds=eval_seconds, selection_seconds=nxt.seconds, **device_memory(run.precision.device))
    state.history.append(record)
    n = len(run.data.universe)
    run.metrics.publish_epoch(record, rank_samples=fitted.stats.samples, rank_seconds=fitted.stats.seconds,
                              num_samples=n, compute_ratio=state.samples_trained / (n * epoch),
                              scored=state.scores.scored(), selected=ledger is not None or nxt.action == DROP,
                              selection_bytes=nxt.bytes_sent)
    if world.is_root:
        reporting.log_epoch(record, cfg.schedule.epochs, n, len(state.selection.indices))
    return save(run, state)


class Fitted(NamedTuple):
    stats: EpochStats  # this rank's
    shard_size: int  # samples in this rank's shard, padding included


def fit(run: Run, state: RunState, epoch: int, ledger: Optional[LossLedger]) -> Fitted:
    """This rank's shard of the selection, trained for one epoch."""
    cfg, world, selection = run.cfg, run.world, state.selection
    shard = shard_for_rank(selection.indices, epoch=epoch, seed=cfg.seed, rank=world.rank, world=world.size,
                           batch_size=cfg.data.batch_size)
    steps = min(shard.steps, cfg.max_steps_per_epoch or shard.steps)
    progress = reporting.Progress(epoch, cfg.schedule.epochs, steps, world.size,
                                  len(selection.indices) / len(run.data.universe)) \
        if world.is_root and cfg.progress else None
    spec = spec_for(cfg, run.data.cat, shard, train=True, seed=rank_seed(cfg.seed, epoch, world.rank),
                    precision=run.precision, workers=decode_workers(cfg, world, run.precision.device))
    try:
        with run.loaders.reading(spec, run.data.cat, shard.indices, rank=world.rank, data_root=cfg.data_root,
                                 file_list=cfg.data.train_list) as loader:
            stats = train_one_epoch(
                model=run.model, loader=loader, optimizer=run.optimizer, label_smoothing=cfg.optim.label_smoothing,
                lr_schedule=run.lr_schedule, global_step=run.grid.start(epoch),
                step_scale=run.grid.epoch_steps[epoch - 1] / steps, class_of=run.data.class_of,
                precision=run.precision, ledger=ledger,
                weight_of=select_step.weights_on_device(selection, len(run.data.cat), run.precision.device),
                scaler=run.scaler, max_steps=cfg.max_steps_per_epoch, progress=progress, metrics=run.metrics,
                compiled=run.compiled, batch_size=cfg.data.batch_size)
    finally:
        if progress:
            progress.close()
    if stats.steps != steps:
        raise RuntimeError(f"rank {world.rank}: epoch {epoch} ran {stats.steps} steps, expected {steps}")
    return Fitted(stats, len(shard.indices))


@dataclass(frozen=True)
class Totals:
    """The epoch's exact global counts: sums over ranks, never averages of per-rank averages."""

    samples: int
    mean_loss: float
    skipped_steps: int


def global_totals(run: Run, stats: EpochStats, epoch: int) -> Totals:
    """The epoch's sums over ranks, and the divergence check on them. The sums are the same on
    every rank, so a diverged run stops on every rank together, before any of it is saved."""
    sums = dist.allreduce_sum(torch.tensor([stats.samples, stats.loss_sum, stats.loss_count, stats.skipped_steps,
                                            float(not stats.finite_parameters), stats.steps], dtype=torch.float64),
                              name=f"epoch.{epoch}.totals")
    samples, loss_sum, loss_count, skipped, nonfinite, steps = sums.tolist()
    problem = divergence(loss_sum, nonfinite_parameters=nonfinite > 0, skipped=int(skipped), steps=int(steps),
                         loss_scale=run.scaler.get_scale() if run.scaler is not None else None)
    if problem:
        fix = "--amp bf16 in place of fp16, or a lower --lr" if run.scaler is not None else "a lower --lr"
        raise DivergedError(f"epoch {epoch}: {problem}: the run has diverged, and stops without saving epoch "
                            f"{epoch}; try {fix} (base LR {run.base_lr:.4g}), or a longer --lr-warmup-epochs")
    # every rank skips the same steps (they share the averaged gradients): count them once
    return Totals(int(samples), loss_sum / max(1.0, loss_count), int(skipped) // run.world.size)


def save(run: Run, state: RunState) -> Optional[dict]:
    """Rank 0 saves the checkpoint and the summary so far; under --elastic every rank builds the
    payload, to commit it, so any survivor can carry the run."""
    rng = run_state.gather_rng()  # a collective: every rank's generators go into rank 0's checkpoint
    payload = run_state.payload(run, state, rng) if run.world.is_root or run.cfg.elastic else None
    if run.world.is_root:
        t0 = time.perf_counter()
        save_checkpoint(run.run_dir, state.epoch, payload, run.cfg.keep_checkpoints)
        run.metrics.checkpoint_seconds.observe(time.perf_counter() - t0)
        rundir.write_json(run.run_dir / "summary.json", reporting.summary(run, state))
    run.metrics.push()
    return payload
