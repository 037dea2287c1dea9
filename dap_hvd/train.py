"""`dap-hvd train`: the Horovod training service, top to bottom.

init -> pin device -> data -> model -> scale LR -> DistributedOptimizer -> resume / broadcast
state -> for each epoch: shard the selection, train (recording losses), let the schedule decide,
merge losses + select on rank 0 + broadcast, evaluate, checkpoint. Rank 0 alone writes files.
"""

from __future__ import annotations

import json
import logging
import math
import os
import socket
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from dap_hvd import ConfigError, DataError, DapError, dist
from dap_hvd.catalog import Catalog, load_catalog
from dap_hvd.checkpoint import load_latest, save_checkpoint
from dap_hvd.config import TrainConfig
from dap_hvd.engine import Precision, evaluate, train_one_epoch
from dap_hvd.ledger import LossLedger
from dap_hvd.loaders import BadSampleError, LoaderError, LoaderSpec, make_loader
from dap_hvd.lr import build_lr_schedule
from dap_hvd.models import build_model, param_groups
from dap_hvd.schedule import DROP, PICK, DapState, decide, initial_state, keep_count, plan
from dap_hvd.selection import check_finite, get_strategy, selection_digest
from dap_hvd.sharding import shard_for_rank

log = logging.getLogger("dap_hvd")


@dataclass
class RunState:
    """What a checkpoint restores: everything the next epoch depends on."""

    epoch: int = 0  # last completed epoch
    global_step: int = 0
    selection: Optional[np.ndarray] = None  # sorted global indices the next epoch trains on
    dap: Optional[DapState] = None
    history: list = None
    samples_trained: int = 0
    wall_seconds: float = 0.0
    run_id: str = ""
    planned_compute: float = 1.0  # the plan's compute ratio for this strategy and dataset


def main(cfg: TrainConfig, comm=None) -> int:
    world = dist.init(comm)
    run_dir = Path(cfg.resume or cfg.out)
    moved = _archive_previous_run(run_dir) if world.is_root and not cfg.resume else None
    _setup_logging(world, run_dir)
    if moved:
        log.warning("%s held an earlier run; moved it to %s (use --resume to continue a run)", run_dir, moved)
    try:
        summary = run(cfg, world, run_dir)
        if world.is_root:
            log.info("done: top1 %.4f top5 %.4f, compute %.3f of full data (planned %.3f), %.1fs -> %s",
                     summary["top1"], summary["top5"], summary["compute_ratio_measured"],
                     summary["compute_ratio_planned"], summary["wall_seconds"], run_dir / "summary.json")
        return 0
    except DapError as e:
        print(f"dap-hvd train: error on rank {world.rank}: {e}", file=sys.stderr, flush=True)
        return 2
    finally:
        dist.shutdown()


