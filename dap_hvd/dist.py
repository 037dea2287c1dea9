"""The one module that imports Horovod: rank bookkeeping, the loss merge, selection broadcast.

Everything crossing ranks goes through here, so the rest of the code can be read (and tested)
as single-process code. Indices always travel as int64: float tensors lose precision above 2^24.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch

import horovod.torch as hvd


@dataclass(frozen=True)
class World:
    rank: int
    size: int
    local_rank: int
    local_size: int

    @property
    def is_root(self) -> bool:
        return self.rank == 0


def init(comm=None) -> World:
    """hvd.init(); `comm` may be an mpi4py communicator (e.g. MPI.COMM_WORLD)."""
    hvd.init(comm) if comm is not None else hvd.init()
    return World(hvd.rank(), hvd.size(), hvd.local_rank(), hvd.local_size())


def shutdown() -> None:
    if hvd.is_initialized():
        hvd.shutdown()


def barrier() -> None:
    hvd.allreduce(torch.zeros(1), name="barrier", op=hvd.Sum)


def allreduce_sum(t: torch.Tensor, name: str) -> torch.Tensor:
    return hvd.allreduce(t, name=name, op=hvd.Sum)


def allgather(t: torch.Tensor, name: str) -> torch.Tensor:
    return hvd.allgather(t, name=name)


def broadcast_json(obj, name: str, root: int = 0):
    """Broadcast a JSON-able value from `root`. Plain bytes on the wire, no pickle."""
    payload = json.dumps(obj).encode() if hvd.rank() == root else b""
    size = hvd.broadcast(torch.tensor([len(payload)], dtype=torch.int64), root, name=f"{name}.len")
    buf = torch.zeros(int(size.item()), dtype=torch.uint8)
    if hvd.rank() == root:
        buf = torch.frombuffer(bytearray(payload), dtype=torch.uint8)
    buf = hvd.broadcast(buf, root, name=f"{name}.data")
    return json.loads(bytes(buf.numpy()).decode())


def broadcast_indices(indices: Optional[np.ndarray], name: str, root: int = 0) -> np.ndarray:
    """Broadcast an int64 index array from `root` (others pass None)."""
    n = torch.tensor([len(indices) if hvd.rank() == root else 0], dtype=torch.int64)
    n = int(hvd.broadcast(n, root, name=f"{name}.len").item())
    buf = torch.from_numpy(np.ascontiguousarray(indices, dtype=np.int64)) if hvd.rank() == root \
        else torch.empty(n, dtype=torch.int64)
    return hvd.broadcast(buf, root, name=f"{name}.data").numpy()


@dataclass(frozen=True)
class MergedLosses:
    losses: np.ndarray  # float32, aligned with the (sorted) subset
    seconds: float
    bytes_sent: int  # per rank, what this rank put on the wire (approximate for ring algorithms)


def merge_losses(subset: np.ndarray, loss: torch.Tensor, count: torch.Tensor, *, method: str,
                 epoch: int, world_size: int) -> MergedLosses:
    """Global per-sample losses of `subset` on every rank, from each rank's partial ledger.

    allreduce: each rank holds dense [loss, count] vectors over the subset, zero where it saw
      nothing; one sum gives everyone everything. Wire cost ~2(w-1)/w * 8n bytes per rank.
    allgather: each rank sends (index, loss) for the samples it saw; cost ~12 * n bytes received.
    Either way a sample must have been seen exactly once across ranks (padding duplicates were
    never recorded); anything else is a loader bug, and we stop rather than select on it.
    """
    t0 = time.perf_counter()
    loss, count = loss.detach().float().cpu(), count.detach().float().cpu()
    n = len(subset)
    if method == "allreduce":
        merged = allreduce_sum(torch.stack([loss, count]), name=f"merge.{epoch}")
        losses, counts = merged[0].numpy(), merged[1].numpy()
        sent = int(2 * (world_size - 1) / max(world_size, 1) * merged.numel() * 4)
    elif method == "allgather":
        seen = torch.nonzero(count > 0).squeeze(1)
        pos = allgather(seen.to(torch.int64), name=f"merge.{epoch}.idx")
        val = allgather(loss[seen] / count[seen], name=f"merge.{epoch}.loss")
        cnt = allgather(count[seen], name=f"merge.{epoch}.count")
        losses = np.zeros(n, dtype=np.float32)
        counts = np.zeros(n, dtype=np.float32)
        np.add.at(counts, pos.numpy(), cnt.numpy())
        np.add.at(losses, pos.numpy(), val.numpy() * cnt.numpy())
        sent = int(seen.numel() * 12)
    else:
        raise ValueError(f"unknown merge method {method!r}")
    wrong = np.flatnonzero(counts != 1)
    if len(wrong):
        raise RuntimeError(
            f"epoch {epoch}: {len(wrong)} sample(s) of the subset were recorded "
            f"{sorted(set(counts[wrong].astype(int).tolist()))} times instead of once, e.g. global indices "
            f"{subset[wrong[:10]].tolist()}; the loader did not deliver exactly the selected shard")
    return MergedLosses(losses.astype(np.float32), time.perf_counter() - t0, sent)


def distributed_optimizer(optimizer, model: torch.nn.Module, fp16_allreduce: bool):
    compression = hvd.Compression.fp16 if fp16_allreduce else hvd.Compression.none
    return hvd.DistributedOptimizer(optimizer, named_parameters=model.named_parameters(),
                                    compression=compression, op=hvd.Average)


def broadcast_training_state(model: torch.nn.Module, optimizer) -> None:
    hvd.broadcast_parameters(model.state_dict(), root_rank=0)
    hvd.broadcast_optimizer_state(optimizer, root_rank=0)


def sync_batchnorm(model: torch.nn.Module) -> torch.nn.Module:
    """Replace BatchNorm layers with Horovod's SyncBatchNorm (statistics across ranks)."""
    def convert(module):
        out = module
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
            out = hvd.SyncBatchNorm(module.num_features, module.eps, module.momentum, module.affine,
                                    module.track_running_stats)
            if module.affine:
                with torch.no_grad():
                    out.weight.copy_(module.weight)
                    out.bias.copy_(module.bias)
            out.running_mean, out.running_var = module.running_mean, module.running_var
        for name, child in module.named_children():
            out.add_module(name, convert(child))
        return out
    return convert(model)
