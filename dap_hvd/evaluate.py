"""`dap-hvd evaluate RUN_DIR|CHECKPOINT`: top-1/top-5 of a saved model on its validation split.

A checkpoint carries its resolved config and the training class names, so it evaluates the
same way on its own, as one process or under horovodrun/mpirun (the counts are summed across
ranks). The run's BatchNorm statistics were averaged across ranks before it was saved, the model
is rebuilt as the trainer built it (build_eval_model: the fp32 classifier head included), and the
validation samples the run skipped as bad (--on-bad-sample skip) are skipped again, so the result
equals the top-1 the run reported for that epoch.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from dap_hvd import DapError, dist
from dap_hvd.checkpoint import list_checkpoints
from dap_hvd.config import TrainConfig, load_config
from dap_hvd.data.catalog import load_catalog
from dap_hvd.data.loaders import Loaders, spec_for
from dap_hvd.data.sample_data import ensure_data
from dap_hvd.data.sharding import shard_for_rank
from dap_hvd.data.splits import ValSplit
from dap_hvd.engine import Precision, evaluate
from dap_hvd.hardware import choose_precision, decode_workers, pin_device
from dap_hvd.models import build_classifier


@dataclass(frozen=True)
class Accuracy:
    top1: float
    top5: float
    samples: int


def evaluate_split(cfg: TrainConfig, world: dist.World, model: torch.nn.Module, split: ValSplit,
                   precision: Precision, loaders: Loaders, epoch: int) -> Accuracy:
    """Top-1/top-5 over the split's usable samples: each rank scores its shard, and the counts
    are summed, so every rank returns the same result."""
    shard = shard_for_rank(split.usable, epoch=0, seed=cfg.seed, rank=world.rank, world=world.size,
                           batch_size=cfg.data.batch_size)
    spec = spec_for(cfg, split.cat, shard, train=False, seed=cfg.seed, precision=precision,
                    workers=decode_workers(cfg, world, precision.device))
    with loaders.reading(spec, split.cat, shard.indices, rank=world.rank, data_root=cfg.data_root,
                         file_list=cfg.data.val_list) as loader:
        counts = evaluate(model=model, loader=loader, class_of=split.class_of, precision=precision,
                          batch_size=cfg.data.batch_size)
    counts = dist.allreduce_sum(counts.cpu(), name=f"eval.{epoch}")
    return Accuracy(float(counts[0] / counts[2]), float(counts[1] / counts[2]), int(counts[2]))


def find_checkpoint(target: str) -> Path:
    p = Path(target)
    if p.is_dir():
        ckpts = list_checkpoints(p)
        if not ckpts:
            raise DapError(f"{p} holds no checkpoints (expected {p}/checkpoints/epoch-NNNN.pt)")
        return ckpts[-1]
    if p.is_file():
        return p
    raise DapError(f"{target} is neither a run directory nor a checkpoint file")


def load_for_eval(path: Path) -> dict:
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
        meta = json.loads(ckpt["state"])
    except Exception as e:  # a truncated or foreign file: name it, no deep traceback
        raise DapError(f"cannot read checkpoint {path}: {e}") from None
    if "config" not in meta or "classes" not in meta:
        raise DapError(f"{path} was written by an older dap_hvd and lacks its config; "
                       f"it cannot be evaluated on its own")
    excluded = ckpt.get("val_excluded")  # absent in checkpoints from before it was stored
    return {"model": ckpt["model"], "meta": meta,
            "val_excluded": np.zeros(0, np.int64) if excluded is None else excluded.numpy().astype(np.int64)}


def build_eval_model(meta: dict) -> torch.nn.Module:
    """The checkpoint's network, built as the trainer built it (models.build_classifier), so on
    a GPU the classifier head runs in fp32 under autocast here too, as it did in the run."""
    return build_classifier(meta["model"], len(meta["classes"]), zero_gamma=False)


def usable_val(num_val: int, val_digest: str, meta: dict, excluded: np.ndarray, path: Path) -> np.ndarray:
    """The validation indices the run scored: all but those it skipped as bad. The indices only
    mean the same files in the same catalog (relative paths and labels), so a different one is
    refused rather than scored on another set."""
    if len(excluded) and meta.get("val_digest") not in (None, val_digest):
        raise DapError(f"evaluate: the run skipped {len(excluded)} bad validation file(s), but this validation "
                       f"split's file list differs from the run's, so the run's top-1 cannot be reproduced on it "
                       f"({path})")
    return np.setdiff1d(np.arange(num_val, dtype=np.int64), excluded)


def main(target: str, overrides: dict, as_json: bool, comm=None) -> int:
    path = find_checkpoint(target)
    ckpt = load_for_eval(path)
    meta = ckpt["meta"]
    cfg = load_config(raw=meta["config"], overrides=overrides)
    world = dist.init(comm)
    try:
        device = pin_device(world)
        root = ensure_data(cfg, world)
        classes = tuple(meta["classes"])
        val_cat = load_catalog(root, "val", cfg.data.val_list).labelled_by(classes, str(path),
                                                                           named=meta.get("classes_named", True))
        dist.check_same_dataset("val", val_cat.digest(), val_cat.paths)
        usable = usable_val(len(val_cat), val_cat.digest(), meta, ckpt["val_excluded"], path)
        model = build_eval_model(meta)
        model.load_state_dict(ckpt["model"])
        model = model.to(device)
        loaders = Loaders(cfg.data.loader)
        try:
            acc = evaluate_split(cfg, world, model, ValSplit.of(val_cat, device, usable), choose_precision(cfg, device),
                                 loaders, meta["epoch"])
        finally:
            loaders.close()
        if world.is_root:
            result = dict(checkpoint=str(path), epoch=meta["epoch"], top1=acc.top1, top5=acc.top5,
                          samples=acc.samples, world_size=world.size)
            print(json.dumps(result) if as_json else
                  f"{path} (epoch {meta['epoch']}): top1 {acc.top1:.4f} top5 {acc.top5:.4f} on {acc.samples} "
                  f"images of {val_cat.root}", flush=True)
        return 0
    except DapError as e:
        print(f"dap-hvd evaluate: error on rank {world.rank}: {e}", file=sys.stderr, flush=True)
        return 2
    finally:
        dist.shutdown()


def cli_overrides(root: Optional[str], batch_size: Optional[int], loader: Optional[str],
                  workers: Optional[int]) -> dict:
    return {"data.root": root, "data.batch_size": batch_size, "data.loader": loader, "data.workers": workers}
