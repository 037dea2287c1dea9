"""Which GPU a rank uses, and when two ranks would share one. Pure: no torch import.

A rank's device is local_rank % visible GPUs: with one GPU per task (SLURM --gpus-per-task=1,
or a per-task CUDA_VISIBLE_DEVICES) every rank sees its GPU as device 0; with all GPUs visible,
local rank r takes GPU r. More local ranks than visible GPUs would put two ranks on one GPU,
which is a misconfiguration, not a speed-up: the trainer refuses it, naming the counts.
"""

from __future__ import annotations

from typing import Optional


def gpu_index(local_rank: int, device_count: int) -> int:
    if device_count < 1:
        raise ValueError("no visible GPU")
    return local_rank % device_count


def shared_gpu(placements: list[tuple[str, str]], local_size: int, device_count: int) -> Optional[str]:
    """`placements[rank]` = (host, GPU uuid). A message if two ranks of one host share a GPU."""
    seen: dict = {}
    for rank, key in enumerate(placements):
        seen.setdefault(tuple(key), []).append(rank)
    for (host, gpu), ranks in seen.items():
        if len(ranks) > 1:
            return (f"ranks {ranks} on {host} would share GPU {gpu}: {local_size} local ranks but {device_count} "
                    f"visible GPU(s); start at most one rank per GPU, or give each task its own CUDA_VISIBLE_DEVICES")
    return None
