"""The one module that imports DALI: training and validation pipelines over an explicit file list.

DALI's file reader cannot change its file list, and our list changes every epoch (a new
permutation, and a new subset after each drop or pick). So each epoch builds a fresh pipeline,
and close() deletes the old pipeline *and* its iterator and calls ReleaseUnusedMemory();
otherwise memory grows with every switch (tests/test_dali_loader.py switches 50 times).
GPU mode decodes with nvJPEG (`mixed`) and augments on the GPU; CPU mode is the same graph on the
CPU (device_id=None), which is what CI runs.
"""

from __future__ import annotations

import gc
import math

import numpy as np
import torch

from nvidia.dali import fn, pipeline_def, types
from nvidia.dali.plugin.pytorch import DALIGenericIterator, LastBatchPolicy

from dap_hvd.loaders import IMAGENET_MEAN, IMAGENET_STD, PCA_EIGVAL, PCA_EIGVEC, Batch, LoaderError, LoaderSpec

_MEAN = [255 * m for m in IMAGENET_MEAN]
_STD = [255 * s for s in IMAGENET_STD]


def _pipeline(spec: LoaderSpec):
    gpu = spec.device == "gpu"
    return pipeline_def(batch_size=spec.batch_size, num_threads=spec.workers, device_id=spec.device_id if gpu else None,
                        seed=spec.seed, prefetch_queue_depth=2)


def _reader(spec: LoaderSpec):
    # The list is already this rank's shard, in our own permutation: one shard, no shuffling
    # (random_shuffle would only mix within a 1,024-sample buffer anyway). The label is the
    # encoded global index, mapped to the class by the engine. DALI labels are int32.
    tags = np.asarray(spec.tags, dtype=np.int64)
    if len(tags) and (tags.max() >= 2**31 or tags.min() < -(2**31)):
        raise ValueError(f"DALI labels are int32: {len(tags)} tags reach {tags.max()}, beyond 2^31 samples")
    return fn.readers.file(files=spec.files, labels=tags.astype(np.int32).tolist(), random_shuffle=False,
                           shard_id=0, num_shards=1, name="Reader")


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


def train_pipeline(spec: LoaderSpec):
    """RandomResizedCrop (area min_area..1, aspect 3/4..4/3), flip, optional colour jitter and
    normalization. `spec.files` is already this rank's shard (we shard ourselves)."""
    gpu = spec.device == "gpu"

    @_pipeline(spec)
    def pipe():
        jpegs, tags = _reader(spec)
        images = fn.decoders.image_random_crop(
            jpegs, output_type=types.RGB, random_area=[spec.min_area, 1.0], random_aspect_ratio=[3 / 4, 4 / 3],
            num_attempts=10, **_decoder_args(spec))
        images = fn.resize(images, resize_x=spec.image_size, resize_y=spec.image_size)
        if spec.color_jitter > 0:
            j = spec.color_jitter
            images = fn.color_twist(images, brightness=fn.random.uniform(range=[1 - j, 1 + j]),
                                    contrast=fn.random.uniform(range=[1 - j, 1 + j]),
                                    saturation=fn.random.uniform(range=[1 - j, 1 + j]))
        images = fn.crop_mirror_normalize(images, dtype=types.FLOAT, output_layout=_layout(spec), mean=_MEAN,
                                          std=_STD, mirror=fn.random.coin_flip(probability=0.5))
        if spec.pca_lighting > 0:
            # AlexNet PCA lighting noise, per sample: alpha ~ N(0, std) along ImageNet's RGB eigvecs.
            alpha = fn.random.normal(stddev=spec.pca_lighting, shape=[3])
            shift = fn.cast(_pca_shift(alpha), dtype=types.FLOAT)
            images = images + fn.reshape(shift, shape=[1, 1, 3] if spec.channels_last else [3, 1, 1])
        return images, (tags.gpu() if gpu else tags)

    return pipe()


def _pca_shift(alpha):
    # shift_c = sum_k eigvec[c, k] * alpha_k * eigval_k, in normalized units (divide by std).
    scaled = alpha * types.Constant(PCA_EIGVAL)
    rows = [fn.reductions.sum(scaled * types.Constant(PCA_EIGVEC[c]), axes=[0]) / IMAGENET_STD[c]
            for c in range(3)]
    return fn.stack(*rows)


def val_pipeline(spec: LoaderSpec):
    """Resize the shorter side to val_resize, center-crop image_size, normalize."""
    gpu = spec.device == "gpu"

    @_pipeline(spec)
    def pipe():
        jpegs, tags = _reader(spec)
        images = fn.decoders.image(jpegs, output_type=types.RGB, **_decoder_args(spec))
        images = fn.resize(images, resize_shorter=spec.val_resize)
        images = fn.crop_mirror_normalize(images, dtype=types.FLOAT, output_layout=_layout(spec),
                                          crop=(spec.image_size, spec.image_size), mean=_MEAN, std=_STD)
        return images, (tags.gpu() if gpu else tags)

    return pipe()


def _first_line(e: Exception) -> str:
    return str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__


class DaliLoader:
    def __init__(self, spec: LoaderSpec):
        if len(spec.files) == 0:
            raise ValueError("DALI loader needs at least one file")
        self.spec = spec
        self._pipe = (train_pipeline if spec.train else val_pipeline)(spec)
        try:
            self._pipe.build()
            # The iterator decodes the first batch right here, so a bad file in it fails here.
            self._it = DALIGenericIterator([self._pipe], ["images", "tags"], reader_name="Reader",
                                           last_batch_policy=LastBatchPolicy.PARTIAL, auto_reset=False)
        except Exception as e:
            self._pipe = None  # invalid now: never touch it again
            raise LoaderError(_first_line(e), broken=True) from None

    def __len__(self) -> int:
        return math.ceil(len(self.spec.files) / self.spec.batch_size)

    def __iter__(self):
        it = iter(self._it)
        while True:
            try:
                out = next(it)
            except StopIteration:
                return
            except Exception as e:  # DALI reports decode failures as RuntimeError deep in its executor
                self._it = self._pipe = None  # invalid now: never touch it again
                raise LoaderError(_first_line(e), broken=True) from None
            images = out[0]["images"]
            if self.spec.channels_last:
                images = images.permute(0, 3, 1, 2)  # NHWC memory, NCHW shape: channels_last, no copy
            yield Batch(images, out[0]["tags"].reshape(-1).to(torch.int64))

    def close(self) -> None:
        # Both the iterator and the pipeline hold the executor; drop both, then let DALI free
        # its pools. Missing either makes memory grow with every subset switch.
        it, pipe = self.__dict__.pop("_it", None), self.__dict__.pop("_pipe", None)
        del it, pipe
        gc.collect()
        from nvidia.dali.backend import ReleaseUnusedMemory

        ReleaseUnusedMemory()
