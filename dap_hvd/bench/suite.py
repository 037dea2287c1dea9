"""`dap-hvd bench`: the benchmark suite. Prints tables, writes BENCHMARKS.md sections and raw JSON.

  (a) DaP overhead: the same samples trained with and without DaP's bookkeeping (2 Gloo ranks)
  (b) end-to-end saving: wall clock of DaP vs full data for the same epochs, against compute
  (c) the selection step at ImageNet scale (2 and 4 ranks), and loader throughput (DALI vs torch)
  (d) accuracy at matched compute (the paper's Table 2(f)) over seeds, and the redundancy sweep
  (e) `--only real`: every policy's top-1 against compute and wall clock on Fashion-MNIST (`dap-hvd compare`)
  (f) `--only long`: the same on a 40-epoch schedule, where full-data training converges
Every figure is measured here, in this run; medians over repeats, ratios measured side by side.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import sysconfig
import tempfile
import time
from pathlib import Path

import numpy as np

BIN = Path(sysconfig.get_path("scripts"))  # where pip put dap-hvd and horovodrun
SECTIONS = ("machine", "gpu", "startup", "overhead", "saving", "selection", "loaders", "accuracy", "redundancy", "real",
            "long")


def _env() -> dict:
    # The CPU sections run 2-4 ranks on one host: keep them off a GPU they would have to share.
    env = dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="")
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    return env


def _horovodrun(np_: int, args: list, timeout: int = 900) -> str:
    cmd = [str(BIN / "horovodrun"), "--gloo", "-np", str(np_), "-H", f"localhost:{np_}", *map(str, args)]
    p = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=timeout)
    if p.returncode != 0:
        raise RuntimeError(f"benchmark job failed: {' '.join(cmd)}\n{p.stdout[-3000:]}\n{p.stderr[-3000:]}")
    return p.stdout


def train(data: Path, out: Path, *args) -> dict:
    _horovodrun(2, [BIN / "dap-hvd", "train", "--data", data, "--out", out, "--no-progress", "--workers", "1", *args])
    return json.loads((out / "summary.json").read_text())


def _version(dist_name: str) -> str:
    """An installed distribution's version, without importing it (the wrappers own the imports)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(dist_name)
    except PackageNotFoundError:
        return "not installed"


