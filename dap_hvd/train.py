"""`dap-hvd train`: the Horovod training service, top to bottom.

init -> pin device -> data (same on every rank) -> model -> scale LR -> DistributedOptimizer ->
resume -> broadcast state (optimizer, then parameters) -> for each epoch: shard the selection, train
(recording losses when the policy asks for scores), merge them into the score table, the policy
selects on rank 0 and broadcasts, average BatchNorm statistics, evaluate, checkpoint. Rank 0
alone writes files.
"""

from __future__ import annotations

import json
import logging
import math
import os
import signal
import socket
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from dap_hvd import ConfigError, DapError, DataError, DivergedError, affinity, dist, notice, rundir
from dap_hvd.checkpoint import checkpoint_epoch, list_checkpoints, load_newest, remove_stale_temps, save_checkpoint
from dap_hvd.config import TrainConfig
from dap_hvd.data.catalog import Catalog, cache_root, load_catalog
from dap_hvd.data.loaders import Loaders
from dap_hvd.data.sharding import shard_for_rank
from dap_hvd.data.spec import BadSampleError, LoaderError, LoaderSpec
from dap_hvd.devices import gpu_index, jpeg_decoder
from dap_hvd.engine import Precision, divergence, evaluate, train_one_epoch
from dap_hvd.files import write_atomic
from dap_hvd.ledger import LossLedger
from dap_hvd.lr import build_lr_schedule
from dap_hvd.models import build_classifier, param_groups
from dap_hvd.policy.policies import Context, Policy, Selection, check_finite, selection_digest
from dap_hvd.policy.schedule import DROP, PICK, DapState, Plan
from dap_hvd.policy.scores import ScoreTable
from dap_hvd.resume import changes, resume_lr, unmade_final_step
from dap_hvd.supervise import note_loader

log = logging.getLogger("dap_hvd")


@dataclass
class RunState:
    """What a checkpoint restores: everything the next epoch depends on."""

    epoch: int = 0  # last completed epoch
    selection: Optional[Selection] = None  # what the next epoch trains on (indices, loss weights)
    scores: Optional[ScoreTable] = None  # every sample's last training loss, by global index
    policy_state: Optional[DapState] = None  # DaP's T_start / T_prev; None for the other policies
    history: list = field(default_factory=list)
    samples_trained: int = 0
    epoch_seconds: float = 0.0  # the epochs' own time, summed (start-up, rolled-back work excluded)
    elapsed_seconds: float = 0.0  # wall clock from start-up, over every job of the run (see Clock)
    run_id: str = ""
    replicas: dict = field(default_factory=dict)  # per-rank state digests, checked equal
    memberships: list = field(default_factory=list)  # --elastic: each (re)start's world and rollback


@dataclass
class Run:
    """What every epoch needs, built once at start-up, so the epoch step takes one argument."""

    cfg: TrainConfig
    world: dist.World
    run_dir: Path
    precision: Precision
    policy: Policy
    train_cat: Catalog
    val_cat: Catalog  # labelled by train's class names
    universe: np.ndarray  # usable training indices (bad samples excluded)
    excluded: np.ndarray
    val_usable: np.ndarray  # usable validation indices
    dataset_digest: str
    class_of: torch.Tensor
    val_class_of: torch.Tensor
    model: torch.nn.Module
    optimizer: object
    scaler: Optional[object]
    base_lr: float
    plan: Plan
    # The LR's step grid: where each epoch starts and how many steps it spans. Exact plans give
    # the real steps; where sizes depend on the scores (InfoBatch) the grid is full-data epochs
    # and a shorter epoch walks its span faster, so the decays fall at the same epochs.
    epoch_starts: list  # [-1] is the total
    grid_steps: list
    planned_min: list  # samples per epoch as planned (a step cap included); equal to max when exact
    planned_max: list
    loaders: Optional[Loaders] = None  # persistent per split (DALI), for the whole run
    compiled: Optional[torch.nn.Module] = None  # --compile: `model` compiled, for full training batches
    lr_schedule: object = None
    metrics: object = None
    full_epoch_steps: int = 0  # steps of an all-data epoch: the unit of --lr-warmup-epochs, for every policy
    clock: Optional["Clock"] = None


@dataclass
class Clock:
    """The run's elapsed wall-clock time: the earlier jobs' (from the checkpoint this job resumed)
    plus this job's since its start-up. It lives for the whole job, so an --elastic re-formation
    does not reset it to a commit's value."""

    started: float = field(default_factory=time.monotonic)
    before: Optional[float] = None  # set once, by the job's first resume (0.0 on a fresh run)

    def elapsed(self) -> float:
        return (self.before or 0.0) + time.monotonic() - self.started


class Interrupted(KeyboardInterrupt):
    """Ctrl-C or a scheduler's SIGTERM, with the newest checkpoint on disk (the one --resume
    continues), not the epoch that was running or being saved."""

    def __init__(self, epoch: int, checkpoint: Optional[Path] = None):
        super().__init__(epoch)
        self.epoch, self.checkpoint = epoch, checkpoint


@dataclass
class RunLog:
    """Where fatal errors go besides stderr: the run's train.log, once this run owns the folder."""

    path: Optional[Path] = None
    lock: Optional[rundir.RunLock] = None  # rank 0: the run folder's, for the job's whole life

    def fatal(self, world: dist.World, message: str) -> None:
        print(message, file=sys.stderr, flush=True)
        if self.path is None:
            return
        line = f"{time.strftime('%H:%M:%S')} [rank {world.rank}] ERROR {message}\n"
        try:  # one append per line: ranks may share the file
            with open(self.path, "a") as f:
                f.write(line)
        except OSError:
            pass


