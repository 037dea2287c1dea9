"""select_hardest and the strategies: pure functions, deterministic, loud on divergence."""

import numpy as np
import pytest

from dap_hvd import DivergedError
from dap_hvd.policy.policies import drop_keep, select_hardest, selection_digest


def test_keeps_the_largest_losses():
    idx = np.array([3, 5, 8, 13, 21], dtype=np.int64)
    loss = np.array([0.1, 0.9, 0.5, 0.7, 0.2], dtype=np.float32)
    assert select_hardest(idx, loss, 2).tolist() == [5, 13]
    assert select_hardest(idx, loss, 5).tolist() == idx.tolist()


def test_without_a_generator_ties_break_by_smaller_index():
    idx = np.arange(10, dtype=np.int64) * 7
    loss = np.ones(10, dtype=np.float32)
    loss[9] = 2.0
    assert select_hardest(idx, loss, 4).tolist() == [0, 7, 14, 63]


def test_dap_breaks_ties_by_a_seeded_random_order_not_by_class():
    # Late in training many samples tie at a cross-entropy of exactly 0; indices follow sorted
    # class names, so an index tie-break would keep the lowest classes.
    idx = np.arange(1000, dtype=np.int64)
    loss = np.zeros(1000, dtype=np.float32)
    loss[:100] = 1.0  # 100 clear winners, then 400 to take from 900 tied at 0
    a = drop_keep("dap", idx, loss, 500, seed=3, epoch=7)
    assert a.tolist() == drop_keep("dap", idx, loss, 500, seed=3, epoch=7).tolist()  # deterministic
    assert a.tolist() != drop_keep("dap", idx, loss, 500, seed=3, epoch=8).tolist()
    assert set(range(100)) <= set(a.tolist()) and np.all(np.diff(a) > 0)
    tied = a[a >= 100]
    # spread over the tied range, not its first 400 (which an index tie-break would take)
    low, high = (tied < 550).sum(), (tied >= 550).sum()
    assert 150 < low < 250 and 150 < high < 250


def test_matches_a_full_sort_on_random_data():
    rng = np.random.default_rng(0)
    idx = np.sort(rng.choice(2**40, size=5000, replace=False)).astype(np.int64)  # beyond float precision
    loss = rng.integers(0, 50, size=5000).astype(np.float32)  # many ties
    for count in (1, 17, 2500, 4999):
        order = sorted(range(5000), key=lambda i: (-loss[i], idx[i]))[:count]
        assert select_hardest(idx, loss, count).tolist() == sorted(idx[order].tolist())


def test_non_finite_loss_names_epoch_and_samples():
    idx = np.array([4, 9, 11], dtype=np.int64)
    loss = np.array([0.3, np.nan, np.inf], dtype=np.float32)
    with pytest.raises(DivergedError, match=r"epoch 7.*\[9, 11\]"):
        drop_keep("dap", idx, loss, 2, seed=0, epoch=7)


def test_random_strategy_is_seeded_and_uniform():
    idx = np.arange(1000, dtype=np.int64)
    a = drop_keep("random", idx, None, 900, seed=1, epoch=5)
    b = drop_keep("random", idx, None, 900, seed=1, epoch=5)
    c = drop_keep("random", idx, None, 900, seed=1, epoch=6)
    assert a.tolist() == b.tolist() and a.tolist() != c.tolist()
    assert len(np.unique(a)) == 900 and np.all(np.diff(a) > 0)


def test_full_keeps_everything_and_digest_is_order_free():
    idx = np.arange(50, dtype=np.int64)
    assert drop_keep("full", idx, None, 10, seed=0, epoch=1).tolist() == idx.tolist()
    assert selection_digest(idx[::-1]) == selection_digest(idx)