def machine() -> dict:
    import torch

    cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), platform.processor())
    return dict(cpu=cpu, cores=os.cpu_count(), python=platform.python_version(), torch=torch.__version__,
                dali=_version("nvidia-dali-cuda130"), horovod=_version("horovod"), date=time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                gpu=torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none")


# ---------------------------------------------------------------- start-up

_STACK = ("numpy", "torch", "torch._dynamo", "torchvision", "horovod.torch", "nvidia.dali", "prometheus_client",
          "pydantic", "dap_hvd.train")


def _import_seconds(module: str) -> float:
    """Wall time of a cold `import module` in a fresh interpreter, less the interpreter's start."""
    code = f"import time; t = time.perf_counter(); import {module}; print(time.perf_counter() - t)"
    p = subprocess.run([sys.executable, "-c", code], env=_env(), capture_output=True, text=True, timeout=300)
    return float(p.stdout.strip().splitlines()[-1])


def _timed_launch(args: list, timeout: int = 600) -> dict:
    """Seconds from launching `horovodrun -np 2 dap-hvd train ...` to its first log line, its first
    epoch line and its 'done' line, and from 'done' to the launcher's exit."""
    cmd = [str(BIN / "horovodrun"), "--gloo", "-np", "2", "-H", "localhost:2", *map(str, args)]
    t0 = time.perf_counter()
    marks = {}
    proc = subprocess.Popen(cmd, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    for line in proc.stdout:
        now = time.perf_counter() - t0
        if "[rank 0] INFO" in line:
            marks.setdefault("first_log", now)
        if "INFO epoch 1/" in line:
            marks.setdefault("first_epoch", now)
        if "INFO done:" in line:
            marks.setdefault("done", now)
    rc = proc.wait(timeout=timeout)
    marks["exit"] = time.perf_counter() - t0
    if rc != 0 or len(marks) != 4:
        raise RuntimeError(f"start-up benchmark run failed (rc {rc}, saw {sorted(marks)}): {' '.join(cmd)}")
    return marks


_CONFIG_CODE = ("import time; t = time.perf_counter(); from dap_hvd.config import load_config; "
                "load_config(None, {'data.root': '.', 'strategy': 'infobatch'}); print(time.perf_counter() - t)")


def bench_startup(data: Path, work: Path, repeats: int) -> dict:
    plan_runs = {s: [] for s in ("dap", "rs2", "infobatch")}
    config_runs = []
    for _ in range(repeats):
        for strategy, runs in plan_runs.items():
            t = time.perf_counter()
            subprocess.run([str(BIN / "dap-hvd"), "plan", "--preset", "imagenet", "--strategy", strategy], env=_env(),
                           capture_output=True, check=True, timeout=60)
            runs.append(time.perf_counter() - t)
        p = subprocess.run([sys.executable, "-c", _CONFIG_CODE], env=_env(), capture_output=True, text=True,
                           check=True, timeout=60)
        config_runs.append(float(p.stdout.strip().splitlines()[-1]))
    imports = {m: statistics.median(_import_seconds(m) for _ in range(repeats)) for m in _STACK}
    launches = [_timed_launch([BIN / "dap-hvd", "train", "--data", data, "--out", work / f"startup-{r}",
                               "--no-progress", "--workers", "1", "--epochs", "1", "--reuse", "none",
                               "--lr-steps", "none"]) for r in range(repeats)]
    med = {k: statistics.median(m[k] for m in launches) for k in launches[0]}
    return dict(repeats=repeats, plan_seconds={k: statistics.median(v) for k, v in plan_runs.items()},
                config_seconds=statistics.median(config_runs), imports=imports, launch=med, launches=launches)


# ---------------------------------------------------------------- (a) overhead, (b) saving

def _bench_gpu(work: Path, a: argparse.Namespace, raw: dict, save) -> dict | None:
    from dap_hvd.bench.gpu import bench_gpu

    return bench_gpu(work, a, raw, save)


def bench_overhead(data: Path, work: Path, repeats: int) -> dict:
    """Same samples both ways: `dap` with p=1 drops every epoch (ledger, merge, select, broadcast
    all run, and keep everything), against `full` (no bookkeeping). Both feed their persistent
    pipelines a new permutation every epoch; the selection step's own time is reported separately."""
    length = ["--epochs", "4", "--lr-steps", "none", "--eval-every", "100"]
    scheds = {"dap": [*length, "--warmup", "0", "--interval", "1", "--keep", "1.0", "--reuse", "4"], "full": length}
    rows = {"dap": [], "full": []}
    sel = []
    for r in range(repeats):
        for strategy in ("dap", "full") if r % 2 == 0 else ("full", "dap"):  # alternate to spread noise
            s = train(data, work / f"ovh-{strategy}-{r}", "--strategy", strategy, *scheds[strategy])
            assert s["compute_ratio_measured"] == 1.0
            train_s = sum(e["seconds"] for e in s["epochs"])
            rows[strategy].append(train_s)
            if strategy == "dap":
                sel.append(sum(e["selection_seconds"] for e in s["epochs"]) / train_s)
    med = {k: statistics.median(v) for k, v in rows.items()}
    ratios = [d / f for d, f in zip(rows["dap"], rows["full"])]
    return dict(repeats=repeats, dap_seconds=rows["dap"], full_seconds=rows["full"], median_dap=med["dap"],
                median_full=med["full"], overhead=statistics.median(ratios) - 1, selection_share=statistics.median(sel))


# ---------------------------------------------------------------- (c) selection, loaders

def bench_selection(num_samples: int, worlds=(2, 4)) -> list:
    out = []
    for w in worlds:
        text = _horovodrun(w, [sys.executable, "-m", "dap_hvd.bench.selection_step", "--num-samples", num_samples], 1200)
        out.append(json.loads(text.split("BENCH ", 1)[1].splitlines()[0]))
    return out


def bench_loaders(work: Path, repeats: int, images: int = 384) -> dict:
    """DALI CPU pipeline vs torchvision DataLoader on the same ImageNet-sized JPEGs, 224 crops,
    2 threads / 2 workers, alternating rounds."""
    from dap_hvd.data.catalog import load_catalog
    from dap_hvd.data.loaders import make_loader
    from dap_hvd.data.sample_data import SampleSpec, make_sample_data
    from dap_hvd.data.spec import LoaderSpec

    root = make_sample_data(work / "big", SampleSpec(num_classes=4, train_per_class=images // 4, val_per_class=2,
                                                      redundancy=1, image_size=448, seed=3))
    cat = load_catalog(root, "train", cache=False)
    idx = np.arange(len(cat), dtype=np.int64)
    sizes = [os.path.getsize(f) for f in cat.files(idx)]
    rates = {"dali": [], "torch": []}
    for r in range(repeats + 1):
        for kind in ("dali", "torch") if r % 2 == 0 else ("torch", "dali"):
            spec = LoaderSpec(files=cat.files(np.random.default_rng(r).permutation(idx)), tags=idx, batch_size=64,
                              image_size=224, train=True, seed=r, workers=2)
            t0 = time.perf_counter()
            loader = make_loader(kind, spec)
            n = sum(b.images.shape[0] for b in loader)
            loader.close()
            if r:  # round 0 warms the page cache and the libraries
                rates[kind].append(n / (time.perf_counter() - t0))
    switch = _switch_cost(cat, idx)
    return dict(images=len(idx), image_px="448x448", mean_jpeg_kb=statistics.mean(sizes) / 1024, repeats=repeats,
                dali_cpu=statistics.median(rates["dali"]), torch=statistics.median(rates["torch"]),
                dali_runs=rates["dali"], torch_runs=rates["torch"], **switch)


def _switch_cost(cat, idx: np.ndarray, changes: int = 20) -> dict:
    """A subset change, from the new file list to the first batch: a pipeline built for the new
    list (what every epoch paid before the pipeline became persistent) against the run's
    persistent pipeline fed the list, alternating, same lists."""
    from dap_hvd.data.loaders import Loaders, make_loader
    from dap_hvd.data.spec import LoaderSpec

    rng = np.random.default_rng(7)
    persistent = Loaders("dali")
    times = {"rebuild": [], "persistent": []}
    for i in range(changes + 2):
        sub = np.sort(rng.choice(idx, size=len(idx) // 2, replace=False))
        spec = LoaderSpec(files=cat.files(sub), tags=sub, batch_size=64, image_size=224, train=True, seed=i,
                          workers=2)
        for how in ("rebuild", "persistent") if i % 2 == 0 else ("persistent", "rebuild"):
            t0 = time.perf_counter()
            loader = make_loader("dali", spec) if how == "rebuild" else persistent.open(spec)
            next(iter(loader))
            seconds = time.perf_counter() - t0
            loader.close()
            if i >= 2:  # the first two warm the libraries and the persistent pipeline's build
                times[how].append(seconds)
    persistent.close()
    return dict(switch_changes=changes, switch_rebuild=statistics.median(times["rebuild"]),
                switch_persistent=statistics.median(times["persistent"]))


# ---------------------------------------------------------------- (d) accuracy at matched compute

SCHED = dict(epochs=12, warmup=3, interval=1, keep=0.8, reuse=(8,))


def _sched_args(epochs=None, reuse=None, dap=True) -> list:
    """The run's length and LR shape, and DaP's schedule for dap/random (`dap`; full refuses it)."""
    s = SCHED
    args = ["--epochs", epochs or s["epochs"], "--lr-steps", ",".join(map(str, reuse or s["reuse"])),
            "--lr-warmup-epochs", "1", "--eval-every", "4"]
    return args + (["--warmup", s["warmup"], "--interval", s["interval"], "--keep", s["keep"],
                    "--reuse", ",".join(map(str, reuse or s["reuse"]))] if dap else [])


def bench_accuracy(data: Path, work: Path, seeds: int, strategies=None) -> dict:
    from dap_hvd.data.catalog import load_catalog
    from dap_hvd.policy.schedule import Schedule, plan

    ratio = plan(Schedule(SCHED["epochs"], SCHED["warmup"], SCHED["interval"], SCHED["keep"], None, SCHED["reuse"]),
                 num_samples=len(load_catalog(data, "train"))).compute_ratio
    fewer = max(1, round(SCHED["epochs"] * ratio))
    cat = load_catalog(data, "train")
    runs = {}
    strategies = strategies or ("full", "dap", "random", "fewer_epochs", "fixed_subset")
    for seed in range(seeds):
        for name in strategies:
            out = work / f"acc-{name}-{seed}"
            common = ["--seed", seed]
            if name in ("full", "dap", "random"):
                s = train(data, out, "--strategy", name, *_sched_args(dap=name != "full"), *common)
            elif name == "fewer_epochs":  # all data, same LR shape compressed into fewer epochs
                step = max(1, round(SCHED["reuse"][0] * fewer / SCHED["epochs"]))
                s = train(data, out, "--strategy", "full", *_sched_args(fewer, (step,), dap=False), *common)
                s["compute_ratio_measured"] *= fewer / SCHED["epochs"]  # relative to the full-length run
            else:  # a fixed random subset of the data, all epochs
                from dap_hvd.compare import write_subset_list

                fl = work / f"subset-{seed}.txt"
                kept = write_subset_list(data, ratio, seed, fl)
                s = train(data, out, "--strategy", "full", "--train-list", fl, *_sched_args(dap=False), *common)
                s["compute_ratio_measured"] *= kept / len(cat)  # relative to the full dataset
            runs.setdefault(name, []).append(dict(top1=s["top1"], top5=s["top5"], compute=s["compute_ratio_measured"],
                                                  wall=s["elapsed_seconds"],
                                                  epoch_seconds=sum(e["seconds"] for e in s["epochs"]),
                                                  train_seconds=sum(e["train_seconds"] for e in s["epochs"])))
    return dict(seeds=seeds, planned_ratio=ratio, schedule=SCHED, runs=runs)


def bench_compare(name: str, a: argparse.Namespace) -> dict:
    """Fashion-MNIST, every policy: `dap-hvd compare` in COMPARE_DIR/NAME (bench/real.py), which keeps
    each run's figures as it ends, so an interrupted section resumes there."""
    from dap_hvd.bench import real as bench_real

    os.environ.update(OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="")  # as the other CPU sections' jobs
    os.environ["PATH"] = f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"
    policies = a.policies.split(",") if a.policies else None
    return bench_real.run(name, Path(a.compare_dir) / name, a.seeds, log=lambda line: print(line, flush=True),
                          policies=policies)


PARETO = {"real": "pareto_real.png", "long": "pareto_long.png"}


def plot_compare(raw: dict, out: Path) -> None:
    from dap_hvd import compare

    for name, file in PARETO.items():
        if raw.get(name, {}).get("entries"):
            compare.plot(raw[name], out.parent / "bench" / file, title=TITLES[name])


def bench_redundancy(work: Path, seeds: int, levels=(1, 4, 12)) -> dict:
    """Table 4: DaP's gap to full data as the near-duplicate count varies, same image count."""
    from dap_hvd.data.sample_data import SampleSpec, make_sample_data

    out = {}
    for r in levels:
        data = make_sample_data(work / f"red{r}", SampleSpec(redundancy=r, seed=11))
        res = bench_accuracy(data, work / f"red{r}-runs", seeds, strategies=("full", "dap"))
        out[r] = res["runs"]
    return out


# ---------------------------------------------------------------- reporting

def _ms(xs) -> str:
    xs = list(xs)
    return f"{statistics.mean(xs):.3f} ± {statistics.stdev(xs):.3f}" if len(xs) > 1 else f"{xs[0]:.3f}"


def _plan_line(st: dict) -> str:
    plans = st["plan_seconds"] if isinstance(st["plan_seconds"], dict) else {"dap": st["plan_seconds"]}
    line = "\n`dap-hvd plan` answers in " + ", ".join(f"{v:.2f} s (`--strategy {k}`)" for k, v in plans.items())
    line += " from launch to exit, with no torch or pydantic import (target < 0.3 s)."
    if "config_seconds" in st:
        line += (f" Loading and validating a training config (pydantic, imported then) takes "
                 f"{st['config_seconds']:.2f} s in a fresh interpreter.")
    return line


def render(raw: dict) -> dict:
    sec = {}
    for name, file in PARETO.items():  # results from before `compare` keep the text they wrote
        if raw.get(name, {}).get("entries"):
            from dap_hvd import compare
            from dap_hvd.bench import real as bench_real

            sec[name] = ("Fashion-MNIST (real 28×28 product photos, MIT licence, Debian's `dataset-fashion-mnist`) "
                         f"through `dap-hvd compare` on this machine: {bench_real.describe(name)} "
                         + compare.render(compare.build_report(raw[name]))  # from the runs, by today's rules
                         + f"\n![top-1 against compute and wall clock](bench/{file})")
    m = raw.get("machine")
    if m:
        sec["machine"] = (f"Machine: {m['cpu']}, {m['cores']} cores, GPU: {m['gpu']}. Python {m['python']}, "
                          f"torch {m['torch']}, DALI {m['dali']}, Horovod {m['horovod']}. Each section names the run that "
                          f"measured it.")
    if raw.get("gpu"):
        from dap_hvd.bench import gpu as bench_gpu

        sec["gpu"] = bench_gpu.render(raw["gpu"])
    st = raw.get("startup")
    if st:
        la = st["launch"]
        rows = "".join(f"| `import {m}` | {v:.2f} |\n" for m, v in st["imports"].items())
        sec["startup"] = (
            f"`horovodrun --gloo -np 2 dap-hvd train --epochs 1` on the sample data, from launch, median of "
            f"{st['repeats']} runs; each rank's imports run side by side on this machine's 2 cores.\n\n"
            "| milestone | seconds after launch |\n|---|---|\n"
            f"| first log line | {la['first_log']:.1f} |\n| epoch 1 done | {la['first_epoch']:.1f} |\n"
            f"| `done` | {la['done']:.1f} |\n| launcher exits | {la['exit']:.1f} ({la['exit'] - la['done']:.1f} after "
            f"`done`) |\n\n"
            "Cold imports in a fresh interpreter, one process, median (each line includes what it imports):\n\n"
            "| import | seconds |\n|---|---|\n" + rows + _plan_line(st))
    o = raw.get("overhead")
    if o:
        sec["overhead"] = (
            f"Same samples trained with DaP bookkeeping (`dap`, p=1: ledger + merge + select + broadcast every epoch) "
            f"and without (`full`), 2 Gloo ranks, 4 epochs on the sample data, {o['repeats']} alternating runs each.\n\n"
            "| | median train seconds | runs |\n|---|---|---|\n"
            f"| with DaP bookkeeping | {o['median_dap']:.2f} | {', '.join(f'{x:.2f}' for x in o['dap_seconds'])} |\n"
            f"| without | {o['median_full']:.2f} | {', '.join(f'{x:.2f}' for x in o['full_seconds'])} |\n\n"
            f"Overhead (median of paired ratios): **{100 * o['overhead']:+.2f}%** of epoch time (target ≤ 1%). "
            f"The selection step itself takes {100 * o['selection_share']:.2f}% of epoch time; the rest of the "
            f"difference is run-to-run noise on this shared 2-core machine.")
    acc = raw.get("accuracy")
    if acc:
        full, dap = acc["runs"]["full"], acc["runs"]["dap"]

        def med(runs, key):
            return statistics.median(r[key] for r in runs)

        comp = med(dap, "compute")
        wall = med(dap, "epoch_seconds") / med(full, "epoch_seconds")
        loop = med(dap, "train_seconds") / med(full, "train_seconds")
        sec["saving"] = (
            f"DaP vs full data, same {acc['schedule']['epochs']} epochs on the sample data, 2 Gloo ranks, evaluation "
            f"every 4 epochs, {acc['seeds']} seeds each (the runs of section (d)), medians.\n\n"
            "| | run seconds (all epochs) | training-loop seconds | compute ratio |\n|---|---|---|---|\n"
            f"| full | {med(full, 'epoch_seconds'):.1f} | {med(full, 'train_seconds'):.1f} | 1.000 |\n"
            f"| DaP | {med(dap, 'epoch_seconds'):.1f} | {med(dap, 'train_seconds'):.1f} | {comp:.3f} |\n\n"
            f"Wall-clock ratio **{wall:.3f}** for the whole run (training loops **{loop:.3f}**) against compute "
            f"ratio **{comp:.3f}**: gaps of {100 * (wall - comp):+.1f} and {100 * (loop - comp):+.1f} points (target "
            f"within ±2). What does not shrink with the subset (evaluation, pipeline start, checkpoint, the selection "
            f"step) is a larger share of these 2-second epochs than of an ImageNet epoch.")
        names = {"full": "All data (100%)", "dap": "DaP (ours)", "random": "Random drop, same schedule",
                 "fewer_epochs": "All data, fewer epochs", "fixed_subset": "Fixed random subset"}
        rows = "".join(f"| {names[k]} | {_ms(r['compute'] for r in v)} | {_ms(r['top1'] for r in v)} | "
                       f"{_ms(r['top5'] for r in v)} |\n" for k, v in acc["runs"].items())
        sec["accuracy"] = (
            f"The paper's Table 2(f) on the embedded sample data (10 classes, 1,200 training images, redundancy 4, "
            f"15% hard), resnet_small, 2 Gloo ranks x batch 64, schedule {acc['schedule']} (planned compute "
            f"{acc['planned_ratio']:.3f}). Mean ± std over {acc['seeds']} seeds.\n\n"
            "| strategy | compute | top-1 | top-5 |\n|---|---|---|---|\n" + rows +
            "\n![accuracy vs compute](bench/accuracy_vs_compute.png)")
    red = raw.get("redundancy")
    if red:
        rows = ""
        for lvl, runs in red.items():
            f = [r["top1"] for r in runs["full"]]
            d = [r["top1"] for r in runs["dap"]]
            gaps = [b - a for a, b in zip(f, d)]
            rows += f"| {lvl} | {_ms(f)} | {_ms(d)} | {_ms(gaps)} |\n"
        sec["redundancy"] = ("Table 4's question: does DaP's gap to full data depend on redundancy? Same 1,200 images, "
                             "built from fewer distinct images with more near-duplicates each.\n\n"
                             "| near-duplicates per image | full top-1 | DaP top-1 | DaP − full |\n|---|---|---|---|\n" + rows)
    sel = raw.get("selection")
    if sel and "results" in sel[0]:
        rows = "".join(
            f"| {s['world_size']} | {key.split('/')[0]} | {key.split('/')[1]} | {r['median_seconds']:.3f} | "
            f"{r['min_seconds']:.3f} | {r['bytes_sent_rank0'] / 2**20:.1f} | {r['peak_extra_mb_rank0']:.1f} | "
            f"{r['kept'] / s['num_samples']:.3f} |\n"
            for s in sel for key, r in s["results"].items())
        sec["selection"] = (
            f"The step after a scored epoch for N = {sel[0]['num_samples']:,} samples (ImageNet): merge the "
            f"per-sample losses, write them into the score table, run the policy on rank 0 (DaP: hardest 90% of the "
            f"subset; InfoBatch: below-mean pruning at r = 0.5 with its loss weights; SeTa: 1-D k-means of all N "
            f"scores (r = 0) into 5 groups, a window of 3), broadcast the selection "
            f"(int64 indices, and float32 weights for InfoBatch). CPU ranks under `horovodrun --gloo` on this "
            f"machine, median of {sel[0]['repeats']} (slowest rank each time). Bytes: what rank 0 puts on the wire. "
            f"Memory: the score table holds {sel[0]['score_table_mb']:.1f} MB on every rank (float32 loss + int32 "
            f"epoch per sample) beside the {sel[0]['ledger_mb']:.1f} MB ledger; 'peak extra' is rank 0's RSS "
            f"growth during the step beyond both (targets: < 0.5 s with 2 ranks, < 64 MB).\n\n"
            "| ranks | policy | merge | median s | min s | MB sent | peak extra MB | kept |\n"
            "|---|---|---|---|---|---|---|---|\n" + rows)
    ld = raw.get("loaders")
    if ld:
        sec["loaders"] = (
            f"Training pipeline (RandomResizedCrop 224, flip, normalize) over the same {ld['images']} JPEGs "
            f"({ld['image_px']}, {ld['mean_jpeg_kb']:.0f} KB mean), batch 64, 2 decode threads / 2 workers, "
            f"{ld['repeats']} alternating rounds, median.\n\n"
            "| loader | images/s | runs |\n|---|---|---|\n"
            f"| DALI (CPU) | {ld['dali_cpu']:.0f} | {', '.join(f'{x:.0f}' for x in ld['dali_runs'])} |\n"
            f"| torchvision DataLoader | {ld['torch']:.0f} | {', '.join(f'{x:.0f}' for x in ld['torch_runs'])} |\n\n"
            f"DALI/torchvision: **{ld['dali_cpu'] / ld['torch']:.2f}x**. GPU decode (nvJPEG) is measured by "
            "`dap-hvd bench --only gpu` on a GPU host." + (
                f"\n\nA subset change (a new file list, to its first batch of 64), median of {ld['switch_changes']} "
                f"changes of half the images, alternating on the same lists: a pipeline built for the new list "
                f"(what every epoch paid before) **{ld['switch_rebuild']:.3f} s**; the run's persistent pipeline fed "
                f"the new list **{ld['switch_persistent']:.3f} s**." if "switch_rebuild" in ld else ""))
    for name, st in raw.get("stamps", {}).items():
        if name == "gpu" and raw.get("gpu", {}).get("part_stamps"):
            continue  # the GPU section is measured in parts, each with its own stamp
        for key in ((name,) if name != "accuracy" else ("accuracy", "saving")):
            if key in sec:
                sec[key] += f"\n\n_Measured {st['date']} by `{st['command']}`._"
    return sec


HEADER = """# Benchmarks

Written by `dap-hvd bench` (each section between its markers is replaced by the run that measured
it; raw figures in `bench/results.json`). Nothing here is typed by hand.
"""

TITLES = {"machine": "Machine and versions", "gpu": "GPU: ResNet-50 throughput and the DALI path",
          "startup": "Start-up time", "overhead": "(a) DaP overhead", "saving": "(b) End-to-end saving",
          "selection": "(c) Selection step at ImageNet scale", "loaders": "(c) Loader throughput",
          "accuracy": "(d) Accuracy at matched compute (Table 2(f))", "redundancy": "(d) Redundancy sweep (Table 4)",
          "real": "(e) Every policy on real images: Fashion-MNIST",
          "long": "(f) Long schedule: does pruning pay where training converges? Fashion-MNIST, 40 epochs"}


def write_markdown(path: Path, sections: dict) -> None:
    text = path.read_text() if path.exists() else HEADER
    for name in SECTIONS:
        if name not in sections:
            continue
        block = f"<!-- bench:{name} -->\n## {TITLES[name]}\n\n{sections[name]}\n<!-- /bench:{name} -->"
        pattern = re.compile(rf"<!-- bench:{name} -->.*?<!-- /bench:{name} -->", re.S)
        text = pattern.sub(lambda _: block, text) if pattern.search(text) else text.rstrip() + "\n\n" + block + "\n"
    path.write_text(text)


def plot(raw: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for name, runs in raw["accuracy"]["runs"].items():
        c = [r["compute"] for r in runs]
        t = [r["top1"] for r in runs]
        ax.errorbar(statistics.mean(c), statistics.mean(t), yerr=statistics.stdev(t) if len(t) > 1 else 0,
                    fmt="o", capsize=4, label=name)
    ax.set_xlabel("compute (fraction of full-data training)")
    ax.set_ylabel("top-1 accuracy")
    ax.set_title("Sample data: accuracy vs compute")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="dap-hvd bench", description=__doc__.splitlines()[0])
    ap.add_argument("--only", default=",".join(("startup", "overhead", "selection", "loaders", "accuracy",
                                                "redundancy")),
                    help="comma list of: startup, overhead, selection, loaders, accuracy (includes saving), "
                         "redundancy; not in the default list: gpu (one GPU), real (Fashion-MNIST, every policy, "
                         "10 epochs, three budgets), long (the same over 40 epochs: about 75 min on 2 cores)")
    ap.add_argument("--compare-dir", default="bench-out", help="real, long: where their `dap-hvd compare` folders "
                    "are kept (an interrupted section resumes from them; default bench-out)")
    ap.add_argument("--policies", help="real, long: a comma list of the policies and baselines to compare "
                    "(default all)")
    ap.add_argument("--gpu-parts", default="micro,matrix,resume,saving",
                    help="gpu: which parts to run (micro, matrix, resume, saving); each is saved as it ends")
    ap.add_argument("--gpu-data", help="gpu: folder for the generated JPEG sets, kept between calls (default: temporary)")
    ap.add_argument("--logs", help="gpu: folder for each training job's full output")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--num-samples", type=int, default=1_281_167)
    ap.add_argument("--out", default="BENCHMARKS.md")
    ap.add_argument("--results", default="bench/results.json")
    ap.add_argument("--merge", metavar="RESULTS_JSON", help="take the sections named by --only from another "
                    "host's results.json (e.g. the GPU section) into --results and rewrite --out; measures nothing")
    a = ap.parse_args(argv)
    only = set(a.only.split(","))
    results = Path(a.results)
    raw = json.loads(results.read_text()) if results.exists() else {}
    if a.merge:
        other = json.loads(Path(a.merge).read_text())
        missing = sorted(only - set(other))
        if missing:
            raise SystemExit(f"dap-hvd bench: --merge {a.merge}: it holds no section {missing}")
        for name in only:
            raw[name] = other[name]
            raw.setdefault("stamps", {})[name] = other.get("stamps", {}).get(name, {})
        results.write_text(json.dumps(raw, indent=1, default=str))
        write_markdown(Path(a.out), render(raw))
        plot_compare({k: raw[k] for k in only if k in raw}, Path(a.out))
        print(f"merged {sorted(only)} from {a.merge} into {results} and {a.out}")
        return 0
    stamps = raw.setdefault("stamps", {})
    for name in SECTIONS:  # sections measured by an earlier run keep that run's stamp
        if name in raw and name not in stamps and "machine" in raw:
            stamps[name] = dict(date=raw["machine"]["date"], command=raw.get("command", "dap-hvd bench"))
    raw["machine"] = machine()
    raw["command"] = " ".join(["dap-hvd bench", *(argv or [])])
    stamp = dict(date=raw["machine"]["date"], command=raw["command"])
    work = Path(tempfile.mkdtemp(prefix="dap-bench-"))
    os.environ.setdefault("DAP_HVD_CACHE", str(work / "cache"))
    from dap_hvd.data.sample_data import make_sample_data

    data = make_sample_data(work / "sample")
    t0 = time.time()

    def save() -> None:  # after every section, so an interrupted suite keeps what it measured
        raw["suite_seconds"] = time.time() - t0
        results.parent.mkdir(parents=True, exist_ok=True)
        results.write_text(json.dumps(raw, indent=1, default=str))
        write_markdown(Path(a.out), render(raw))

    try:
        jobs = {
            "gpu": lambda: _bench_gpu(work, a, raw, save),
            "startup": lambda: bench_startup(data, work, a.repeats),
            "overhead": lambda: bench_overhead(data, work, a.repeats),
            "selection": lambda: bench_selection(a.num_samples),
            "loaders": lambda: bench_loaders(work, a.repeats),
            "accuracy": lambda: bench_accuracy(data, work, a.seeds),  # also feeds (b) saving
            "redundancy": lambda: bench_redundancy(work, a.seeds),
            "real": lambda: bench_compare("real", a),
            "long": lambda: bench_compare("long", a),
        }
        unknown = only - set(jobs)
        if unknown:
            raise SystemExit(f"dap-hvd bench: --only: unknown section(s) {sorted(unknown)}; choose from {list(jobs)}")
        for name, job in jobs.items():
            if name not in only:
                continue
            result = job()
            if result is None:  # not measurable on this host (the GPU section on a CPU host)
                continue
            stamps[name] = stamp
            raw[name] = result
            if name == "accuracy":
                plot(raw, Path(a.out).parent / "bench" / "accuracy_vs_compute.png")
            if name in PARETO:
                plot_compare({name: result}, Path(a.out))
            shown = render(raw)
            print(*(shown[k] for k in (("saving", "accuracy") if name == "accuracy" else (name,))), sep="\n\n")
            print(flush=True)
            save()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    save()
    print(f"wrote {a.out} and {results} in {raw['suite_seconds'] / 60:.1f} min")
    return 0