def main(cfg: TrainConfig, comm=None, notes: tuple = ()) -> int:
    """`notes`: what the command line's defaults chose (a scaled preset, small-image defaults,
    --resume auto starting fresh), said once by rank 0."""
    clock = Clock()
    world = dist.init(comm)
    run_dir = Path(cfg.resume or cfg.out)
    _setup_logging(world)
    if world.is_root:
        for note in notes:
            log.info("%s", note)
    runlog = RunLog()
    # SLURM and horovodrun stop jobs with SIGTERM: end like Ctrl-C, with a resume hint.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        if cfg.elastic:
            if os.environ.get("HOROVOD_ELASTIC") != "1":
                # Plain horovodrun/mpirun cannot re-form the job after a loss: a reset would wait forever.
                raise ConfigError("--elastic: needs horovodrun's elastic mode (--min-np/--max-np with "
                                  "--host-discovery-script); launch/elastic.sh starts it")
            summary = dist.run_elastic(lambda elastic: run(cfg, dist.current_world(), run_dir, runlog, elastic,
                                                           clock))
            world = dist.current_world()
        else:
            summary = run(cfg, world, run_dir, runlog, clock=clock)
        if world.is_root:
            low, high = summary["compute_ratio_planned_min"], summary["compute_ratio_planned_max"]
            log.info("done: top1 %.4f top5 %.4f, compute %.3f of full data (planned %s), %.1fs -> %s",
                     summary["top1"], summary["top5"], summary["compute_ratio_measured"],
                     f"{high:.3f}" if low == high else f"{low:.3f}..{high:.3f}, the lower bound in expectation",
                     summary["elapsed_seconds"], run_dir / "summary.json")
        return 0
    except DapError as e:
        if cfg.elastic:  # not a lost host: the job ends, instead of losing host after host (notice.py)
            notice.announce_fatal(str(e))
        runlog.fatal(world, f"dap-hvd train: error on rank {world.rank}: {e}")
        if getattr(e, "unclean", False):
            # A failed DALI pipeline can crash the interpreter's teardown (SIGSEGV in a later
            # destructor): the error is reported and nothing is left to save, so skip it.
            sys.stdout.flush()
            os._exit(2)
        return 2
    except dist.CollectiveError as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        # Rank 0 writes the checkpoints, so it alone can say which is the newest (or that none is).
        done = rundir.newest_checkpoint(run_dir) if world.is_root else None
        hint = (f"the newest checkpoint is epoch {done.epoch}; continue with --resume {run_dir}" if done else
                "nothing was checkpointed" if world.is_root else
                f"the last checkpoint is in {run_dir}, continue with --resume {run_dir}")
        runlog.fatal(world, f"dap-hvd train: error on rank {world.rank}: a collective operation failed, most likely "
                            f"because another rank died or was killed ({first}); {hint}")
        return 1
    except Exception as e:  # a bug: say so where the user looks, then keep the traceback for the report
        runlog.fatal(world, f"dap-hvd train: unexpected error on rank {world.rank}: {type(e).__name__}: {e}")
        raise
    except KeyboardInterrupt:
        if world.is_root:
            # From the files, not from the exception: a peer's SIGKILL can bring a second SIGTERM
            # (the launcher's, the supervisor's) that lands outside the loop's handler.
            done = rundir.newest_checkpoint(run_dir)
            where = f"after epoch {done.epoch} (newest checkpoint: {done.path})" if done \
                else "before the first epoch ended"
            hint = f"resume with: dap-hvd train --resume {run_dir}" if done else "nothing was checkpointed"
            runlog.fatal(world, f"dap-hvd train: interrupted {where}; {hint}")
        return 130
    finally:
        if runlog.lock is not None:
            runlog.lock.release()
        dist.shutdown()


def run(cfg: TrainConfig, world: dist.World, run_dir: Path, runlog: Optional[RunLog] = None,
        elastic: Optional[dist.ElasticCommit] = None, clock: Optional[Clock] = None) -> dict:
    """The run, from its start or its last checkpoint. Under --elastic this is called again after
    every membership change, with the world as it is then and the last commit in `elastic`."""
    runlog = runlog or RunLog()
    committed = elastic.payload() if elastic is not None else None
    restart = elastic is not None and (committed is not None or elastic.resets > 0)
    _check_out_dir(cfg, world, run_dir, runlog, restart)
    if cfg.resume or restart:  # a resumed run's folder is its own from the start
        runlog.path = run_dir / "train.log"
    r = _setup(cfg, world, run_dir)
    if world.is_root and not restart:  # start-up worked: now this run takes the folder
        moved = None if cfg.resume else rundir.archive(run_dir)
        _log_to_file(world, run_dir)
        if moved:
            log.warning("%s held an earlier run; moved it to %s (use --resume to continue a run)", run_dir, moved)
        stale = remove_stale_temps(run_dir)
        if stale:
            log.warning("removed %d temporary file(s) a killed checkpoint save left in %s", len(stale),
                        run_dir / "checkpoints")
    state = _resume(r, committed)
    r.clock = clock or Clock()
    if r.clock.before is None:
        r.clock.before = state.elapsed_seconds
    if elastic is not None:
        _note_membership(r, state, elastic)
    runlog.path = run_dir / "train.log"
    # Rank 0's replica for everyone, then proof of it: every rank's full state must hash alike.
    dist.broadcast_training_state(r.model, r.optimizer, r.scaler, resumed=state.epoch > 0)
    state.replicas["start"] = dist.check_replicas(r.model, r.scaler, when="start-up broadcast")
    if world.is_root:
        _write_run_files(cfg, run_dir, r.base_lr)
        log.info("%s: %d ranks x batch %d, lr %.4g, %s on %s, %d train / %d val samples, %d classes; planned compute %s",
                 cfg.strategy, world.size, cfg.data.batch_size, r.base_lr, cfg.model_name, r.precision.device,
                 len(r.universe), len(r.val_cat), r.train_cat.num_classes,
                 r.plan.describe() + ("" if r.plan.exact else " (the lower bound in expectation)"))
        if len(r.excluded):
            log.warning("skipping %d bad training sample(s) (--on-bad-sample skip); see verify-data", len(r.excluded))
        _warn_about_setup(r)
        line, warn = jpeg_decoder(loader=cfg.data.loader, dali_device=cfg.data.dali_device,
                                  gpu=r.precision.device.type == "cuda", hw_decoder_load=cfg.data.hw_decoder_load,
                                  driver_capabilities=os.environ.get("NVIDIA_DRIVER_CAPABILITIES"))
        (log.warning if warn else log.info)(line)

    from dap_hvd.metrics import Metrics
    r.metrics = Metrics(rank=world.rank, local_rank=world.local_rank, run_id=state.run_id, port=cfg.metrics_port,
                        host=cfg.metrics_host, pushgateway=cfg.pushgateway, strategy=cfg.strategy)
    r.metrics.skipped.inc(len(r.excluded))
    if cfg.metrics_port:
        _record_metrics_ports(r)
    try:
        last = min(cfg.schedule.epochs, cfg.stop_after or cfg.schedule.epochs)
        for epoch in range(state.epoch + 1, last + 1):
            payload = _train_epoch(r, state, epoch)
            if elastic is not None:
                elastic.stage(payload, epoch)
                elastic.commit()  # a host added or removed meanwhile: Horovod interrupts here
        r.metrics.linger(cfg.metrics_linger)  # until a last scrape has read the final values
    except KeyboardInterrupt:
        ckpts = list_checkpoints(run_dir) if world.is_root else []
        raise Interrupted(checkpoint_epoch(ckpts[-1]) if ckpts else 0, ckpts[-1] if ckpts else None) from None
    finally:
        r.metrics.close()
        r.loaders.close()
    state.replicas["end"] = dist.check_replicas(r.model, r.scaler, when="end of training")
    state.elapsed_seconds = r.clock.elapsed()
    summary = _summary(r, state)
    if world.is_root:
        _write_json(run_dir / "summary.json", summary)
    return summary


def _note_membership(r: Run, state: RunState, elastic: dist.ElasticCommit) -> None:
    """--elastic: who trains from which epoch on, after a rollback to which commit."""
    record = dict(from_epoch=state.epoch + 1, world_size=r.world.size, rolled_back_to=state.epoch,
                  restart=elastic.resets, global_batch=r.cfg.data.batch_size * r.world.size, base_lr=r.base_lr)
    state.memberships.append(record)
    if r.world.is_root and elastic.resets:
        log.warning("elastic: %d rank(s) now; continuing from the commit of epoch %d, LR %.4g (linear rule in the "
                    "global batch)", r.world.size, state.epoch, r.base_lr)


