"""`dap-hvd bench --only gpu`: the GPU path, executed and measured on one GPU.

Parts (`--gpu-parts`, any subset, in this order; each lands in bench/results.json as it ends, so a
session can run them in separate calls against the same `--gpu-data` folder):
  micro   DALI `mixed` decode alone, the ResNet-50 step (batch 256, bf16, channels_last) on
          synthetic tensors and fed by DALI, the subset-change cost, device memory over 50 changes
  matrix  `dap-hvd train` (horovodrun, one rank) in each precision/layout/loader mode, a few
          hundred steps each, with its evaluation
  resume  DaP stopped after epoch 2 and resumed: the resumed run trains exactly the checkpoint's
          selection, and `dap-hvd evaluate` reproduces the run's top-1
  saving  full data against DaP for the same epochs: wall clock against compute, the subset-change
          cost, and device memory per epoch
  partial the first step on a batch of a new size (an epoch's last): cuDNN's autotuner against its
          heuristics, which the trainer uses for partial batches (torch alone: no DALI, no Horovod)
Without a GPU the section is skipped with one line, and BENCHMARKS.md keeps an earlier GPU section.
The training data are random smooth colour fields at ImageNet-like size (500x375 JPEGs): they
measure speed, not accuracy.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Callable, Optional

import numpy as np

from dap_hvd.bench.suite import BIN, _version

PARTS = ("micro", "matrix", "resume", "saving", "partial")
A100_ANCHOR = 2470  # NVIDIA's published PyTorch ResNet-50 AMP img/s on one A100-80GB
BATCH = 256
# Each mode is what a user would pass; "bf16 channels_last" is what `auto` picks on a GPU.
MODES = {
    "bf16, channels_last": ["--amp", "bf16", "--channels-last", "on"],
    "bf16, NCHW": ["--amp", "bf16", "--channels-last", "off"],
    "fp16 + GradScaler, channels_last": ["--amp", "fp16", "--channels-last", "on"],
    "bf16, --sync-bn": ["--amp", "bf16", "--sync-bn"],
    "bf16, channels_last, --loader torch": ["--amp", "bf16", "--channels-last", "on", "--loader", "torch"],
    "bf16, channels_last, --compile": ["--amp", "bf16", "--channels-last", "on", "--compile"],
}
BIG = dict(classes=100, train_per_class=640, val_per_class=10)  # 64,000 images: full epochs of over 10 s
SMALL = dict(classes=50, train_per_class=100, val_per_class=10)
# One schedule for every run (full data ignores all but E): DaP keeps 70% at every epoch after the first.
SCHED = ["--warmup", "1", "--interval", "1", "--keep", "0.7", "--active", "none", "--reuse", "none", "--lr-steps", "none"]
DAP = ["--strategy", "dap", *SCHED]


def _field(args) -> bytes:
    """One JPEG of about 500x375, quality 90: a smooth random colour field (seeded by its index)."""
    import io

    from PIL import Image

    i, w, h = args
    small = np.random.default_rng(i).integers(0, 256, size=(h // 25, w // 25, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(small).resize((w, h), Image.BICUBIC).save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def jpeg_dataset(root: Path, classes: int, train_per_class: int, val_per_class: int, size=(500, 375)) -> Path:
    """An ImageNet-layout folder of such JPEGs, written in parallel; kept when it already matches."""
    marker = root / "dataset.json"
    want = dict(classes=classes, train_per_class=train_per_class, val_per_class=val_per_class, size=list(size))
    if marker.is_file() and json.loads(marker.read_text()) == want:
        return root
    jobs = []
    for split, per in (("train", train_per_class), ("val", val_per_class)):
        for c in range(classes):
            (root / split / f"c{c:03d}").mkdir(parents=True, exist_ok=True)
            jobs += [(root / split / f"c{c:03d}" / f"{k:04d}.jpg", len(jobs) + k) for k in range(per)]
    with ProcessPoolExecutor(max_workers=os.cpu_count()) as pool:
        for (path, _), data in zip(jobs, pool.map(_field, [(i, *size) for _, i in jobs], chunksize=64)):
            path.write_bytes(data)
    marker.write_text(json.dumps(want))
    return root


def _gpu_env() -> dict:
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    env.setdefault("CUDA_VISIBLE_DEVICES", "0")
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    return env


def _run(cmd: list, log: Optional[Path], timeout: int) -> dict:
    """A command's rc, wall seconds and output tail; the whole output goes to `log`."""
    t = time.perf_counter()
    try:
        p = subprocess.run([str(c) for c in cmd], env=_gpu_env(), capture_output=True, text=True, timeout=timeout)
        rc, out = p.returncode, p.stdout + p.stderr
    except subprocess.TimeoutExpired as e:
        rc, out = "timeout", f"{e.stdout or ''}{e.stderr or ''}"
        out = out.decode(errors="replace") if isinstance(out, bytes) else out
    if log is not None:
        log.parent.mkdir(parents=True, exist_ok=True)
        log.write_text(" ".join(map(str, cmd)) + "\n\n" + out)
    return dict(rc=rc, seconds=time.perf_counter() - t, tail=_error(out), out=out)


