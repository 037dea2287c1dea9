"""Where a policy meets Horovod: the ranks' losses merged into the score table, the policy's step
on rank 0, and that step broadcast to every rank.

    merge_losses   each rank's ledger -> one loss per selected sample, on every rank, each seen once
    select         rank 0 asks the policy; every rank receives the same next selection
    weights_on_device  the selection's loss weights, by global index, on the training device

The rules (the count check, what the broadcast header says) are pure numpy and import no torch;
the collectives are imported where they run.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Optional

import numpy as np

from dap_hvd.policy.policies import Context, PolicyState, Selection, check_finite, state_from_dict, state_to_dict

if TYPE_CHECKING:
    import torch

    from dap_hvd.dist import World
    from dap_hvd.ledger import LossLedger
    from dap_hvd.policy.policies import Policy, Step
    from dap_hvd.policy.scores import ScoreTable


@dataclass(frozen=True)
class NextSelection:
    """What every rank holds after an epoch's selection step."""

    selection: Selection
    policy_state: PolicyState
    action: str  # the policy's step: drop, pick, prune, draw, full, or keep (same subset)
    bytes_sent: int  # by this rank: the merge and the broadcast
    seconds: float  # merge + select + broadcast, on this rank
    scores_digest: Optional[str]  # the score table after the merge; None when this epoch scored nothing


def check_recorded_once(subset: np.ndarray, counts: np.ndarray, epoch: int) -> None:
    """Every sample of the subset must have been recorded exactly once across ranks (padding
    duplicates never are); anything else is a loader bug, and we stop rather than select on it."""
    wrong = np.flatnonzero(counts != 1)
    if len(wrong):
        raise RuntimeError(
            f"epoch {epoch}: {len(wrong)} sample(s) of the subset were recorded "
            f"{sorted(set(counts[wrong].astype(int).tolist()))} times instead of once, e.g. global indices "
            f"{subset[wrong[:10]].tolist()}; the loader did not deliver exactly the selected shard")


def merge_losses(subset: np.ndarray, ledger: LossLedger, *, method: str, epoch: int, world_size: int):
    """The subset's global per-sample losses on every rank (dist.MergedLosses), each checked to
    have been recorded once and to be finite: every rank holds them, so all stop together."""
    from dap_hvd import dist

    merged = dist.merge_losses(ledger.loss, ledger.count, method=method, epoch=epoch, world_size=world_size)
    check_recorded_once(subset, merged.counts, epoch)
    check_finite(subset, merged.losses, epoch)
    return merged


def broadcast_header(step: Step, current: Selection, universe: np.ndarray) -> dict:
    """Rank 0's description of its step: enough for the others to skip sending the indices when
    they are the current subset or all data."""
    sel = step.selection
    unweighted = sel.weights is None
    return dict(action=step.action, state=state_to_dict(step.state),
                same=unweighted and current.weights is None and np.array_equal(sel.indices, current.indices),
                all=unweighted and np.array_equal(sel.indices, universe), weighted=not unweighted)


def select(policy: Policy, ctx: Context, world: World, scores: ScoreTable, ledger: Optional[LossLedger],
           merge: str) -> NextSelection:
    """The epoch's losses into the score table (when it recorded any), the policy's step on rank 0,
    and that step on every rank."""
    t0, sent, digest = time.perf_counter(), 0, None
    current = ctx.current
    if ledger is not None:
        merged = merge_losses(current.indices, ledger, method=merge, epoch=ctx.epoch, world_size=world.size)
        scores.update(current.indices, merged.losses, ctx.epoch)
        sent, digest = merged.bytes_sent, scores.digest()
    step = policy.select(ctx) if world.is_root else None
    shared = _broadcast_step(step, current, ctx.universe, world, ctx.epoch)
    return replace(shared, bytes_sent=sent + shared.bytes_sent, seconds=time.perf_counter() - t0,
                   scores_digest=digest)


def _broadcast_step(step: Optional[Step], current: Selection, universe: np.ndarray, world: World,
                    epoch: int) -> NextSelection:
    """Rank 0's step to every rank: a small JSON header, then the indices (int64, so no index above
    2^24 loses precision) only when they changed, and the weights when there are any."""
    import torch

    from dap_hvd import dist

    head = dist.broadcast_json(broadcast_header(step, current, universe) if world.is_root else None,
                               name=f"select.{epoch}.head")
    others, sent = world.size - 1, 0
    if head["same"]:
        indices = current.indices
    elif head["all"]:
        indices = universe
    else:
        indices = dist.broadcast_indices(step.selection.indices if world.is_root else None, name=f"select.{epoch}")
        sent += 8 * len(indices) * others if world.is_root else 0
    weights = None
    if head["weighted"]:
        w = torch.from_numpy(np.ascontiguousarray(step.selection.weights, dtype=np.float32)) if world.is_root \
            else None
        weights = dist.broadcast_tensor(w, name=f"select.{epoch}.weights").numpy()
        sent += 4 * len(weights) * others if world.is_root else 0
    state = state_from_dict(head["state"])
    return NextSelection(Selection(np.asarray(indices, dtype=np.int64), weights), state, head["action"], sent,
                         seconds=0.0, scores_digest=None)


def weights_on_device(selection: Selection, num_samples: int, device: torch.device) -> Optional[torch.Tensor]:
    """Loss weights by global index on the training device (1 where unweighted), or None."""
    if selection.weights is None:
        return None
    import torch

    w = torch.ones(num_samples, dtype=torch.float32)
    w[torch.from_numpy(selection.indices)] = torch.from_numpy(selection.weights)
    return w.to(device)
