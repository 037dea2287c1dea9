"""Each policy's pure function against its definition (no torch, no ranks)."""

import math

import numpy as np
import pytest

from dap_hvd import ConfigError, DivergedError
from dap_hvd.policy.policies import (
    POLICIES,
    RS2,
    Context,
    DropAndPick,
    InfoBatch,
    Selection,
    SeTa,
    kmeans_1d,
    make_policy,
    seta_window,
)
from dap_hvd.policy.schedule import Schedule, plan
from dap_hvd.policy.scores import ScoreTable

SCHED = Schedule(epochs=12, warmup=3, interval=1, keep=0.8, active=None, reuse=(8,))


def ctx(epoch, universe, current=None, scores=None, state=None, seed=0, final=False):
    scores = np.full(universe.max() + 1, np.nan, np.float32) if scores is None else scores
    return Context(epoch=epoch, universe=universe, current=current or Selection(universe), scores=scores, seed=seed,
                   state=state, final=final)


# ---------------------------------------------------------------- InfoBatch

def test_infobatch_prunes_below_mean_with_probability_r_and_rescales_the_kept():
    n, r = 200_000, 0.3
    universe = np.arange(n, dtype=np.int64)
    scores = np.random.default_rng(0).exponential(1.0, n).astype(np.float32)  # skewed, like losses
    below = scores < scores.mean(dtype=np.float64)
    step = InfoBatch(epochs=10, prune_ratio=r).select(ctx(2, universe, scores=scores))
    sel = step.selection
    kept = np.zeros(n, bool)
    kept[sel.indices] = True
    assert step.action == "prune" and np.all(np.diff(sel.indices) > 0)
    assert kept[~below].all()  # no sample at or above the mean is ever pruned
    # the kept share of the below-mean samples is 1 - r, within 4 standard deviations
    q = kept[below].mean()
    sd = math.sqrt(r * (1 - r) / below.sum())
    assert abs(q - (1 - r)) < 4 * sd
    expected_fraction = 1 - r * below.mean()
    assert abs(len(sel.indices) / n - expected_fraction) < 4 * sd
    # weights: 1/(1-r) exactly on the kept below-mean samples, 1 elsewhere
    w = dict(zip(sel.indices.tolist(), sel.weights.tolist()))
    assert sel.weights.dtype == np.float32
    assert {w[i] for i in np.flatnonzero(below & kept)} == {np.float32(1 / (1 - r))}
    assert {w[i] for i in np.flatnonzero(~below)} == {1.0}
    # the weighted count of the below-mean samples equals their number, in expectation
    assert abs(sum(w[i] for i in np.flatnonzero(below & kept)) / below.sum() - 1) < 4 * sd / (1 - r)


def test_infobatch_is_seeded_by_epoch_and_keeps_samples_never_scored():
    universe = np.arange(1000, dtype=np.int64)
    scores = np.linspace(0, 2, 1000).astype(np.float32)
    scores[:100] = np.nan  # never trained: they must stay in, whatever the mean
    ib = InfoBatch(epochs=10)
    a = ib.select(ctx(3, universe, scores=scores, seed=5)).selection
    b = ib.select(ctx(3, universe, scores=scores, seed=5)).selection
    c = ib.select(ctx(4, universe, scores=scores, seed=5)).selection
    assert np.array_equal(a.indices, b.indices) and np.array_equal(a.weights, b.weights)
    assert not np.array_equal(a.indices, c.indices)
    assert set(range(100)) <= set(a.indices.tolist())
    # nothing scored yet: the first epoch, all data, unweighted
    first = ib.select(ctx(0, universe))
    assert first.action == "full" and first.selection.weights is None and len(first.selection.indices) == 1000


