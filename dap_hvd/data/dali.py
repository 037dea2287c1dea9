"""The one module that imports DALI: one persistent training and one validation pipeline per rank.

DaP changes the file list at every epoch (a new permutation, and a new subset after a drop or a
pick). DALI's file reader cannot change its list, and building a pipeline per epoch costs a
decoder, stream and pool set-up each time (on GPU, twice per epoch). So each pipeline is built
once, for the whole run, and fed through `fn.external_source`: per batch, the encoded file paths
and tags of this rank's shard, which DALI reads in its own threads (`fn.io.file.read`) and
decodes with the same graph. A new epoch hands the source a new list and resets the iterator.

Randomness comes in with the data: each sample's crop, flip, colour jitter and lighting noise are
drawn in numpy from (seed, epoch, rank) and passed through the external source. DALI's own random
operators would continue their state across epochs in a persistent pipeline, so a resumed run
would augment differently from an uninterrupted one; this way it augments identically.

The crop is RandomResizedCrop's: area in [min_area, 1] of the image and aspect ratio
log-uniform in [3/4, 4/3], at a uniform position. A window that does not fit the image is clamped
to it, where torchvision re-draws up to 10 times.

GPU mode decodes with nvJPEG (`mixed`) and augments on the GPU; CPU mode is the same graph on the
CPU (device_id=None), which is what CI runs.
"""

from __future__ import annotations

import gc
import math
from typing import Optional

import numpy as np
import nvidia.dali.math as dmath
import torch
from nvidia.dali import fn, pipeline_def, types
from nvidia.dali.plugin.pytorch import DALIGenericIterator

from dap_hvd import first_line
from dap_hvd.data.spec import IMAGENET_MEAN, IMAGENET_STD, PCA_EIGVAL, PCA_EIGVEC, Batch, LoaderError, LoaderSpec
from dap_hvd.rng import stream as rng_stream

_MEAN = [255 * m for m in IMAGENET_MEAN]
_STD = [255 * s for s in IMAGENET_STD]
# Per-sample random draws carried with each sample: crop area, aspect, x, y, flip, brightness,
# contrast, saturation, and the 3 PCA-lighting coefficients.
_DRAWS = 11


def _draws(spec: LoaderSpec) -> np.ndarray:
    """float32 [n, _DRAWS]: every random choice of this epoch, a function of the spec's seed."""
    n = len(spec.files)
    rng = rng_stream("augment", spec.seed)
    d = np.zeros((n, _DRAWS), dtype=np.float32)
    d[:, 0] = rng.uniform(spec.min_area, 1.0, n)
    d[:, 1] = np.exp(rng.uniform(math.log(3 / 4), math.log(4 / 3), n))
    d[:, 2:4] = rng.uniform(0.0, 1.0, (n, 2))
    d[:, 4] = rng.integers(0, 2, n)
    j = spec.color_jitter
    d[:, 5:8] = rng.uniform(1 - j, 1 + j, (n, 3)) if j > 0 else 1.0
    d[:, 8:11] = rng.normal(0.0, spec.pca_lighting, (n, 3)) if spec.pca_lighting > 0 else 0.0
    return d


class _Feed:
    """The external source: this epoch's shard, a batch at a time; StopIteration at its end."""

    def __init__(self, batch_size: int, with_draws: bool):
        self.batch_size, self.with_draws = batch_size, with_draws
        self.paths: list = []
        self.tags = np.zeros(0, dtype=np.int64)
        self.draws = np.zeros((0, _DRAWS), dtype=np.float32)
        self.pos = 0

    def load(self, spec: LoaderSpec, draws: Optional[np.ndarray]) -> None:
        tags = np.asarray(spec.tags, dtype=np.int64)
        self.paths = [np.frombuffer(p.encode(), dtype=np.uint8) for p in spec.files]
        self.tags, self.draws, self.pos = tags.reshape(-1, 1), draws, 0

    def stop_early(self) -> None:
        self.pos = len(self.paths)

    def __call__(self):
        if self.pos >= len(self.paths):
            raise StopIteration
        s = slice(self.pos, self.pos + self.batch_size)
        self.pos += self.batch_size
        if self.with_draws:
            return self.paths[s], list(self.tags[s]), list(self.draws[s])
        return self.paths[s], list(self.tags[s])


