"""The run's loaders: which implementation serves a split. Imports DALI or torchvision lazily,
and only this module imports both loader modules (they import only `spec`), so there is no cycle.

`spec_for` turns the run's config and a shard into the loader contract; `Loaders.reading` is the
one way the trainer and `evaluate` read a shard: note it (crashnote), open it, and turn a bad file
into one error naming it.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import TYPE_CHECKING, Iterator

import numpy as np

from dap_hvd import crashnote
from dap_hvd.data.spec import BadSampleError, Loader, LoaderError, LoaderSpec

if TYPE_CHECKING:
    from dap_hvd.config import TrainConfig
    from dap_hvd.data.catalog import Catalog
    from dap_hvd.data.sharding import Shard
    from dap_hvd.engine import Precision


def spec_for(cfg: TrainConfig, cat: Catalog, shard: Shard, *, train: bool, seed: int, precision: Precision,
             workers: int) -> LoaderSpec:
    """What a loader reads for this rank's `shard` of `cat`, and how (the run's recipe and device)."""
    device = precision.device
    dali_gpu = device.type == "cuda" and cfg.data.dali_device in ("auto", "gpu")
    return LoaderSpec(files=cat.files(shard.indices), tags=shard.encoded_labels(), batch_size=cfg.data.batch_size,
                      image_size=cfg.image_size, train=train, seed=seed, workers=workers, val_resize=cfg.val_resize,
                      min_area=cfg.min_crop_area, color_jitter=cfg.data.color_jitter,
                      pca_lighting=cfg.data.pca_lighting, device="gpu" if dali_gpu else "cpu",
                      device_id=device.index if dali_gpu else None, channels_last=precision.channels_last,
                      pin_memory=device.type == "cuda", hw_decoder_load=cfg.data.hw_decoder_load)


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
            from dap_hvd.data.torch_loader import TorchLoader

            return TorchLoader(spec)
        from dap_hvd.data.dali import DaliPipeline

        split = "train" if spec.train else "val"
        pipeline = self._pipelines.get(split)
        if pipeline is None or not pipeline.accepts(spec):
            if pipeline is not None:
                pipeline.close()
            pipeline = self._pipelines[split] = DaliPipeline(spec)
        return pipeline.epoch(spec)

    @contextmanager
    def reading(self, spec: LoaderSpec, cat: Catalog, indices: np.ndarray, *, rank: int, data_root,
                file_list: str | None) -> Iterator[Loader]:
        """The epoch's loader over `indices` of `cat` (loaded from `data_root` and `file_list`),
        closed at the end. A file that fails to decode, here or while the caller iterates, becomes
        one DataError naming it and the rank."""
        crashnote.leave(data_root, "train" if spec.train else "val", file_list, indices)
        loader = None
        try:
            loader = self.open(spec)
            yield loader
        except (BadSampleError, LoaderError) as e:
            from dap_hvd.data.verify import explain_bad_data

            raise explain_bad_data(e, rank, cat, indices) from None
        finally:
            if loader is not None:
                loader.close()

    def close(self) -> None:
        for pipeline in self._pipelines.values():
            pipeline.close()
        self._pipelines.clear()


def make_loader(kind: str, spec: LoaderSpec) -> Loader:
    """A one-off loader over one spec (tests, benchmarks), with its own pipeline."""
    if kind == "dali":
        from dap_hvd.data.dali import DaliLoader

        return DaliLoader(spec)
    if kind == "torch":
        from dap_hvd.data.torch_loader import TorchLoader

        return TorchLoader(spec)
    raise ValueError(f"unknown loader {kind!r}")