def _check_out_dir(cfg: TrainConfig, world: dist.World, run_dir: Path, runlog: RunLog, restart: bool) -> None:
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
    verdict = dist.broadcast_json({"error": problem}, name="out.verdict")
    if verdict["error"]:
        raise DapError(verdict["error"])


def _warn_about_setup(r: Run) -> None:
    cfg = r.cfg
    if cfg.strategy in ("dap", "random") and cfg.schedule.warmup >= cfg.schedule.epochs:
        log.warning("--warmup %d >= --epochs %d: every epoch is warm-up, so nothing is ever dropped (DaP is off)",
                    cfg.schedule.warmup, cfg.schedule.epochs)
    shard = math.ceil(len(r.universe) / r.world.size)
    if cfg.data.batch_size > shard:
        log.warning("--batch-size %d is larger than each rank's shard (%d samples): every epoch is one partial "
                    "step per rank", cfg.data.batch_size, shard)


def _setup(cfg: TrainConfig, world: dist.World, run_dir: Path) -> Run:
    device = _pin_device(world, cfg.cpu_bind)
    # Each rank its own stream (dropout masks must differ across ranks); the model's initial
    # weights come from rank 0 by broadcast, so they need no common seed.
    torch.manual_seed(_seed(cfg.seed, 0, world.rank))
    policy = cfg.make_policy()

    # ---- data: the embedded sample set is generated once per node on first use
    root = ensure_data(cfg, world)
    train_cat = load_catalog(root, "train", cfg.data.train_list)
    val_cat = load_catalog(root, "val", cfg.data.val_list).labelled_by(train_cat.classes, str(train_cat.root),
                                                                        named=train_cat.named)
    # Global indices must mean the same image on every rank (per-node dataset copies can differ).
    train_digest = train_cat.digest()
    dist.check_same_dataset("train", train_digest, train_cat.paths)
    dist.check_same_dataset("val", val_cat.digest(), val_cat.paths)  # cheap: val is small
    skip = cfg.data.on_bad_sample == "skip"
    excluded = _bad_samples(cfg, world, train_cat, train_digest) if skip else np.zeros(0, np.int64)
    val_excluded = _bad_samples(cfg, world, val_cat, val_cat.digest(), "val") if skip else np.zeros(0, np.int64)
    universe = np.setdiff1d(np.arange(len(train_cat), dtype=np.int64), excluded)
    val_usable = np.setdiff1d(np.arange(len(val_cat), dtype=np.int64), val_excluded)
    if len(universe) == 0:
        raise DataError(f"{train_cat.root}: no usable training samples")
    if len(val_usable) == 0:
        raise DataError(f"{val_cat.root}: no usable validation samples")

    # ---- model, recipe (Bag of Tricks), Horovod optimizer
    # fp32 logits, also under autocast: the selection ranks samples by losses computed from them
    model = build_classifier(cfg.model_name, train_cat.num_classes, zero_gamma=cfg.optim.zero_gamma)
    if cfg.optim.sync_bn:
        if device.type != "cuda":
            raise ConfigError(f"--sync-bn: Horovod's SyncBatchNorm runs on GPUs only, and rank {world.rank} has none")
        model = dist.sync_batchnorm(model)
    precision = _precision(cfg, device)
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
    the_plan = policy.plan(len(universe))
    epoch_steps = [math.ceil(math.ceil(e.size / world.size) / cfg.data.batch_size) for e in the_plan.epochs]
    planned_min, planned_max = [e.low_size for e in the_plan.epochs], [e.size for e in the_plan.epochs]
    full_steps = math.ceil(math.ceil(len(universe) / world.size) / cfg.data.batch_size)
    if cfg.max_steps_per_epoch:
        epoch_steps = [min(s, cfg.max_steps_per_epoch) for s in epoch_steps]
        full_steps = min(full_steps, cfg.max_steps_per_epoch)
        cap = cfg.max_steps_per_epoch * cfg.data.batch_size * world.size
        planned_min, planned_max = [min(n, cap) for n in planned_min], [min(n, cap) for n in planned_max]
    starts = [0]
    for s in epoch_steps:
        starts.append(starts[-1] + s)
    return Run(cfg=cfg, world=world, run_dir=run_dir, precision=precision, policy=policy, train_cat=train_cat,
               val_cat=val_cat, universe=universe, excluded=excluded, val_usable=val_usable,
               dataset_digest=train_cat.digest(excluded), class_of=torch.from_numpy(train_cat.labels).to(device),
               val_class_of=torch.from_numpy(val_cat.labels).to(device), model=model, optimizer=optimizer,
               scaler=scaler, base_lr=base_lr, plan=the_plan, epoch_starts=starts, grid_steps=epoch_steps,
               planned_min=planned_min, planned_max=planned_max, loaders=Loaders(cfg.data.loader), compiled=compiled,
               lr_schedule=_lr_schedule(cfg, base_lr, epoch_steps, full_steps), full_epoch_steps=full_steps)


def ensure_data(cfg: TrainConfig, world: dist.World) -> Path:
    """The data root; the embedded sample set is generated once per node on first use."""
    if cfg.data.root is None:
        if world.local_rank == 0:
            from dap_hvd.data.sample_data import make_sample_data
            make_sample_data(cfg.data_root)
        dist.barrier()
    return cfg.data_root


def _lr_schedule(cfg: TrainConfig, base_lr: float, epoch_steps: list, full_epoch_steps: int):
    # The warm-up is in all-data epochs (as --lr-warmup-epochs says), whatever the policy trains
    # in its first epoch: RS2's first epoch is already its reduced one.
    return build_lr_schedule(base_lr=base_lr, epoch_steps=epoch_steps, warmup_epochs=cfg.lr_warmup_epochs,
                             full_epoch_steps=full_epoch_steps, lr_steps=cfg.lr_steps, mode=cfg.optim.lr_schedule)


