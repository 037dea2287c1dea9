"""The torchvision DataLoader path: the same semantics as the DALI path, for environments
without DALI, and the reference in benchmarks."""

from __future__ import annotations

import math

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from dap_hvd.data.spec import IMAGENET_MEAN, IMAGENET_STD, PCA_EIGVAL, PCA_EIGVEC, BadSampleError, Batch, LoaderSpec


def _transform(spec: LoaderSpec):
    from torchvision.transforms import v2 as T

    norm = [T.ToImage(), T.ToDtype(torch.float32, scale=True), T.Normalize(IMAGENET_MEAN, IMAGENET_STD)]
    if not spec.train:
        return T.Compose([T.Resize(spec.val_resize), T.CenterCrop(spec.image_size), *norm])
    aug = [T.RandomResizedCrop(spec.image_size, scale=(spec.min_area, 1.0), ratio=(3 / 4, 4 / 3)),
           T.RandomHorizontalFlip()]
    if spec.color_jitter > 0:
        aug.append(T.ColorJitter(spec.color_jitter, spec.color_jitter, spec.color_jitter))
    return T.Compose(aug + norm)


_STD = torch.tensor(IMAGENET_STD)
_EIGVAL, _EIGVEC = torch.from_numpy(PCA_EIGVAL), torch.from_numpy(PCA_EIGVEC)


class _Files(Dataset):
    def __init__(self, spec: LoaderSpec):
        self.files, self.tags, self.tf = spec.files, spec.tags, _transform(spec)
        self.pca = spec.pca_lighting if spec.train else 0.0

    def __len__(self):
        return len(self.files)

    def __getitem__(self, i):
        from PIL import Image

        try:
            with Image.open(self.files[i]) as im:
                x = self.tf(im.convert("RGB"))
        except Exception as e:  # handed to the main process, which names the file
            return None, int(self.tags[i]), f"{type(e).__name__}: {e}"
        if self.pca > 0:
            alpha = torch.randn(3) * self.pca
            x = x + ((_EIGVEC @ (alpha * _EIGVAL)) / _STD).view(3, 1, 1)
        return x, int(self.tags[i]), ""


def _collate(items):
    bad = [(tag, err) for x, tag, err in items if err]
    images = None if bad else torch.stack([x for x, _, _ in items])
    return images, torch.tensor([t for _, t, _ in items], dtype=torch.int64), bad


class TorchLoader:
    def __init__(self, spec: LoaderSpec):
        self.spec = spec

        def seed_worker(worker_id: int) -> None:
            # Augmentation is a function of (seed, epoch, rank, worker): resumable and repeatable.
            torch.manual_seed(spec.seed * 1000 + worker_id)
            np.random.seed((spec.seed * 1000 + worker_id) % 2**32)

        self._dl = DataLoader(_Files(spec), batch_size=spec.batch_size, shuffle=False,
                              num_workers=spec.workers, collate_fn=_collate, worker_init_fn=seed_worker,
                              generator=torch.Generator().manual_seed(spec.seed),
                              pin_memory=spec.pin_memory)

    def __len__(self) -> int:
        return math.ceil(len(self.spec.files) / self.spec.batch_size)

    def __iter__(self):
        for images, tags, bad in self._dl:
            if bad:
                raise BadSampleError(*bad[0])
            yield Batch(images, tags)

    def close(self) -> None:
        self._dl = None