def _error(out: str) -> str:
    """The lines that say what went wrong: our own error line if there is one, else the rank's
    last stderr lines (not horovodrun's traceback about a process that exited)."""
    lines = out.splitlines()
    ours = [ln for ln in lines if ": error:" in ln and "dap-hvd" in ln]
    rank = [ln for ln in lines if ln.startswith("[0]<stderr>")]
    return "\n".join(ours[-3:] or rank[-8:] or lines[-8:])


def train(data: Path, out: Path, args: list, log: Optional[Path], timeout: int = 600) -> dict:
    """`horovodrun --gloo -np 1 dap-hvd train` on the GPU: its summary.json, or the failure."""
    cmd = [BIN / "horovodrun", "--gloo", "-np", "1", "-H", "localhost:1", BIN / "dap-hvd", "train", "--data", data,
           "--out", out, "--no-progress", "--metrics-port", "0", *args]
    r = _run(cmd, log, timeout)
    if r["rc"] != 0:
        return dict(ok=False, rc=r["rc"], seconds=r["seconds"], error=r["tail"])
    return dict(ok=True, seconds=r["seconds"], summary=json.loads((Path(out) / "summary.json").read_text()))


def _rate(summary: dict) -> float:
    """Images/s of the last epoch's training loop (the first one also pays cuDNN's autotuning)."""
    last = summary["epochs"][-1]
    return last["samples"] / max(last["train_seconds"], 1e-9)


# ---------------------------------------------------------------- micro: one process, no Horovod