def run(cfg: TrainConfig, world: dist.World, run_dir: Path) -> dict:
    t_run = time.perf_counter()
    device = _pin_device(world)
    torch.manual_seed(cfg.seed)
    strategy = get_strategy(cfg.strategy)

    # ---- data: the embedded sample set is generated once per node on first use
    root = cfg.data_root
    if cfg.data.root is None:
        if world.local_rank == 0:
            from dap_hvd.sample_data import make_sample_data
            make_sample_data(root)
        dist.barrier()
    train_cat = load_catalog(root, "train", cfg.data.train_list)
    val_cat = load_catalog(root, "val", cfg.data.val_list)
    if val_cat.num_classes > train_cat.num_classes:
        raise DataError(f"{val_cat.root}: {val_cat.num_classes} classes, but train has {train_cat.num_classes}")
    excluded = _bad_samples(cfg, world, train_cat) if cfg.data.on_bad_sample == "skip" else np.zeros(0, np.int64)
    universe = np.setdiff1d(np.arange(len(train_cat), dtype=np.int64), excluded)
    if len(universe) == 0:
        raise DataError(f"{train_cat.root}: no usable training samples")
    class_of = torch.from_numpy(train_cat.labels).to(device)
    val_class_of = torch.from_numpy(val_cat.labels).to(device)

    # ---- model, recipe (Bag of Tricks), Horovod optimizer
    model = build_model(cfg.model_name, train_cat.num_classes, zero_gamma=cfg.optim.zero_gamma)
    if cfg.optim.sync_bn:
        if device.type != "cuda":
            raise ConfigError(f"--sync-bn: Horovod's SyncBatchNorm runs on GPUs only, and rank {world.rank} has none")
        model = dist.sync_batchnorm(model)
    precision = _precision(cfg, device)
    # channels_last applies to the input batches only (engine.Precision.to_device): Horovod
    # rejects non-contiguous tensors in broadcast and allreduce (horovod#3491), so parameters and
    # gradients stay NCHW-contiguous; a channels_last input still makes PyTorch pick NHWC kernels.
    model = model.to(device)
    global_batch = cfg.data.batch_size * world.size
    base_lr = cfg.base_lr(global_batch)  # linear scaling with the global batch
    optimizer = torch.optim.SGD(param_groups(model, cfg.optim.weight_decay, cfg.optim.no_bias_decay),
                                lr=base_lr, momentum=cfg.optim.momentum, nesterov=cfg.optim.nesterov)
    optimizer = dist.distributed_optimizer(optimizer, model, cfg.optim.fp16_allreduce)
    scaler = torch.amp.GradScaler(device.type) if precision.amp_dtype == torch.float16 else None
    criterion = torch.nn.CrossEntropyLoss(reduction="none", label_smoothing=cfg.optim.label_smoothing)

    # ---- the plan fixes every epoch's step count, so the LR schedule can be keyed to global steps
    sched = cfg.schedule if strategy.name != "full" else replace(cfg.schedule, keep=1.0)
    the_plan = plan(sched, num_samples=len(universe))
    epoch_steps = [math.ceil(math.ceil(e.size / world.size) / cfg.data.batch_size) for e in the_plan.epochs]
    if cfg.max_steps_per_epoch:
        epoch_steps = [min(s, cfg.max_steps_per_epoch) for s in epoch_steps]
    lr_schedule = build_lr_schedule(base_lr=base_lr, epoch_steps=epoch_steps, warmup_epochs=cfg.lr_warmup_epochs,
                                    full_epoch_steps=epoch_steps[0], lr_steps=cfg.lr_steps, mode=cfg.optim.lr_schedule)

    # ---- resume (rank 0 reads, everyone receives), then one broadcast of the training state
    state = _resume(cfg, world, run_dir, model, optimizer, scaler, universe)
    state.planned_compute = the_plan.compute_ratio
    dist.broadcast_training_state(model, optimizer)
    if world.is_root:
        _write_run_files(cfg, run_dir)
        log.info("%s: %d ranks x batch %d, lr %.4g, %s on %s, %d train / %d val samples, %d classes; planned compute %.3f",
                 cfg.strategy, world.size, cfg.data.batch_size, base_lr, cfg.model_name, device,
                 len(universe), len(val_cat), train_cat.num_classes, the_plan.compute_ratio)
        if len(excluded):
            log.warning("skipping %d bad training sample(s) (--on-bad-sample skip); see verify-data", len(excluded))

    from dap_hvd.metrics import Metrics
    metrics = Metrics(rank=world.rank, local_rank=world.local_rank, run_id=state.run_id, port=cfg.metrics_port,
                      host=cfg.metrics_host, pushgateway=cfg.pushgateway)
    metrics.skipped.inc(len(excluded))
    try:
        last = min(cfg.schedule.epochs, cfg.stop_after or cfg.schedule.epochs)
        for epoch in range(state.epoch + 1, last + 1):
            _train_epoch(cfg, world, run_dir, epoch, state, strategy, train_cat, val_cat, universe, class_of,
                         val_class_of, model, optimizer, scaler, criterion, lr_schedule, precision, metrics, excluded)
        if cfg.metrics_port and cfg.metrics_linger:
            time.sleep(cfg.metrics_linger)  # let Prometheus take a last scrape of the final values
    finally:
        metrics.close()
    summary = _summary(cfg, world, state, len(universe), len(excluded))
    if world.is_root:
        _write_json(run_dir / "summary.json", summary)
    return summary