@pytest.mark.parametrize("epochs,anneal,prunes", [(12, 0.875, 10), (90, 0.875, 78), (10, 1.0, 10), (8, 0.5, 4)])
def test_infobatch_anneals_on_all_data_in_the_last_epochs(epochs, anneal, prunes):
    ib = InfoBatch(epochs=epochs, anneal=anneal)
    assert ib.prune_epochs == prunes  # floor(delta * E)
    universe = np.arange(500, dtype=np.int64)
    scores = np.random.default_rng(1).random(500).astype(np.float32)
    for e in range(1, epochs):  # the step after epoch e selects epoch e+1
        step = ib.select(ctx(e, universe, scores=scores))
        if e + 1 <= prunes:
            assert step.action == "prune" and len(step.selection.indices) < 500
        else:
            assert step.action == "full" and step.selection.weights is None and len(step.selection.indices) == 500
        assert ib.reads_losses(e, None) == (e + 1 <= prunes)
    p = ib.plan(500)
    assert [e.event for e in p.epochs] == ["full"] + ["prune"] * (prunes - 1) + ["full"] * (epochs - prunes)
    low, high = p.compute_bounds
    assert high == 1.0 and p.compute_ratio is None and not p.exact
    assert low == pytest.approx((epochs - (prunes - 1) * 0.5 + (prunes - 1) * 0.5 / 500) / epochs, abs=1e-3)


def test_infobatch_parameters_are_checked_with_their_flags():
    with pytest.raises(ConfigError, match=r"--prune-ratio.*\(0, 1\)"):
        InfoBatch(epochs=4, prune_ratio=1.0)
    with pytest.raises(ConfigError, match=r"--anneal"):
        InfoBatch(epochs=4, anneal=0)


# ---------------------------------------------------------------- RS2

@pytest.mark.parametrize("n,r", [(100, 0.25), (1000, 0.1), (400, 0.5), (1000, 1.0)])
def test_rs2_sees_every_sample_exactly_once_per_round_of_1_over_r_epochs(n, r):
    universe = np.sort(np.random.default_rng(2).choice(10 * n, size=n, replace=False)).astype(np.int64)
    rs2 = RS2(epochs=40, fraction=r)
    per_round = math.ceil(1 / r)
    epochs = [rs2.first(universe, seed=3)]
    for e in range(1, 3 * per_round):
        epochs.append(rs2.select(ctx(e, universe, current=epochs[-1], seed=3)).selection)
    for k in range(3):
        seen = np.concatenate([s.indices for s in epochs[k * per_round:(k + 1) * per_round]])
        assert np.array_equal(np.sort(seen), universe)  # once each, none twice
    assert all(np.all(np.diff(s.indices) > 0) and s.weights is None for s in epochs)
    if per_round > 1:  # a new permutation each round
        assert not np.array_equal(epochs[0].indices, epochs[per_round].indices)
    p = rs2.plan(n)
    assert p.exact and all(e.size == int(r * n) for e in p.epochs)


