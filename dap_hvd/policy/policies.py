"""The data policies as pure functions: which samples the next epoch trains on. Pure numpy.

After each epoch a policy sees the score table, the current subset, the epoch, the seed and its
parameters, and returns a Step: the next Selection (sorted global indices, plus per-sample loss
weights where the policy reweights) and its own small state. Randomness comes from the named
streams of dap_hvd.rng, keyed by (seed, epoch), so a resumed run draws exactly what the
uninterrupted run drew, and the checkpoint needs no RNG blob.

  dap        the paper: every I epochs keep the fraction p of the subset with the highest loss
  random     DaP's schedule with a uniform random keep (the paper's Table 2(f) ablation)
  full       all data, every epoch
  infobatch  Qin et al., ICLR 2024: prune below-mean samples at random with probability r and
             scale the kept ones' losses by 1/(1-r); the last (1-delta) of the epochs use all data
  rs2        Okanovic et al., ICLR 2024, without replacement: each epoch the next fraction r of a
             walk through seeded permutations, so every sample is seen once before any twice
  seta       Zhou et al., CVPR 2025: a random (1-r) of the data, grouped by loss with 1-D k-means,
             a window of the groups sliding from easy to hard; the last (1-delta) of the epochs
             train a random (1-r) of the data

The trainer is the thin stateful shell: it records losses when `reads_losses` says the next step
reads them, merges them into the score table, and calls `select` on rank 0.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, replace
from fractions import Fraction
from typing import Callable, ClassVar, NamedTuple, Optional, Protocol

import numpy as np

from dap_hvd import ConfigError, DivergedError
from dap_hvd.policy.schedule import (
    DROP,
    PICK,
    DapState,
    EpochPlan,
    Plan,
    Schedule,
    check_num_samples,
    decide,
    initial_state,
    keep_count,
)
from dap_hvd.policy.schedule import plan as plan_schedule
from dap_hvd.rng import stream


@dataclass(frozen=True)
class Selection:
    indices: np.ndarray  # sorted unique int64 global sample indices
    # float32 loss weight per index, for the gradient only (never for the recorded scores);
    # None: every weight is 1
    weights: Optional[np.ndarray] = None

    def weights_digest(self) -> Optional[str]:
        if self.weights is None:
            return None
        return hashlib.sha256(np.asarray(self.weights, dtype="<f4").tobytes()).hexdigest()


def selection_digest(indices: np.ndarray) -> str:
    """sha256 of the sorted selected global indices (as little-endian int64)."""
    return hashlib.sha256(np.sort(np.asarray(indices, dtype="<i8")).tobytes()).hexdigest()


def select_hardest(indices: np.ndarray, losses: np.ndarray, count: int,
                   rng: Optional[np.random.Generator] = None) -> np.ndarray:
    """The `count` samples with the largest losses. O(n) to find them, O(n log n) to sort them.

    `indices` must be sorted ascending and aligned with `losses`. Returns sorted indices.
    Samples tied at the threshold are taken in a random order drawn from `rng` (deterministic
    for a seeded generator). Index order would favour low class ids: indices follow sorted class
    names, and late in training many confident samples tie at a cross-entropy of exactly 0.
    Without `rng` the smaller indices win.
    """
    n = len(indices)
    if not 1 <= count <= n:
        raise ValueError(f"count must be in 1..{n}, got {count}")
    if count == n:
        return np.asarray(indices, dtype=np.int64)
    neg = -np.asarray(losses, dtype=np.float64)
    threshold = np.partition(neg, count - 1)[count - 1]
    above = neg < threshold
    need = count - int(above.sum())
    ties = np.flatnonzero(neg == threshold)
    ties = (rng.permutation(ties) if rng is not None else ties)[:need]
    chosen = np.flatnonzero(above)
    return np.asarray(indices, dtype=np.int64)[np.sort(np.concatenate([chosen, ties]))]


def tie_break_rng(seed: int, epoch: int) -> np.random.Generator:
    """The generator DaP draws its threshold tie-break from: a resumed run draws the same."""
    return stream("tie-break", seed, epoch)


def check_finite(indices: np.ndarray, losses: np.ndarray, epoch: int) -> None:
    bad = ~np.isfinite(losses)
    if bad.any():
        shown = indices[bad][:20].tolist()
        more = "" if bad.sum() <= 20 else f" (and {int(bad.sum()) - 20} more)"
        raise DivergedError(
            f"epoch {epoch}: non-finite training loss for sample indices {shown}{more}; "
            f"the run has diverged (lower --lr, or check the data)")


def drop_keep(rule: str, indices: np.ndarray, losses: Optional[np.ndarray], count: int, *, seed: int,
              epoch: int) -> np.ndarray:
    """The `count` samples of the (sorted) `indices` that a drop after `epoch` keeps, sorted:
    dap the hardest (by `losses`, aligned with `indices`), random a uniform draw, full all."""
    if rule == "dap":
        check_finite(indices, losses, epoch)
        return select_hardest(indices, losses, count, rng=tie_break_rng(seed, epoch))
    if rule == "random":
        rng = stream("random-keep", seed, epoch)
        return np.sort(np.asarray(indices, dtype=np.int64)[rng.choice(len(indices), size=count, replace=False)])
    return np.asarray(indices, dtype=np.int64)


# A policy's own state between epochs, checkpointed with the run and broadcast with each step:
# DaP's (T_start, T_prev), or None for the policies whose draws are functions of (seed, epoch).
PolicyState = Optional[DapState]


def state_to_dict(state: PolicyState) -> Optional[dict]:
    """The checkpoint's and the broadcast's form of a policy state (None stays None)."""
    return None if state is None else state.to_dict()


def state_from_dict(d: Optional[dict]) -> PolicyState:
    return None if d is None else DapState.from_dict(d)


@dataclass(frozen=True)
class Context:
    """What a policy sees after training `epoch` (1-based)."""

    epoch: int  # the epoch just trained
    universe: np.ndarray  # every usable training sample, sorted
    current: Selection  # what `epoch` trained on
    scores: np.ndarray  # the score table's losses, by global index (NaN: never scored)
    seed: int
    state: PolicyState  # the policy's own state (DaP's T_start, T_prev), None for the others
    final: bool = False  # nothing trains after this epoch in this run (unless it is extended)


@dataclass(frozen=True)
class Step:
    selection: Selection  # for the next epoch
    state: PolicyState
    action: str  # what happened, for the history: drop | pick | stay | prune | full | draw | end


class Policy(Protocol):
    name: str
    ranks_by_loss: bool  # its selection orders samples by loss (a capped epoch would rank unseen ones)

    def first(self, universe: np.ndarray, seed: int) -> Selection: ...
    def first_state(self) -> PolicyState: ...
    # whether the step after `epoch` reads that epoch's losses (the trainer records them only then)
    def reads_losses(self, epoch: int, state: PolicyState) -> bool: ...
    def select(self, ctx: Context) -> Step: ...
    def plan(self, num_samples: Optional[int]) -> Plan: ...
    # Optional: `extension_note(done, planned) -> Optional[str]`, what extending a run planned for
    # `planned` epochs (`done` trained) to this policy's length changes beyond its plan (InfoBatch).


def _all(universe: np.ndarray) -> Selection:
    return Selection(np.asarray(universe, dtype=np.int64))


@dataclass(frozen=True)
class DropAndPick:
    """DaP's schedule (Algorithm 1), with the keep rule at a drop as a parameter: `dap` keeps the
    hardest (the paper's policy), `random` a uniform draw (its Table 2(f) ablation)."""

    schedule: Schedule
    name: str = "dap"  # the keep rule: dap | random

    @property
    def ranks_by_loss(self) -> bool:
        return self.name == "dap"

    def first(self, universe, seed):
        return _all(universe)

    def first_state(self):
        return initial_state(self.schedule)

    def reads_losses(self, epoch, state):
        return self.ranks_by_loss and decide(self.schedule, state, epoch).action == DROP

    def select(self, ctx):
        # Also after the final epoch: the selection saved with it is what a run extended with a
        # larger --epochs trains next, so it must be the one the longer run's plan says.
        decision = decide(self.schedule, ctx.state, ctx.epoch)
        if decision.action == PICK:
            return Step(_all(ctx.universe), decision.state, PICK)
        if decision.action != DROP:
            return Step(ctx.current, decision.state, decision.action)
        current = ctx.current.indices
        kept = drop_keep(self.name, current, ctx.scores[current] if self.name == "dap" else None,
                         keep_count(len(current), self.schedule.keep), seed=ctx.seed, epoch=ctx.epoch)
        return Step(Selection(kept), decision.state, DROP)

    def plan(self, num_samples):
        return replace(plan_schedule(self.schedule, num_samples), policy=self.name, params=self.schedule.to_dict())


@dataclass(frozen=True)
class FullData:
    """All data, every epoch: the baseline every policy's compute ratio is measured against."""

    epochs: int
    name: str = "full"
    ranks_by_loss: ClassVar[bool] = False

    def first(self, universe, seed):
        return _all(universe)

    def first_state(self):
        return None

    def reads_losses(self, epoch, state):
        return False

    def select(self, ctx):
        return Step(ctx.current, None, "stay")

    def plan(self, num_samples):
        check_num_samples(num_samples)
        rows = tuple(EpochPlan(e, 1.0, num_samples, "full", "stay") for e in range(1, self.epochs + 1))
        return Plan(self.epochs, num_samples, rows, policy=self.name, params={})


def _check_ratio(value, name: str, flag: str, low_open: bool = True, high_open: bool = True) -> float:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and \
        (value > 0 if low_open else value >= 0) and (value < 1 if high_open else value <= 1)
    if not ok:
        bounds = ("(" if low_open else "[") + "0, 1" + (")" if high_open else "]")
        raise ConfigError(f"policy.{name} ({flag}): must be in {bounds}, got {value!r}")
    return float(value)


@dataclass(frozen=True)
class InfoBatch:
    """InfoBatch (Qin et al., ICLR 2024). Before each epoch, the samples whose last score is below
    the table's mean are each pruned with probability r, and the kept ones' losses are scaled by
    1/(1-r), so the expected gradient is the full-data one. Samples never scored stay in (so the
    first epoch trains on all data). The first floor(delta * E) epochs prune; the rest anneal on
    all data with weight 1."""

    epochs: int
    prune_ratio: float = 0.5
    anneal: float = 0.875
    name: str = "infobatch"
    ranks_by_loss: ClassVar[bool] = True

    def __post_init__(self):
        problems = []  # both parameters checked, so one error names every bad one
        for key, flag, high_open in (("prune_ratio", "--prune-ratio", True), ("anneal", "--anneal", False)):
            try:
                object.__setattr__(self, key, _check_ratio(getattr(self, key), key, flag, high_open=high_open))
            except ConfigError as e:
                problems.append(str(e))
        if problems:
            raise ConfigError("; ".join(problems))

    @property
    def prune_epochs(self) -> int:
        """Epochs 1..prune_epochs may prune; later ones use all data."""
        return int(Fraction(repr(self.anneal)) * self.epochs)

    def first(self, universe, seed):
        return _all(universe)

    def first_state(self):
        return None

    def reads_losses(self, epoch, state):
        return epoch + 1 <= self.prune_epochs  # the next epoch prunes on these scores

    def select(self, ctx):
        nxt = ctx.epoch + 1
        if ctx.final or nxt > self.prune_epochs:
            return Step(_all(ctx.universe), None, "end" if ctx.final else "full")
        universe = np.asarray(ctx.universe, dtype=np.int64)
        scores = ctx.scores[universe]
        scored = np.isfinite(scores)
        if not scored.any():
            return Step(_all(universe), None, "full")
        below = scored & (scores < scores[scored].mean(dtype=np.float64))
        rng = stream("infobatch", ctx.seed, nxt)
        keep = ~(below & (rng.random(len(universe)) < self.prune_ratio))
        weights = np.where(below[keep], 1.0 / (1.0 - self.prune_ratio), 1.0).astype(np.float32)
        return Step(Selection(universe[keep], weights), None, "prune")

    def extension_note(self, done: int, planned: int) -> Optional[str]:
        """A run planned for `planned` epochs, `done` of them trained, now extended to `epochs`:
        floor(delta E) moves with E, so epochs that had annealed on all data may prune again."""
        before = InfoBatch(planned, self.prune_ratio, self.anneal).prune_epochs
        if done <= before or self.prune_epochs <= done:
            return None
        return (f"InfoBatch annealed epochs {before + 1}..{done} on all data (floor({self.anneal:g} x {planned}) = "
                f"{before} pruned); over --epochs {self.epochs}, epochs {done + 1}..{self.prune_epochs} prune again "
                f"(floor({self.anneal:g} x {self.epochs}) = {self.prune_epochs}) and the last "
                f"{self.epochs - self.prune_epochs} anneal")

    def plan(self, num_samples):
        """Sizes depend on the scores: between all data (no sample below the mean) and, in
        expectation, (1-r) N + r (all but one below it). Epoch 1 always trains all data."""
        r = self.prune_ratio
        rows = []
        for e in range(1, self.epochs + 1):
            prunes = 2 <= e <= self.prune_epochs
            after = "prune" if e + 1 <= self.prune_epochs else ("full" if e < self.epochs else "end")
            if not prunes:
                rows.append(EpochPlan(e, 1.0, num_samples, "full", after))
                continue
            low_size = None if num_samples is None else min(num_samples, math.ceil((1 - r) * num_samples + r))
            low = (1 - r) if num_samples is None else low_size / num_samples
            rows.append(EpochPlan(e, 1.0, num_samples, "prune", after, min_fraction=low, min_size=low_size))
        return Plan(self.epochs, num_samples, tuple(rows), policy=self.name,
                    params=dict(prune_ratio=self.prune_ratio, anneal=self.anneal, prune_epochs=self.prune_epochs))


@dataclass(frozen=True)
class RS2:
    """RS2 without replacement (Okanovic et al., ICLR 2024): every epoch trains m = floor(r N)
    samples, the next m of a walk through seeded permutations of the data, one pass after another,
    so every sample is seen once before any is seen twice (at any point, the counts of any two
    samples differ by at most one). When 1/r is a whole number and divides N, each round of 1/r
    epochs sees every sample exactly once.

    An epoch that straddles two passes takes the rest of the old pass and, from the new one, the
    first samples that the old pass's rest does not hold; the ones skipped come right after. So no
    epoch holds a sample twice, and each pass is still a permutation."""

    epochs: int
    fraction: float = 0.5
    name: str = "rs2"
    ranks_by_loss: ClassVar[bool] = False

    def __post_init__(self):
        object.__setattr__(self, "fraction", _check_ratio(self.fraction, "fraction", "--fraction", high_open=False))

    def chunk(self, n: int) -> int:
        return keep_count(n, self.fraction)

    def draw(self, universe: np.ndarray, seed: int, epoch: int) -> Selection:
        """The samples of `epoch` (1-based): a pure function of (seed, epoch). It replays the walk
        from the last pass whose end the reordering cannot have touched: 2 or 3 permutations for
        r <= 0.5, about 1/(1-r) more above: O(N) per epoch, whatever the epoch."""
        universe = np.asarray(universe, dtype=np.int64)
        n, m = len(universe), self.chunk(len(universe))
        if m == n:
            return Selection(universe)
        start, end = (epoch - 1) * m, epoch * m
        # A pass is reordered only in its first m positions, so pass j's last t samples (the ones
        # the next pass must avoid) are its raw permutation's whenever n - t >= m.
        k0 = next((j for j in range(start // n - 1, 0, -1) if n - ((j + 1) * n) % m >= m), 0)
        orders = {}  # pass -> its order (positions into universe), for the passes this epoch touches
        order = None
        taken = np.zeros(n, dtype=bool)
        for k in range(k0, (end - 1) // n + 1):
            raw = stream("rs2", seed, k).permutation(n)
            t = (k * n) % m  # samples of pass k-1 in the epoch that straddles the start of pass k
            if k > k0 and t:
                taken[order[n - t:]] = True
                prefix = raw[:m]  # the m - t new samples, and any skipped ones, lie within m
                fresh = np.flatnonzero(~taken[prefix])[:m - t]
                cut = fresh[-1] + 1
                skipped = prefix[:cut][taken[prefix[:cut]]]
                raw = np.concatenate([prefix[fresh], skipped, raw[cut:]])
                taken[order[n - t:]] = False
            order = raw
            if k >= start // n:
                orders[k] = order
        picked = [orders[k][max(start - k * n, 0):min(end - k * n, n)] for k in sorted(orders)]
        return Selection(np.sort(universe[np.concatenate(picked)]))

    def first(self, universe, seed):
        return self.draw(universe, seed, 1)

    def first_state(self):
        return None

    def reads_losses(self, epoch, state):
        return False

    def select(self, ctx):
        # also after the final epoch: a run extended with a larger --epochs continues the walk
        return Step(self.draw(ctx.universe, ctx.seed, ctx.epoch + 1), None, "end" if ctx.final else "draw")

    def plan(self, num_samples):
        size = None if num_samples is None else self.chunk(num_samples)
        fraction = self.fraction if num_samples is None else size / num_samples
        rows = tuple(EpochPlan(e, fraction, size, "draw", "draw" if e < self.epochs else "end")
                     for e in range(1, self.epochs + 1))
        return Plan(self.epochs, num_samples, rows, policy=self.name, params=dict(fraction=self.fraction))


@dataclass(frozen=True)
class Groups:
    """1-D k-means of `values` sorted ascending: group g is values[edges[g]:edges[g + 1]], the
    groups ordered by mean from low to high (in 1-D every cluster is an interval of the sorted
    values, so the order of the intervals is the order of their means)."""

    edges: np.ndarray  # int64, len(groups) + 1, strictly increasing: no group is empty
    centers: np.ndarray  # float64 mean of each group
    iterations: int  # Lloyd steps run


def _round_down(values: np.ndarray, dtype) -> np.ndarray:
    """`values` (float64) as the largest `dtype` numbers not above them: searchsorted of these in
    data of that dtype cuts exactly where the float64 values would, without a float64 copy."""
    out = values.astype(dtype)
    above = out > values
    out[above] = np.nextafter(out[above], np.array(-np.inf, dtype=dtype))
    return out


KMEANS_MAX_ITER = 300  # sklearn's KMeans default, which the reference calls


def kmeans_1d(sorted_values: np.ndarray, k: int, max_iter: int = KMEANS_MAX_ITER) -> Groups:
    """Exact Lloyd iterations on sorted 1-D data, to convergence (or `max_iter`): with the data
    sorted, an assignment is k-1 cut points (a searchsorted of the midpoints between centers) and
    a group's mean is a difference of prefix sums, so a step costs O(k log n), not O(n k).
    Deterministic: the centers start at the data's quantiles (k-means++ in the reference), at the
    quantiles of the distinct values when repeated values make those coincide. With at most k
    distinct values each value is its own group."""
    x = np.asarray(sorted_values)
    if x.dtype not in (np.float32, np.float64):
        x = x.astype(np.float64)
    n = len(x)
    if n == 0 or k < 1:
        raise ValueError(f"kmeans_1d needs values and k >= 1, got {n} values, k={k}")
    prefix = np.zeros(n + 1)
    np.cumsum(x, dtype=np.float64, out=prefix[1:])

    def groups(edges: np.ndarray, iterations: int) -> Groups:
        return Groups(edges, (prefix[edges[1:]] - prefix[edges[:-1]]) / np.diff(edges), iterations)

    def distinct_starts() -> np.ndarray:  # the first position of each distinct value
        return np.flatnonzero(np.concatenate([[True], x[1:] != x[:-1]]))

    if 1 + np.count_nonzero(x[1:] != x[:-1]) <= k:
        return groups(np.append(distinct_starts(), n).astype(np.int64), 0)
    centers = x[((np.arange(k) + 0.5) * n / k).astype(np.int64)].astype(np.float64)
    if np.any(np.diff(centers) <= 0):
        distinct = x[distinct_starts()]
        centers = distinct[((np.arange(k) + 0.5) * len(distinct) / k).astype(np.int64)].astype(np.float64)
    cuts = None
    for it in range(1, max_iter + 1):  # noqa: B007 (read after the loop: the steps run)
        # a value on a midpoint goes to the lower group
        new_cuts = np.searchsorted(x, _round_down((centers[:-1] + centers[1:]) / 2, x.dtype), side="right")
        if cuts is not None and np.array_equal(new_cuts, cuts):
            break
        cuts = new_cuts
        edges = np.concatenate([[0], cuts, [n]])
        counts = np.diff(edges)
        sums = prefix[edges[1:]] - prefix[edges[:-1]]
        centers = np.where(counts > 0, sums / np.maximum(counts, 1), centers)  # an empty group keeps its center
    edges = np.unique(np.concatenate([[0], cuts, [n]])).astype(np.int64)  # empty groups dropped
    return groups(edges, it)


class Window(NamedTuple):
    start: int  # the first group kept
    stop: int  # one past the last


def seta_window(num_groups: int, window: float, iteration: int) -> Window:
    """The groups [start, stop) that SeTa keeps at pruning iteration `iteration` (0-based: the
    first pruning epoch is 0 and keeps every group). round(k w) consecutive groups (at least one),
    the start sliding by one group per iteration from easy to hard and back to 0 after
    k - round(k w) + 1 iterations. Python's round, as in the reference: round(2.5) is 2."""
    if iteration == 0:
        return Window(0, num_groups)
    size = min(num_groups, max(1, round(num_groups * window)))
    start = iteration % (num_groups - size + 1)
    return Window(start, start + size)


@dataclass(frozen=True)
class SeTa:
    """SeTa (Zhou, Gao, Wang, "Scale Efficient Training for Large Datasets", CVPR 2025), after the
    reference seta.py (github.com/mrazhou/SeTa). Each pruning epoch t = 1..floor(delta E) draws a
    uniform random floor((1-r) N) of the data, groups the drawn samples by their last score with
    1-D k-means into k groups ordered by mean (easy to hard), and trains the window of round(k w)
    consecutive groups starting at group (t-1) mod (k - round(k w) + 1); epoch 1 trains the whole
    draw. Later epochs ("partial annealing") each train a fresh random floor((1-r) N). Losses are
    not rescaled.

    A sample never scored (the reference starts every score at 3.0, whose place among the losses
    depends on the dataset and the epoch) takes the mean of the scored samples' scores: an unknown
    sits in the middle of the easy-to-hard order, in groups most windows hold. With no sample
    scored, or all scores equal, the draw is cut in its random order into k near-equal groups (the
    reference's torch.chunk)."""

    epochs: int
    prune_ratio: float = 0.0
    groups: int = 5
    window: float = 0.6
    anneal: float = 0.875
    name: str = "seta"
    ranks_by_loss: ClassVar[bool] = True

    def __post_init__(self):
        object.__setattr__(self, "prune_ratio", _check_ratio(self.prune_ratio, "prune_ratio", "--prune-ratio",
                                                             low_open=False))
        object.__setattr__(self, "window", _check_ratio(self.window, "window", "--window", high_open=False))
        object.__setattr__(self, "anneal", _check_ratio(self.anneal, "anneal", "--anneal", high_open=False))
        if not (isinstance(self.groups, int) and not isinstance(self.groups, bool) and self.groups >= 1):
            raise ConfigError(f"policy.groups (--groups): must be an integer >= 1, got {self.groups!r}")
        if round(self.groups * self.window) < 1:
            raise ConfigError(f"policy.window (--window): round(groups x window) = round({self.groups} x "
                              f"{self.window}) keeps no group; raise --window above {0.5 / self.groups:.3g} or "
                              f"--groups")

    @property
    def prune_epochs(self) -> int:
        """Epochs 1..prune_epochs slide the window; later ones train a random draw."""
        return int(Fraction(repr(self.anneal)) * self.epochs)

    @property
    def window_groups(self) -> int:
        return min(self.groups, round(self.groups * self.window))

    def draw_count(self, n: int) -> int:
        return keep_count(n, 1.0 - self.prune_ratio)

    def draw(self, universe: np.ndarray, seed: int, epoch: int) -> np.ndarray:
        """Epoch `epoch`'s uniform random floor((1-r) N), as positions into `universe`, in their
        random order."""
        rng = stream("seta", seed, epoch)
        return rng.permutation(len(universe))[:self.draw_count(len(universe))]

    def choose(self, universe: np.ndarray, scores: np.ndarray, seed: int, epoch: int) -> Selection:
        """The samples of `epoch` (1-based): a pure function of the seed, the epoch and the scores.
        O(N log N): one permutation, one sort of the drawn scores (float32), masks; no copy in float64."""
        universe = np.asarray(universe, dtype=np.int64)
        if self.draw_count(len(universe)) == len(universe):  # r = 0: the draw is every sample
            chosen = universe
        else:
            drawn = np.zeros(len(universe), dtype=bool)
            drawn[self.draw(universe, seed, epoch)] = True
            chosen = universe[drawn]  # sorted, as the universe is
            del drawn
        if epoch == 1 or epoch > self.prune_epochs:  # all groups of the draw, or the annealing draw
            return Selection(chosen)
        values = np.asarray(scores[chosen], dtype=np.float32)  # finite or NaN: the trainer stops on inf
        unscored = np.isnan(values)
        if unscored.any() and not unscored.all():  # the mean of every scored sample, drawn or not
            values[unscored] = np.nanmean(np.asarray(scores[universe], dtype=np.float32), dtype=np.float64)
        if unscored.all() or values.min() == values.max():
            # no order to group by: cut the draw, in its random order, into k near-equal groups
            raw = self.draw(universe, seed, epoch)
            parts = np.array_split(raw, min(self.groups, len(raw)))
            start, stop = seta_window(len(parts), self.window, epoch - 1)
            return Selection(np.sort(universe[np.concatenate(parts[start:stop])]))
        ordered = np.sort(values)
        g = kmeans_1d(ordered, self.groups)
        start, stop = seta_window(len(g.edges) - 1, self.window, epoch - 1)
        # Equal values never straddle two groups, so a window of groups is a closed range of values.
        low, high = ordered[g.edges[start]], ordered[g.edges[stop] - 1]
        return Selection(chosen[(values >= low) & (values <= high)])

    def first(self, universe, seed):
        return self.choose(universe, np.full(0, np.nan), seed, 1)

    def first_state(self):
        return None

    def reads_losses(self, epoch, state):
        return epoch + 1 <= self.prune_epochs  # the next epoch groups by these scores

    def select(self, ctx):
        nxt = ctx.epoch + 1
        action = "end" if ctx.final else ("prune" if nxt <= self.prune_epochs else "draw")
        if ctx.final:  # no scores were merged: a run extended past E continues with the annealing draw
            return Step(self.choose(ctx.universe, ctx.scores, ctx.seed, self.epochs + 1), None, action)
        return Step(self.choose(ctx.universe, ctx.scores, ctx.seed, nxt), None, action)

    def plan(self, num_samples):
        """Epoch 1 and the annealing epochs train exactly floor((1-r) N). A sliding epoch's size
        depends on the k-means groups: at least one sample, at most the draw; its nominal size,
        with k equal groups, is round(k w)/k of the draw (summary.json has the measured one)."""
        m = None if num_samples is None else self.draw_count(num_samples)
        full = (1.0 - self.prune_ratio) if num_samples is None else m / num_samples
        share = self.window_groups / self.groups
        rows = []
        for e in range(1, self.epochs + 1):
            after = "end" if e == self.epochs else ("prune" if e + 1 <= self.prune_epochs else "draw")
            if e == 1 or e > self.prune_epochs or self.window_groups == self.groups:
                rows.append(EpochPlan(e, full, m, "draw" if e > self.prune_epochs else "prune", after))
                continue
            low = 1 / num_samples if num_samples else 0.0
            rows.append(EpochPlan(e, full, m, "prune", after, min_fraction=low, min_size=1 if m else None,
                                  nominal_fraction=full * share))
        return Plan(self.epochs, num_samples, tuple(rows), policy=self.name,
                    params=dict(prune_ratio=self.prune_ratio, groups=self.groups, window=self.window,
                                anneal=self.anneal, prune_epochs=self.prune_epochs))


# DaP's schedule parameters (Algorithm 1), as the config and the flags name them.
SCHEDULE_PARAMS = ("warmup", "interval", "keep", "active", "reuse")


@dataclass(frozen=True)
class PolicyEntry:
    """One policy in the registry: what it does, the parameters it reads besides the run length
    (`epochs`), and how to build it from the schedule and those parameters. A parameter given for
    a policy that does not read it is refused (config.py), naming the ones this entry declares."""

    summary: str
    params: tuple[str, ...]
    build: Callable[..., "Policy"]  # (schedule, **params) -> Policy


# The one registry of names. A new policy adds its entry here (and each new parameter a field of
# config.PolicyConfig and a flag in cli._policy_flags); validation, plan, checkpoints and resume
# checks all read `params` from here.
REGISTRY: dict[str, PolicyEntry] = {
    "dap": PolicyEntry("keep the hardest p of the subset every I epochs (the DaP paper)", SCHEDULE_PARAMS,
                       lambda s: DropAndPick(s, name="dap")),
    "random": PolicyEntry("DaP's schedule, uniform random keep (Table 2(f))", SCHEDULE_PARAMS,
                          lambda s: DropAndPick(s, name="random")),
    "full": PolicyEntry("all data every epoch", (), lambda s: FullData(s.epochs)),
    "infobatch": PolicyEntry("prune below-mean-loss samples with probability r, rescale the kept (Qin et al. 2024)",
                             ("prune_ratio", "anneal"), lambda s, **p: InfoBatch(s.epochs, **p)),
    "rs2": PolicyEntry("a fresh random fraction r each epoch, without replacement (Okanovic et al. 2024)",
                       ("fraction",), lambda s, **p: RS2(s.epochs, **p)),
    "seta": PolicyEntry("a random 1-r of the data, k-means loss groups, a window sliding easy to hard "
                        "(Zhou et al. 2025)", ("prune_ratio", "anneal", "groups", "window"),
                        lambda s, **p: SeTa(s.epochs, **p)),
}
POLICIES = {name: entry.summary for name, entry in REGISTRY.items()}


def make_policy(name: str, schedule: Schedule, **params) -> Policy:
    """The policy `name` over `schedule` (its run length, and DaP's parameters for dap/random).
    `params` may hold every policy's parameters: each policy takes the ones it declares. A
    parameter left None takes the policy's own default (prune_ratio: InfoBatch 0.5, SeTa 0.0)."""
    entry = REGISTRY.get(name)
    if entry is None:
        raise ConfigError(f"strategy (--strategy): unknown policy {name!r}; choose from {', '.join(POLICIES)}")
    return entry.build(schedule, **{k: v for k, v in params.items() if k in entry.params and v is not None})