def _train_epoch(r: Run, state: RunState, epoch: int) -> Optional[dict]:
    cfg, world = r.cfg, r.world
    t0 = time.perf_counter()
    selection = state.selection
    # Nothing trains after the final epoch in this run, but the policy still makes the step due
    # after it (DaP's drop, with this epoch's scores): a larger --epochs continues from there.
    final = epoch == cfg.schedule.epochs
    # Losses are recorded only in epochs whose scores the policy will use.
    wants_scores = r.policy.needs_scores(epoch, state.policy_state)
    check_plan(r.plan, epoch, len(selection.indices))
    shard = shard_for_rank(selection.indices, epoch=epoch, seed=cfg.seed, rank=world.rank, world=world.size,
                           batch_size=cfg.data.batch_size)
    ledger = LossLedger(selection.indices, r.precision.device) if wants_scores else None
    steps = min(shard.steps, cfg.max_steps_per_epoch or shard.steps)
    progress = _Progress(epoch, cfg.schedule.epochs, steps, world.size, len(selection.indices) / len(r.universe)) \
        if world.is_root and cfg.progress else None
    loader = None
    note_loader(cfg.data_root, "train", cfg.data.train_list, shard.indices)
    try:
        loader = r.loaders.open(_spec(cfg, r.train_cat, shard.indices, shard.encoded_labels(), True,
                                      _seed(cfg.seed, epoch, world.rank), r.precision, world))
        stats = train_one_epoch(model=r.model, loader=loader, optimizer=r.optimizer,
                                label_smoothing=cfg.optim.label_smoothing, lr_schedule=r.lr_schedule,
                                global_step=r.epoch_starts[epoch - 1], step_scale=r.grid_steps[epoch - 1] / steps,
                                class_of=r.class_of, precision=r.precision, ledger=ledger,
                                weight_of=_weights_on_device(r, selection), scaler=r.scaler,
                                max_steps=cfg.max_steps_per_epoch, progress=progress, metrics=r.metrics,
                                compiled=r.compiled, batch_size=cfg.data.batch_size)
    except (BadSampleError, LoaderError) as e:
        raise _explain_bad_data(e, world, r.train_cat, shard.indices) from None
    finally:
        if loader is not None:
            loader.close()
        if progress:
            progress.close()
    if stats.steps != steps:
        raise RuntimeError(f"rank {world.rank}: epoch {epoch} ran {stats.steps} steps, expected {steps}")

    # ---- exact global counts: sum over ranks, never average per-rank averages. The sums are the
    # same on every rank, so a diverged run stops on every rank together, before any of it is saved.
    totals = dist.allreduce_sum(torch.tensor([stats.samples, stats.loss_sum, stats.loss_count, stats.skipped_steps,
                                              float(not stats.finite_parameters), stats.steps], dtype=torch.float64),
                                name=f"epoch.{epoch}.totals")
    samples, loss_sum, loss_count = int(totals[0]), float(totals[1]), max(1.0, float(totals[2]))
    skipped_steps = int(totals[3]) // world.size  # every rank skips the same steps (same averaged gradients)
    problem = divergence(loss_sum, nonfinite_parameters=float(totals[4]) > 0, skipped=int(totals[3]),
                         steps=int(totals[5]), loss_scale=r.scaler.get_scale() if r.scaler is not None else None)
    if problem:
        fix = "--amp bf16 in place of fp16, or a lower --lr" if r.scaler is not None else "a lower --lr"
        raise DivergedError(f"epoch {epoch}: {problem}: the run has diverged, and stops without saving epoch "
                            f"{epoch}; try {fix} (base LR {r.base_lr:.4g}), or a longer --lr-warmup-epochs")

    # ---- scores into the table (every rank), the policy's next selection (rank 0, broadcast)
    t_sel, sel_bytes, scores_digest = time.perf_counter(), 0, None
    if wants_scores:
        merged = dist.merge_losses(selection.indices, ledger.loss, ledger.count, method=cfg.merge, epoch=epoch,
                                   world_size=world.size)
        check_finite(selection.indices, merged.losses, epoch)  # every rank holds the losses: all stop together
        state.scores.update(selection.indices, merged.losses, epoch)
        sel_bytes, scores_digest = merged.bytes_sent, state.scores.digest()
    step = None
    if world.is_root:
        step = r.policy.select(Context(epoch=epoch, universe=r.universe, current=selection, scores=state.scores.loss,
                                       seed=cfg.seed, state=state.policy_state, final=final))
    shared = _share_step(r, step, selection, epoch)
    state.selection, state.policy_state, after = shared.selection, shared.state, shared.action
    sel_bytes += shared.bytes_sent
    sel_seconds = time.perf_counter() - t_sel

    # One model on every rank from here: what is evaluated is what is saved.
    dist.average_batchnorm(r.model)
    acc, t_eval = None, time.perf_counter()
    if epoch % cfg.eval_every == 0 or epoch in (cfg.schedule.epochs, cfg.stop_after):
        acc = evaluate_split(cfg, world, epoch, r.model, r.val_cat, r.val_class_of, r.precision, r.loaders,
                             r.val_usable)
    eval_seconds = time.perf_counter() - t_eval
    state.epoch = epoch
    state.samples_trained += samples
    seconds = time.perf_counter() - t0
    state.epoch_seconds += seconds
    state.elapsed_seconds = r.clock.elapsed()
    subset = len(selection.indices)
    padding = len(shard.indices) * world.size - subset  # wrap-around duplicates, all ranks
    weighted = 0 if selection.weights is None else int(np.count_nonzero(selection.weights != 1))
    record = dict(epoch=epoch, samples=samples, subset=subset, padding=padding,
                  selection_digest=selection_digest(selection.indices), weights_digest=selection.weights_digest(),
                  weighted=weighted, scores_digest=scores_digest, train_loss=loss_sum / loss_count,
                  lr=stats.last_lr, top1=None if acc is None else acc.top1,
                  top5=None if acc is None else acc.top5, seconds=seconds, eval_seconds=eval_seconds,
                  train_seconds=stats.seconds, data_wait_seconds=stats.data_seconds, world_size=world.size,
                  skipped_steps=skipped_steps,
                  after=after, selection_seconds=sel_seconds, **_device_memory(r.precision.device))
    state.history.append(record)
    _publish(r, state, record, stats, wants_scores or after == DROP, sel_seconds, sel_bytes)
    # RNG streams of every rank go into rank 0's checkpoint (a collective: every rank takes part).
    rng = _gather_rng(world)
    if world.is_root:
        nxt = len(state.selection.indices)
        log.info("epoch %d/%d: %d samples (%.1f%% of data)%s%s, loss %.4f, lr %.4g%s, %.1fs; next: %s",
                 epoch, cfg.schedule.epochs, samples, 100 * subset / len(r.universe),
                 "" if not padding else f" +{padding} pad", f", {weighted} weighted" if weighted else "",
                 record["train_loss"], stats.last_lr,
                 "" if acc is None else f", top1 {acc.top1:.4f} top5 {acc.top5:.4f}", seconds,
                 "end of run" if final else {DROP: f"drop to {nxt}", PICK: "pick all data", "prune": f"prune to {nxt}",
                                             "draw": f"draw {nxt}", "full": "all data"}.get(after, "same subset"))
    # Rank 0 saves it; under --elastic every rank commits it, so any survivor can carry the run.
    payload = _checkpoint_payload(r, state, rng) if world.is_root or cfg.elastic else None
    if world.is_root:
        t_ck = time.perf_counter()
        save_checkpoint(r.run_dir, epoch, payload, cfg.keep_checkpoints)
        r.metrics.checkpoint_seconds.observe(time.perf_counter() - t_ck)
        _write_json(r.run_dir / "summary.json", _summary(r, state))
    r.metrics.push()
    return payload


def check_plan(plan: Plan, epoch: int, subset: int) -> None:
    """An exact plan is what trains: its size for `epoch` is the subset's, or the LR grid (keyed
    to the planned steps) and the planned compute would silently bend. A mismatch is a bug."""
    if epoch > len(plan.epochs):
        return
    row = plan.epochs[epoch - 1]
    if row.exact and row.size is not None and row.size != subset:
        raise PlanMismatch(f"epoch {epoch}: the {plan.policy} plan trains {row.size} samples, but the selection "
                           f"holds {subset}; an exact plan must match what trains (this is a bug: please report it "
                           f"with the run's train.log)")


class PlanMismatch(DapError):
    """An exact policy's selection differs from its plan."""


