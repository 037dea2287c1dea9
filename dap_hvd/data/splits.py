"""The run's training and validation splits, as every rank holds them: the same catalogs (checked
across ranks), the same usable indices (bad samples skipped by --on-bad-sample skip), the labels
on the training device."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, NamedTuple, Optional

import numpy as np
import torch

from dap_hvd import DataError, dist
from dap_hvd.data.catalog import Catalog, load_catalog
from dap_hvd.data.sample_data import ensure_data
from dap_hvd.data.verify import exclude_bad_samples

if TYPE_CHECKING:
    from dap_hvd.config import TrainConfig


@dataclass(frozen=True)
class TrainData:
    """The training split as every rank holds it: the same catalog, the same usable indices."""

    cat: Catalog
    universe: np.ndarray  # usable training indices (bad samples excluded)
    excluded: np.ndarray  # skipped as bad (--on-bad-sample skip)
    digest: str  # of the catalog without the excluded samples: what a resume must find again
    class_of: torch.Tensor  # each sample's class, by global index, on the device


@dataclass(frozen=True)
class ValSplit:
    """A validation split as a run scores it."""

    cat: Catalog  # labelled by the training class names
    class_of: torch.Tensor  # each sample's class, by index, on the device
    usable: np.ndarray  # the indices scored: all but the bad ones a run skipped
    digest: str  # of the catalog (paths, labels): a checkpoint records it, `evaluate` checks it

    @classmethod
    def of(cls, cat: Catalog, device: torch.device, usable: Optional[np.ndarray] = None) -> "ValSplit":
        usable = np.arange(len(cat), dtype=np.int64) if usable is None else usable
        return cls(cat, torch.from_numpy(cat.labels).to(device), usable, cat.digest())


class Datasets(NamedTuple):
    train: TrainData
    val: ValSplit


def load_data(cfg: TrainConfig, world: dist.World, device: torch.device) -> Datasets:
    root = ensure_data(cfg, world)
    train_cat = load_catalog(root, "train", cfg.data.train_list)
    val_cat = load_catalog(root, "val", cfg.data.val_list).labelled_by(train_cat.classes, str(train_cat.root),
                                                                        named=train_cat.named)
    # Global indices must mean the same image on every rank (per-node dataset copies can differ).
    train_digest, val_digest = train_cat.digest(), val_cat.digest()
    dist.check_same_dataset("train", train_digest, train_cat.paths)
    dist.check_same_dataset("val", val_digest, val_cat.paths)  # cheap: val is small
    none = np.zeros(0, np.int64)
    skip, workers = cfg.data.on_bad_sample == "skip", cfg.data.workers or 2
    excluded = exclude_bad_samples(train_cat, train_digest, world, "train", workers) if skip else none
    val_excluded = exclude_bad_samples(val_cat, val_digest, world, "val", workers) if skip else none
    universe = np.setdiff1d(np.arange(len(train_cat), dtype=np.int64), excluded)
    val_usable = np.setdiff1d(np.arange(len(val_cat), dtype=np.int64), val_excluded)
    if len(universe) == 0:
        raise DataError(f"{train_cat.root}: no usable training samples")
    if len(val_usable) == 0:
        raise DataError(f"{val_cat.root}: no usable validation samples")
    data = TrainData(train_cat, universe, excluded, train_cat.digest(excluded),
                     torch.from_numpy(train_cat.labels).to(device))
    return Datasets(data, ValSplit.of(val_cat, device, val_usable))
