"""The rank's hardware: which GPU it uses (and when two ranks would share one), its CPU threads and
binding, its precision, its decode threads and the memory it holds.

A rank's device is local_rank % visible GPUs: with one GPU per task (SLURM --gpus-per-task=1,
or a per-task CUDA_VISIBLE_DEVICES) every rank sees its GPU as device 0; with all GPUs visible,
local rank r takes GPU r. More local ranks than visible GPUs would put two ranks on one GPU,
which is a misconfiguration, not a speed-up: the trainer refuses it, naming the counts.

The rules (gpu_index, shared_gpu, jpeg_decoder) are pure; the rest applies them to this process.
"""

from __future__ import annotations

import logging
import os
from typing import TYPE_CHECKING, Optional

from dap_hvd import DapError, affinity

if TYPE_CHECKING:  # heavy: imported where a function needs it
    import torch

    from dap_hvd.config import TrainConfig
    from dap_hvd.dist import World
    from dap_hvd.engine import Precision

log = logging.getLogger("dap_hvd")


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


def pin_device(world: World, cpu_bind: bool = True) -> torch.device:
    """This rank's device, with torch's thread count (and, on a GPU, its CPU binding) set."""
    import torch

    given = os.environ.get("OMP_NUM_THREADS", "")
    threads = int(given) if given.isdigit() and int(given) > 0 else None
    if torch.cuda.is_available():
        # local_rank % count: under per-task GPU binding (SLURM --gpus-per-task) each rank sees
        # one GPU as device 0. Two local ranks on one GPU would still be a mistake: say so.
        count = torch.cuda.device_count()
        index = gpu_index(world.local_rank, count)
        torch.cuda.set_device(index)
        check_gpus_not_shared(str(torch.cuda.get_device_properties(index).uuid), world.local_size, count)
        torch.backends.cudnn.benchmark = True  # fixed input sizes: let cuDNN pick its fastest kernels
        if cpu_bind:
            bind_cpus(world, index, count)
        torch.set_num_threads(threads or min(affinity.GPU_RANK_TORCH_THREADS,
                                             affinity.cpus_per_rank(world.local_size, bound=cpu_bind)))
        return torch.device("cuda", index)
    # Share the node's cores between the ranks on it instead of oversubscribing them, unless the
    # user set OMP_NUM_THREADS (it also makes runs with different ranks per host comparable).
    torch.set_num_threads(threads or affinity.cpus_per_rank(world.local_size, bound=False))
    return torch.device("cpu")


def check_gpus_not_shared(uuid: str, local_size: int, count: int) -> None:
    """Fail every rank if two ranks of one host landed on one GPU (shared_gpu)."""
    import socket

    from dap_hvd import dist

    placements = [tuple(p) for p in dist.allgather_json([socket.gethostname(), uuid], name="gpus")]
    problem = shared_gpu(placements, local_size, count)
    if problem:
        raise DapError(problem)


def bind_cpus(world: World, index: int, count: int) -> None:
    """Bind this rank's threads to CPUs near its GPU (dap_hvd/affinity.py)."""
    import torch

    try:
        pci = [f"{p.pci_domain_id:04x}:{p.pci_bus_id:02x}:{p.pci_device_id:02x}.0"
               for p in map(torch.cuda.get_device_properties, range(count))]
    except AttributeError:  # a torch without the PCI ids
        pci = None
    binding = affinity.choose(affinity.read_topology(pci) if pci else None, index)
    if binding.cpus:
        affinity.apply(binding.cpus)
    log.info("rank %d: %s", world.rank, binding.note)


def device_memory(device: torch.device) -> dict:
    """What PyTorch holds on the GPU at the epoch's end, and the epoch's peak: a subset change
    must not make either grow. Once per epoch, so the sync it costs does not matter."""
    import torch

    if device.type != "cuda":
        return dict(device_memory_mb=None, device_peak_mb=None)
    peak = torch.cuda.max_memory_allocated(device) / 2**20
    torch.cuda.reset_peak_memory_stats(device)
    return dict(device_memory_mb=torch.cuda.memory_reserved(device) / 2**20, device_peak_mb=peak)


def choose_precision(cfg: TrainConfig, device: torch.device) -> Precision:
    """--amp and --channels-last resolved for this device ("auto": bf16 and channels_last on a GPU)."""
    import torch

    from dap_hvd.engine import Precision

    gpu = device.type == "cuda"
    amp = cfg.optim.amp if cfg.optim.amp != "auto" else ("bf16" if gpu else "off")
    dtype = {"off": None, "bf16": torch.bfloat16, "fp16": torch.float16}[amp]
    cl = cfg.optim.channels_last == "on" or (cfg.optim.channels_last == "auto" and gpu)
    if cl and cfg.optim.sync_bn:
        # Horovod's SyncBatchNorm makes its input contiguous (NCHW) in forward and backward, so
        # the net would convert back and forth at every BN for nothing.
        if cfg.optim.channels_last == "on":
            log.warning("--sync-bn: channels_last turned off; Horovod's SyncBatchNorm makes every BN input "
                        "NCHW-contiguous, so channels_last would only add layout conversions")
        cl = False
    return Precision(device, dtype, cl)


def decode_workers(cfg: TrainConfig, world: World, device: torch.device) -> int:
    """Decode threads per rank: on a GPU, the node's cores per local rank (at most 8), since file
    reads and the host Huffman stage run on them; on CPU, 2 (the model needs the cores)."""
    if cfg.data.workers is not None:
        return cfg.data.workers
    if device.type == "cuda":
        return max(2, min(8, affinity.cpus_per_rank(world.local_size, bound=cfg.cpu_bind)))
    return 2
