"""What every loader is given and hands back: the contract between the data and the engine.

Both loaders read exactly the files of this rank's shard, in the order given (we shuffle the
list ourselves: DALI's random_shuffle only mixes within a 1,024-sample buffer). Each sample
carries its *encoded* global index as its label (see sharding.Shard.encoded_labels), which the
engine maps to the class; so a loss can never be filed against the wrong sample.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator, Optional, Protocol

import numpy as np
import torch

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# ImageNet RGB eigenvalues/eigenvectors for AlexNet-style PCA lighting noise (Bag of Tricks 2.1).
PCA_EIGVAL = np.array([0.2175, 0.0188, 0.0045], dtype=np.float32)
PCA_EIGVEC = np.array([[-0.5675, 0.7192, 0.4009], [-0.5808, -0.0045, -0.8140], [-0.5836, -0.6948, 0.4203]],
                      dtype=np.float32)


class LoaderError(Exception):
    """The data pipeline failed (e.g. DALI could not decode a file in this rank's shard).
    `broken`: the failed pipeline may have corrupted the process (DALI's batched decoder has
    been seen to crash in a later teardown), so the process should exit without one."""

    def __init__(self, message: str, broken: bool = False):
        super().__init__(message)
        self.broken = broken


class BadSampleError(Exception):
    """A sample that could not be decoded; `tag` is its encoded global index (None: unknown)."""

    def __init__(self, tag: int, reason: str):
        super().__init__(reason)
        self.tag, self.reason = tag, reason


@dataclass(frozen=True)
class Batch:
    images: torch.Tensor  # float32 NCHW, normalized
    tags: torch.Tensor  # int64 encoded global indices (negative: padding)


@dataclass(frozen=True)
class LoaderSpec:
    files: list[str]
    tags: np.ndarray  # int64, aligned with files
    batch_size: int
    image_size: int
    train: bool
    seed: int  # augmentation seed for this epoch and rank
    workers: int
    val_resize: int = 256
    min_area: float = 0.08
    color_jitter: float = 0.0
    pca_lighting: float = 0.0
    device: str = "cpu"  # cpu | gpu (DALI mixed decoder + GPU ops)
    device_id: Optional[int] = None
    channels_last: bool = False  # DALI emits HWC and the batch is a channels_last view (no copy)
    pin_memory: bool = False  # page-locked host batches (the torch loader), when the model is on a GPU
    hw_decoder_load: Optional[float] = None  # DALI mixed decoder: share of images for the HW JPEG decoder


class Loader(Protocol):
    def __iter__(self) -> Iterator[Batch]: ...
    def __len__(self) -> int: ...
    def close(self) -> None: ...
