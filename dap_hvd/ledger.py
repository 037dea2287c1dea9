"""The loss ledger: each sample's training loss of this epoch, against its global index.

Losses come from the training forward pass (augmentation included), so recording them costs no
extra forward pass. Recording stays on the device, with no host sync per step; the ledger is
read once, at the epoch's end, when the schedule asks for a drop.
"""

from __future__ import annotations

import numpy as np
import torch


class LossLedger:
    def __init__(self, subset: np.ndarray, device: torch.device):
        self.subset = np.asarray(subset, dtype=np.int64)  # sorted global indices
        self._keys = torch.from_numpy(self.subset).to(device)
        self.loss = torch.zeros(len(self.subset), dtype=torch.float32, device=device)
        self.count = torch.zeros(len(self.subset), dtype=torch.float32, device=device)

    def record(self, indices: torch.Tensor, losses: torch.Tensor, valid: torch.Tensor) -> None:
        """Add per-sample losses; `valid` is False for padding duplicates, which must not count
        twice (a summed loss vector would otherwise double them)."""
        pos = torch.searchsorted(self._keys, indices)
        # where, not multiply: a non-finite padding loss times 0 is NaN, and would poison the
        # real sample's slot.
        kept = torch.where(valid, losses.detach().float(), torch.zeros((), device=losses.device))
        self.loss.index_put_((pos,), kept, accumulate=True)
        self.count.index_put_((pos,), valid.to(torch.float32), accumulate=True)
