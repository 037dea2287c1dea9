"""`dap-hvd bench --only real`: top-1 against compute on real images (Fashion-MNIST), every policy.

Every policy trains the same model with the same recipe for the same epochs; only the data policy
differs. Each policy runs at three compute levels, matched to DaP's (from its keep fraction), over
several seeds. Each run is a real 2-rank `horovodrun --gloo` job. Its raw figures go to
bench/results.json as soon as it ends, so an interrupted section resumes where it stopped, and the
section can be re-rendered without re-running.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import statistics
import subprocess
import time
from pathlib import Path
from typing import Callable

import numpy as np

# The default budget: 2 cores, at most 90 minutes. --full: the whole 60k/10k set.
SMALL = dict(train_per_class=600, val_per_class=500, image_size=28, epochs=10, warmup=1, reuse=6, lr_steps=(6, 9),
             batch_size=64, lr=0.2, model="resnet_small", min_crop_area=0.35)
FULL = dict(SMALL, train_per_class=None, val_per_class=None)
DAP_KEEP = (0.9, 0.7, 0.5)  # DaP's compute levels (W=1, I=1, R=6 over 10 epochs: 0.85, 0.63, 0.48)
INFOBATCH_R = (0.3, 0.6, 0.9)
POLICIES = ("full", "dap", "random", "fewer_epochs", "fixed_subset", "infobatch", "rs2")


def ensure_fashion_mnist(log: Callable[[str], None]) -> Path:
    """The Debian package's folder; installs the package with apt-get when it is missing."""
    from dap_hvd.data.fashion_mnist import DEBIAN_DIR, DEBIAN_PACKAGE

    if not (DEBIAN_DIR / "train-images-idx3-ubyte.gz").is_file():
        log(f"real: {DEBIAN_DIR} is missing; installing it with `apt-get install -y {DEBIAN_PACKAGE}`")
        p = subprocess.run(["apt-get", "install", "-y", "-q", DEBIAN_PACKAGE], capture_output=True, text=True)
        if p.returncode != 0:
            raise RuntimeError(f"apt-get install {DEBIAN_PACKAGE} failed (rc {p.returncode}); install it as root, "
                               f"then run `dap-hvd bench --only real` again:\n{p.stderr[-2000:]}")
    return DEBIAN_DIR


def _levels(cfg: dict, n: int) -> dict:
    """Each policy's parameter at its three levels, and the compute DaP's schedule plans for them."""
    from dap_hvd.policy.schedule import Schedule, plan

    sched = Schedule(cfg["epochs"], cfg["warmup"], 1, 0.9, None, (cfg["reuse"],))
    ratios = [plan(Schedule(sched.epochs, sched.warmup, 1, p, None, sched.reuse), n).compute_ratio for p in DAP_KEEP]
    return {
        "full": [(None, 1.0)],
        "dap": list(zip(DAP_KEEP, ratios)),
        "random": list(zip(DAP_KEEP, ratios)),
        "fewer_epochs": list({max(1, round(r * cfg["epochs"])): r for r in ratios}.items()),
        "fixed_subset": [(round(r, 4), r) for r in ratios],
        "infobatch": [(r, None) for r in INFOBATCH_R],
        "rs2": [(round(r, 4), r) for r in ratios],
    }


