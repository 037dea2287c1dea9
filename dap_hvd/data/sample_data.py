"""The embedded sample dataset: small JPEGs in the ImageNet layout, generated deterministically.

Each class is a shape (disc, square, triangle, cross, ring, ...) drawn in a class colour family
on a noisy background. Two knobs make DaP's effect visible (the paper's Table 4 argues that data
redundancy is what makes dropping safe):
  * redundancy: each distinct training image comes with this many near-duplicates (a pixel
    shift and fresh noise), as big web-crawled datasets do;
  * hard_fraction: this share of distinct images is genuinely hard: low contrast, heavy noise and
    a distracting shape of another class.
For a given seed and parameters the output is identical, bytes included.
"""

from __future__ import annotations

import io
import json
import math
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

SHAPES = ("disc", "square", "triangle", "cross", "ring", "diamond", "bar", "hbar", "dots", "frame")


@dataclass(frozen=True)
class SampleSpec:
    num_classes: int = 10
    train_per_class: int = 120
    val_per_class: int = 30
    redundancy: int = 4  # copies of each distinct training image (1 = no near-duplicates)
    hard_fraction: float = 0.15
    image_size: int = 64
    seed: int = 0

    def __post_init__(self):
        from dap_hvd import ConfigError

        if not 2 <= self.num_classes <= 4 * len(SHAPES):
            raise ConfigError(f"--classes: must be in 2..{4 * len(SHAPES)}, got {self.num_classes}")
        if self.redundancy < 1 or self.train_per_class < self.redundancy:
            raise ConfigError(f"--redundancy: must be in 1..train_per_class ({self.train_per_class}), "
                              f"got {self.redundancy}")
        if not 0 <= self.hard_fraction <= 1:
            raise ConfigError(f"--hard-fraction: must be in [0, 1], got {self.hard_fraction}")
        if self.image_size < 16:
            raise ConfigError(f"--image-size: must be >= 16, got {self.image_size}")


def _class_style(c: int, num_classes: int):
    shape = SHAPES[c % len(SHAPES)]
    # Colour families spaced around the hue circle; classes sharing a shape differ in colour.
    hue = (c * 0.618034) % 1.0
    return shape, hue


def _hsv(h: float, s: float, v: float) -> tuple[int, int, int]:
    i = int(h * 6) % 6
    f = h * 6 - int(h * 6)
    p, q, t = v * (1 - s), v * (1 - f * s), v * (1 - (1 - f) * s)
    r, g, b = [(v, t, p), (q, v, p), (p, v, t), (p, q, v), (t, p, v), (v, p, q)][i]
    return int(r * 255), int(g * 255), int(b * 255)


def _draw_shape(draw, shape: str, cx: float, cy: float, r: float, fill, width: int) -> None:
    box = [cx - r, cy - r, cx + r, cy + r]
    if shape == "disc":
        draw.ellipse(box, fill=fill)
    elif shape == "square":
        draw.rectangle(box, fill=fill)
    elif shape == "triangle":
        draw.polygon([(cx, cy - r), (cx + r, cy + r), (cx - r, cy + r)], fill=fill)
    elif shape == "cross":
        draw.rectangle([cx - r, cy - r / 3, cx + r, cy + r / 3], fill=fill)
        draw.rectangle([cx - r / 3, cy - r, cx + r / 3, cy + r], fill=fill)
    elif shape == "ring":
        draw.ellipse(box, outline=fill, width=width)
    elif shape == "diamond":
        draw.polygon([(cx, cy - r), (cx + r, cy), (cx, cy + r), (cx - r, cy)], fill=fill)
    elif shape == "bar":
        draw.rectangle([cx - r / 3, cy - r, cx + r / 3, cy + r], fill=fill)
    elif shape == "hbar":
        draw.rectangle([cx - r, cy - r / 3, cx + r, cy + r / 3], fill=fill)
    elif shape == "dots":
        for dx, dy in ((-0.5, -0.5), (0.5, -0.5), (-0.5, 0.5), (0.5, 0.5)):
            x, y = cx + dx * r, cy + dy * r
            draw.ellipse([x - r / 3, y - r / 3, x + r / 3, y + r / 3], fill=fill)
    elif shape == "frame":
        draw.rectangle(box, outline=fill, width=width)


