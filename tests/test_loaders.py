"""Both loaders deliver exactly the selected indices; the persistent DALI pipeline takes a new
subset each epoch without leaking, and augments an epoch the same whatever ran before it."""

import os

import numpy as np
import pytest

from dap_hvd.data.catalog import load_catalog
from dap_hvd.data.loaders import Loaders, make_loader
from dap_hvd.data.sharding import decode_labels, shard_for_rank
from dap_hvd.data.spec import LoaderSpec


def _spec(cat, shard, train=True, seed=0, batch=16):
    return LoaderSpec(files=cat.files(shard.indices), tags=shard.encoded_labels(), batch_size=batch, image_size=32,
                      train=train, seed=seed, workers=1, val_resize=36, min_area=0.25)


@pytest.mark.parametrize("kind", ["dali", "torch"])
@pytest.mark.parametrize("train", [True, False])
def test_reader_delivers_exactly_the_selection(tiny_data, kind, train):
    cat = load_catalog(tiny_data, "train")
    rng = np.random.default_rng(0)
    loaders = [Loaders(kind) for _ in range(3)]  # one per rank, kept across epochs like the trainer's
    for epoch in (1, 2, 3):
        selection = np.sort(rng.choice(len(cat), size=151 - 20 * epoch, replace=False)).astype(np.int64)
        seen = []
        for rank in range(3):  # ranks together cover the selection
            shard = shard_for_rank(selection, epoch=epoch, seed=0, rank=rank, world=3, batch_size=16)
            loader = loaders[rank].open(_spec(cat, shard, train, seed=epoch))
            batches = list(loader)
            loader.close()
            assert len(batches) == len(loader) == shard.steps
            tags = np.concatenate([b.tags.numpy() for b in batches])
            assert tags.tolist() == shard.encoded_labels().tolist()
            idx, valid = decode_labels(tags)
            seen.extend(idx[valid].tolist())
            assert batches[0].images.shape[1:] == (3, 32, 32)
        assert sorted(seen) == selection.tolist()  # equal sets, nothing outside the selection
    for lo in loaders:
        lo.close()


def test_an_epoch_augments_the_same_whatever_ran_before_it(tiny_data):
    """A resumed run builds its pipeline at epoch k; it must see what the uninterrupted run's
    pipeline, which has run epochs 1..k-1, sees at epoch k."""
    import torch

    cat = load_catalog(tiny_data, "train")
    sel = np.arange(len(cat), dtype=np.int64)

    def epoch_images(loaders, epoch):
        shard = shard_for_rank(sel, epoch=epoch, seed=0, rank=0, world=1, batch_size=32)
        loader = loaders.open(dataclasses.replace(_spec(cat, shard, seed=1000 + epoch, batch=32), color_jitter=0.2,
                                                  pca_lighting=0.1))
        out = torch.cat([b.images.clone() for b in loader])
        loader.close()
        return out

    import dataclasses

    long_run, fresh = Loaders("dali"), Loaders("dali")
    epoch_images(long_run, 1)
    capped = long_run.open(_spec(cat, shard_for_rank(sel, epoch=2, seed=0, rank=0, world=1, batch_size=32),
                                 seed=1002, batch=32))
    next(iter(capped))  # an epoch left early (a capped epoch) must not leak into the next
    capped.close()
    a, b = epoch_images(long_run, 3), epoch_images(fresh, 3)
    long_run.close(), fresh.close()
    assert a.shape == (len(cat), 3, 32, 32) and torch.equal(a, b)
    assert not torch.equal(a, epoch_images(Loaders("dali"), 4)[: len(a)])  # and epochs do differ


def _rss_mb() -> float:
    with open(f"/proc/{os.getpid()}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


def _threads() -> int:
    return len(os.listdir(f"/proc/{os.getpid()}/task"))


def test_dali_subset_switches_do_not_leak(tiny_data):
    """50 subset changes through the run's persistent pipeline: memory and threads stay flat."""
    cat = load_catalog(tiny_data, "train")
    rng = np.random.default_rng(1)
    loaders = Loaders("dali")

    def one_switch(i):
        sel = np.sort(rng.choice(len(cat), size=int(rng.integers(40, 200)), replace=False)).astype(np.int64)
        shard = shard_for_rank(sel, epoch=i, seed=0, rank=0, world=1, batch_size=32)
        loader = loaders.open(_spec(cat, shard, seed=i, batch=32))
        for _ in loader:
            pass
        loader.close()

    for i in range(5):  # warm up allocator pools
        one_switch(i)
    rss0, thr0 = _rss_mb(), _threads()
    for i in range(50):
        one_switch(100 + i)
    growth = _rss_mb() - rss0
    loaders.close()
    assert growth < 10, f"RSS grew {growth:.1f} MB over 50 subset switches"
    assert _threads() <= thr0, "DALI worker threads leaked"


def test_dali_channels_last_is_the_same_batch_as_a_view_without_a_copy(tiny_data):
    """With channels_last, DALI emits HWC and the loader permutes: the engine gets NCHW-shaped,
    channels_last-strided batches, equal to the CHW ones, so moving them costs no layout copy."""
    import dataclasses

    import torch

    cat = load_catalog(tiny_data, "val")
    shard = shard_for_rank(np.arange(len(cat), dtype=np.int64), epoch=0, seed=0, rank=0, world=1, batch_size=16)
    base = _spec(cat, shard, train=False)
    out = {}
    for cl in (False, True):
        loader = make_loader("dali", dataclasses.replace(base, channels_last=cl, pca_lighting=0.0))
        # copies that keep the strides: DALI reuses its buffers for the next batch
        out[cl] = [b.images.clone(memory_format=torch.preserve_format) for b in loader][:2]
        loader.close()
    for plain, nhwc in zip(out[False], out[True]):
        assert nhwc.shape == plain.shape and torch.equal(nhwc, plain)
        assert nhwc.is_contiguous(memory_format=torch.channels_last) and not plain.is_contiguous(
            memory_format=torch.channels_last)
    # the training graph with PCA lighting works in both layouts (its shift is laid out to match)
    for cl in (False, True):
        loader = make_loader("dali", dataclasses.replace(_spec(cat, shard, train=True), channels_last=cl,
                                                         pca_lighting=0.1, color_jitter=0.2))
        assert next(iter(loader)).images.shape[1:] == (3, 32, 32)
        loader.close()
