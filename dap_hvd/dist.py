"""The one module that imports Horovod: rank bookkeeping, the loss merge, selection broadcast.

Everything crossing ranks goes through here, so the rest of the code can be read (and tested)
as single-process code. Indices always travel as int64: float tensors lose precision above 2^24.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import socket
from dataclasses import dataclass
from typing import Optional

import horovod.torch as hvd
import numpy as np
import torch
from horovod.common.elastic import State as ElasticState
from horovod.common.exceptions import HorovodInternalError as CollectiveError  # noqa: F401 (re-exported)

from dap_hvd import DapError, DataError, notice
from dap_hvd.data.catalog import dataset_mismatch


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
    losses: np.ndarray  # float32, aligned with the (sorted) subset: the sum of what the ranks recorded
    counts: np.ndarray  # float32: how often each sample was recorded, over all ranks (1 when the shards are right)
    bytes_sent: int  # per rank, what this rank put on the wire (approximate for ring algorithms)


def merge_losses(loss: torch.Tensor, count: torch.Tensor, *, method: str, epoch: int,
                 world_size: int) -> MergedLosses:
    """Sum every rank's partial ledger over the subset, on every rank (selection.merge_losses
    checks the counts).

    allreduce: each rank holds dense [loss, count] vectors over the subset, zero where it saw
      nothing; one sum gives everyone everything. Wire cost ~2(w-1)/w * 8n bytes per rank.
    allgather: each rank sends (position, loss) for the samples it saw, as int64 + float32, so
      12 bytes per sample; a position is repeated as often as it was recorded, so a duplicate
      still shows up as a count of 2, without a third collective for the counts.
    """
    loss, count = loss.detach().float().cpu(), count.detach().float().cpu()
    if method == "allreduce":
        merged = allreduce_sum(torch.stack([loss, count]), name=f"merge.{epoch}")
        sent = int(2 * (world_size - 1) / max(world_size, 1) * merged.numel() * 4)
        return MergedLosses(merged[0].numpy(), merged[1].numpy(), sent)
    if method != "allgather":
        raise ValueError(f"unknown merge method {method!r}")
    seen = torch.nonzero(count > 0).squeeze(1)
    reps = count[seen].round().to(torch.int64)
    mine = torch.repeat_interleave(seen.to(torch.int64), reps)
    pos = allgather(mine, name=f"merge.{epoch}.idx").numpy()
    val = allgather(torch.repeat_interleave(loss[seen] / count[seen], reps), name=f"merge.{epoch}.loss").numpy()
    losses, counts = np.zeros(len(loss), dtype=np.float32), np.zeros(len(loss), dtype=np.float32)
    np.add.at(counts, pos, 1.0)
    np.add.at(losses, pos, val)
    return MergedLosses(losses, counts, int(mine.numel() * 12))


def agree(problem: Optional[str], name: str) -> None:
    """Rank 0's verdict for every rank: its `problem` (None: fine) raised as a DapError on every
    rank at once, so a refusal never leaves the other ranks waiting in a later collective."""
    verdict = broadcast_json({"error": problem}, name=name)
    if verdict["error"]:
        raise DapError(verdict["error"])


def distributed_optimizer(optimizer, model: torch.nn.Module, fp16_allreduce: bool):
    compression = hvd.Compression.fp16 if fp16_allreduce else hvd.Compression.none
    return hvd.DistributedOptimizer(optimizer, named_parameters=model.named_parameters(),
                                    compression=compression, op=hvd.Average)


@contextlib.contextmanager
def reduced_gradients(optimizer):
    """Allreduce the gradients now, and let an optimizer step inside the block not reduce them
    again (Horovod's recipe for a GradScaler, which must unscale and test the reduced gradients
    before the step). A plain torch optimizer (one process) has nothing to reduce."""
    if not hasattr(optimizer, "skip_synchronize"):
        yield
        return
    optimizer.synchronize()
    with optimizer.skip_synchronize():
        yield


def broadcast_training_state(model: torch.nn.Module, optimizer, scaler=None, *, resumed: bool) -> None:
    """Make every replica rank 0's: optimizer state (only when `resumed`), then parameters and
    buffers, then the GradScaler.

    A fresh run has no optimizer state to share: every rank's is empty, and stays so until the
    first step. broadcast_optimizer_state would create it with a zero-gradient step() on every
    rank, rank 0 included: weight decay would shrink rank 0's (and so everyone's) initial weights
    by (1 - lr*wd) and pre-fill the momentum buffers. On a resume only rank 0 holds the state;
    the other ranks take that phantom step, and the parameters broadcast after it undo it."""
    if resumed:
        hvd.broadcast_optimizer_state(optimizer, root_rank=0)
    hvd.broadcast_parameters(model.state_dict(), root_rank=0)
    if scaler is not None:  # scalars only: rank 0's scale and growth tracker for everyone
        state = broadcast_json(_scaler_json(scaler) if hvd.rank() == 0 else None, name="scaler")
        scaler.load_state_dict(state)


def _scaler_json(scaler) -> dict:
    return {k: (float(v) if isinstance(v, float) else v) for k, v in scaler.state_dict().items()}


_BN = torch.nn.modules.batchnorm._BatchNorm


def average_batchnorm(model: torch.nn.Module) -> None:
    """Average BatchNorm running statistics across ranks (timm's distribute_bn). Gradients are
    averaged by the optimizer, but each rank's running mean and variance follow its own shard;
    without this each rank would evaluate a different model, and the checkpoint hold rank 0's."""
    if hvd.size() == 1:
        return
    bufs = [b for m in model.modules() if isinstance(m, _BN) and m.track_running_stats
            for b in (m.running_mean, m.running_var) if b is not None]
    if not bufs:
        return
    averaged = hvd.grouped_allreduce([b.detach() for b in bufs], op=hvd.Average, name="bn.average")
    with torch.no_grad():
        for b, a in zip(bufs, averaged):
            b.copy_(a)


def state_digest(model: torch.nn.Module, scaler=None) -> str:
    """sha256 of a replica: every parameter and buffer, and the GradScaler's state."""
    h = hashlib.sha256()
    for name, t in model.state_dict().items():
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    if scaler is not None:
        h.update(json.dumps(_scaler_json(scaler), sort_keys=True).encode())
    return h.hexdigest()


def allgather_digests(digest: str, name: str) -> list[str]:
    """Every rank's hex digest, in rank order, on every rank."""
    raw = torch.frombuffer(bytearray(bytes.fromhex(digest)), dtype=torch.uint8)
    return [bytes(row).hex() for row in gather_rows(raw, name=name).numpy()]


def check_replicas(model: torch.nn.Module, scaler, when: str) -> list[str]:
    """Fail on every rank if the replicas differ; returns the per-rank digests."""
    digests = allgather_digests(state_digest(model, scaler), name=f"replicas.{when}")
    if len(set(digests)) != 1:
        odd = [r for r, d in enumerate(digests) if d != digests[0]]
        raise DapError(f"{when}: the model replicas differ between ranks (rank(s) {odd} differ from rank 0); "
                       f"this is a bug in dap_hvd, please report it")
    return digests


def check_same_dataset(what: str, digest: str, paths: tuple[str, ...]) -> None:
    """Every rank must hold rank 0's catalog (by its digest); on a mismatch every rank fails,
    with the message of data.catalog.dataset_mismatch."""
    raw = torch.frombuffer(bytearray(bytes.fromhex(digest)), dtype=torch.uint8)
    root = hvd.broadcast(raw.clone(), 0, name=f"dataset.{what}.digest")
    differs = not torch.equal(root, raw)
    flags = allgather(torch.tensor([int(differs)], dtype=torch.int64), name=f"dataset.{what}.flags").tolist()
    if not any(flags):
        return
    theirs = broadcast_json(list(paths) if hvd.rank() == 0 else None, name=f"dataset.{what}.paths")
    raise DataError(dataset_mismatch(what, paths, tuple(theirs), rank=hvd.rank(), host=socket.gethostname(),
                                     differing=[r for r, f in enumerate(flags) if f]))


def allgather_json(obj, name: str) -> list:
    """Every rank's JSON-able `obj`, in rank order, on every rank (small objects: <= 256 bytes)."""
    mine = json.dumps(obj).encode()
    if len(mine) > 256:
        raise ValueError(f"{name}: {len(mine)} bytes, more than allgather_json's 256")
    buf = torch.zeros(256, dtype=torch.uint8)
    buf[:len(mine)] = torch.frombuffer(bytearray(mine), dtype=torch.uint8)
    return [json.loads(bytes(row).rstrip(b"\0").decode()) for row in gather_rows(buf, name=name).numpy()]


def gather_rows(t: torch.Tensor, name: str) -> torch.Tensor:
    """Stack a same-sized 1-D tensor from every rank: row r is rank r's (e.g. RNG states)."""
    return allgather(t.reshape(1, -1), name=name)


def broadcast_tensor(t: Optional[torch.Tensor], name: str) -> torch.Tensor:
    """Broadcast rank 0's tensor; the others pass None and learn its shape and dtype first."""
    meta = broadcast_json([list(t.shape), str(t.dtype).removeprefix("torch.")] if hvd.rank() == 0 else None,
                          name=f"{name}.meta")
    buf = t.contiguous() if hvd.rank() == 0 else torch.empty(meta[0], dtype=getattr(torch, meta[1]))
    return hvd.broadcast(buf, 0, name=f"{name}.data")


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


# ---------------------------------------------------------------------------- Horovod Elastic

def current_world() -> World:
    """The world as Horovod sees it now (after an elastic reset it is another one)."""
    return World(hvd.rank(), hvd.size(), hvd.local_rank(), hvd.local_size())


class ElasticCommit(ElasticState):
    """The elastic state: the run's last epoch-end checkpoint (model, optimizer, scaler, selection
    and weights, score table, DaP state, epoch, history, RNG), serialized in host memory on every
    rank, so any survivor can carry it. `stage` it at the epoch's end, `commit()` it (Horovod then
    checks for host changes); a failure rolls back to it (`restore` drops what was staged), and
    `sync` hands the newest commit any rank holds to every rank, joiners included."""

    def __init__(self):
        super().__init__(bcast_object=hvd.broadcast_object, get_rank=hvd.rank)
        self.committed: Optional[bytes] = None
        self.epoch = 0  # the committed epoch
        self._staged: Optional[tuple] = None
        self.resets = 0

    def stage(self, payload: dict, epoch: int) -> None:
        buf = io.BytesIO()
        torch.save(payload, buf)
        self._staged = (buf.getvalue(), epoch)

    def save(self) -> None:
        if self._staged is not None:
            (self.committed, self.epoch), self._staged = self._staged, None

    def restore(self) -> None:
        self._staged = None
        # A rank that left with an error the job cannot outlive (a bad file) said so: fail with it,
        # instead of re-forming without that rank's host (notice.py).
        fatal = notice.fatal_announced()
        if fatal:
            raise DapError(fatal)

    def reset(self) -> None:
        self.resets += 1

    def sync(self) -> None:
        epochs = allgather(torch.tensor([self.epoch if self.committed else -1], dtype=torch.int64),
                           name="elastic.epochs")
        src = int(torch.argmax(epochs))  # the first rank holding the newest commit
        if int(epochs[src]) < 0:
            return
        n = broadcast_json(len(self.committed) if hvd.rank() == src else None, name="elastic.size", root=src)
        buf = (torch.frombuffer(bytearray(self.committed), dtype=torch.uint8) if hvd.rank() == src
               else torch.empty(n, dtype=torch.uint8))
        self.committed = hvd.broadcast(buf, src, name="elastic.commit").numpy().tobytes()
        self.epoch = int(epochs[src])

    def payload(self) -> Optional[dict]:
        """The committed checkpoint, loaded as safely as one from disk (weights_only)."""
        if self.committed is None:
            return None
        return torch.load(io.BytesIO(self.committed), map_location="cpu", weights_only=True)


def run_elastic(fn):
    """fn(state) under hvd.elastic.run: on a lost rank, Horovod restores the state, re-initializes
    with the new membership and calls fn again; on a host added, after the next commit."""
    return hvd.elastic.run(fn)(ElasticCommit())
