"""The policy step at ImageNet scale, under horovodrun: `python -m dap_hvd.bench.selection_step`.

Each rank fills a ledger for its shard of N samples as training would. Then we time the whole
step the trainer runs after a scored epoch: merge the losses (both methods), write them into the
score table, run the policy on rank 0 (DaP's hardest 90%, InfoBatch's below-mean pruning with
its weights; SeTa's k-means of the scores into 5 groups and a window of 3, at r = 0: all N
scores grouped), and broadcast the selection. Prints one JSON line on rank 0. Memory is the peak RSS
growth during the step, beyond the ledger and the score table themselves.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time

import numpy as np
import torch

from dap_hvd import dist
from dap_hvd.data.sharding import shard_for_rank
from dap_hvd.ledger import LossLedger
from dap_hvd.policy.policies import Context, Selection, make_policy
from dap_hvd.policy.schedule import DapState, Schedule
from dap_hvd.policy.scores import ScoreTable
from dap_hvd.selection import merge_losses


def _status(field: str) -> float:
    with open(f"/proc/{os.getpid()}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    return float("nan")


def _reset_peak() -> None:
    try:
        with open(f"/proc/{os.getpid()}/clear_refs", "w") as f:
            f.write("5")  # resets VmHWM to the current RSS
    except OSError:
        pass


def _broadcast(selection, world, name: str) -> Selection:
    """What the trainer sends: the indices as int64, and the weights when the policy has them."""
    indices = dist.broadcast_indices(selection.indices if world.is_root else None, name=name)
    weighted = dist.broadcast_json(None if not world.is_root else selection.weights is not None, name=f"{name}.w?")
    weights = None
    if weighted:
        w = torch.from_numpy(selection.weights) if world.is_root else None
        weights = dist.broadcast_tensor(w, name=f"{name}.w").numpy()
    return Selection(indices, weights)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--num-samples", type=int, default=1_281_167)
    ap.add_argument("--repeats", type=int, default=5)
    a = ap.parse_args()
    world = dist.init()
    torch.set_num_threads(1)
    n = a.num_samples
    universe = np.arange(n, dtype=np.int64)
    losses = np.random.default_rng(0).exponential(1.0, n).astype(np.float32)  # skewed, like real losses
    shard = shard_for_rank(universe, epoch=1, seed=0, rank=world.rank, world=world.size, batch_size=256)
    ledger = LossLedger(universe, torch.device("cpu"))
    for s in range(0, len(shard.indices), 256):
        idx = torch.from_numpy(shard.indices[s:s + 256])
        ledger.record(idx, torch.from_numpy(losses[shard.indices[s:s + 256]]), torch.from_numpy(shard.valid[s:s + 256]))
    sched = Schedule(epochs=120, warmup=10, interval=2, keep=0.9, active=10, reuse=(30, 60, 90))
    policies = {"dap": make_policy("dap", sched), "infobatch": make_policy("infobatch", sched),
                "seta": make_policy("seta", sched)}
    scores = ScoreTable(n)
    results = {}
    for name, policy in policies.items():
        # after epoch 12 DaP drops (W=10, I=2); InfoBatch and SeTa prune every epoch
        state = DapState(t_start=10, t_prev=10) if name == "dap" else None
        for method in ("allreduce", "allgather"):
            times, sent, mem = [], [], []
            for rep in range(a.repeats + 1):  # the first round warms up Horovod's buffers
                dist.barrier()
                rss0 = _status("VmRSS")
                _reset_peak()
                t0 = time.perf_counter()
                merged = merge_losses(universe, ledger, method=method, epoch=rep, world_size=world.size)
                scores.update(universe, merged.losses, 12)
                step = policy.select(Context(epoch=12, universe=universe, current=Selection(universe),
                                             scores=scores.loss, seed=0, state=state)) if world.is_root else None
                final = _broadcast(step.selection if world.is_root else None, world, f"bench.{name}.{method}.{rep}")
                dt = time.perf_counter() - t0
                peak = _status("VmHWM") - rss0
                # the slowest rank is what training waits for
                dt = float(torch.max(dist.allgather(torch.tensor([dt]), name=f"t.{name}.{method}.{rep}")))
                if rep:
                    times.append(dt)
                    extra = (8 + (4 if final.weights is not None else 0)) * len(final.indices) * (world.size - 1)
                    sent.append(merged.bytes_sent + (extra if world.is_root else 0))
                    mem.append(peak)
            results[f"{name}/{method}"] = dict(median_seconds=statistics.median(times), min_seconds=min(times),
                                               bytes_sent_rank0=int(statistics.median(sent)),
                                               peak_extra_mb_rank0=max(mem), kept=len(final.indices),
                                               weighted=None if final.weights is None else
                                               int(np.count_nonzero(final.weights != 1)))
    if world.is_root:
        print("BENCH " + json.dumps(dict(world_size=world.size, num_samples=n, repeats=a.repeats,
                                         ledger_mb=2 * 4 * n / 2**20, score_table_mb=scores.nbytes / 2**20,
                                         results=results)), flush=True)
    dist.shutdown()


if __name__ == "__main__":
    main()