def _decoder_args(spec: LoaderSpec) -> dict:
    """nvJPEG hints as in NVIDIA's own ResNet-50 DALI pipeline: allocate ahead for the largest
    ImageNet image, so the decoder does not re-grow its buffers (device syncs) in the first epochs."""
    if spec.device != "gpu":
        return dict(device="cpu")
    args = dict(device="mixed", device_memory_padding=211025920, host_memory_padding=140544512,
                preallocate_width_hint=5980, preallocate_height_hint=6430)
    if spec.hw_decoder_load is not None:
        args["hw_decoder_load"] = spec.hw_decoder_load
    return args


def _layout(spec: LoaderSpec) -> str:
    # channels_last: HWC out of DALI is already NHWC in memory; the loader hands the engine a
    # permuted (N, C, H, W) view of it, which is channels_last-contiguous, so nothing is copied.
    return "HWC" if spec.channels_last else "CHW"


def _pca_shift(alpha):
    # shift_c = sum_k eigvec[c, k] * alpha_k * eigval_k, in normalized units (divide by std).
    scaled = alpha * types.Constant(PCA_EIGVAL)
    rows = [fn.reductions.sum(scaled * types.Constant(PCA_EIGVEC[c]), axes=[0]) / IMAGENET_STD[c]
            for c in range(3)]
    return fn.stack(*rows)


def _build(spec: LoaderSpec, feed: _Feed):
    gpu = spec.device == "gpu"

    @pipeline_def(batch_size=spec.batch_size, num_threads=spec.workers, device_id=spec.device_id if gpu else None,
                  prefetch_queue_depth=2, seed=spec.seed)
    def pipe():
        if spec.train:
            paths, tags, d = fn.external_source(source=feed, num_outputs=3, batch=True, ndim=[1, 1, 1],
                                                dtype=[types.UINT8, types.INT64, types.FLOAT])
        else:
            paths, tags = fn.external_source(source=feed, num_outputs=2, batch=True, ndim=[1, 1],
                                             dtype=[types.UINT8, types.INT64])
        jpegs = fn.io.file.read(paths)
        if spec.train:
            shape = fn.peek_image_shape(jpegs)  # [H, W, C], from the header only
            h, w = fn.cast(shape[0], dtype=types.FLOAT), fn.cast(shape[1], dtype=types.FLOAT)
            area = d[0] * h * w
            cw = dmath.min(dmath.sqrt(area * d[1]), w)
            ch = dmath.min(dmath.sqrt(area / d[1]), h)
            images = fn.decoders.image_slice(jpegs, fn.stack(d[2] * (w - cw), d[3] * (h - ch)), fn.stack(cw, ch),
                                             axis_names="WH", normalized_anchor=False, normalized_shape=False,
                                             output_type=types.RGB, **_decoder_args(spec))
            images = fn.resize(images, resize_x=spec.image_size, resize_y=spec.image_size)
            if spec.color_jitter > 0:
                images = fn.color_twist(images, brightness=d[5], contrast=d[6], saturation=d[7])
            images = fn.crop_mirror_normalize(images, dtype=types.FLOAT, output_layout=_layout(spec), mean=_MEAN,
                                              std=_STD, mirror=fn.cast(d[4], dtype=types.INT32))
            if spec.pca_lighting > 0:
                shift = fn.cast(_pca_shift(fn.stack(d[8], d[9], d[10])), dtype=types.FLOAT)
                images = images + fn.reshape(shift, shape=[1, 1, 3] if spec.channels_last else [3, 1, 1])
        else:
            images = fn.decoders.image(jpegs, output_type=types.RGB, **_decoder_args(spec))
            images = fn.resize(images, resize_shorter=spec.val_resize)
            images = fn.crop_mirror_normalize(images, dtype=types.FLOAT, output_layout=_layout(spec),
                                              crop=(spec.image_size, spec.image_size), mean=_MEAN, std=_STD)
        return images, (tags.gpu() if gpu else tags)

    return pipe()