@dataclass(frozen=True)
class SharedStep:
    selection: Selection
    state: Optional[DapState]
    action: str
    bytes_sent: int  # by this rank


def _share_step(r: Run, step, current: Selection, epoch: int) -> SharedStep:
    """Rank 0's policy step to every rank: a small JSON header, then the indices (int64, so no
    index above 2^24 loses precision) only when they changed, and the weights when there are any."""
    universe = r.universe
    head = None
    if r.world.is_root:
        sel = step.selection
        unweighted = sel.weights is None
        head = dict(action=step.action, state=None if step.state is None else dict(t_start=step.state.t_start,
                                                                                      t_prev=step.state.t_prev),
                    same=unweighted and current.weights is None and np.array_equal(sel.indices, current.indices),
                    all=unweighted and np.array_equal(sel.indices, universe), weighted=not unweighted)
    head = dist.broadcast_json(head, name=f"select.{epoch}.head")
    sent = 0
    if head["same"]:
        indices = current.indices
    elif head["all"]:
        indices = universe
    else:
        indices = dist.broadcast_indices(step.selection.indices if r.world.is_root else None, name=f"select.{epoch}")
        sent += 8 * len(indices) * (r.world.size - 1) if r.world.is_root else 0
    weights = None
    if head["weighted"]:
        w = torch.from_numpy(np.ascontiguousarray(step.selection.weights, dtype=np.float32)) if r.world.is_root else None
        weights = dist.broadcast_tensor(w, name=f"select.{epoch}.weights").numpy()
        sent += 4 * len(weights) * (r.world.size - 1) if r.world.is_root else 0
    state = None if head["state"] is None else DapState(**head["state"])
    return SharedStep(Selection(np.asarray(indices, dtype=np.int64), weights), state, head["action"], sent)


def _weights_on_device(r: Run, selection: Selection) -> Optional[torch.Tensor]:
    """Loss weights by global index on the training device (1 where unweighted), or None."""
    if selection.weights is None:
        return None
    w = torch.ones(len(r.train_cat), dtype=torch.float32)
    w[torch.from_numpy(selection.indices)] = torch.from_numpy(selection.weights)
    return w.to(r.precision.device)


def _record_metrics_ports(r: Run) -> None:
    """The ports the ranks serve metrics on (a taken one falls back to a free one) go into the
    launcher's targets file (DAP_HVD_SD_FILE), so Prometheus scrapes the right ones."""
    from dap_hvd.discovery import record_ports

    ports = dist.allgather(torch.tensor([r.metrics.port], dtype=torch.int64), name="metrics.ports").tolist()
    sd_file = os.environ.get("DAP_HVD_SD_FILE")
    if r.world.is_root and sd_file and record_ports(sd_file, ports) is None:
        log.warning("metrics ports %s not recorded in %s: missing, or not one target per rank", ports, sd_file)


def _publish(r: Run, state: RunState, record: dict, stats, dropped: bool, sel_seconds: float, sel_bytes: int) -> None:
    m = r.metrics
    m.epoch_done(samples=stats.samples, seconds=stats.seconds)  # the live counts, made exact
    m.loss.set(record["train_loss"])
    m.lr.set(stats.last_lr)
    m.epoch.set(record["epoch"])
    m.subset_size.set(record["subset"])
    m.kept_fraction.set(record["subset"] / len(r.universe))
    m.compute_ratio.set(state.samples_trained / (len(r.universe) * state.epoch))
    m.weighted.set(record["weighted"])
    m.amp_skipped_steps.inc(record["skipped_steps"])
    m.scored.set(state.scores.scored())
    if dropped:
        m.selection_seconds.observe(sel_seconds)
        m.selection_bytes.inc(sel_bytes)
    if record["top1"] is not None:
        m.top1.set(record["top1"])
        m.top5.set(record["top5"])


@dataclass(frozen=True)
class Accuracy:
    top1: float
    top5: float
    samples: int


def evaluate_split(cfg, world, epoch, model, val_cat, val_class_of, precision, loaders: Loaders,
                   usable: Optional[np.ndarray] = None) -> Accuracy:
    """Top-1/top-5 over the split (its `usable` indices, default all): each rank scores its
    shard, and the counts are summed."""
    usable = np.arange(len(val_cat), dtype=np.int64) if usable is None else usable
    shard = shard_for_rank(usable, epoch=0, seed=cfg.seed, rank=world.rank, world=world.size,
                           batch_size=cfg.data.batch_size)
    loader = None
    note_loader(cfg.data_root, "val", cfg.data.val_list, shard.indices)
    try:
        loader = loaders.open(_spec(cfg, val_cat, shard.indices, shard.encoded_labels(), False, cfg.seed,
                                    precision, world))
        counts = evaluate(model=model, loader=loader, class_of=val_class_of, precision=precision,
                          batch_size=cfg.data.batch_size)
    except (BadSampleError, LoaderError) as e:
        raise _explain_bad_data(e, world, val_cat, shard.indices) from None
    finally:
        if loader is not None:
            loader.close()
    counts = dist.allreduce_sum(counts.cpu(), name=f"eval.{epoch}")
    return Accuracy(float(counts[0] / counts[2]), float(counts[1] / counts[2]), int(counts[2]))


# ---------------------------------------------------------------------------- helpers

def _pin_device(world: dist.World, cpu_bind: bool = True) -> torch.device:
    given = os.environ.get("OMP_NUM_THREADS", "")
    threads = int(given) if given.isdigit() and int(given) > 0 else None
    if torch.cuda.is_available():
        # local_rank % count: under per-task GPU binding (SLURM --gpus-per-task) each rank sees
        # one GPU as device 0. Two local ranks on one GPU would still be a mistake: say so.
        count = torch.cuda.device_count()
        index = gpu_index(world.local_rank, count)
        torch.cuda.set_device(index)
        dist.check_gpus_not_shared(str(torch.cuda.get_device_properties(index).uuid), world.local_size, count)
        torch.backends.cudnn.benchmark = True  # fixed input sizes: let cuDNN pick its fastest kernels
        if cpu_bind:
            _bind_cpus(world, index, count)
        torch.set_num_threads(threads or min(affinity.GPU_RANK_TORCH_THREADS,
                                             affinity.cpus_per_rank(world.local_size, bound=cpu_bind)))
        return torch.device("cuda", index)
    # Share the node's cores between the ranks on it instead of oversubscribing them, unless the
    # user set OMP_NUM_THREADS (it also makes runs with different ranks per host comparable).
    torch.set_num_threads(threads or affinity.cpus_per_rank(world.local_size, bound=False))
    return torch.device("cpu")


def _bind_cpus(world: dist.World, index: int, count: int) -> None:
    """Bind this rank's threads to CPUs near its GPU (dap_hvd/affinity.py)."""
    try:
        pci = [f"{p.pci_domain_id:04x}:{p.pci_bus_id:02x}:{p.pci_device_id:02x}.0"
               for p in map(torch.cuda.get_device_properties, range(count))]
    except AttributeError:  # a torch without the PCI ids
        pci = None
    binding = affinity.choose(affinity.read_topology(pci) if pci else None, index)
    if binding.cpus:
        affinity.apply(binding.cpus)
    log.info("rank %d: %s", world.rank, binding.note)