def _train_epoch(cfg, world, run_dir, epoch, state: RunState, strategy, train_cat: Catalog, val_cat: Catalog,
                 universe, class_of, val_class_of, model, optimizer, scaler, criterion, lr_schedule, precision,
                 metrics, excluded) -> None:
    t0 = time.perf_counter()
    selection = state.selection
    decision = decide(cfg.schedule, state.dap, epoch)
    # Losses are only needed when this epoch ends in a drop; other epochs record nothing.
    wants_losses = decision.action == DROP and strategy.needs_losses
    shard = shard_for_rank(selection, epoch=epoch, seed=cfg.seed, rank=world.rank, world=world.size,
                           batch_size=cfg.data.batch_size)
    ledger = LossLedger(selection, precision.device) if wants_losses else None
    loader = make_loader(cfg.data.loader, _spec(cfg, train_cat, shard.indices, shard.encoded_labels(), True,
                                                _seed(cfg.seed, epoch, world.rank), precision.device, world))
    progress = _Progress(epoch, cfg.schedule.epochs, shard.steps, world.size, len(selection) / len(universe)) \
        if world.is_root and cfg.progress else None
    try:
        stats = train_one_epoch(model=model, loader=loader, optimizer=optimizer, criterion=criterion,
                                lr_schedule=lr_schedule, global_step=state.global_step, class_of=class_of,
                                precision=precision, ledger=ledger, scaler=scaler, max_steps=cfg.max_steps_per_epoch,
                                progress=progress, metrics=metrics)
    except (BadSampleError, LoaderError) as e:
        raise _explain_bad_data(e, world, train_cat, shard.indices) from None
    finally:
        loader.close()
        if progress:
            progress.close()
    if stats.steps != shard.steps and not cfg.max_steps_per_epoch:
        raise RuntimeError(f"rank {world.rank}: epoch {epoch} ran {stats.steps} steps, expected {shard.steps}")

    # ---- the schedule's decision: drop (merge, select on rank 0, broadcast) or pick
    t_sel, sel_bytes = time.perf_counter(), 0
    if decision.action == PICK:
        state.selection = universe
    elif decision.action == DROP:
        losses = None
        if wants_losses:
            merged = dist.merge_losses(selection, ledger.loss, ledger.count, method=cfg.merge, epoch=epoch,
                                       world_size=world.size)
            check_finite(selection, merged.losses, epoch)  # every rank holds the losses: all stop together
            losses, sel_bytes = merged.losses, merged.bytes_sent
        chosen = None
        if world.is_root:
            picked = strategy.select(selection, losses, keep_count(len(selection), cfg.schedule.keep),
                                     seed=cfg.seed, epoch=epoch)
            if picked.weights is not None:  # soft pruning (InfoBatch-style) needs the weights broadcast too
                raise ConfigError(f"--strategy {strategy.name}: per-sample weights are not supported by the trainer yet")
            chosen = picked.indices
        state.selection = dist.broadcast_indices(chosen, name=f"select.{epoch}")
        sel_bytes += 8 * len(state.selection) * (world.size - 1) if world.is_root else 0
    sel_seconds = time.perf_counter() - t_sel
    state.dap = decision.state

    # ---- exact global counts: sum over ranks, never average per-rank averages
    totals = dist.allreduce_sum(torch.tensor([stats.samples, stats.loss_sum, stats.loss_count], dtype=torch.float64),
                                name=f"epoch.{epoch}.totals")
    samples, loss_sum, loss_count = int(totals[0]), float(totals[1]), max(1.0, float(totals[2]))
    top1 = top5 = None
    if epoch % cfg.eval_every == 0 or epoch in (cfg.schedule.epochs, cfg.stop_after):
        top1, top5 = _evaluate(cfg, world, epoch, model, val_cat, val_class_of, precision)
    state.epoch, state.global_step = epoch, stats.global_step
    state.samples_trained += samples
    seconds = time.perf_counter() - t0
    state.wall_seconds += seconds
    padding = len(shard.indices) * world.size - len(selection)  # wrap-around duplicates, all ranks
    record = dict(epoch=epoch, samples=samples, subset=int(len(selection)), padding=padding,
                  selection_digest=selection_digest(selection), train_loss=loss_sum / loss_count,
                  lr=stats.last_lr, top1=top1, top5=top5, seconds=seconds, train_seconds=stats.seconds,
                  data_wait_seconds=stats.data_seconds,
                  after=decision.action, selection_seconds=sel_seconds)
    state.history.append(record)

    compute_so_far = state.samples_trained / (len(universe) * epoch)
    metrics.samples.inc(stats.samples)
    metrics.images_per_second.set(stats.samples / max(stats.seconds, 1e-9))
    metrics.loss.set(record["train_loss"])
    metrics.lr.set(stats.last_lr)
    metrics.epoch.set(epoch)
    metrics.subset_size.set(len(selection))
    metrics.kept_fraction.set(len(selection) / len(universe))
    metrics.compute_ratio.set(compute_so_far)
    if decision.action == DROP:
        metrics.selection_seconds.observe(sel_seconds)
        metrics.selection_bytes.inc(sel_bytes)
    if top1 is not None:
        metrics.top1.set(top1)
        metrics.top5.set(top5)
    if world.is_root:
        log.info("epoch %d/%d: %d samples (%.1f%% of data)%s, loss %.4f, lr %.4g%s, %.1fs; next: %s",
                 epoch, cfg.schedule.epochs, samples, 100 * len(selection) / len(universe),
                 "" if not padding else f" +{padding} pad",
                 record["train_loss"], stats.last_lr,
                 "" if top1 is None else f", top1 {top1:.4f} top5 {top5:.4f}", seconds,
                 {DROP: f"drop to {len(state.selection)}", PICK: "pick all data"}.get(decision.action, "same subset"))
        t_ck = time.perf_counter()
        save_checkpoint(run_dir, epoch, _checkpoint_payload(cfg, state, model, optimizer, scaler, excluded, len(universe)),
                        cfg.keep_checkpoints)
        metrics.checkpoint_seconds.observe(time.perf_counter() - t_ck)
        _write_json(run_dir / "summary.json", _summary(cfg, world, state, len(universe), len(excluded)))
    metrics.push()


