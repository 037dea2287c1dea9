"""Run under horovodrun: the full distributed selection step on synthetic losses.

Each rank trains (pretends to) on its shard of an uneven subset, records losses in the ledger
(padding duplicates included but flagged), merges them, rank 0 selects and broadcasts. Every
rank prints the digest of what it ended up with and the digest a single process would compute
from the global loss vector.
"""

import argparse
import json
import sys

import numpy as np
import torch

from dap_hvd import DivergedError, dist
from dap_hvd.data.sharding import shard_for_rank
from dap_hvd.ledger import LossLedger
from dap_hvd.policy.policies import drop_keep, select_hardest, selection_digest, tie_break_rng
from dap_hvd.policy.schedule import keep_count
from dap_hvd.selection import merge_losses

ap = argparse.ArgumentParser()
ap.add_argument("--subset-size", type=int, default=1001)
ap.add_argument("--method", default="allreduce")
ap.add_argument("--strategy", default="dap")
ap.add_argument("--nan-at", type=int, default=-1)
a = ap.parse_args()

world = dist.init()
rng = np.random.default_rng(1234)
universe_size = 5 * a.subset_size
# + 2**33: indices only int64 can hold
subset = np.sort(rng.choice(universe_size, size=a.subset_size, replace=False)).astype(np.int64) + 2**33
global_loss = rng.integers(0, 40, size=a.subset_size).astype(np.float32) / 4  # plenty of ties
if a.nan_at >= 0:
    global_loss[a.nan_at] = np.nan
loss_of = dict(zip(subset.tolist(), global_loss.tolist()))

shard = shard_for_rank(subset, epoch=4, seed=9, rank=world.rank, world=world.size, batch_size=16)
ledger = LossLedger(subset, torch.device("cpu"))
for start in range(0, len(shard.indices), 16):  # batch by batch, like the engine
    idx = torch.from_numpy(shard.indices[start:start + 16])
    valid = torch.from_numpy(shard.valid[start:start + 16])
    ledger.record(idx, torch.tensor([loss_of[i] for i in idx.tolist()]), valid)

status = "ok"
try:
    merged = merge_losses(subset, ledger, method=a.method, epoch=4, world_size=world.size)  # checks counts, finite
    count = keep_count(a.subset_size, 0.9)
    chosen = drop_keep(a.strategy, subset, merged.losses, count, seed=9, epoch=4) \
        if world.is_root else None
    final = dist.broadcast_indices(chosen, name="sel")
    # one process ranking the global loss vector, with the same seeded tie-break
    expected = select_hardest(subset, global_loss, count, rng=tie_break_rng(9, 4)) \
        if a.strategy == "dap" else final
    payload = dict(digest=selection_digest(final), expected=selection_digest(expected), size=len(final),
                   bytes_sent=merged.bytes_sent, real=int(shard.valid.sum()),
                   steps=shard.steps, padding=int((~shard.valid).sum()),
                   merged_equal=bool(np.array_equal(merged.losses, global_loss)))
except DivergedError as e:
    status, payload = "diverged", dict(error=str(e))
sys.stdout.write("RESULT " + json.dumps(dict(rank=world.rank, status=status, **payload)) + "\n")
sys.stdout.flush()  # one write per line: ranks can share one pipe
dist.shutdown()
