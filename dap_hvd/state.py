"""The run's state: what a checkpoint holds, and how a run gets it back.

RunState is everything the next epoch depends on. `payload` turns it (with the model, optimizer
and scaler) into a checkpoint of plain tensors and one JSON string, so it loads with
torch.load(weights_only=True); `resume` reads one back on rank 0, checks that it may continue
under this command (resume.py says what may change), and hands it to every rank.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Optional

import numpy as np
import torch

from dap_hvd import DapError, dist
from dap_hvd.checkpoint import load_newest
from dap_hvd.policy.policies import PolicyState, Selection, state_from_dict, state_to_dict
from dap_hvd.policy.scores import ScoreTable
from dap_hvd.resume import changes, resume_lr, unmade_final_step

if TYPE_CHECKING:
    from dap_hvd.train import Run

log = logging.getLogger("dap_hvd")


@dataclass
class RunState:
    """What a checkpoint restores: everything the next epoch depends on."""

    epoch: int = 0  # last completed epoch
    selection: Optional[Selection] = None  # what the next epoch trains on (indices, loss weights)
    scores: Optional[ScoreTable] = None  # every sample's last training loss, by global index
    policy_state: PolicyState = None  # DaP's T_start / T_prev; None for the other policies
    history: list = field(default_factory=list)  # one record per epoch (train.epoch_record)
    samples_trained: int = 0
    epoch_seconds: float = 0.0  # the epochs' own time, summed (start-up, rolled-back work excluded)
    elapsed_seconds: float = 0.0  # wall clock from start-up, over every job of the run (see Clock)
    run_id: str = ""
    replicas: dict = field(default_factory=dict)  # per-rank state digests, checked equal
    memberships: list = field(default_factory=list)  # --elastic: each (re)start's world and rollback


@dataclass
class Clock:
    """The run's elapsed wall-clock time: the earlier jobs' (from the checkpoint this job resumed)
    plus this job's since its start-up. It lives for the whole job, so an --elastic re-formation
    does not reset it to a commit's value."""

    started: float = field(default_factory=time.monotonic)
    before: Optional[float] = None  # set once, by the job's first resume (0.0 on a fresh run)

    def elapsed(self) -> float:
        return (self.before or 0.0) + time.monotonic() - self.started


def note_membership(run: Run, state: RunState, resets: int) -> None:
    """--elastic: who trains from which epoch on, after a rollback to which commit."""
    record = dict(from_epoch=state.epoch + 1, world_size=run.world.size, rolled_back_to=state.epoch,
                  restart=resets, global_batch=run.cfg.data.batch_size * run.world.size, base_lr=run.base_lr)
    state.memberships.append(record)
    if run.world.is_root and resets:
        log.warning("elastic: %d rank(s) now; continuing from the commit of epoch %d, LR %.4g (linear rule in the "
                    "global batch)", run.world.size, state.epoch, run.base_lr)


# ---------------------------------------------------------------------------- checkpoint payload

def gather_rng() -> dict:
    """Every rank's CPU (and CUDA) generator state, stacked by rank (a collective: every rank
    takes part, rank 0 keeps it)."""
    out = {"rng": dist.gather_rows(torch.get_rng_state(), name="rng.cpu")}
    if torch.cuda.is_available():
        out["cuda_rng"] = dist.gather_rows(torch.cuda.get_rng_state(), name="rng.cuda")
    return out