@pytest.mark.parametrize("n,r", [(400, 0.3), (10, 0.7), (1000, 0.9), (7, 0.5), (13, 0.95)])
def test_rs2_trains_r_every_epoch_and_no_sample_twice_before_all_once(n, r):
    """Where 1/r does not divide N a round cannot be exact; the walk keeps every epoch at
    floor(r N) distinct samples, and every two samples' counts within one of each other."""
    universe = np.arange(n, dtype=np.int64) * 3
    rs2 = RS2(epochs=60, fraction=r)
    counts = np.zeros(n, dtype=int)
    for e in range(1, 60):
        sel = rs2.draw(universe, 1, e).indices
        assert len(sel) == len(np.unique(sel)) == int(r * n)
        counts[sel // 3] += 1
        assert counts.max() - counts.min() <= 1, e


def test_rs2_draw_is_a_pure_function_of_seed_and_epoch():
    universe = np.arange(1000, dtype=np.int64)
    rs2 = RS2(epochs=10, fraction=0.2)
    assert np.array_equal(rs2.draw(universe, 1, 7).indices, rs2.draw(universe, 1, 7).indices)
    assert not np.array_equal(rs2.draw(universe, 1, 7).indices, rs2.draw(universe, 2, 7).indices)
    assert rs2.plan(1000).compute_ratio == pytest.approx(0.2)

    assert rs2.reads_losses(3, None) is False


# ---------------------------------------------------------------- DaP, random, full through the policy interface

def test_dap_policy_walks_algorithm_1_and_keeps_the_hardest():
    n = 1000
    universe = np.arange(n, dtype=np.int64)
    scores = np.random.default_rng(4).random(n).astype(np.float32)
    dap = make_policy("dap", SCHED)
    state, sel, sizes = dap.first_state(), dap.first(universe, 0), []
    for e in range(1, SCHED.epochs + 1):
        sizes.append(len(sel.indices))
        step = dap.select(ctx(e, universe, current=sel, scores=scores, state=state, final=e == SCHED.epochs))
        if step.action == "drop":
            kept = set(step.selection.indices.tolist())
            dropped = set(sel.indices.tolist()) - kept
            assert min(scores[list(kept)]) >= max(scores[list(dropped)])
        state, sel = step.state, step.selection
    assert sizes == [e.size for e in plan(SCHED, n).epochs]
    # the drop due after the last epoch is made too: a run extended by --epochs trains its plan
    assert step.action == "drop" and len(step.selection.indices) == [e.size for e in plan(
        Schedule(**dict(SCHED.to_dict(), epochs=SCHED.epochs + 1)), n).epochs][-1]


def test_dap_refuses_non_finite_scores_with_the_samples():
    universe = np.arange(10, dtype=np.int64)
    scores = np.zeros(10, np.float32)
    scores[7] = np.inf
    dap = make_policy("dap", Schedule(epochs=4, warmup=1, interval=1, keep=0.5))
    with pytest.raises(DivergedError, match=r"epoch 2.*\[7\]"):
        dap.select(ctx(2, universe, scores=scores, state=dap.first_state()))


def test_registry_names_every_policy_and_refuses_unknown_ones():
    assert list(POLICIES) == ["dap", "random", "full", "infobatch", "rs2", "seta"]
    for name in POLICIES:
        assert make_policy(name, SCHED).name == name
    with pytest.raises(ConfigError, match="--strategy.*infobatch"):
        make_policy("kakurenbo", SCHED)
    assert make_policy("full", SCHED).plan(100).compute_ratio == 1.0
    assert isinstance(make_policy("random", SCHED), DropAndPick)


def test_the_policy_package_imports_no_torch():
    import subprocess
    import sys

    code = ("import sys, dap_hvd.policy.policies, dap_hvd.policy.scores, dap_hvd.config; "
            "bad = [m for m in ('torch', 'horovod', 'pydantic') if m in sys.modules]; assert not bad, bad")
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).returncode == 0


# ---------------------------------------------------------------- SeTa

def reference_window(num_groups, iteration, window_scale):
    """seta.py's slide_easy2hard (github.com/mrazhou/SeTa), as group positions."""
    if iteration == 0:
        return list(range(num_groups))
    window_size = round(num_groups * window_scale)
    start = iteration % (num_groups - window_size + 1)
    return list(range(num_groups))[start:start + window_size]


@pytest.mark.parametrize("k,w", [(5, 0.6), (5, 0.5), (10, 0.5), (5, 0.9), (4, 0.25), (3, 1.0), (1, 0.7), (7, 0.3)])
def test_seta_window_slides_by_one_group_and_cycles_like_the_reference(k, w):
    for it in range(40):
        start, stop = seta_window(k, w, it)
        assert list(range(start, stop)) == reference_window(k, it, w), it
    # the worked example: k=5, w=0.6 keeps 3 groups, starting at 1, 2, 0, 1, 2, 0, ... after all 5
    assert [seta_window(5, 0.6, t) for t in range(6)] == [(0, 5), (1, 4), (2, 5), (0, 3), (1, 4), (2, 5)]
    assert seta_window(5, 0.5, 1) == (1, 3)  # round(2.5) is 2, as in Python (the reference)


def brute_lloyd(x, centers, iters=300):
    """Textbook Lloyd on unsorted data: every point to its nearest center, O(n k) a step."""
    for _ in range(iters):
        label = np.argmin(np.abs(x[:, None] - centers[None, :]), axis=1)  # ties: the lower center
        new = np.array([x[label == j].mean() if (label == j).any() else centers[j] for j in range(len(centers))])
        if np.array_equal(new, centers):
            break
        centers = new
    return label, centers