def _evaluate(cfg, world, epoch, model, val_cat, val_class_of, precision):
    shard = shard_for_rank(np.arange(len(val_cat), dtype=np.int64), epoch=0, seed=cfg.seed, rank=world.rank,
                           world=world.size, batch_size=cfg.data.batch_size)
    loader = make_loader(cfg.data.loader, _spec(cfg, val_cat, shard.indices, shard.encoded_labels(), False,
                                                cfg.seed, precision.device, world))
    try:
        counts = evaluate(model=model, loader=loader, class_of=val_class_of, precision=precision)
    except (BadSampleError, LoaderError) as e:
        raise _explain_bad_data(e, world, val_cat, shard.indices) from None
    finally:
        loader.close()
    counts = dist.allreduce_sum(counts.cpu(), name=f"eval.{epoch}")
    return float(counts[0] / counts[2]), float(counts[1] / counts[2])


# ---------------------------------------------------------------------------- helpers

def _pin_device(world: dist.World) -> torch.device:
    if torch.cuda.is_available():
        torch.cuda.set_device(world.local_rank)
        return torch.device("cuda", world.local_rank)
    # Share the node's cores between the ranks on it instead of oversubscribing them.
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // world.local_size))
    return torch.device("cpu")


def _precision(cfg: TrainConfig, device: torch.device) -> Precision:
    gpu = device.type == "cuda"
    amp = cfg.optim.amp if cfg.optim.amp != "auto" else ("bf16" if gpu else "off")
    dtype = {"off": None, "bf16": torch.bfloat16, "fp16": torch.float16}[amp]
    cl = cfg.optim.channels_last == "on" or (cfg.optim.channels_last == "auto" and gpu)
    return Precision(device, dtype, cl)


def _seed(seed: int, epoch: int, rank: int) -> int:
    # Augmentation randomness is a function of (seed, epoch, rank): a resumed run replays it.
    return int(np.random.SeedSequence([seed, epoch, rank]).generate_state(1)[0] % (2**31 - 1))


def _spec(cfg, cat: Catalog, indices, tags, train: bool, seed: int, device, world) -> LoaderSpec:
    dali_gpu = device.type == "cuda" and cfg.data.dali_device in ("auto", "gpu")
    return LoaderSpec(files=cat.files(indices), tags=tags, batch_size=cfg.data.batch_size, image_size=cfg.image_size,
                      train=train, seed=seed, workers=cfg.data.workers, val_resize=cfg.val_resize,
                      min_area=cfg.min_crop_area, color_jitter=cfg.data.color_jitter,
                      pca_lighting=cfg.data.pca_lighting, device="gpu" if dali_gpu else "cpu",
                      device_id=world.local_rank if dali_gpu else None)