def payload(run: Run, state: RunState, rng: dict) -> dict:
    """The checkpoint: plain tensors, and the JSON `state` string that says what they mean."""
    cfg, sel = run.cfg, state.selection
    meta = dict(
        epoch=state.epoch, policy_state=state_to_dict(state.policy_state),
        policy=cfg.policy_params, weighted=sel.weights is not None, history=state.history,
        samples_trained=state.samples_trained, epoch_seconds=state.epoch_seconds,
        elapsed_seconds=state.elapsed_seconds, memberships=state.memberships, run_id=state.run_id,
        strategy=cfg.strategy, seed=cfg.seed, model=cfg.model_name, schedule=cfg.schedule.to_dict(),
        lr_steps=list(cfg.lr_steps), world_size=run.world.size, global_batch=cfg.data.batch_size * run.world.size,
        base_lr=run.base_lr, dataset_digest=run.data.digest, num_samples=int(len(run.data.universe)),
        excluded=int(len(run.data.excluded)), val_digest=run.val.digest, classes=list(run.data.cat.classes),
        classes_named=run.data.cat.named, rng_keys=sorted(rng), config=cfg.resolved(run.base_lr))
    weights = sel.weights if sel.weights is not None else []
    return {"model": run.model.state_dict(), "optimizer": run.optimizer.state_dict(),
            "scaler": run.scaler.state_dict() if run.scaler is not None else {},
            "selection": torch.from_numpy(np.asarray(sel.indices, dtype=np.int64)),
            "selection_weights": torch.from_numpy(np.asarray(weights, dtype=np.float32)),
            "scores": torch.from_numpy(state.scores.loss), "scored_epoch": torch.from_numpy(state.scores.epoch),
            "excluded": torch.from_numpy(np.asarray(run.data.excluded, dtype=np.int64)),
            # the validation samples this run skipped as bad: `evaluate` scores the same set
            "val_excluded": torch.from_numpy(np.setdiff1d(np.arange(len(run.val.cat), dtype=np.int64),
                                                          run.val.usable)),
            "state": json.dumps(meta), **rng}


# ---------------------------------------------------------------------------- resume

def fresh(run: Run) -> RunState:
    cfg = run.cfg
    return RunState(selection=run.policy.first(run.data.universe, cfg.seed), scores=ScoreTable(len(run.data.cat)),
                    policy_state=run.policy.first_state(),
                    run_id=cfg.run_id or f"{run.run_dir.name}-{int(time.time())}")


def resume(run: Run, committed: Optional[dict] = None) -> RunState:
    """A fresh state, or the checkpoint's: --elastic's last commit (`committed`, held by every
    rank), else --resume's newest file. Rank 0 reads and checks it; every rank receives the
    verdict, so a refused resume fails all ranks together instead of leaving them in a broadcast.
    The model, optimizer and scaler are loaded on rank 0 (train broadcasts them)."""
    state = fresh(run)
    resuming = bool(run.cfg.resume) or committed is not None
    ckpt, meta, problem = None, None, None
    if run.world.is_root and resuming:
        try:
            ckpt, meta = _load_on_root(run, committed)
        except DapError as e:
            problem = str(e)
    if resuming:
        dist.agree(problem, name="resume.verdict")
    # Ranks other than 0 learn the resume point from rank 0 (Horovod's ImageNet example pattern).
    meta = dist.broadcast_json(meta, name="resume.meta")
    if meta is None:
        state.run_id = dist.broadcast_json({"run_id": state.run_id}, name="resume.run_id")["run_id"]
        return state
    state.selection, state.scores = _restore_policy_data(run.world, ckpt, meta, len(run.data.cat))
    state.epoch = meta["epoch"]
    state.policy_state = state_from_dict(meta["policy_state"])
    state.history, state.samples_trained = meta["history"], meta["samples_trained"]
    state.epoch_seconds, state.elapsed_seconds = meta["epoch_seconds"], meta["elapsed_seconds"]
    state.run_id, state.memberships = meta["run_id"], meta.get("memberships", [])
    _restore_rng(run.world, ckpt, meta)
    _resume_lr(run, meta, committed)
    return state


def _load_on_root(run: Run, committed: Optional[dict]):
    """Rank 0: the checkpoint and its meta, checked, with the model, optimizer and scaler loaded."""
    path, ckpt = None, committed
    if ckpt is None:
        loaded = load_newest(run.run_dir, warn=log.warning)
        path, ckpt = (None, None) if loaded is None else loaded
    if ckpt is None:
        raise DapError(f"--resume: no checkpoint in {run.run_dir / 'checkpoints'}")
    meta = json.loads(ckpt["state"])
    meta["has_scores"] = "scores" in ckpt
    check_compatible(run, meta)
    if path is not None:
        log.info("resuming %s from epoch %d (checkpoint %s)", run.run_dir, meta["epoch"], path)
    run.model.load_state_dict(ckpt["model"])
    run.optimizer.load_state_dict(ckpt["optimizer"])
    if run.scaler is not None and ckpt.get("scaler"):
        run.scaler.load_state_dict(ckpt["scaler"])
    return ckpt, meta


