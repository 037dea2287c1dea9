"""Selection strategies: which samples of the current subset survive a drop. Pure numpy.

A strategy sees the sorted global indices of the current subset and, if it asks for them, their
merged losses from the epoch just trained. It returns a Selection. Strategies are stateless:
randomness comes from a generator seeded by (seed, epoch), so a resumed run draws exactly what
the uninterrupted run drew, and the checkpoint needs no RNG blob.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Optional, Protocol

import numpy as np

from dap_hvd import ConfigError, DivergedError


@dataclass(frozen=True)
class Selection:
    indices: np.ndarray  # sorted unique int64 global sample indices


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
    return np.random.default_rng([seed, epoch, 0x71E])


def check_finite(indices: np.ndarray, losses: np.ndarray, epoch: int) -> None:
    bad = ~np.isfinite(losses)
    if bad.any():
        shown = indices[bad][:20].tolist()
        more = "" if bad.sum() <= 20 else f" (and {int(bad.sum()) - 20} more)"
        raise DivergedError(
            f"epoch {epoch}: non-finite training loss for sample indices {shown}{more}; "
            f"the run has diverged (lower --lr, or check the data)")


class Strategy(Protocol):
    name: str
    needs_losses: bool  # whether the trainer must merge losses across ranks for it

    def select(self, indices: np.ndarray, losses: Optional[np.ndarray], count: int,
               *, seed: int, epoch: int) -> Selection: ...


@dataclass(frozen=True)
class Hardest:
    """DaP: keep the samples the model finds hardest (largest training loss)."""

    name: str = "dap"
    needs_losses: bool = True

    def select(self, indices, losses, count, *, seed, epoch):
        check_finite(indices, losses, epoch)
        return Selection(select_hardest(indices, losses, count, rng=tie_break_rng(seed, epoch)))


@dataclass(frozen=True)
class UniformRandom:
    """The same schedule with a uniform random keep (the paper's Table 2(f) ablation)."""

    name: str = "random"
    needs_losses: bool = False

    def select(self, indices, losses, count, *, seed, epoch):
        rng = np.random.default_rng([seed, epoch, 0xD0])
        keep = rng.choice(len(indices), size=count, replace=False)
        return Selection(np.sort(np.asarray(indices, dtype=np.int64)[keep]))


@dataclass(frozen=True)
class FullData:
    """The all-data baseline: the schedule never shrinks the subset."""

    name: str = "full"
    needs_losses: bool = False

    def select(self, indices, losses, count, *, seed, epoch):
        return Selection(np.asarray(indices, dtype=np.int64))


STRATEGIES = {s.name: s for s in (Hardest(), UniformRandom(), FullData())}


def get_strategy(name: str) -> Strategy:
    try:
        return STRATEGIES[name]
    except KeyError:
        raise ConfigError(f"--strategy: unknown strategy {name!r}; choose from {sorted(STRATEGIES)}") from None
