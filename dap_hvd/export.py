"""`dap-hvd export RUN_DIR|CHECKPOINT --out FILE`: the pre-trained backbone, weights alone.

The output of pre-training is a model other code loads, not a training checkpoint. FILE gets the
model's state_dict and nothing else: safetensors when FILE ends in .safetensors, else a plain
torch state_dict (loadable with torch.load(weights_only=True)). For the torchvision models it
loads straight into `torchvision.models.<name>(num_classes=K)`. FILE.json beside it says which
model, the class names in label order, the input size and normalization, and where it came from.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from dap_hvd import DapError
from dap_hvd.data.spec import IMAGENET_MEAN, IMAGENET_STD
from dap_hvd.evaluate import find_checkpoint, load_for_eval
from dap_hvd.files import write_atomic

TORCHVISION = ("resnet18", "resnet34", "resnet50", "resnet101", "resnet152", "densenet121", "densenet169",
               "mobilenet_v2")


def export(target: str, out: str, force: bool = False) -> dict:
    dst = Path(out)
    sidecar = dst.with_name(dst.name + ".json")
    if dst.is_dir():
        raise DapError(f"--out {dst} is a folder; name the file to write (e.g. {dst}/backbone.safetensors)")
    existing = [str(p) for p in (dst, sidecar) if p.exists() or p.is_symlink()]
    if existing and not force:
        raise DapError(f"--out: {' and '.join(existing)} already exist(s); pass --force to overwrite, or choose "
                       f"another name")
    src = find_checkpoint(target)
    ckpt = load_for_eval(src)
    meta = ckpt["meta"]
    weights = {k: v.contiguous() for k, v in ckpt["model"].items()}
    name, classes = meta["model"], meta["classes"]
    evals = [h for h in meta["history"] if h.get("top1") is not None]
    info = dict(model=name, num_classes=len(classes), classes=classes,
                image_size=meta["config"]["data"]["image_size"], mean=list(IMAGENET_MEAN), std=list(IMAGENET_STD),
                source=str(src), epoch=meta["epoch"], top1=evals[-1]["top1"] if evals else None,
                load=(f"torchvision.models.{name}(num_classes={len(classes)}).load_state_dict(weights)"
                      if name in TORCHVISION else
                      f"dap_hvd.models.build_model({name!r}, {len(classes)}).load_state_dict(weights)"))
    dst.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(dst, _weights_bytes(weights, info) if dst.suffix == ".safetensors"
                 else lambda f: torch.save(weights, f))
    write_atomic(sidecar, json.dumps(info, indent=1).encode())
    return info


def _weights_bytes(weights: dict, info: dict) -> bytes:
    """The safetensors file, with `info` in its metadata."""
    from safetensors.torch import save

    return save(weights, metadata={k: json.dumps(v) for k, v in info.items()})