def _render(spec: SampleSpec, c: int, params: dict, rng: np.random.Generator) -> bytes:
    from PIL import Image, ImageDraw

    s = spec.image_size
    shape, hue = _class_style(c, spec.num_classes)
    bg = np.clip(rng.normal(params["bg"], 18.0, size=(s, s, 3)), 0, 255).astype(np.uint8)
    im = Image.fromarray(bg, "RGB")
    draw = ImageDraw.Draw(im)
    hard = params["hard"]
    if hard:  # a distracting shape of another class, drawn first so the true class stays on top
        oc = params["other"]
        oshape, ohue = _class_style(oc, spec.num_classes)
        _draw_shape(draw, oshape, params["ox"] * s, params["oy"] * s, params["r"] * s * 0.9,
                    _hsv(ohue, 0.8, 0.85), max(2, s // 12))
    value = 0.55 if hard else 0.9
    fill = _hsv((hue + params["dh"]) % 1.0, 0.75 if not hard else 0.35, value)
    _draw_shape(draw, shape, (params["x"] + params["sx"]) * s, (params["y"] + params["sy"]) * s,
                params["r"] * s, fill, max(2, s // 12))
    arr = np.asarray(im).astype(np.float32)
    arr += rng.normal(0, 30.0 if hard else 8.0, size=arr.shape)
    out = Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8), "RGB")
    buf = io.BytesIO()
    out.save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def _base_params(spec: SampleSpec, c: int, rng: np.random.Generator, hard: bool) -> dict:
    other = int(rng.integers(spec.num_classes - 1))
    other = other + (other >= c)
    return dict(
        x=float(rng.uniform(0.35, 0.65)), y=float(rng.uniform(0.35, 0.65)), r=float(rng.uniform(0.18, 0.3)),
        dh=float(rng.uniform(-0.05, 0.05)), bg=[float(v) for v in rng.uniform(40, 200, size=3)],
        hard=hard, other=other, ox=float(rng.uniform(0.2, 0.8)), oy=float(rng.uniform(0.2, 0.8)), sx=0.0, sy=0.0,
    )


def make_sample_data(root: str | Path, spec: SampleSpec = SampleSpec(), force: bool = False) -> Path:
    """Write the dataset under root/{train,val}/<class>/. Idempotent: an existing complete
    dataset with the same spec is left as it is. Written to a temp folder, then renamed, so a
    crash never leaves a half dataset that looks complete. Whatever else is at `root` (a file, a
    real dataset) is never replaced unless `force` is given."""
    from dap_hvd.data.folders import new_tree, refuse_foreign, replace_tree, writer_lock

    root = Path(root)
    stamp = root / "sample-spec.json"
    refuse_foreign(root, stamp.is_file(), force, "make-sample-data")  # before the lock file goes beside it
    with writer_lock(root):  # nodes sharing one cache: the first writes, the others find its dataset
        if stamp.is_file() and json.loads(stamp.read_text()) == asdict(spec):
            return root
        refuse_foreign(root, stamp.is_file(), force, "make-sample-data")
        tmp = new_tree(root)
        try:
            _write_tree(tmp, spec)
            replace_tree(tmp, root)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
    return root


def _write_tree(tmp: Path, spec: SampleSpec) -> None:
    for split, per_class, copies in (("train", spec.train_per_class, spec.redundancy),
                                     ("val", spec.val_per_class, 1)):
        for c in range(spec.num_classes):
            cls_dir = tmp / split / f"c{c:03d}_{_class_style(c, spec.num_classes)[0]}"
            cls_dir.mkdir(parents=True)
            distinct = math.ceil(per_class / copies)
            split_seed = 0 if split == "train" else 1
            rng = np.random.default_rng([spec.seed, split_seed, c])
            n_hard = int(round(spec.hard_fraction * distinct))
            hard_set = set(rng.choice(distinct, size=n_hard, replace=False).tolist()) if n_hard else set()
            written = 0
            for d in range(distinct):
                base = _base_params(spec, c, rng, hard=d in hard_set)
                for k in range(copies):
                    if written == per_class:
                        break
                    p = dict(base, sx=float(rng.uniform(-0.03, 0.03)) if k else 0.0,
                             sy=float(rng.uniform(-0.03, 0.03)) if k else 0.0)
                    data = _render(spec, c, p, rng)
                    (cls_dir / f"{split}_{c:03d}_{d:05d}_{k:02d}.jpg").write_bytes(data)
                    written += 1
    (tmp / "sample-spec.json").write_text(json.dumps(asdict(spec), indent=1, sort_keys=True))


def ensure_data(cfg, world) -> Path:
    """The run's data root. Without --data, the embedded sample set, generated once per node (by
    its local rank 0) on first use; the other ranks wait for it."""
    if cfg.data.root is None:
        if world.local_rank == 0:
            make_sample_data(cfg.data_root)
        from dap_hvd import dist

        dist.barrier()
    return cfg.data_root
