"""The per-sample score table: every sample's most recent training loss and the epoch it was
recorded in. Pure numpy; the trainer merges each scored epoch's losses into it on every rank.

The score is plain cross-entropy from the training forward pass (augmentation included), so it
costs no extra forward pass. A sample not trained in an epoch keeps its last score: InfoBatch
compares every sample against the mean of the whole table, pruned ones included. A sample never
scored holds NaN with epoch 0; policies treat it as one to keep.

At ImageNet scale (N = 1,281,167) the two arrays take 4 + 4 bytes a sample, about 10 MB, and are
saved in the checkpoint as plain tensors (weights_only-safe).
"""

from __future__ import annotations

import hashlib

import numpy as np


class ScoreTable:
    def __init__(self, num_samples: int):
        self.loss = np.full(num_samples, np.nan, dtype=np.float32)
        self.epoch = np.zeros(num_samples, dtype=np.int32)  # 0: never scored

    @classmethod
    def from_arrays(cls, loss: np.ndarray, epoch: np.ndarray) -> "ScoreTable":
        if loss.shape != epoch.shape or loss.ndim != 1:
            raise ValueError(f"score table arrays disagree: loss {loss.shape}, epoch {epoch.shape}")
        table = cls(0)
        table.loss = np.ascontiguousarray(loss, dtype=np.float32)
        table.epoch = np.ascontiguousarray(epoch, dtype=np.int32)
        return table

    def __len__(self) -> int:
        return len(self.loss)

    @property
    def nbytes(self) -> int:
        return self.loss.nbytes + self.epoch.nbytes

    def update(self, indices: np.ndarray, losses: np.ndarray, epoch: int) -> None:
        """Record `losses` (aligned with the global `indices`) as of `epoch`."""
        self.loss[indices] = losses
        self.epoch[indices] = epoch

    def scored(self) -> int:
        return int(np.count_nonzero(self.epoch))

    def digest(self) -> str:
        """sha256 over both arrays: equal digests mean bit-identical tables (resume tests)."""
        h = hashlib.sha256(self.loss.astype("<f4").tobytes())
        h.update(self.epoch.astype("<i4").tobytes())
        return h.hexdigest()