def _args(cfg: dict, policy: str, param, data: Path, work: Path, seed: int) -> list:
    """The training flags of one run: the common recipe, then what the policy changes."""
    epochs, lr_steps = cfg["epochs"], cfg["lr_steps"]
    common = ["--data", data, "--model", cfg["model"], "--image-size", cfg["image_size"], "--val-resize",
              cfg["image_size"], "--min-crop-area", cfg["min_crop_area"], "--batch-size", cfg["batch_size"],
              "--lr", cfg["lr"], "--lr-warmup-epochs", 1, "--seed", seed, "--eval-every", 1000, "--keep-checkpoints", 1]
    if policy in ("dap", "random"):  # only they read DaP's schedule (the others refuse its flags)
        return [*common, "--strategy", policy, "--keep", param, "--epochs", epochs, "--warmup", cfg["warmup"],
                "--interval", 1, "--reuse", cfg["reuse"], "--lr-steps", _epochs_flag(lr_steps)]
    if policy == "fewer_epochs":  # all data, the same LR shape compressed into fewer epochs
        steps = sorted({max(1, min(param, round(s * param / epochs))) for s in lr_steps})
        return [*common, "--strategy", "full", "--epochs", param, "--lr-steps", _epochs_flag(steps)]
    tail = ["--epochs", epochs, "--lr-steps", _epochs_flag(lr_steps)]
    if policy == "fixed_subset":
        fl = work / f"subset-{param}-{seed}.txt"
        write_subset_list(data, param, seed, fl)
        return [*common, "--strategy", "full", "--train-list", fl, *tail]
    if policy == "infobatch":
        return [*common, "--strategy", "infobatch", "--prune-ratio", param, *tail]
    if policy == "rs2":
        return [*common, "--strategy", "rs2", "--fraction", param, *tail]
    return [*common, "--strategy", "full", *tail]


def write_subset_list(data: Path, fraction: float, seed: int, path: Path) -> int:
    """A fixed random subset of the training set as a file list (the 'fixed subset' baseline of
    Table 2(f)); returns its size."""
    from dap_hvd.data.catalog import load_catalog

    cat = load_catalog(data, "train")
    keep = np.sort(np.random.default_rng(100 + seed).choice(len(cat), size=round(fraction * len(cat)), replace=False))
    path.write_text("".join(f"train/{cat.paths[i]} {cat.labels[i]}\n" for i in keep))
    return len(keep)


def _epochs_flag(xs) -> str:
    return ",".join(map(str, xs)) or "none"