def check_compatible(run: Run, meta: dict) -> None:
    """Refuses a resume that would change what the finished epochs mean (resume.py says what may
    change), or an extension that could not follow its plan."""
    cfg = run.cfg
    changed = changes(meta, cfg, run.data.digest)
    if changed:
        what = "; ".join(f"{c.what}: {c.then!r} then, {c.now!r} now" for c in changed)
        extra = ""
        if any(c.what == "dataset_digest" for c in changed):
            extra = f" ({meta.get('num_samples')} usable training samples then, {len(run.data.universe)} now)"
        raise DapError(f"--resume: {run.run_dir} cannot continue with a different setup: {what}{extra}")
    if meta["epoch"] > cfg.schedule.epochs:
        raise DapError(f"--resume: {run.run_dir} already finished {meta['epoch']} epochs, more than --epochs "
                       f"{cfg.schedule.epochs}")
    why = unmade_final_step(meta, cfg)
    if why:
        raise DapError(f"--resume: {run.run_dir} cannot be extended exactly: {why}")


def _resume_lr(run: Run, meta: dict, committed: Optional[dict]) -> None:
    """The base LR from here on: an --lr given on this resume command (the run's own config.yaml
    leaves it unset) replaces it; otherwise the run's, by the linear rule in the global batch. An
    elastic restart always takes the commit's, carried to the new world."""
    cfg, world = run.cfg, run.world
    old_gb, old_ws, new_gb = meta.get("global_batch"), meta.get("world_size"), cfg.data.batch_size * world.size
    given = cfg.optim.lr if committed is None and cfg.resume else None
    base_lr = resume_lr(meta, given, new_gb)
    if base_lr != run.base_lr:
        run.set_base_lr(base_lr)  # the schedule is rebuilt on this world's steps: decays stay at their epochs
    if not world.is_root:
        return
    if given is not None and given != meta["base_lr"]:
        log.warning("resume: --lr %.4g replaces the run's base LR %.4g (global batch %s then, %d now)", given,
                    meta["base_lr"], old_gb, new_gb)
    elif (old_ws, old_gb) != (world.size, new_gb):
        log.warning("resume: %d ranks x batch %d now, %d x %d before: LR %.4g -> %.4g (linear rule in the "
                    "global batch); LR decays stay after epoch(s) %s", world.size, cfg.data.batch_size, old_ws,
                    old_gb // max(1, old_ws), meta["base_lr"], run.base_lr,
                    ",".join(map(str, cfg.lr_steps)) or "(none)")
    planned = meta["schedule"]["epochs"]
    if meta["epoch"] >= cfg.schedule.epochs:
        log.info("resume: %s already finished %d epochs; pass a larger --epochs to extend it", run.run_dir,
                 meta["epoch"])
    elif cfg.schedule.epochs > planned and getattr(run.policy, "extension_note", None):
        note = run.policy.extension_note(meta["epoch"], planned)
        if note:
            log.warning("resume: %s", note)


def _restore_policy_data(world: dist.World, ckpt: Optional[dict], meta: dict, num_samples: int):
    """The checkpoint's selection (indices, weights) and score table, from rank 0 to every rank."""
    indices = dist.broadcast_indices(ckpt["selection"].numpy() if world.is_root else None, name="resume.selection")
    weights = None
    if meta["weighted"]:
        weights = dist.broadcast_tensor(ckpt["selection_weights"] if world.is_root else None,
                                        name="resume.weights").numpy()
    selection = Selection(indices, weights)
    if not meta["has_scores"]:
        return selection, ScoreTable(num_samples)
    loss = dist.broadcast_tensor(ckpt["scores"] if world.is_root else None, name="resume.scores").numpy()
    scored = dist.broadcast_tensor(ckpt["scored_epoch"] if world.is_root else None, name="resume.scored").numpy()
    return selection, ScoreTable.from_arrays(loss.copy(), scored.copy())


def _restore_rng(world: dist.World, ckpt: Optional[dict], meta: dict) -> None:
    """Each rank gets its own generator state back when the world size is unchanged; on another
    world size the ranks keep their (seed, rank) streams."""
    for key, setter in (("rng", torch.set_rng_state),
                        ("cuda_rng", torch.cuda.set_rng_state if torch.cuda.is_available() else None)):
        if key not in meta["rng_keys"]:
            continue
        rows = dist.broadcast_tensor(ckpt[key] if world.is_root else None, name=f"resume.{key}")
        if setter is not None and rows.shape[0] == world.size:
            setter(rows[world.rank].clone())