def _bad_samples(cfg, world, cat: Catalog) -> np.ndarray:
    """--on-bad-sample skip: every rank checks its share of files; the union is excluded."""
    from dap_hvd.verify import find_bad

    mine = np.arange(world.rank, len(cat), world.size, dtype=np.int64)
    files = cat.files(mine)
    bad_paths = {p for p, _ in find_bad(files, workers=cfg.data.workers)}
    bad = np.array([i for i, p in zip(mine, files) if p in bad_paths], dtype=np.int64)
    for i in bad:
        log.warning("rank %d: skipping bad sample %s", world.rank, cat.files([i])[0])
    return np.sort(dist.allgather(torch.from_numpy(bad), name="bad_samples").numpy())


def _explain_bad_data(e: Exception, world, cat: Catalog, indices: np.ndarray) -> DataError:
    from dap_hvd.verify import find_bad

    hint = "run `dap-hvd verify-data` on the dataset, or train with --on-bad-sample skip"
    if isinstance(e, BadSampleError) and e.tag != -1:
        idx = e.tag if e.tag >= 0 else -e.tag - 1
        return DataError(f"rank {world.rank}: cannot decode {cat.files([idx])[0]}: {e.reason}; {hint}")
    bad = find_bad(cat.files(np.unique(indices)))
    if bad:
        listed = "; ".join(f"{p}: {r}" for p, r in bad[:5])
        return DataError(f"rank {world.rank}: bad file(s) in this rank's shard: {listed}; {hint}")
    return DataError(f"rank {world.rank}: the data loader failed: {e}")


def _resume(cfg, world, run_dir, model, optimizer, scaler, universe) -> RunState:
    state = RunState(selection=universe, dap=initial_state(cfg.schedule), history=[],
                     run_id=cfg.run_id or f"{run_dir.name}-{int(time.time())}")
    meta = None
    if world.is_root and cfg.resume:
        ckpt = load_latest(run_dir)
        if ckpt is None:
            raise DapError(f"--resume: no checkpoint in {run_dir / 'checkpoints'}")
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        if scaler is not None and ckpt.get("scaler"):
            scaler.load_state_dict(ckpt["scaler"])
        torch.set_rng_state(ckpt["torch_rng"])
        meta = json.loads(ckpt["state"])
        meta["selection"] = ckpt["selection"].numpy()
        if len(universe) != meta["num_samples"]:
            raise DapError(f"--resume: the dataset changed since {run_dir} was written "
                           f"({meta['num_samples']} usable samples then, {len(universe)} now)")
    # Ranks other than 0 learn the resume point from rank 0 (Horovod's ImageNet example pattern).
    shared = dist.broadcast_json(None if meta is None else {k: v for k, v in meta.items() if k != "selection"},
                                 name="resume.meta")
    if shared is None:
        shared = dist.broadcast_json({"run_id": state.run_id}, name="resume.run_id")
        state.run_id = shared["run_id"]
        return state
    state.selection = dist.broadcast_indices(meta["selection"] if meta else None, name="resume.selection")
    state.epoch, state.global_step = shared["epoch"], shared["global_step"]
    state.dap = DapState(**shared["dap"])
    state.history, state.samples_trained = shared["history"], shared["samples_trained"]
    state.wall_seconds, state.run_id = shared["wall_seconds"], shared["run_id"]
    if state.epoch >= cfg.schedule.epochs and world.is_root:
        log.info("resume: %s already finished %d epochs; pass a larger --epochs to extend it", run_dir, state.epoch)
    return state


def _checkpoint_payload(cfg, state: RunState, model, optimizer, scaler, excluded, num_samples: int) -> dict:
    meta = dict(epoch=state.epoch, global_step=state.global_step, dap=dict(t_start=state.dap.t_start,
                t_prev=state.dap.t_prev), history=state.history, samples_trained=state.samples_trained,
                wall_seconds=state.wall_seconds, run_id=state.run_id, strategy=cfg.strategy, seed=cfg.seed,
                excluded=int(len(excluded)), num_samples=int(num_samples))
    return {"model": model.state_dict(), "optimizer": optimizer.state_dict(),
            "scaler": scaler.state_dict() if scaler is not None else {},
            "selection": torch.from_numpy(np.asarray(state.selection, dtype=np.int64)),
            "excluded": torch.from_numpy(np.asarray(excluded, dtype=np.int64)),
            "torch_rng": torch.get_rng_state(), "state": json.dumps(meta)}