def _fixed(spec: LoaderSpec) -> tuple:
    """What is built into a pipeline; a spec that differs in these needs another pipeline."""
    return (spec.train, spec.batch_size, spec.workers, spec.image_size, spec.val_resize, spec.color_jitter > 0,
            spec.pca_lighting > 0, spec.device, spec.device_id, spec.channels_last, spec.hw_decoder_load)


class DaliPipeline:
    """One persistent pipeline (one split of one rank); `epoch(spec)` feeds it a new file list."""

    def __init__(self, spec: LoaderSpec):
        self.fixed = _fixed(spec)
        self.spec = spec
        self._feed = _Feed(spec.batch_size, with_draws=spec.train)
        self._pipe = _build(spec, self._feed)
        self._it: Optional[DALIGenericIterator] = None
        self.broken = False

    def accepts(self, spec: LoaderSpec) -> bool:
        return not self.broken and _fixed(spec) == self.fixed

    def epoch(self, spec: LoaderSpec) -> "_Epoch":
        if len(spec.files) == 0:
            raise ValueError("DALI loader needs at least one file")
        if not self.accepts(spec):
            raise ValueError("this pipeline was built for another configuration")
        self.spec = spec
        self._feed.load(spec, _draws(spec) if spec.train else None)
        try:
            if self._it is None:
                self._pipe.build()
                # The iterator decodes the first batch right here, so a bad file in it fails here.
                self._it = DALIGenericIterator([self._pipe], ["images", "tags"], auto_reset=False)
            else:
                self._it.reset()  # prefetches the first batches of the new list
        except Exception as e:
            self.broken = True
            raise LoaderError(first_line(e), broken=True) from None
        return _Epoch(self)

    def _batches(self):
        try:
            for out in self._it:
                images = out[0]["images"]
                if self.spec.channels_last:
                    images = images.permute(0, 3, 1, 2)  # NHWC memory, NCHW shape: channels_last, no copy
                yield Batch(images, out[0]["tags"].reshape(-1).to(torch.int64))
        except StopIteration:
            return
        except Exception as e:  # DALI reports decode failures as RuntimeError deep in its executor
            self.broken = True
            raise LoaderError(first_line(e), broken=True) from None

    def finish(self) -> None:
        """End the epoch where it stands (a capped epoch, an error): drain what was prefetched."""
        if self.broken or self._it is None:
            return
        self._feed.stop_early()
        try:
            for _ in self._it:
                pass
        except Exception:
            self.broken = True

    def close(self) -> None:
        # Both the iterator and the pipeline hold the executor; drop both, then let DALI free
        # its pools. Only at the end of the run: between epochs the pools are what the next one reuses.
        self._it, self._pipe = None, None
        gc.collect()
        from nvidia.dali.backend import ReleaseUnusedMemory

        ReleaseUnusedMemory()


class _Epoch:
    """What the engine iterates for one epoch (the Loader protocol); close() ends the epoch."""

    def __init__(self, pipeline: DaliPipeline):
        self._p = pipeline
        self._done = False

    def __len__(self) -> int:
        return math.ceil(len(self._p.spec.files) / self._p.spec.batch_size)

    def __iter__(self):
        for batch in self._p._batches():
            yield batch
        self._done = True

    def close(self) -> None:
        if not self._done:
            self._p.finish()


class DaliLoader:
    """A one-off loader over one spec (tests, benchmarks): its own pipeline, closed with it."""

    def __init__(self, spec: LoaderSpec):
        self._pipeline = DaliPipeline(spec)
        try:
            self._epoch = self._pipeline.epoch(spec)
        except Exception:
            self._pipeline.close()
            raise

    def __len__(self) -> int:
        return len(self._epoch)

    def __iter__(self):
        return iter(self._epoch)

    def close(self) -> None:
        self._epoch.close()
        self._pipeline.close()
