"""The run's loaders: which implementation serves a split. Imports DALI or torchvision lazily,
and only this module imports both loader modules (they import only `spec`), so there is no cycle.
"""

from __future__ import annotations

from dap_hvd.data.spec import Loader, LoaderSpec


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
