"""(d) Accuracy at matched compute (the paper's Table 2(f)) on the sample data, and (b) the end-to-end
saving, from the same runs."""

from __future__ import annotations

import statistics
from pathlib import Path

from dap_hvd.bench import jobs
from dap_hvd.bench.report import mean_std

SCHED = dict(epochs=12, warmup=3, interval=1, keep=0.8, reuse=(8,))
STRATEGIES = ("full", "dap", "random", "fewer_epochs", "fixed_subset")
NAMES = {"full": "All data (100%)", "dap": "DaP (ours)", "random": "Random drop, same schedule",
         "fewer_epochs": "All data, fewer epochs", "fixed_subset": "Fixed random subset"}
PLOT = "accuracy_vs_compute.png"  # under bench/ beside BENCHMARKS.md


def _sched_args(epochs=None, reuse=None, dap=True) -> list:
    """The run's length and LR shape, and DaP's schedule for dap/random (`dap`; full refuses it)."""
    s = SCHED
    args = ["--epochs", epochs or s["epochs"], "--lr-steps", ",".join(map(str, reuse or s["reuse"])),
            "--lr-warmup-epochs", "1", "--eval-every", "4"]
    return args + (["--warmup", s["warmup"], "--interval", s["interval"], "--keep", s["keep"],
                    "--reuse", ",".join(map(str, reuse or s["reuse"]))] if dap else [])


def _train(name: str, data: Path, work: Path, seed: int, ratio: float, fewer: int, total: int) -> dict:
    """One strategy's run for `seed`; its summary, compute relative to the full-length, full-data run."""
    out = work / f"acc-{name}-{seed}"
    common = ["--seed", seed]
    if name in ("full", "dap", "random"):
        return jobs.train(data, out, "--strategy", name, *_sched_args(dap=name != "full"), *common)
    if name == "fewer_epochs":  # all data, same LR shape compressed into fewer epochs
        step = max(1, round(SCHED["reuse"][0] * fewer / SCHED["epochs"]))
        s = jobs.train(data, out, "--strategy", "full", *_sched_args(fewer, (step,), dap=False), *common)
        s["compute_ratio_measured"] *= fewer / SCHED["epochs"]  # relative to the full-length run
        return s
    from dap_hvd.compare.plan import write_subset_list  # a fixed random subset of the data, all epochs

    fl = work / f"subset-{seed}.txt"
    kept = write_subset_list(data, ratio, seed, fl)
    s = jobs.train(data, out, "--strategy", "full", "--train-list", fl, *_sched_args(dap=False), *common)
    s["compute_ratio_measured"] *= kept / total  # relative to the full dataset
    return s


def measure(data: Path, work: Path, seeds: int, strategies=None) -> dict:
    from dap_hvd.data.catalog import load_catalog
    from dap_hvd.policy.schedule import Schedule, plan

    ratio = plan(Schedule(SCHED["epochs"], SCHED["warmup"], SCHED["interval"], SCHED["keep"], None, SCHED["reuse"]),
                 num_samples=len(load_catalog(data, "train"))).compute_ratio
    fewer = max(1, round(SCHED["epochs"] * ratio))
    total = len(load_catalog(data, "train"))
    runs = {}
    for seed in range(seeds):
        for name in strategies or STRATEGIES:
            s = _train(name, data, work, seed, ratio, fewer, total)
            runs.setdefault(name, []).append(dict(top1=s["top1"], top5=s["top5"], compute=s["compute_ratio_measured"],
                                                  wall=s["elapsed_seconds"],
                                                  epoch_seconds=sum(e["seconds"] for e in s["epochs"]),
                                                  train_seconds=sum(e["train_seconds"] for e in s["epochs"])))
    return dict(seeds=seeds, planned_ratio=ratio, schedule=SCHED, runs=runs)


def render_saving(acc: dict) -> str:
    """(b): DaP against full data in wall clock, from (d)'s runs."""
    full, dap = acc["runs"]["full"], acc["runs"]["dap"]

    def med(runs, key):
        return statistics.median(r[key] for r in runs)

    comp = med(dap, "compute")
    wall = med(dap, "epoch_seconds") / med(full, "epoch_seconds")
    loop = med(dap, "train_seconds") / med(full, "train_seconds")
    return (
        f"DaP vs full data, same {acc['schedule']['epochs']} epochs on the sample data, 2 Gloo ranks, evaluation "
        f"every 4 epochs, {acc['seeds']} seeds each (the runs of section (d)), medians.\n\n"
        "| | run seconds (all epochs) | training-loop seconds | compute ratio |\n|---|---|---|---|\n"
        f"| full | {med(full, 'epoch_seconds'):.1f} | {med(full, 'train_seconds'):.1f} | 1.000 |\n"
        f"| DaP | {med(dap, 'epoch_seconds'):.1f} | {med(dap, 'train_seconds'):.1f} | {comp:.3f} |\n\n"
        f"Wall-clock ratio **{wall:.3f}** for the whole run (training loops **{loop:.3f}**) against compute "
        f"ratio **{comp:.3f}**: gaps of {100 * (wall - comp):+.1f} and {100 * (loop - comp):+.1f} points (target "
        f"within ±2). What does not shrink with the subset (evaluation, pipeline start, checkpoint, the selection "
        f"step) is a larger share of these 2-second epochs than of an ImageNet epoch.")


def render(acc: dict) -> str:
    rows = "".join(f"| {NAMES[k]} | {mean_std(r['compute'] for r in v)} | {mean_std(r['top1'] for r in v)} | "
                   f"{mean_std(r['top5'] for r in v)} |\n" for k, v in acc["runs"].items())
    return (
        f"The paper's Table 2(f) on the embedded sample data (10 classes, 1,200 training images, redundancy 4, "
        f"15% hard), resnet_small, 2 Gloo ranks x batch 64, schedule {acc['schedule']} (planned compute "
        f"{acc['planned_ratio']:.3f}). Mean ± std over {acc['seeds']} seeds.\n\n"
        "| strategy | compute | top-1 | top-5 |\n|---|---|---|---|\n" + rows +
        f"\n![accuracy vs compute](bench/{PLOT})")


def plot(acc: dict, path: Path) -> None:
    """Top-1 against compute, one point per strategy (mean ± std over seeds)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for name, runs in acc["runs"].items():
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