@pytest.mark.parametrize("seed,k", [(0, 5), (1, 3), (2, 10), (3, 2)])
def test_kmeans_1d_is_lloyd_to_convergence_with_groups_ordered_by_mean(seed, k):
    rng = np.random.default_rng(seed)
    x = np.sort(np.concatenate([rng.exponential(1.0, 3000), rng.normal(4, 0.3, 500)]))
    g = kmeans_1d(x, k)
    assert len(g.edges) == k + 1 and g.edges[0] == 0 and g.edges[-1] == len(x) and np.all(np.diff(g.edges) > 0)
    assert np.all(np.diff(g.centers) > 0)  # ordered easy (low loss) to hard
    for j in range(k):
        assert g.centers[j] == pytest.approx(x[g.edges[j]:g.edges[j + 1]].mean())
    # a fixed point of Lloyd: every value is nearest to its own group's mean, and the same
    # iterations on unsorted data from the same start end in the same groups
    label = np.repeat(np.arange(k), np.diff(g.edges))
    assert np.array_equal(np.argmin(np.abs(x[:, None] - g.centers[None, :]), axis=1), label)
    start = x[((np.arange(k) + 0.5) * len(x) / k).astype(int)]
    perm = rng.permutation(len(x))
    brute_label, brute_centers = brute_lloyd(x[perm], start)
    assert np.array_equal(brute_label, label[perm]) and np.allclose(brute_centers, g.centers)


def test_kmeans_1d_separates_clear_clusters_and_handles_repeated_values():
    x = np.sort(np.array([0.0, 0.1, 0.2, 5.0, 5.1, 10.0]))
    assert np.diff(kmeans_1d(x, 3).edges).tolist() == [3, 2, 1]
    # a block of equal values (never-scored samples at the mean) stays in one group
    x = np.sort(np.concatenate([np.linspace(0, 1, 100), np.full(400, 0.5)]))
    g = kmeans_1d(x, 5)
    groups = [x[a:b] for a, b in zip(g.edges[:-1], g.edges[1:])]
    assert sum((grp == 0.5).any() for grp in groups) == 1 and len(groups) == 5
    assert np.diff(kmeans_1d(np.array([1.0, 1.0, 2.0, 3.0, 3.0]), 5).edges).tolist() == [2, 1, 2]  # 3 values


def seta_scores(n, k, rng):
    """Scores in k well-separated bands: band j holds losses near 10 j."""
    band = rng.integers(0, k, n)
    return band, (10.0 * band + rng.random(n)).astype(np.float32)


def test_seta_keeps_the_window_of_loss_groups_of_a_uniform_draw():
    n, k, w, r = 20_000, 5, 0.6, 0.3
    rng = np.random.default_rng(0)
    universe = np.sort(rng.choice(3 * n, n, replace=False)).astype(np.int64)
    scores = np.full(3 * n, np.nan, np.float32)
    band, scores[universe] = seta_scores(n, k, rng)
    band_of = dict(zip(universe.tolist(), band.tolist()))
    seta = SeTa(epochs=20, prune_ratio=r, groups=k, window=w)
    assert seta.prune_epochs == 17 and seta.window_groups == 3
    m = int((1 - r) * n)
    for epoch in range(2, 9):
        step = seta.select(ctx(epoch - 1, universe, scores=scores, seed=4))
        sel = step.selection
        assert step.action == "prune" and sel.weights is None and np.all(np.diff(sel.indices) > 0)
        drawn = universe[seta.draw(universe, 4, epoch)]
        assert len(drawn) == len(np.unique(drawn)) == m and set(sel.indices.tolist()) <= set(drawn.tolist())
        want = set(reference_window(k, epoch - 1, w))
        assert sorted({band_of[i] for i in sel.indices.tolist()}) == sorted(want)
        assert set(sel.indices.tolist()) == {i for i in drawn.tolist() if band_of[i] in want}  # the whole group
    # the draw is uniform: each band's share of it is its share of the data
    drawn = universe[seta.draw(universe, 4, 3)]
    share = np.bincount([band_of[i] for i in drawn.tolist()], minlength=k) / m
    assert np.allclose(share, np.bincount(band, minlength=k) / n, atol=0.02)
    # epoch 1: the whole draw (the first pruning iteration keeps every group); a fresh draw each epoch
    first = seta.first(universe, 4)
    assert np.array_equal(first.indices, np.sort(universe[seta.draw(universe, 4, 1)]))
    assert len(first.indices) == m and not np.array_equal(first.indices, np.sort(drawn))