def _device_memory(device: torch.device) -> dict:
    """What PyTorch holds on the GPU at the epoch's end, and the epoch's peak: a subset change
    must not make either grow. Once per epoch, so the sync it costs does not matter."""
    if device.type != "cuda":
        return dict(device_memory_mb=None, device_peak_mb=None)
    peak = torch.cuda.max_memory_allocated(device) / 2**20
    torch.cuda.reset_peak_memory_stats(device)
    return dict(device_memory_mb=torch.cuda.memory_reserved(device) / 2**20, device_peak_mb=peak)


def _precision(cfg: TrainConfig, device: torch.device) -> Precision:
    gpu = device.type == "cuda"
    amp = cfg.optim.amp if cfg.optim.amp != "auto" else ("bf16" if gpu else "off")
    dtype = {"off": None, "bf16": torch.bfloat16, "fp16": torch.float16}[amp]
    cl = cfg.optim.channels_last == "on" or (cfg.optim.channels_last == "auto" and gpu)
    if cl and cfg.optim.sync_bn:
        # Horovod's SyncBatchNorm makes its input contiguous (NCHW) in forward and backward, so
        # the net would convert back and forth at every BN for nothing.
        if cfg.optim.channels_last == "on":
            log.warning("--sync-bn: channels_last turned off; Horovod's SyncBatchNorm makes every BN input "
                        "NCHW-contiguous, so channels_last would only add layout conversions")
        cl = False
    return Precision(device, dtype, cl)


def _workers(cfg: TrainConfig, world: dist.World, device: torch.device) -> int:
    """Decode threads per rank: on a GPU, the node's cores per local rank (at most 8), since file
    reads and the host Huffman stage run on them; on CPU, 2 (the model needs the cores)."""
    if cfg.data.workers is not None:
        return cfg.data.workers
    if device.type == "cuda":
        return max(2, min(8, affinity.cpus_per_rank(world.local_size, bound=cfg.cpu_bind)))
    return 2


def _seed(seed: int, epoch: int, rank: int) -> int:
    # Augmentation randomness is a function of (seed, epoch, rank): a resumed run replays it.
    return int(np.random.SeedSequence([seed, epoch, rank]).generate_state(1)[0] % (2**31 - 1))


def _spec(cfg, cat: Catalog, indices, tags, train: bool, seed: int, precision: Precision, world) -> LoaderSpec:
    device = precision.device
    dali_gpu = device.type == "cuda" and cfg.data.dali_device in ("auto", "gpu")
    return LoaderSpec(files=cat.files(indices), tags=tags, batch_size=cfg.data.batch_size, image_size=cfg.image_size,
                      train=train, seed=seed, workers=_workers(cfg, world, device), val_resize=cfg.val_resize,
                      min_area=cfg.min_crop_area, color_jitter=cfg.data.color_jitter,
                      pca_lighting=cfg.data.pca_lighting, device="gpu" if dali_gpu else "cpu",
                      device_id=device.index if dali_gpu else None, channels_last=precision.channels_last,
                      pin_memory=device.type == "cuda", hw_decoder_load=cfg.data.hw_decoder_load)


def _bad_samples(cfg, world, cat: Catalog, digest: str, split: str = "train") -> np.ndarray:
    """--on-bad-sample skip: every rank checks its share of files; the union is excluded. The
    result is cached under DAP_HVD_CACHE, keyed by the catalog's digest, so a resume (or the next
    run on the same files) does not decode the whole dataset again."""
    from dap_hvd.data.verify import find_bad

    cache = _scan_cache(cat, digest)
    cached = None
    if world.is_root and cache.is_file():
        try:
            cached = json.loads(cache.read_text())["bad"]
        except (OSError, ValueError, KeyError):
            cached = None
    cached = dist.broadcast_json(cached, name=f"bad_samples.{split}.cached")
    if cached is not None:
        bad = np.asarray(cached, dtype=np.int64)
        if world.is_root:
            log.info("--on-bad-sample skip: %d bad %s sample(s), from the scan cached in %s", len(bad), split, cache)
    else:
        mine = np.arange(world.rank, len(cat), world.size, dtype=np.int64)
        files = cat.files(mine)
        bad_paths = {p for p, _ in find_bad(files, workers=cfg.data.workers or 2)}
        found = np.array([i for i, p in zip(mine, files) if p in bad_paths], dtype=np.int64)
        bad = np.sort(dist.allgather(torch.from_numpy(found), name=f"bad_samples.{split}").numpy())
        if world.is_root:
            try:
                cache.parent.mkdir(parents=True, exist_ok=True)
                _write_json(cache, {"root": str(cat.root), "bad": bad.tolist()})
            except OSError:
                pass  # a read-only cache only costs a rescan next time
    for i in bad:
        if world.is_root:
            log.warning("skipping bad %s sample %s", split, cat.files([i])[0])
    return bad


def _scan_cache(cat: Catalog, digest: str) -> Path:
    # Keyed by the folder and its catalog (paths, labels), not by file contents: a file replaced in
    # place under the same name keeps its verdict (`dap-hvd verify-data` checks contents).
    import hashlib

    key = hashlib.sha256(f"{cat.root}\n{digest}".encode()).hexdigest()
    return cache_root() / "bad-scans" / f"{key}.json"


def _explain_bad_data(e: Exception, world, cat: Catalog, indices: np.ndarray) -> DataError:
    from dap_hvd.data.verify import BAD_DATA_HINT, describe_bad

    if isinstance(e, BadSampleError) and e.tag is not None:
        idx = e.tag if e.tag >= 0 else -e.tag - 1
        return DataError(f"rank {world.rank}: cannot decode {cat.files([idx])[0]}: {e.reason}; {BAD_DATA_HINT}")
    bad = describe_bad(cat.files(np.unique(indices)))
    if bad:
        err = DataError(f"rank {world.rank}: {bad}")
    else:
        err = DataError(f"rank {world.rank}: the data loader failed: {e}")
    err.unclean = bool(getattr(e, "broken", False))
    return err