def micro(work: Path, repeats: int, steps: int = 30) -> dict:
    import torch

    from dap_hvd.data.loaders import Loaders, make_loader
    from dap_hvd.data.spec import LoaderSpec
    from dap_hvd.engine import Precision
    from dap_hvd.models import build_model

    dev = torch.device("cuda", 0)
    torch.cuda.set_device(dev)
    torch.backends.cudnn.benchmark = True
    root = jpeg_dataset(work / "micro-jpegs", classes=1, train_per_class=16 * BATCH, val_per_class=1)
    files = sorted(str(p) for p in (root / "train" / "c000").glob("*.jpg"))
    tags = np.arange(len(files), dtype=np.int64)
    threads = max(2, min(8, os.cpu_count() or 2))

    def spec(n=len(files)):
        return LoaderSpec(files=files[:n], tags=tags[:n], batch_size=BATCH, image_size=224, train=True, seed=0,
                          workers=threads, device="gpu", device_id=0, channels_last=True, pin_memory=True)

    def loader_rate() -> float:
        loader = make_loader("dali", spec())
        n, t = 0, time.perf_counter()
        for b in loader:
            n += b.images.shape[0]
        torch.cuda.synchronize()
        rate = n / (time.perf_counter() - t)
        loader.close()
        return rate

    model = build_model("resnet50", 1000).to(dev)
    compiled = torch.compile(model, dynamic=False)  # what --compile runs (shares the parameters)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    precision = Precision(dev, torch.bfloat16, True)
    labels = torch.randint(0, 1000, (BATCH,), device=dev)
    synthetic = torch.randn(BATCH, 3, 224, 224, device=dev).contiguous(memory_format=torch.channels_last)

    def step(net, images):
        opt.zero_grad(set_to_none=True)
        with precision.autocast():
            loss = torch.nn.functional.cross_entropy(net(precision.to_device(images)).float(), labels[:len(images)])
        loss.backward()
        opt.step()

    def synthetic_rate(net) -> float:
        for _ in range(5):
            step(net, synthetic)
        torch.cuda.synchronize()
        t = time.perf_counter()
        for _ in range(steps):
            step(net, synthetic)
        torch.cuda.synchronize()
        return steps * BATCH / (time.perf_counter() - t)

    persistent = Loaders("dali")

    def fed_rate(net, passes: int = 4) -> float:
        """The run's way: one persistent pipeline fed a new list each pass; timed after a warm pass."""
        n, t = 0, None
        for k in range(passes + 1):
            loader = persistent.open(spec())
            for b in loader:
                step(net, b.images)
                if k == 1 and t is None:
                    torch.cuda.synchronize()
                    t = time.perf_counter()
                elif t is not None:
                    n += b.images.shape[0]
            loader.close()
        torch.cuda.synchronize()
        return n / (time.perf_counter() - t)

    def switch_seconds(rebuild: bool) -> float:  # a new file list, to its first batch on the GPU
        t = time.perf_counter()
        loader = make_loader("dali", spec(2 * BATCH)) if rebuild else persistent.open(spec(2 * BATCH))
        next(iter(loader))
        torch.cuda.synchronize()
        loader.close()
        return time.perf_counter() - t

    decode = [loader_rate() for _ in range(repeats)]
    t = time.perf_counter()
    try:
        step(compiled, synthetic)  # compiles forward and backward
        torch.cuda.synchronize()
        compile_error = None
    except Exception as e:  # measured without it, and the reason is kept
        compiled, compile_error = None, f"{type(e).__name__}: {str(e)[:400]}"
    compile_seconds = time.perf_counter() - t
    # eager and compiled side by side, alternating, so drift hits both alike
    synth, synth_c, fed, fed_c = [], [], [], []
    for _ in range(repeats):
        synth.append(synthetic_rate(model))
        synth_c += [synthetic_rate(compiled)] if compiled is not None else []
    for _ in range(repeats):
        fed.append(fed_rate(model))
        fed_c += [fed_rate(compiled)] if compiled is not None else []
    rebuilds = [switch_seconds(True) for _ in range(10)]
    switches, memory = [], []
    for _ in range(50):  # the run's way: one persistent pipeline, a new list each time
        switches.append(switch_seconds(False))
        free, total = torch.cuda.mem_get_info(dev)
        memory.append((total - free) / 2**20)
    persistent.close()
    return dict(threads=threads, images=len(files), decode_rate=statistics.median(decode), decode_runs=decode,
                synthetic_rate=statistics.median(synth), synthetic_runs=synth, fed_rate=statistics.median(fed),
                fed_runs=fed, compile_seconds=compile_seconds, compile_error=compile_error,
                **(dict(compiled_synthetic_rate=statistics.median(synth_c), compiled_synthetic_runs=synth_c,
                        compiled_fed_rate=statistics.median(fed_c), compiled_fed_runs=fed_c) if synth_c else {}),
                switch_seconds=statistics.median(switches[5:]), switch_first=switches[0],
                rebuild_seconds=statistics.median(rebuilds[2:]), memory_mb=memory)


# ---------------------------------------------------------------- the CLI on the GPU

def matrix(data: Path, work: Path, logs: Optional[Path], steps: int = 150) -> list:
    rows = []
    for name, flags in MODES.items():
        slug = "".join(ch if ch.isalnum() else "-" for ch in name).strip("-")
        args = ["--model", "resnet50", "--batch-size", str(BATCH), "--strategy", "full", "--epochs", "2",
                        "--max-steps-per-epoch", str(steps), "--lr-steps", "none", *flags]
        r = train(data, work / f"matrix-{slug}", args, logs and logs / f"matrix-{slug}.log")
        row = dict(mode=name, flags=" ".join(flags), ok=r["ok"], seconds=r["seconds"])
        if r["ok"]:
            s = r["summary"]
            row.update(steps=sum(h["samples"] for h in s["epochs"]) // BATCH, rate=_rate(s),
                       top1=s["epochs"][-1]["top1"], loss=s["epochs"][-1]["train_loss"],
                       memory_mb=s["epochs"][-1].get("device_memory_mb"))
        else:
            row.update(error=r["error"][-600:])
        print(f"gpu matrix: {name}: " + (f"{row['rate']:.0f} img/s, {row['steps']} steps" if r["ok"] else
                                          f"FAILED (rc {r['rc']})"), flush=True)
        rows.append(row)
    return rows