def test_seta_anneals_on_a_random_draw_and_asks_for_scores_only_before_pruning_epochs():
    n, r = 1000, 0.4
    universe = np.arange(n, dtype=np.int64)
    scores = np.random.default_rng(1).exponential(1.0, n).astype(np.float32)
    seta = SeTa(epochs=8, prune_ratio=r, anneal=0.5)
    assert seta.prune_epochs == 4
    actions = [seta.select(ctx(e, universe, scores=scores)).action for e in range(1, 8)]
    assert actions == ["prune"] * 3 + ["draw"] * 4
    assert [seta.reads_losses(e, None) for e in range(1, 9)] == [True] * 3 + [False] * 5
    for e in range(5, 9):  # no scores used: a uniform draw of floor((1-r) N), unweighted
        sel = seta.select(ctx(e - 1, universe, scores=scores)).selection
        assert len(sel.indices) == 600 and sel.weights is None
        assert np.array_equal(sel.indices, seta.select(ctx(e - 1, universe, scores=-scores)).selection.indices)
    end = seta.select(ctx(8, universe, scores=scores, final=True))
    assert end.action == "end" and len(end.selection.indices) == 600
    # r = 0 and w = 1: all data every epoch
    assert all(len(SeTa(epochs=4, window=1.0).select(ctx(e, universe, scores=scores)).selection.indices) == n
               for e in range(1, 4))


def test_seta_ranks_never_scored_samples_at_the_mean_and_is_seeded():
    n = 5000
    universe = np.arange(n, dtype=np.int64)
    band, scores = seta_scores(n, 5, np.random.default_rng(2))
    scores[::3] = np.nan
    seta = SeTa(epochs=10, prune_ratio=0.2)
    imputed = scores.copy()
    imputed[::3] = np.nanmean(scores.astype(np.float64))
    for e in range(1, 6):
        a = seta.select(ctx(e, universe, scores=scores, seed=7)).selection.indices
        assert np.array_equal(a, seta.select(ctx(e, universe, scores=imputed, seed=7)).selection.indices)
        assert np.array_equal(a, seta.select(ctx(e, universe, scores=scores, seed=7)).selection.indices)
        assert not np.array_equal(a, seta.select(ctx(e, universe, scores=scores, seed=8)).selection.indices)
    # nothing scored, or every score equal: the draw cut in its random order into k parts
    for flat in (np.full(n, np.nan, np.float32), np.ones(n, np.float32)):
        sel = seta.select(ctx(1, universe, scores=flat, seed=7)).selection.indices  # epoch 2: 3 of 5 parts
        parts = np.array_split(universe[seta.draw(universe, 7, 2)], 5)
        assert np.array_equal(sel, np.sort(np.concatenate(parts[1:4])))