def _resume(r: Run, committed: Optional[dict] = None) -> RunState:
    """A fresh state, or the checkpoint's: --elastic's last commit (`committed`, held by every
    rank), else --resume's newest file. Rank 0 reads and checks it; every rank receives the
    verdict, so a refused resume fails all ranks together instead of leaving them in a broadcast."""
    cfg, world = r.cfg, r.world
    resuming = bool(cfg.resume) or committed is not None
    state = RunState(selection=r.policy.first(r.universe, cfg.seed), scores=ScoreTable(len(r.train_cat)),
                     policy_state=r.policy.initial_state(), run_id=cfg.run_id or f"{r.run_dir.name}-{int(time.time())}")
    meta, ckpt, problem, path = None, None, None, None
    if world.is_root and resuming:
        try:
            if committed is not None:
                ckpt = committed
            else:
                loaded = load_newest(r.run_dir, warn=log.warning)
                path, ckpt = (None, None) if loaded is None else loaded
            if ckpt is None:
                raise DapError(f"--resume: no checkpoint in {r.run_dir / 'checkpoints'}")
            meta = json.loads(ckpt["state"])
            # checkpoints written before the score table (0.1 runs) resume with a fresh one
            meta.setdefault("policy_state", meta.get("dap"))
            meta["has_scores"] = "scores" in ckpt
            _check_compatible(r, meta)
            if path is not None:
                log.info("resuming %s from epoch %d (checkpoint %s)", r.run_dir, meta["epoch"], path)
            r.model.load_state_dict(ckpt["model"])
            r.optimizer.load_state_dict(ckpt["optimizer"])
            if r.scaler is not None and ckpt.get("scaler"):
                r.scaler.load_state_dict(ckpt["scaler"])
        except DapError as e:
            problem = str(e)
    if resuming:
        verdict = dist.broadcast_json({"error": problem}, name="resume.verdict")
        if verdict["error"]:
            raise DapError(verdict["error"])
    # Ranks other than 0 learn the resume point from rank 0 (Horovod's ImageNet example pattern).
    shared = dist.broadcast_json(None if meta is None else meta, name="resume.meta")
    if shared is None:
        state.run_id = dist.broadcast_json({"run_id": state.run_id}, name="resume.run_id")["run_id"]
        return state
    state.selection, state.scores = _restore_policy_data(world, ckpt, shared, len(r.train_cat))
    state.epoch = shared["epoch"]
    state.policy_state = None if shared["policy_state"] is None else DapState(**shared["policy_state"])
    state.history, state.samples_trained = shared["history"], shared["samples_trained"]
    state.epoch_seconds = shared.get("epoch_seconds", shared.get("wall_seconds", 0.0))  # older: wall_seconds
    state.elapsed_seconds, state.run_id = shared.get("elapsed_seconds", state.epoch_seconds), shared["run_id"]
    state.memberships = shared.get("memberships", [])
    _restore_rng(world, ckpt, shared)
    old_gb, old_ws, new_gb = shared.get("global_batch"), shared.get("world_size"), cfg.data.batch_size * world.size
    # An --lr given on this resume command (the run's own config.yaml leaves it unset) is the base
    # LR from here on; otherwise the run's, by the linear rule in the global batch. An elastic
    # restart always takes the commit's, carried to the new world.
    given = cfg.optim.lr if committed is None and cfg.resume else None
    base_lr = resume_lr(shared, given, new_gb) if "base_lr" in shared else r.base_lr
    if base_lr != r.base_lr:
        # The schedule is rebuilt on this world's step counts, so decays stay at the same epochs.
        r.base_lr = base_lr
        epoch_steps = [b - a for a, b in zip(r.epoch_starts, r.epoch_starts[1:])]
        r.lr_schedule = _lr_schedule(cfg, r.base_lr, epoch_steps, r.full_epoch_steps)
    if world.is_root:
        if given is not None and given != shared.get("base_lr"):
            log.warning("resume: --lr %.4g replaces the run's base LR %.4g (global batch %s then, %d now)", given,
                        shared.get("base_lr"), old_gb, new_gb)
        elif old_gb is not None and (old_ws, old_gb) != (world.size, new_gb):
            log.warning("resume: %d ranks x batch %d now, %d x %d before: LR %.4g -> %.4g (linear rule in the "
                        "global batch); LR decays stay after epoch(s) %s", world.size, cfg.data.batch_size, old_ws,
                        old_gb // max(1, old_ws), shared["base_lr"], r.base_lr,
                        ",".join(map(str, cfg.lr_steps)) or "(none)")
        planned = (shared.get("schedule") or {}).get("epochs", state.epoch)
        if state.epoch >= cfg.schedule.epochs:
            log.info("resume: %s already finished %d epochs; pass a larger --epochs to extend it", r.run_dir, state.epoch)
        elif cfg.schedule.epochs > planned and getattr(r.policy, "extension_note", None):
            note = r.policy.extension_note(state.epoch, planned)
            if note:
                log.warning("resume: %s", note)
    return state


def _check_compatible(r: Run, meta: dict) -> None:
    """Refuses a resume that would change what the finished epochs mean (resume.py says what may
    change), or an extension that could not follow its plan."""
    cfg = r.cfg
    changed = changes(meta, cfg, r.dataset_digest)
    if changed:
        what = "; ".join(f"{c.what}: {c.then!r} then, {c.now!r} now" for c in changed)
        extra = ""
        if any(c.what == "dataset_digest" for c in changed):
            extra = f" ({meta.get('num_samples')} usable training samples then, {len(r.universe)} now)"
        raise DapError(f"--resume: {r.run_dir} cannot continue with a different setup: {what}{extra}")
    if meta["epoch"] > cfg.schedule.epochs:
        raise DapError(f"--resume: {r.run_dir} already finished {meta['epoch']} epochs, more than --epochs "
                       f"{cfg.schedule.epochs}")
    why = unmade_final_step(meta, cfg)
    if why:
        raise DapError(f"--resume: {r.run_dir} cannot be extended exactly: {why}")


def _restore_policy_data(world: dist.World, ckpt: Optional[dict], shared: dict, num_samples: int):
    """The checkpoint's selection (indices, weights) and score table, from rank 0 to every rank."""
    indices = dist.broadcast_indices(ckpt["selection"].numpy() if world.is_root else None, name="resume.selection")
    weights = None
    if shared.get("weighted"):
        weights = dist.broadcast_tensor(ckpt["selection_weights"] if world.is_root else None,
                                        name="resume.weights").numpy()
    if not shared["has_scores"]:
        return Selection(indices, weights), ScoreTable(num_samples)
    loss = dist.broadcast_tensor(ckpt["scores"] if world.is_root else None, name="resume.scores").numpy()
    scored = dist.broadcast_tensor(ckpt["scored_epoch"] if world.is_root else None, name="resume.scored").numpy()
    return Selection(indices, weights), ScoreTable.from_arrays(loss.copy(), scored.copy())


def _gather_rng(world: dist.World) -> dict:
    """Every rank's CPU (and CUDA) generator state, stacked by rank."""
    out = {"rng": dist.gather_rows(torch.get_rng_state(), name="rng.cpu")}
    if torch.cuda.is_available():
        out["cuda_rng"] = dist.gather_rows(torch.cuda.get_rng_state(), name="rng.cuda")
    return out


def _restore_rng(world: dist.World, ckpt: Optional[dict], shared: dict) -> None:
    """Each rank gets its own generator state back when the world size is unchanged; on another
    world size the ranks keep their (seed, rank) streams."""
    for key, setter in (("rng", torch.set_rng_state),
                        ("cuda_rng", torch.cuda.set_rng_state if torch.cuda.is_available() else None)):
        if key not in shared.get("rng_keys", []):
            continue
        rows = dist.broadcast_tensor(ckpt[key] if world.is_root else None, name=f"resume.{key}")
        if setter is not None and rows.shape[0] == world.size:
            setter(rows[world.rank].clone())


