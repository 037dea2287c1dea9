"""Split the selected samples across ranks so every rank runs the same number of steps.

Each epoch every rank applies the same seeded permutation to the selection, then takes every
world-th sample starting at its rank. When n is not divisible by the world size, the permuted
list is padded by wrapping around to its start, so each rank holds ceil(n / world) samples and
the same number of steps (the last step may be a partial batch, equally on every rank). A padded
sample is trained (and counted in samples_trained), but flagged as padding so its loss is not
recorded twice in the ledger. At most world-1 samples per epoch are padding, less than one global
batch. No rank ever waits in a collective for a step another rank does not take, so we never
need hvd.join (which breaks allgather and broadcast).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from dap_hvd.rng import stream


@dataclass(frozen=True)
class Shard:
    indices: np.ndarray  # int64 global sample indices this rank trains this epoch, in order
    valid: np.ndarray  # bool: False for wrap-around padding
    steps: int  # identical on every rank

    def encoded_labels(self) -> np.ndarray:
        """What the readers carry as `labels=`: the global index, or -(index+1) for padding."""
        return np.where(self.valid, self.indices, -self.indices - 1).astype(np.int64)


def decode_labels(encoded: np.ndarray):
    """Inverse of Shard.encoded_labels -> (global indices, valid mask). Works on numpy/torch."""
    valid = encoded >= 0
    indices = encoded * valid + (-encoded - 1) * (~valid)
    return indices, valid


def shard_for_rank(selection: np.ndarray, *, epoch: int, seed: int, rank: int, world: int,
                   batch_size: int) -> Shard:
    n = len(selection)
    if n == 0:
        raise ValueError("cannot shard an empty selection")
    if not 0 <= rank < world:
        raise ValueError(f"rank {rank} outside 0..{world - 1}")
    perm = stream("shard", seed, epoch).permutation(n)
    order = np.asarray(selection, dtype=np.int64)[perm]
    per_rank = math.ceil(n / world)
    total = per_rank * world
    padded = np.resize(order, total)  # wraps around to the start
    valid = np.arange(total) < n
    mine = slice(rank, total, world)
    return Shard(indices=padded[mine], valid=valid[mine], steps=math.ceil(per_rank / batch_size))
