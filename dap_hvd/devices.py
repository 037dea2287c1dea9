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


# The hardware JPEG decoder (A100, H100 and later) is reachable in a container only with the
# driver's video capability; NVIDIA's CUDA base images ask for compute,utility.
DALI_DEFAULT_HW_DECODER_LOAD = 0.65


def jpeg_decoder(*, loader: str, dali_device: str, gpu: bool, hw_decoder_load: Optional[float],
                 driver_capabilities: Optional[str]) -> tuple[str, bool]:
    """(one log line naming the JPEG decoder this run uses, whether it is a warning).
    `driver_capabilities`: NVIDIA_DRIVER_CAPABILITIES as the container runtime saw it (None
    outside a container)."""
    if loader != "dali":
        return "JPEG decoding: torch loader (PIL, CPU worker processes)", False
    if not gpu or dali_device == "cpu":
        return "JPEG decoding: DALI cpu backend (libjpeg-turbo on the decode threads)", False
    load = DALI_DEFAULT_HW_DECODER_LOAD if hw_decoder_load is None else hw_decoder_load
    caps = {c.strip() for c in (driver_capabilities or "").split(",")}
    if driver_capabilities is not None and not caps & {"video", "all"} and load > 0:
        return (f"JPEG decoding: DALI mixed backend, CUDA (hybrid) nvJPEG only: NVIDIA_DRIVER_CAPABILITIES="
                f"{driver_capabilities} lacks 'video', so the GPU's hardware decoder cannot take its {load:g} "
                f"share (docker run --gpus '\"capabilities=compute,utility,video\"', or the image's ENV)"), True
    return (f"JPEG decoding: DALI mixed backend, hardware decoder for {load:g} of the images where the GPU has "
            f"one (A100, H100 and later), CUDA nvJPEG for the rest (--hw-decoder-load)"), False