def _checkpoint_payload(r: Run, state: RunState, rng: dict) -> dict:
    cfg = r.cfg
    ps = state.policy_state
    meta = dict(epoch=state.epoch, policy_state=None if ps is None else dict(t_start=ps.t_start, t_prev=ps.t_prev),
                policy=cfg.policy_params, weighted=state.selection.weights is not None,
                history=state.history, samples_trained=state.samples_trained, epoch_seconds=state.epoch_seconds,
                elapsed_seconds=state.elapsed_seconds,
                memberships=state.memberships, run_id=state.run_id, strategy=cfg.strategy, seed=cfg.seed, model=cfg.model_name,
                schedule=cfg.schedule.to_dict(), lr_steps=list(cfg.lr_steps), world_size=r.world.size,
                global_batch=cfg.data.batch_size * r.world.size, base_lr=r.base_lr,
                dataset_digest=r.dataset_digest, num_samples=int(len(r.universe)), excluded=int(len(r.excluded)),
                val_digest=r.val_cat.digest(),
                classes=list(r.train_cat.classes), classes_named=r.train_cat.named, rng_keys=sorted(rng),
                config=_resolved_config(cfg, r.base_lr))
    return {"model": r.model.state_dict(), "optimizer": r.optimizer.state_dict(),
            "scaler": r.scaler.state_dict() if r.scaler is not None else {},
            "selection": torch.from_numpy(np.asarray(state.selection.indices, dtype=np.int64)),
            "selection_weights": torch.from_numpy(np.asarray(state.selection.weights if state.selection.weights
                                                             is not None else [], dtype=np.float32)),
            "scores": torch.from_numpy(state.scores.loss), "scored_epoch": torch.from_numpy(state.scores.epoch),
            "excluded": torch.from_numpy(np.asarray(r.excluded, dtype=np.int64)),
            # the validation samples this run skipped as bad: `evaluate` scores the same set
            "val_excluded": torch.from_numpy(np.setdiff1d(np.arange(len(r.val_cat), dtype=np.int64), r.val_usable)),
            "state": json.dumps(meta), **rng}


def _summary(r: Run, state: RunState) -> dict:
    cfg, n = r.cfg, len(r.universe)
    evals = [h for h in state.history if h["top1"] is not None]
    done = max(1, state.epoch)
    return {
        "strategy": cfg.strategy, "model": cfg.model_name, "run_id": state.run_id, "world_size": r.world.size,
        "global_batch": cfg.data.batch_size * r.world.size, "num_samples": n,
        "skipped_bad_samples": int(len(r.excluded)),
        "skipped_bad_val_samples": int(len(r.val_cat) - len(r.val_usable)), "schedule": cfg.schedule.to_dict(),
        "lr_steps": list(cfg.lr_steps), "dataset_digest": r.dataset_digest,
        # measured and planned over the same completed epochs, so a stopped run is comparable
        "compute_ratio_measured": state.samples_trained / (n * done),
        # exact plans: one value; InfoBatch: None, and the bounds beside it
        "compute_ratio_planned": sum(r.planned_max[:done]) / (n * done) if r.plan.exact else None,
        "compute_ratio_planned_min": sum(r.planned_min[:done]) / (n * done),
        "compute_ratio_planned_max": sum(r.planned_max[:done]) / (n * done),
        # InfoBatch prunes by a coin flip per sample: its "min" is the expected size when all but one
        # sample score below the mean, so a run can measure less
        "compute_ratio_planned_min_note": None if r.plan.exact else "in expectation: the measured ratio can be lower",
        "compute_ratio_planned_run": sum(r.planned_max) / (n * cfg.schedule.epochs) if r.plan.exact else None,
        "compute_ratio_planned_run_bounds": [sum(r.planned_min) / (n * cfg.schedule.epochs),
                                             sum(r.planned_max) / (n * cfg.schedule.epochs)],
        "policy": {"name": cfg.strategy, **cfg.policy_params},
        "score_table": {"scored": state.scores.scored(), "bytes": state.scores.nbytes,
                        "digest": state.scores.digest()},
        "samples_trained": state.samples_trained, "epochs_completed": state.epoch, "epochs": state.history,
        # --amp fp16: optimizer steps the GradScaler skipped (inf/NaN gradients), over the whole run
        "amp_skipped_steps": sum(h.get("skipped_steps", 0) for h in state.history),
        "top1": evals[-1]["top1"] if evals else None, "top5": evals[-1]["top5"] if evals else None,
        # the epochs' own time, and the wall clock from start-up (over every job of a resumed run)
        "epoch_seconds": state.epoch_seconds, "elapsed_seconds": state.elapsed_seconds,
        "host": socket.gethostname(), "replicas": state.replicas,
        "memberships": state.memberships,
    }


def _resolved_config(cfg: TrainConfig, base_lr: float) -> dict:
    """The config with every data-dependent default written out, so the file says what ran and
    means the same wherever it is read (evaluate on another data path, resume)."""
    d = cfg.to_dict()
    d["resume"] = d["stop_after"] = None
    d["model"] = cfg.model_name
    d["policy"] = cfg.policy_params  # only what the chosen policy reads: the others would be refused
    d["schedule"] = cfg.used_schedule()  # likewise: E, and DaP's parameters for dap and random
    d["data"].update(image_size=cfg.image_size, val_resize=cfg.val_resize, min_crop_area=cfg.min_crop_area)
    d["optim"].update(lr=base_lr, lr_steps=list(cfg.lr_steps), lr_warmup_epochs=cfg.lr_warmup_epochs)
    return d


def _write_run_files(cfg: TrainConfig, run_dir: Path, base_lr: float) -> None:
    import yaml

    run_dir.mkdir(parents=True, exist_ok=True)
    d = _resolved_config(cfg, base_lr)
    d["out"] = str(run_dir)
    (run_dir / "config.yaml").write_text(yaml.safe_dump(d, sort_keys=False))


def _write_json(path: Path, obj) -> None:
    write_atomic(path, json.dumps(obj, indent=1).encode())


_FORMAT = logging.Formatter("%(asctime)s [rank %(rank)s] %(levelname)s %(message)s", "%H:%M:%S")


def _setup_logging(world: dist.World) -> None:
    logger = logging.getLogger("dap_hvd")
    logger.handlers.clear()
    logger.filters.clear()
    logger.setLevel(logging.INFO)
    logger.propagate = False

    class _Rank(logging.Filter):
        def filter(self, record):
            record.rank = world.rank
            return True

    logger.addFilter(_Rank())
    out = logging.StreamHandler(sys.stdout)
    out.setFormatter(_FORMAT)
    # Other ranks speak only for warnings; rank 0 tells the story, and alone writes the log file.
    out.setLevel(logging.INFO if world.is_root else logging.WARNING)
    logger.addHandler(out)


def _log_to_file(world: dist.World, run_dir: Path) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    fh = logging.FileHandler(run_dir / "train.log")
    fh.setFormatter(_FORMAT)
    logging.getLogger("dap_hvd").addHandler(fh)


class _Progress:
    """Rank 0's progress bar: images/s, loss, kept fraction. On a terminal it redraws in place
    twice a second; under horovodrun/mpirun/SLURM (a pipe) it prints a line every 15 s, and at
    least one per epoch, so short epochs show their rate too. Only a redraw reads the loss from
    the device, never every step."""

    def __init__(self, epoch, epochs, steps, world_size, kept):
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
