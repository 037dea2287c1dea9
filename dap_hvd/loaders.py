"""What both loaders hand the engine, and how the engine picks one. No DALI import here.

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


class Loaders:
    """The run's loaders, one per split. DALI: one persistent pipeline per split for the whole
    run, fed this epoch's file list (dali_loader explains why); a pipeline is rebuilt only if
    what is built into it changes. torch: a DataLoader per epoch, since its workers restart cheaply.
    `open(spec)` returns the epoch's loader; close that at the epoch's end, and this at the run's."""

    def __init__(self, kind: str):
        if kind not in ("dali", "torch"):
            raise ValueError(f"unknown loader {kind!r}")
        self.kind = kind
        self._pipelines: dict = {}

    def open(self, spec: LoaderSpec) -> Loader:
        if self.kind == "torch":
            from dap_hvd.torch_loader import TorchLoader

            return TorchLoader(spec)
        from dap_hvd.dali_loader import DaliPipeline

        split = "train" if spec.train else "val"
        pipeline = self._pipelines.get(split)
        if pipeline is None or not pipeline.accepts(spec):
            if pipeline is not None:
                pipeline.close()
            pipeline = self._pipelines[split] = DaliPipeline(spec)
        return pipeline.epoch(spec)

    def close(self) -> None:
        for pipeline in self._pipelines.values():
            pipeline.close()
        self._pipelines.clear()


def make_loader(kind: str, spec: LoaderSpec) -> Loader:
    """A one-off loader over one spec (tests, benchmarks), with its own pipeline."""
    if kind == "dali":
        from dap_hvd.dali_loader import DaliLoader

        return DaliLoader(spec)
    if kind == "torch":
        from dap_hvd.torch_loader import TorchLoader

        return TorchLoader(spec)
    raise ValueError(f"unknown loader {kind!r}")