def test_seta_parameters_and_plan():
    with pytest.raises(ConfigError, match=r"policy.prune_ratio \(--prune-ratio\).*\[0, 1\)"):
        SeTa(epochs=4, prune_ratio=1.0)
    with pytest.raises(ConfigError, match=r"--groups.*integer >= 1"):
        SeTa(epochs=4, groups=0)
    with pytest.raises(ConfigError, match=r"--window.*round\(5 x 0.1\) keeps no group"):
        SeTa(epochs=4, groups=5, window=0.1)
    assert make_policy("seta", SCHED).prune_ratio == 0.0 and make_policy("infobatch", SCHED).prune_ratio == 0.5
    p = SeTa(epochs=10, prune_ratio=0.3, groups=5, window=0.6).plan(1000)  # prunes epochs 1..8
    assert [e.event for e in p.epochs] == ["prune"] * 8 + ["draw"] * 2
    assert [e.exact for e in p.epochs] == [True] + [False] * 7 + [True] * 2
    assert all(e.size == 700 for e in p.epochs) and all(e.low_size == 1 for e in p.epochs[1:8])
    assert p.compute_ratio is None and p.compute_bounds[1] == pytest.approx(0.7)
    assert p.nominal_ratio == pytest.approx((0.7 + 7 * 0.7 * 3 / 5 + 2 * 0.7) / 10)
    assert p.to_dict()["compute_ratio_nominal"] == p.nominal_ratio
    # a window of every group: exact
    assert SeTa(epochs=10, prune_ratio=0.3, window=1.0).plan(1000).compute_ratio == pytest.approx(0.7)


# ---------------------------------------------------------------- the score table

def test_score_table_keeps_the_last_score_of_samples_not_trained():
    t = ScoreTable(6)
    assert t.scored() == 0 and np.isnan(t.loss).all()
    t.update(np.array([0, 2, 4]), np.array([1.0, 2.0, 3.0], np.float32), epoch=1)
    t.update(np.array([2, 5]), np.array([0.5, 9.0], np.float32), epoch=2)
    assert t.loss[[0, 2, 4, 5]].tolist() == [1.0, 0.5, 3.0, 9.0] and t.epoch.tolist() == [1, 0, 2, 0, 1, 2]
    assert t.scored() == 4
    u = ScoreTable.from_arrays(t.loss.copy(), t.epoch.copy())
    assert u.digest() == t.digest()
    u.update(np.array([1]), np.array([0.0], np.float32), epoch=3)
    assert u.digest() != t.digest()


def test_score_table_at_imagenet_scale_is_about_10_mb():
    assert ScoreTable(1_281_167).nbytes == 8 * 1_281_167  # 10.2 MB: float32 loss + int32 epoch


def _walk_from_the_first_pass(universe, r, seed, epoch):
    """The definition, replayed from pass 0: the reference the shortcut in RS2.draw must match."""
    n = len(universe)
    m = RS2(epochs=1, fraction=r).chunk(n)
    start, end = (epoch - 1) * m, epoch * m
    walk = []
    for k in range((end - 1) // n + 1):
        raw = list(np.random.default_rng([seed, k, 0x52]).permutation(n))
        t = (k * n) % m
        if k and t:  # the straddling epoch takes new samples the old pass's rest does not hold
            tail = set(walk[-t:])
            fresh = [x for x in raw if x not in tail][:m - t]
            cut = raw.index(fresh[-1]) + 1
            raw = fresh + [x for x in raw[:cut] if x in tail] + raw[cut:]
        walk += raw
    return np.sort(universe[walk[start:end]])


@pytest.mark.parametrize("n,r", [(11, 0.8), (50, 0.6), (13, 0.95), (40, 0.3)])
def test_rs2_shortcut_matches_the_walk_from_the_first_pass(n, r):
    universe = np.arange(n, dtype=np.int64) + 100
    rs2 = RS2(epochs=80, fraction=r)
    for e in range(1, 80):
        assert np.array_equal(rs2.draw(universe, 4, e).indices, _walk_from_the_first_pass(universe, r, 4, e)), e


def test_full_data_keeps_every_sample_and_no_state():
    full = make_policy("full", SCHED)
    universe = np.arange(50, dtype=np.int64)
    assert full.first_state() is None and not full.ranks_by_loss
    assert not any(full.reads_losses(e, None) for e in range(1, SCHED.epochs + 1))
    step = full.select(ctx(3, universe, scores=np.zeros(50, dtype=np.float32), state=None))
    assert np.array_equal(step.selection.indices, universe) and step.state is None and step.action == "stay"
    p = full.plan(50)
    assert p.num_epochs == SCHED.epochs and p.schedule is None and p.compute_ratio == 1.0
    assert {(e.event, e.action) for e in p.epochs} == {("full", "stay")}
