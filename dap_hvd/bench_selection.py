"""Selection step at ImageNet scale, under horovodrun: `python -m dap_hvd.bench_selection`.

Each rank fills a ledger for its shard of N samples as training would, then we time the whole
step (merge + select on rank 0 + broadcast) for both merge methods. Prints one JSON line on
rank 0. Memory is the peak RSS growth during the step, beyond the ledger itself.
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
from dap_hvd.ledger import LossLedger
from dap_hvd.policy.schedule import keep_count
from dap_hvd.policy.policies import drop_keep
from dap_hvd.data.sharding import shard_for_rank


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


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--num-samples", type=int, default=1_281_167)
    ap.add_argument("--repeats", type=int, default=5)
    a = ap.parse_args()
    world = dist.init()
    torch.set_num_threads(1)
    n = a.num_samples
    subset = np.arange(n, dtype=np.int64)
    losses = np.random.default_rng(0).random(n, dtype=np.float32) * 5
    shard = shard_for_rank(subset, epoch=1, seed=0, rank=world.rank, world=world.size, batch_size=256)
    ledger = LossLedger(subset, torch.device("cpu"))
    for s in range(0, len(shard.indices), 256):
        idx = torch.from_numpy(shard.indices[s:s + 256])
        ledger.record(idx, torch.from_numpy(losses[shard.indices[s:s + 256]]), torch.from_numpy(shard.valid[s:s + 256]))
    strategy = drop_keep("dap")
    results = {}
    for method in ("allreduce", "allgather"):
        times, sent, mem = [], [], []
        for rep in range(a.repeats + 1):  # the first round warms up Horovod's buffers
            dist.barrier()
            rss0 = _status("VmRSS")
            _reset_peak()
            t0 = time.perf_counter()
            merged = dist.merge_losses(subset, ledger.loss, ledger.count, method=method, epoch=rep, world_size=world.size)
            chosen = strategy.select(subset, merged.losses, keep_count(n, 0.9), seed=0, epoch=rep).indices \
                if world.is_root else None
            final = dist.broadcast_indices(chosen, name=f"bench.{method}.{rep}")
            dt = time.perf_counter() - t0
            peak = _status("VmHWM") - rss0
            # slowest rank is what training waits for
            dt = float(torch.max(dist.allgather(torch.tensor([dt]), name=f"t.{method}.{rep}")))
            if rep:
                times.append(dt)
                sent.append(merged.bytes_sent + (8 * len(final) * (world.size - 1) if world.is_root else 0))
                mem.append(peak)
        results[method] = dict(median_seconds=statistics.median(times), min_seconds=min(times),
                               bytes_sent_rank0=int(statistics.median(sent)), peak_extra_mb_rank0=max(mem))
        assert len(final) == keep_count(n, 0.9)
    if world.is_root:
        print("BENCH " + json.dumps(dict(world_size=world.size, num_samples=n, repeats=a.repeats,
                                         ledger_mb=2 * 4 * n / 2**20, **results)), flush=True)
    dist.shutdown()


if __name__ == "__main__":
    main()