def resume(data: Path, work: Path, logs: Optional[Path]) -> dict:
    """DaP on the small set: an uninterrupted run, and one stopped after epoch 2 and resumed."""
    import torch

    from dap_hvd.checkpoint import list_checkpoints
    from dap_hvd.policy.policies import selection_digest

    args = ["--model", "resnet50", "--batch-size", str(BATCH // 2), "--epochs", "4", *DAP]
    whole = train(data, work / "resume-whole", args, logs and logs / "resume-whole.log")
    cut = train(data, work / "resume-cut", [*args, "--stop-after", "2"], logs and logs / "resume-cut.log")
    if not (whole["ok"] and cut["ok"]):
        return dict(ok=False, error=(whole.get("error") or cut.get("error"))[-600:])
    ckpt = list_checkpoints(work / "resume-cut")[-1]
    saved = selection_digest(torch.load(ckpt, map_location="cpu", weights_only=True)["selection"].numpy())
    more = train(Path(data), work / "resume-cut", ["--resume", work / "resume-cut"], logs and logs / "resume-more.log")
    if not more["ok"]:
        return dict(ok=False, error=more["error"][-600:])
    ev = _run([BIN / "horovodrun", "--gloo", "-np", "1", "-H", "localhost:1", BIN / "dap-hvd", "evaluate",
               work / "resume-cut", "--json"], logs and logs / "resume-evaluate.log", 600)
    h, w = more["summary"]["epochs"], whole["summary"]["epochs"]
    printed = [ln.split(">:", 1)[-1] for ln in ev["out"].splitlines() if ln.split(">:", 1)[-1].startswith("{")]
    evaluated = json.loads(printed[-1]) if ev["rc"] == 0 and printed else None
    return dict(ok=True, checkpoint_selection=saved, resumed_epoch3_selection=h[2]["selection_digest"],
                same_selection=saved == h[2]["selection_digest"],
                subsets=[x["subset"] for x in h], whole_subsets=[x["subset"] for x in w],
                first_epochs_equal=[x["train_loss"] for x in h[:2]] == [x["train_loss"] for x in w[:2]],
                top1=h[-1]["top1"], whole_top1=w[-1]["top1"],
                evaluate_top1=None if evaluated is None else evaluated.get("top1"),
                evaluate_error=None if ev["rc"] == 0 else ev["tail"][-600:])


def saving(data: Path, work: Path, logs: Optional[Path], epochs: int = 6) -> dict:
    common = ["--model", "resnet50", "--batch-size", str(BATCH), "--epochs", str(epochs), "--eval-every", "100",
              "--amp", "bf16", "--channels-last", "on"]
    out = {}
    for name, flags in (("full", ["--strategy", "full", "--lr-steps", "none"]), ("dap", DAP)):
        r = train(data, work / f"saving-{name}", [*common, *flags], logs and logs / f"saving-{name}.log", timeout=900)
        if not r["ok"]:
            return dict(ok=False, error=f"{name}: {r['error'][-600:]}")
        s = r["summary"]
        out[name] = dict(launch_seconds=r["seconds"], epoch_seconds=[h["seconds"] for h in s["epochs"]],
                         train_seconds=[h["train_seconds"] for h in s["epochs"]],
                         eval_seconds=[h["eval_seconds"] for h in s["epochs"]],
                         samples=[h["samples"] for h in s["epochs"]],
                         data_wait_seconds=[h["data_wait_seconds"] for h in s["epochs"]],
                         selection_seconds=[h["selection_seconds"] for h in s["epochs"]],
                         subset=[h["subset"] for h in s["epochs"]],
                         memory_mb=[h.get("device_memory_mb") for h in s["epochs"]],
                         peak_mb=[h.get("device_peak_mb") for h in s["epochs"]],
                         compute_planned=s.get("compute_ratio_planned"), compute=s.get("compute_ratio_measured"))
    f, d = out["full"], out["dap"]

    def work(r):  # epochs 2..E without evaluation: what DaP changes (below)
        return sum(s - e for s, e in zip(r["epoch_seconds"][1:], r["eval_seconds"][1:]))

    out.update(ok=True, images=BIG["classes"] * BIG["train_per_class"], epochs=epochs,
               wall_ratio=sum(d["epoch_seconds"]) / sum(f["epoch_seconds"]),
               launch_ratio=d["launch_seconds"] / f["launch_seconds"],
               compute_ratio=d["compute"] if d["compute"] is not None else d["compute_planned"],
               # Epoch 1 (all data in both runs, plus the one-time start: cuDNN tuning, the first
               # pipeline) and the evaluation (the same validation set) cost both runs the same
               # seconds; they are left out of the goal's ratio, on both sides, and kept above.
               steady_wall_ratio=work(d) / work(f),
               steady_compute_ratio=sum(d["samples"][1:]) / sum(f["samples"][1:]))
    return out


def partial_batches(sizes=(200, 137, 93)) -> dict:
    """The first ResNet-50 step (bf16, channels_last) on batches of sizes not seen before: with
    cudnn.benchmark on, as before the fix, and through engine.Precision.kernels(tuned=False), as
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
        with precision.kernels(tuned=tuned):
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


# ---------------------------------------------------------------- the section

def bench_gpu(work: Path, a, raw: dict, save: Callable[[], None]) -> Optional[dict]:
    import torch

    if not torch.cuda.is_available():
        print("gpu: skipped: no CUDA device on this host (torch.cuda.is_available() is False); "
              "BENCHMARKS.md keeps any earlier GPU section", flush=True)
        return None
    parts = [p for p in PARTS if p in set(a.gpu_parts.split(","))]
    unknown = set(a.gpu_parts.split(",")) - set(PARTS)
    if unknown:
        raise SystemExit(f"dap-hvd bench: --gpu-parts: unknown part(s) {sorted(unknown)}; choose from {list(PARTS)}")
    data_root = Path(a.gpu_data) if a.gpu_data else work / "gpu-data"
    logs = Path(a.logs) if a.logs else None
    driver = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                            capture_output=True, text=True).stdout.strip().splitlines()
    g = raw.setdefault("gpu", {})
    if set(parts) - {"partial"}:  # (partial alone needs neither DALI nor Horovod: keep their versions)
        g.update(gpu=torch.cuda.get_device_name(0), driver=driver[0] if driver else "?", torch=torch.__version__,
                 cuda=torch.version.cuda, dali=_version("nvidia-dali-cuda130"), horovod=_version("horovod"),
                 batch=BATCH, cores=os.cpu_count(), python=sys.version.split()[0])
    for part in parts:
        t = time.perf_counter()
        if part == "micro":
            g.update(micro(work, a.repeats))
        elif part == "matrix":
            g["matrix"] = matrix(jpeg_dataset(data_root / "big", **BIG), work, logs)
            g["matrix_images"] = BIG["classes"] * BIG["train_per_class"]
        elif part == "resume":
            g["resume"] = resume(jpeg_dataset(data_root / "small", **SMALL), work, logs)
        elif part == "saving":
            g["saving"] = saving(jpeg_dataset(data_root / "big", **BIG), work, logs)
        elif part == "partial":
            g["partial"] = partial_batches()
        g.setdefault("part_seconds", {})[part] = time.perf_counter() - t
        g.setdefault("part_stamps", {})[part] = dict(date=raw["machine"]["date"], command=raw["command"])
        print(f"gpu: {part} done in {time.perf_counter() - t:.0f} s", flush=True)
        save()
    return g


def _saving_notes(s: dict) -> str:
    """What the table implies: DaP's training time beyond its share of a full epoch, and memory."""
    f, d = s["full"], s["dap"]
    n = d["subset"][0]
    per_sample = statistics.median(t / n for t in f["train_seconds"][1:])  # a warm full epoch, per image
    excess = [t - per_sample * k for t, k in zip(d["train_seconds"][1:], d["subset"][1:])]
    peaks = [m for m in d["peak_mb"][1:] if m is not None]
    held = [m for m in d["memory_mb"][1:] if m is not None]
    return (f"\n\nDaP's training loops took {sum(excess):.1f} s more than their subsets' share of a warm full epoch "
            f"(epochs 2-{len(d['subset'])}: " + ", ".join(f"{x:+.1f}" for x in excess) + " s)."
            + (f" Device memory per epoch after the first, as the subset shrinks: peak allocated "
               f"{min(peaks):.0f}..{max(peaks):.0f} MB, reserved {min(held):.0f}..{max(held):.0f} MB." if peaks else ""))


def render(g: dict) -> str:
    lines = [f"{g['gpu']}, driver {g['driver']}, CUDA {g.get('cuda', '?')}, torch {g['torch']}, DALI {g['dali']}, "
             f"Horovod {g['horovod']}, {g.get('cores', '?')} CPU cores. ResNet-50, batch {g['batch']}, one process."]
    if "synthetic_rate" in g:
        mem = g["memory_mb"]
        lines.append(
            f"**Throughput**: bf16 autocast, channels_last, {g['images']} JPEGs of 500x375, DALI `mixed` decoding "
            f"with {g['threads']} threads, medians of {len(g['synthetic_runs'])}.\n\n"
            "| measurement | images/s |\n|---|---|\n"
            f"| DALI `mixed` decode + RandomResizedCrop alone | {g['decode_rate']:.0f} |\n"
            f"| training step on synthetic tensors (the ceiling) | {g['synthetic_rate']:.0f} |\n"
            f"| training step fed by DALI | {g['fed_rate']:.0f} |\n"
            + (f"| `--compile`: training step on synthetic tensors | {g['compiled_synthetic_rate']:.0f} |\n"
               f"| `--compile`: training step fed by DALI | {g['compiled_fed_rate']:.0f} |\n"
               if "compiled_synthetic_rate" in g else "") + "\n"
            + f"DALI-fed / synthetic: **{g['fed_rate'] / g['synthetic_rate']:.3f}** eager"
            + (f", **{g['compiled_fed_rate'] / g['compiled_synthetic_rate']:.3f}** compiled"
               if "compiled_synthetic_rate" in g else "")
            + f" (goal: within 10%). Against NVIDIA's published PyTorch ResNet-50 AMP figure on one A100-80GB "
            f"({A100_ANCHOR:,} img/s): **{g['synthetic_rate'] / A100_ANCHOR:.2f}x** eager on synthetic tensors, "
            f"{g['fed_rate'] / A100_ANCHOR:.2f}x fed by DALI"
            + (f"; compiled **{g['compiled_synthetic_rate'] / A100_ANCHOR:.2f}x** on synthetic tensors, "
               f"**{g['compiled_fed_rate'] / A100_ANCHOR:.2f}x** fed by DALI (compiled / eager, side by side: "
               f"{g['compiled_synthetic_rate'] / g['synthetic_rate']:.2f}x; compiling took "
               f"{g['compile_seconds']:.0f} s, once per process, with Inductor's on-disk cache as this machine "
               f"had it)" if "compiled_synthetic_rate" in g else "")
            + " (goal: 2x). MLPerf's tuned MXNet+DALI runs reach about 7,200 img/s per H100. "
            + (f"torch.compile failed here: {g['compile_error']}. " if g.get("compile_error") else "")
            + f"A subset change, from a new file list to its first batch: "
            f"{g['switch_seconds']:.3f} s through the run's persistent pipeline (median of 45; the first "
            f"{g['switch_first']:.3f} s), against {g['rebuild_seconds']:.3f} s for a pipeline built for the list. "
            f"Device memory in use over 50 changes: {mem[0]:.0f} MB at the first, {mem[9]:.0f} MB at the tenth, "
            f"{mem[-1]:.0f} MB at the last.")
    if g.get("matrix"):
        rows = "".join(
            f"| {m['mode']} | " + (f"ok | {m['steps']} | {m['rate']:.0f} | {m['loss']:.3f} | {m['top1']:.4f} |"
                                   if m["ok"] else f"**failed**: {m['error'].strip().splitlines()[-1][:160]} | | | | |")
            + "\n" for m in g["matrix"])
        big = g["matrix_images"]
        lines.append(f"**`dap-hvd train` on the GPU** (`horovodrun --gloo -np 1`, {big:,} generated 500x375 JPEGs in "
                     f"{BIG['classes']} classes of random colour fields, so top-1 stays at chance; 2 epochs capped by "
                     "`--max-steps-per-epoch`, evaluated at the end; images/s of the second epoch's training loop):\n\n"
                     "| mode | result | steps | images/s | last loss | top-1 |\n|---|---|---|---|---|---|\n" + rows)
    r = g.get("resume")
    if r:
        lines.append(
            "**Checkpoint and resume** (DaP, p=0.7 every epoch after 1, ResNet-50, 5,000 images, stopped after "
            "epoch 2 and resumed to 4): " + (
                f"the resumed run trained the checkpoint's selection: **{r['same_selection']}** "
                f"(digest {r['checkpoint_selection'][:12]}); subsets {r['subsets']} (uninterrupted: "
                f"{r['whole_subsets']}); top-1 {r['top1']:.4f}, `dap-hvd evaluate` on the run "
                f"{'failed' if r['evaluate_top1'] is None else format(r['evaluate_top1'], '.4f')}. The first two "
                f"epochs' losses equal the uninterrupted run's: {r['first_epochs_equal']} (cuDNN's autotuned "
                f"kernels need not be bit-reproducible across processes)."
                if r["ok"] else f"**failed**: {r['error'].strip().splitlines()[-1][:200]}"))
    s = g.get("saving")
    if s and s.get("ok"):
        f, d = s["full"], s["dap"]
        lines.append(
            f"**DaP's saving in wall clock** ({s['images']:,} images, {s['epochs']} epochs, bf16, channels_last, "
            f"DaP p=0.7 every epoch after the first, evaluated once at the end). "
            f"Epochs 2-{s['epochs']}, where the two runs differ (their evaluation left out on both sides): "
            f"compute ratio **{s['steady_compute_ratio']:.3f}**, wall-clock ratio **{s['steady_wall_ratio']:.3f}** "
            f"({s['steady_wall_ratio'] - s['steady_compute_ratio']:+.3f}; goal: within 0.02). All epochs, "
            f"with epoch 1's one-time start and the evaluation, which cost both runs the same: compute "
            f"{s['compute_ratio']:.3f}, wall clock {s['wall_ratio']:.3f}"
            + f"; launch to exit {s['launch_ratio']:.3f} ({d['launch_seconds']:.0f} s against "
            f"{f['launch_seconds']:.0f} s).\n\n"
            "| epoch | full: s | DaP: subset | DaP: s | DaP: selection s | DaP: data wait s | DaP: device MB |\n"
            "|---|---|---|---|---|---|---|\n" + "".join(
                f"| {i + 1} | {f['epoch_seconds'][i]:.1f} | {d['subset'][i]} | {d['epoch_seconds'][i]:.1f} | "
                f"{d['selection_seconds'][i]:.3f} | {d['data_wait_seconds'][i]:.2f} | "
                f"{'-' if d['memory_mb'][i] is None else format(d['memory_mb'][i], '.0f')} |\n"
                for i in range(len(d["subset"])))
            + _saving_notes(s))
    elif s:
        lines.append(f"**DaP's saving in wall clock: failed**: {s['error'].strip().splitlines()[-1][:200]}")
    pb = g.get("partial")
    if pb:
        lines.append(
            f"**The fix, measured** ({pb['gpu']}, torch {pb['torch']}): the first ResNet-50 step on a batch of a "
            f"new size ({', '.join(map(str, pb['sizes']))}) took " + ", ".join(f"{x:.2f}" for x in pb["autotuned"])
            + " s with cuDNN's autotuner, and " + ", ".join(f"{x:.2f}" for x in pb["heuristic"])
            + f" s with its heuristics, which the trainer now uses for an epoch's last, partial batch; a tuned "
            f"full batch of {BATCH} takes {pb['full_step']:.3f} s.")
    stamps = g.get("part_stamps", {})
    if stamps:
        lines.append("_Measured part by part: " + "; ".join(
            f"{part} {st['date']} by `{st['command']}`" for part, st in sorted(stamps.items(), key=lambda kv: kv[1]["date"]))
            + "._")
    return "\n\n".join(lines)
