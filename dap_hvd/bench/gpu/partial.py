"""GPU part `partial` (torch alone: no DALI, no Horovod): the first step on a batch of a new size (an
epoch's last), with cuDNN's autotuner against its heuristics, which the trainer uses for partial batches."""

from __future__ import annotations

import statistics
import time

from dap_hvd.bench.gpu.jobs import BATCH


def measure(sizes=(200, 137, 93)) -> dict:
    """The first ResNet-50 step (bf16, channels_last) on batches of sizes not seen before: with
    cudnn.benchmark on, as before the fix, and through engine.Precision.cudnn_autotune(enabled=False), as
    the trainer runs an epoch's last, partial batch now. Each size is new to the process."""
    import torch

    from dap_hvd.engine import Precision
    from dap_hvd.models import build_model

    dev = torch.device("cuda", 0)
    torch.cuda.set_device(dev)
    torch.backends.cudnn.benchmark = True
    model = build_model("resnet50", 1000).to(dev)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    precision = Precision(dev, torch.bfloat16, True)

    def step(n: int, tuned: bool) -> float:
        x = torch.randn(n, 3, 224, 224, device=dev).contiguous(memory_format=torch.channels_last)
        y = torch.randint(0, 1000, (n,), device=dev)
        torch.cuda.synchronize()
        t = time.perf_counter()
        with precision.cudnn_autotune(enabled=tuned):
            opt.zero_grad(set_to_none=True)
            with precision.autocast():
                loss = torch.nn.functional.cross_entropy(model(x).float(), y)
            loss.backward()
            opt.step()
        torch.cuda.synchronize()
        return time.perf_counter() - t

    step(BATCH, True)  # the full batch's kernels, tuned once
    full = statistics.median(step(BATCH, True) for _ in range(5))
    autotuned = [step(n, True) for n in sizes]
    heuristic = [step(n + 1, False) for n in sizes]
    return dict(sizes=list(sizes), full_step=full, autotuned=autotuned, heuristic=heuristic,
                gpu=torch.cuda.get_device_name(dev), torch=torch.__version__)


def render(pb: dict) -> str:
    return (f"**The fix, measured** ({pb['gpu']}, torch {pb['torch']}): the first ResNet-50 step on a batch of a "
            f"new size ({', '.join(map(str, pb['sizes']))}) took " + ", ".join(f"{x:.2f}" for x in pb["autotuned"])
            + " s with cuDNN's autotuner, and " + ", ".join(f"{x:.2f}" for x in pb["heuristic"])
            + f" s with its heuristics, which the trainer now uses for an epoch's last, partial batch; a tuned "
            f"full batch of {BATCH} takes {pb['full_step']:.3f} s.")