def _summary(cfg, world, state: RunState, num_samples: int, skipped: int) -> dict:
    evals = [h for h in state.history if h["top1"] is not None]
    return {
        "strategy": cfg.strategy, "model": cfg.model_name, "run_id": state.run_id, "world_size": world.size,
        "global_batch": cfg.data.batch_size * world.size, "num_samples": num_samples, "skipped_bad_samples": skipped,
        "schedule": cfg.schedule.to_dict(),
        "compute_ratio_planned": state.planned_compute,
        "compute_ratio_measured": state.samples_trained / (num_samples * cfg.schedule.epochs),
        "samples_trained": state.samples_trained, "epochs_completed": state.epoch, "epochs": state.history,
        "top1": evals[-1]["top1"] if evals else None, "top5": evals[-1]["top5"] if evals else None,
        "wall_seconds": state.wall_seconds, "host": socket.gethostname(),
    }


def _archive_previous_run(run_dir: Path) -> Optional[Path]:
    """A fresh run never mixes with an old one in the same directory (a stale epoch-0012.pt
    would be what --resume picks up later); the old run is kept under a new name."""
    if not (run_dir / "summary.json").exists() and not (run_dir / "checkpoints").exists():
        return None
    dest = run_dir.with_name(f"{run_dir.name}.{time.strftime('%Y%m%d-%H%M%S')}")
    n = 1
    while dest.exists():
        dest, n = run_dir.with_name(f"{run_dir.name}.{time.strftime('%Y%m%d-%H%M%S')}-{n}"), n + 1
    os.replace(run_dir, dest)
    return dest


def _write_run_files(cfg: TrainConfig, run_dir: Path) -> None:
    import yaml

    run_dir.mkdir(parents=True, exist_ok=True)
    d = cfg.to_dict()
    d["resume"] = d["stop_after"] = None
    d["out"] = str(run_dir)
    (run_dir / "config.yaml").write_text(yaml.safe_dump(d, sort_keys=False))


def _write_json(path: Path, obj) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(obj, indent=1))
    os.replace(tmp, path)


def _setup_logging(world: dist.World, run_dir: Path) -> None:
    fmt = logging.Formatter("%(asctime)s [rank %(rank)s] %(levelname)s %(message)s", "%H:%M:%S")
    logger = logging.getLogger("dap_hvd")
    logger.handlers.clear()
    logger.setLevel(logging.INFO)
    logger.propagate = False

    class _Rank(logging.Filter):
        def filter(self, record):
            record.rank = world.rank
            return True

    out = logging.StreamHandler(sys.stdout)
    out.setFormatter(fmt)
    out.addFilter(_Rank())
    # Other ranks speak only for warnings; rank 0 tells the story, and alone writes the log file.
    out.setLevel(logging.INFO if world.is_root else logging.WARNING)
    logger.addHandler(out)
    if world.is_root:
        run_dir.mkdir(parents=True, exist_ok=True)
        fh = logging.FileHandler(run_dir / "train.log")
        fh.setFormatter(fmt)
        fh.addFilter(_Rank())
        logger.addHandler(fh)


class _Progress:
    """Rank 0's progress bar: images/s, loss, kept fraction. On a terminal it redraws in place
    twice a second; under horovodrun/mpirun/SLURM (a pipe) it prints a line every 15 s. Only a
    redraw reads the loss from the device, never every step."""

    def __init__(self, epoch, epochs, steps, world_size, kept):
        self.epoch, self.epochs, self.steps, self.world, self.kept = epoch, epochs, steps, world_size, kept
        self.t0 = self.last = time.perf_counter()
        self.images = 0
        self.tty = sys.stdout.isatty()
        self.every = 0.5 if self.tty else 15.0

    def update(self, step, n, loss_sum, loss_count, lr):
        self.images += n * self.world
        now = time.perf_counter()
        if now - self.last < self.every or (not self.tty and step == self.steps):
            return
        self.last = now
        loss = float(loss_sum) / max(1, int(loss_count))
        bar = "#" * int(20 * step / self.steps)
        line = (f"epoch {self.epoch}/{self.epochs} [{bar:<20}] {step}/{self.steps} "
                f"{self.images / (now - self.t0):.0f} img/s loss {loss:.3f} lr {lr:.3g} kept {self.kept:.1%}")
        sys.stdout.write(f"\r{line}" if self.tty else f"{line}\n")
        sys.stdout.flush()

    def close(self):
        if self.tty:
            sys.stdout.write("\n")
            sys.stdout.flush()