def run(work: Path, seeds: int, full: bool, train: Callable, log: Callable[[str], None], previous: dict,
        save: Callable[[dict], None]) -> dict:
    """All runs of the section; `previous` is an earlier (possibly interrupted) result to resume."""
    from dap_hvd.data.fashion_mnist import FashionSpec, write_fashion_mnist

    cfg = dict(FULL if full else SMALL)
    source = ensure_fashion_mnist(log)
    from dap_hvd.data.catalog import cache_root

    key = hashlib.sha256(json.dumps(cfg, sort_keys=True).encode()).hexdigest()[:12]
    data = write_fashion_mnist(cache_root() / f"fashion-mnist-{key}",
                               FashionSpec(cfg["train_per_class"], cfg["val_per_class"]), source=source)
    tenth = write_fashion_mnist(cache_root() / f"fashion-mnist-{key}-tenth",
                                FashionSpec((cfg["train_per_class"] or 6000) // 10, cfg["val_per_class"]), source=source)
    from dap_hvd.data.catalog import load_catalog

    n = len(load_catalog(data, "train"))
    levels = _levels(cfg, n)
    result = previous if previous.get("key") == key and previous.get("seeds") == seeds else {}
    result.update(key=key, config=cfg, seeds=seeds, num_train=n, num_val=len(load_catalog(data, "val")),
                  num_train_tenth=len(load_catalog(tenth, "train")),
                  levels={k: [list(x) for x in v] for k, v in levels.items()})
    runs = result.setdefault("runs", [])
    done = {(r["set"], r["policy"], json.dumps(r["param"]), r["seed"]) for r in runs}
    todo = [("full", p, param, seed) for seed in range(seeds) for p in POLICIES for param, _ in levels[p]]
    todo += [("tenth", p, param, seed) for seed in range(seeds) for p, param in (("full", None), ("dap", 0.7))]
    t0 = time.time()
    for i, (which, policy, param, seed) in enumerate(todo, 1):
        if (which, policy, json.dumps(param), seed) in done:
            continue
        out = work / f"real-{which}-{policy}-{param}-{seed}"
        root = data if which == "full" else tenth
        s = train(_args(cfg, policy, param, root, work, seed), out)
        scale = 1.0
        if policy == "fewer_epochs":
            scale = param / cfg["epochs"]  # against the full-length run
        elif policy == "fixed_subset":
            scale = s["num_samples"] / n  # against the whole training set
        rec = dict(set=which, policy=policy, param=param, seed=seed, top1=s["top1"], top5=s["top5"],
                   compute=s["compute_ratio_measured"] * scale, wall=sum(e["seconds"] for e in s["epochs"]),
                   train_seconds=sum(e["train_seconds"] for e in s["epochs"]), epochs=len(s["epochs"]))
        runs.append(rec)
        shutil.rmtree(out, ignore_errors=True)
        save(result)
        log(f"real [{i}/{len(todo)}] {which:<5} {policy:<12} {str(param):<6} seed {seed}: top1 {rec['top1']:.4f}, "
            f"compute {rec['compute']:.3f}, wall {rec['wall']:.0f} s ({(time.time() - t0) / 60:.1f} min so far)")
    return result


# ---------------------------------------------------------------- reporting

def points(res: dict, which: str = "full") -> dict:
    """policy -> [(param, compute mean, top1 mean, top1 std, wall ratio mean, n)] over seeds; the
    wall ratio of a run is against the full-data run of the same seed."""
    runs = [r for r in res["runs"] if r["set"] == which]
    full_wall = {r["seed"]: r["wall"] for r in runs if r["policy"] == "full"}
    out = {}
    for policy in POLICIES:
        for param, _ in res["levels"][policy]:
            rs = [r for r in runs if r["policy"] == policy and r["param"] == param]
            if not rs:
                continue
            top = [r["top1"] for r in rs]
            walls = [r["wall"] / full_wall[r["seed"]] for r in rs if r["seed"] in full_wall]
            out.setdefault(policy, []).append(dict(
                param=param, compute=statistics.mean(r["compute"] for r in rs), top1=statistics.mean(top),
                std=statistics.stdev(top) if len(top) > 1 else 0.0,
                wall=statistics.mean(walls) if walls else None, n=len(rs)))
    return out


_LABEL = {"full": "full data", "dap": "DaP (keep p)", "random": "random drop, DaP's schedule (keep p)",
          "fewer_epochs": "all data, fewer epochs (epochs)", "fixed_subset": "fixed random subset (fraction)",
          "infobatch": "InfoBatch (prune ratio r)", "rs2": "RS2 (fraction r)"}


def render(res: dict) -> str:
    cfg, pts = res["config"], points(res)
    full = pts.get("full", [{}])[0]
    rows = ""
    for policy, ps in pts.items():
        for p in ps:
            gap = p["top1"] - full.get("top1", float("nan"))
            wall = "–" if p["wall"] is None else f"{p['wall']:.3f}"
            rows += (f"| {_LABEL[policy]} | {'–' if p['param'] is None else p['param']} | {p['compute']:.3f} | "
                     f"{wall} | {p['top1']:.4f} ± {p['std']:.4f} | {gap * 100:+.2f} | {p['n']} |\n")
    text = (
        f"Fashion-MNIST (real 28×28 product photos, MIT licence, from Debian's `dataset-fashion-mnist`), "
        f"{res['num_train']:,} training images ({'all' if cfg['train_per_class'] is None else cfg['train_per_class']}"
        f" per class) and {res['num_val']:,} test images, {cfg['image_size']} px, `{cfg['model']}`, 2 Gloo ranks × "
        f"batch {cfg['batch_size']}, lr {cfg['lr']} with a 1-epoch warm-up, ×0.1 after epochs "
        f"{_epochs_flag(cfg['lr_steps'])}, label smoothing 0.1, {cfg['epochs']} epochs for every policy (except 'fewer "
        f"epochs'). DaP: W={cfg['warmup']}, I=1, R={cfg['reuse']}; InfoBatch δ=0.875. Mean ± std over "
        f"{res['seeds']} seeds. Compute: samples trained over {cfg['epochs']} full epochs. Wall: the epochs' wall "
        f"clock over the full-data run's, same seed, measured side by side in this run.\n\n"
        "| policy | parameter | compute | wall | top-1 | Δ top-1 vs full (pt) | seeds |\n"
        "|---|---|---|---|---|---|---|\n" + rows)
    text += "\n" + _conclusions(res, pts)
    return text


def _conclusions(res: dict, pts: dict) -> str:
    full = pts["full"][0]["top1"] if "full" in pts else None
    if full is None:
        return ""
    lines = []
    within = [(p["compute"], policy, p) for policy, ps in pts.items() if policy != "full" for p in ps
              if p["top1"] >= full - 0.005]
    if within:
        c, policy, p = min(within, key=lambda x: x[0])
        wall = "" if p["wall"] is None else f", wall-clock ratio {p['wall']:.3f}"
        lines.append(f"- **Most compute saved within 0.5 pt of full data ({full:.4f}):** {_LABEL[policy]} at "
                     f"{p['param']}: compute {c:.3f} ({1 - c:.0%} saved){wall}, top-1 {p['top1']:.4f} ± "
                     f"{p['std']:.4f}.")
        goal = c <= 0.7 and p["wall"] is not None and abs(p["wall"] - c) <= 0.02
        lines.append(f"- **Goal (≥ 30% saved within 0.5 pt, wall within 2 points of compute):** "
                     f"{'met' if goal else 'not met'} by that point.")
    else:
        lines.append(f"- **No policy stays within 0.5 pt of full data ({full:.4f}) at any level measured here.**")
    if "dap" in pts and "random" in pts:
        diffs = [(d["param"], d["top1"] - r["top1"], d["std"], r["std"]) for d, r in zip(pts["dap"], pts["random"])]
        text = "; ".join(f"p={k}: {x * 100:+.2f} pt" for k, x, _, _ in diffs)
        wins = sum(1 for _, x, _, _ in diffs if x > 0)
        lines.append(f"- **DaP against a random drop at equal compute:** {text} (DaP ahead at {wins} of "
                     f"{len(diffs)} levels).")
    red = points(res, "tenth")
    if "full" in red and "dap" in red and "dap" in pts:
        small_gap = red["dap"][0]["top1"] - red["full"][0]["top1"]
        big = next((p for p in pts["dap"] if p["param"] == 0.7), None)
        if big is not None:
            big_gap = big["top1"] - full
            lines.append(f"- **Redundancy (Table 4's question):** DaP (p=0.7) against full data is {big_gap * 100:+.2f} "
                         f"pt on all {res['num_train']:,} images and {small_gap * 100:+.2f} pt on a tenth of them "
                         f"({res['num_train_tenth']:,}; full {red['full'][0]['top1']:.4f}, DaP "
                         f"{red['dap'][0]['top1']:.4f}).")
    return "\n".join(lines) + "\n"


def plot(res: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pts = points(res)
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5), sharey=True)
    for policy, ps in pts.items():
        for ax, key in zip(axes, ("compute", "wall")):
            xs = [p[key] for p in ps if p[key] is not None]
            if not xs:
                continue
            ax.errorbar(xs, [p["top1"] for p in ps if p[key] is not None],
                        yerr=[p["std"] for p in ps if p[key] is not None], marker="o", capsize=3,
                        label=_LABEL[policy], linestyle="-" if len(xs) > 1 else "none")
    axes[0].set_xlabel("compute (samples trained / full-data run)")
    axes[1].set_xlabel("wall-clock / full-data run (same seed)")
    axes[0].set_ylabel("top-1 (Fashion-MNIST test)")
    axes[0].legend(fontsize=7, loc="lower right")
    for ax in axes:
        ax.grid(alpha=0.3)
    fig.suptitle(f"Accuracy against cost, mean ± std over {res['seeds']} seeds")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
