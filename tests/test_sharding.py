"""Sharding the selection: every rank the same step count, disjoint real samples that cover
the selection, padding flagged (timm's two-ranks-in-one-process sampler test, generalized)."""

import numpy as np
import pytest

from dap_hvd.data.sharding import decode_labels, shard_for_rank


@pytest.mark.parametrize("n,world,batch", [(1000, 2, 64), (1001, 2, 64), (997, 3, 32), (5, 4, 8), (2, 3, 1)])
def test_equal_steps_disjoint_cover(n, world, batch):
    sel = np.sort(np.random.default_rng(n).choice(10 * n, size=n, replace=False)).astype(np.int64)
    shards = [shard_for_rank(sel, epoch=3, seed=7, rank=r, world=world, batch_size=batch) for r in range(world)]
    assert len({s.steps for s in shards}) == 1
    assert len({len(s.indices) for s in shards}) == 1
    real = np.concatenate([s.indices[s.valid] for s in shards])
    assert sorted(real.tolist()) == sel.tolist()  # each selected sample exactly once
    pads = sum(int((~s.valid).sum()) for s in shards)
    assert pads == len(shards[0].indices) * world - n < world
    assert set(np.concatenate([s.indices for s in shards]).tolist()) <= set(sel.tolist())


def test_permutation_changes_per_epoch_but_is_shared():
    sel = np.arange(100, dtype=np.int64)
    a = shard_for_rank(sel, epoch=1, seed=0, rank=0, world=2, batch_size=10).indices
    b = shard_for_rank(sel, epoch=1, seed=0, rank=0, world=2, batch_size=10).indices
    c = shard_for_rank(sel, epoch=2, seed=0, rank=0, world=2, batch_size=10).indices
    assert a.tolist() == b.tolist() and a.tolist() != c.tolist()


def test_encoded_labels_round_trip():
    s = shard_for_rank(np.arange(7, dtype=np.int64) * 3, epoch=0, seed=0, rank=1, world=4, batch_size=2)
    idx, valid = decode_labels(s.encoded_labels())
    assert idx.tolist() == s.indices.tolist() and valid.tolist() == s.valid.tolist()


def test_every_rng_stream_keeps_its_seed_layout():
    """The tags are part of every recorded run: a stream draws from default_rng([*keys, tag])."""
    from dap_hvd import rng

    tags = {"tie-break": 0x71E, "random-keep": 0xD0, "infobatch": 0x1B, "rs2": 0x52, "seta": 0x5E7A,
            "shard": 0x5EED, "augment": 0xDA11}
    assert {name: s.tag for name, s in rng.STREAMS.items()} == tags
    for name, s in rng.STREAMS.items():
        keys = (7, 3)[:len(s.keys)]
        assert np.array_equal(rng.stream(name, *keys).random(4), np.random.default_rng([*keys, tags[name]]).random(4))
    with pytest.raises(TypeError, match="shard"):
        rng.stream("shard", 7)
    assert rng.rank_seed(0, 0, 0) == int(np.random.SeedSequence([0, 0, 0]).generate_state(1)[0] % (2**31 - 1))
    assert len({rng.rank_seed(1, e, r) for e in range(3) for r in range(4)}) == 12
