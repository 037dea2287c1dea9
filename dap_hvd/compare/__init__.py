"""`dap-hvd compare`: a fair comparison of the data policies on your own data, before a cluster is spent.

Every policy trains the same model with the same recipe (the train flags after `--`), each tuned to the
same compute budget with the plan machinery, against full data and the baselines the pruning literature
says a selection method must beat at equal compute: all data for fewer epochs (the LR schedule compressed,
its decays at the same fractions), a random drop on DaP's schedule, a fixed random subset, and RS2. Each
run is a real `horovodrun` job; its figures go to OUT/compare.json as soon as it ends, so an interrupted
compare resumes run by run. The report (OUT/report.md, OUT/report.json, OUT/pareto.png) gives mean ± std
over seeds, the gap to full data paired by seed, and wall clock (scoring and selection included) beside
compute.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import statistics
import subprocess
import sys
import sysconfig
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

from dap_hvd import ConfigError, DapError

STATE = "compare.json"  # the record of a compare: its settings and every finished run (the resume point)
REPORT_MD, REPORT_JSON, PLOT = "report.md", "report.json", "pareto.png"
# The pruning policies and baselines, in the order they run (the most informative first, so a compare
# stopped early has them). `full` always runs: every other entry is measured against it.
ORDER = ("full", "fewer_epochs", "dap", "infobatch", "seta", "rs2", "fixed_subset", "random")
BASELINES = ("full", "fewer_epochs", "fixed_subset", "random")
LABEL = {"full": "full data", "fewer_epochs": "all data, fewer epochs", "dap": "DaP",
         "infobatch": "InfoBatch", "seta": "SeTa", "rs2": "RS2",
         "fixed_subset": "fixed random subset", "random": "random drop, DaP's schedule"}
# DaP's ImageNet recipe (section 4.3.1) over 120 epochs; compare scales it to the run's length.
IMAGENET_EPOCHS = 120
# Where the LR is x0.1, as fractions of the run (ImageNet's 30, 60, 90 of 120).
LR_FRACTIONS = (0.25, 0.5, 0.75)
# A score-dependent plan (InfoBatch) only bounds the compute: between no sample below the mean and all
# but one. Late-training losses are long-tailed, so most samples sit below the mean; the budget is met
# in expectation at this share, and the report shows the measured compute beside the target.
BELOW_MEAN_SHARE = 0.8
# Flags compare sets itself for every run; given after `--` they would make the runs unequal.
OWNED_FLAGS = ("--strategy", "--epochs", "--seed", "--out", "--data", "--keep", "--warmup", "--interval",
               "--active", "--reuse", "--preset", "--lr-steps", "--train-list", "--prune-ratio", "--anneal",
               "--fraction", "--resume", "--stop-after", "--config", "--window", "--groups")


@dataclass(frozen=True)
class Settings:
    """What a compare measures; a resumed compare must have the same."""

    data: str
    epochs: int
    budgets: tuple[float, ...]
    policies: tuple[str, ...]  # in run order, `full` first
    seeds: int
    top_k: Optional[int]  # budgets after the first: only the k best entries of the first (None: all)
    np: int
    hosts: str
    train_args: tuple[str, ...]
    lr_fractions: tuple[float, ...] = LR_FRACTIONS

    def to_dict(self) -> dict:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}


@dataclass(frozen=True)
class Tuned:
    """A policy's parameters chosen for a budget, and the compute its plan gives there."""

    params: dict  # parameter name (as its train flag, without --) -> value; empty for full data
    planned: float  # the plan's compute ratio (in expectation where it depends on the losses)

    def describe(self) -> str:
        return ", ".join(f"{k.replace('_', ' ')} {v:g}" for k, v in self.params.items())


@dataclass(frozen=True)
class RunSpec:
    key: str  # unique within a compare: the run folder's name
    policy: str
    budget: Optional[float]  # None: full data
    seed: int
    tuned: Tuned
    flags: tuple[str, ...]  # the policy's train flags (beside the common recipe)
    scale: float  # measured compute x scale = compute against the full-length, full-data run
    subset: Optional[str] = None  # fixed_subset: the file list it trains on


@dataclass
class Progress:
    """The ETA of a compare from the runs finished in this invocation: wall seconds per unit of planned
    compute (with --parallel runs, the wall clock they shared)."""

    start: float
    compute: float = 0.0

    def eta(self, now: float, remaining: float) -> Optional[float]:
        return None if self.compute <= 0 else (now - self.start) / self.compute * remaining


# ---------------------------------------------------------------- the plan of a compare (pure)

def scaled_schedule(epochs: int, keep: float = 0.9):
    """DaP's ImageNet schedule (E=120, W=10, I=2, alpha=10, R=30,60,90) scaled to `epochs`."""
    from dap_hvd.policy.schedule import PRESETS, Schedule

    p, f = PRESETS["imagenet"], epochs / IMAGENET_EPOCHS
    warmup = round(p["warmup"] * f)
    reuse = sorted({round(r * f) for r in p["reuse"]} & set(range(warmup + 1, epochs + 1)))
    return Schedule(epochs=epochs, warmup=warmup, interval=max(1, round(p["interval"] * f)), keep=keep,
                    active=max(1, round(p["active"] * f)), reuse=tuple(reuse))


def lr_steps(epochs: int, fractions=LR_FRACTIONS) -> tuple[int, ...]:
    """The LR decay epochs at fixed fractions of a run of `epochs` (at least one epoch before each)."""
    return tuple(sorted({min(epochs - 1, max(1, round(f * epochs))) for f in fractions} - {0}))


def expected_compute(plan) -> float:
    if plan.exact:
        return plan.compute_ratio
    nominal = getattr(plan, "nominal_ratio", None)  # SeTa: the window's groups at equal sizes
    if nominal is not None:
        return nominal
    low, high = plan.compute_bounds
    return high - BELOW_MEAN_SHARE * (high - low)


def planned_compute(policy: str, epochs: int, n: int, params: dict) -> float:
    from dap_hvd.policy.policies import make_policy

    if policy in ("dap", "random"):
        return expected_compute(make_policy(policy, scaled_schedule(epochs, params["keep"])).plan(n))
    return expected_compute(make_policy(policy, scaled_schedule(epochs), **params).plan(n))


def _bisect(at: Callable[[float], float], budget: float, lo: float, hi: float, rising: bool) -> float:
    """The value in [lo, hi] whose compute is closest to `budget` (compute is monotone in it)."""
    best = min((lo, hi), key=lambda v: abs(at(v) - budget))
    for _ in range(30):
        mid = (lo + hi) / 2
        c = at(mid)
        if abs(c - budget) < abs(at(best) - budget):
            best = mid
        if (c < budget) == rising:
            lo = mid
        else:
            hi = mid
    return round(best, 4)


def tune(policy: str, budget: float, epochs: int, n: int) -> Tuned:
    """The parameters whose planned compute is closest to `budget`."""
    if policy == "full":
        return Tuned({}, 1.0)
    if policy == "fewer_epochs":
        e = max(1, round(budget * epochs))
        return Tuned({"epochs": e}, e / epochs)
    if policy == "fixed_subset":
        size = max(1, round(budget * n))
        return Tuned({"fraction": round(size / n, 6)}, size / n)

    def at(**params) -> float:
        return planned_compute(policy, epochs, n, params)

    if policy == "rs2":  # floor(r N) samples every epoch
        return Tuned({"fraction": round(budget, 4)}, at(fraction=round(budget, 4)))
    if policy in ("dap", "random"):
        keep = _bisect(lambda v: at(keep=v), budget, 0.01, 1.0, True)
        return Tuned({"keep": keep}, at(keep=keep))
    if policy == "infobatch":
        r = _bisect(lambda v: at(prune_ratio=v), budget, 0.01, 0.99, False)
        return Tuned({"prune_ratio": r}, at(prune_ratio=r))
    if policy == "seta":
        # The window is round(k w) of the k loss groups, so it moves the compute in steps: take the
        # narrowest window that can still reach the budget, then the uniform draw's ratio r for the rest.
        from dap_hvd.policy.policies import make_policy

        k = make_policy("seta", scaled_schedule(epochs)).groups
        windows = [g / k for g in range(1, k + 1)]
        window = next((w for w in windows if at(window=w, prune_ratio=0.0) >= budget), 1.0)
        r = _bisect(lambda v: at(window=window, prune_ratio=v), budget, 0.0, 0.95, False)
        return Tuned({"window": window, "prune_ratio": r}, at(window=window, prune_ratio=r))
    raise ConfigError(f"--policies: {policy} has no budget rule in compare")


def policy_flags(policy: str, tuned: Tuned, epochs: int, subset_list: Optional[Path],
                 fractions=LR_FRACTIONS) -> tuple[str, ...]:
    steps = ",".join(map(str, lr_steps(epochs, fractions))) or "none"
    if policy in ("dap", "random"):
        s = scaled_schedule(epochs, tuned.params["keep"])
        return ("--strategy", policy, "--epochs", str(epochs), "--warmup", str(s.warmup), "--interval",
                str(s.interval), "--keep", str(s.keep), "--active", str(s.active),
                "--reuse", ",".join(map(str, s.reuse)) or "none", "--lr-steps", steps)
    if policy == "fewer_epochs":  # all data, the same LR shape compressed into the shorter run
        e = int(tuned.params["epochs"])
        return ("--strategy", "full", "--epochs", str(e),
                "--lr-steps", ",".join(map(str, lr_steps(e, fractions))) or "none")
    tail = ("--epochs", str(epochs), "--lr-steps", steps)  # no DaP flags: the other policies refuse them
    if policy == "fixed_subset":
        return ("--strategy", "full", "--train-list", str(subset_list), *tail)
    if policy == "full":
        return ("--strategy", "full", *tail)
    own = [x for k, v in tuned.params.items() for x in ("--" + k.replace("_", "-"), f"{v:g}")]
    return ("--strategy", policy, *own, *tail)


def run_specs(settings: Settings, budget: Optional[float], policies, n: int, out: Path) -> list[RunSpec]:
    """The runs of one budget (budget None: full data), seed-major so a stopped compare has whole seeds."""
    specs = []
    for seed in range(settings.seeds):
        for policy in policies:
            tuned = tune(policy, 1.0 if budget is None else budget, settings.epochs, n)
            key = "full" if budget is None else f"b{budget:g}-{policy}"
            subset = out / "subsets" / f"{key}-s{seed}.txt" if policy == "fixed_subset" else None
            scale = tuned.params["epochs"] / settings.epochs if policy == "fewer_epochs" else \
                tuned.planned if policy == "fixed_subset" else 1.0
            specs.append(RunSpec(f"{key}-s{seed}", policy, budget, seed, tuned,
                                 policy_flags(policy, tuned, settings.epochs, subset, settings.lr_fractions), scale,
                                 None if subset is None else str(subset)))
    return specs


def write_subset_list(data: Path, fraction: float, seed: int, path: Path) -> int:
    """A fixed random subset of the training set as a file list (the 'fixed subset' baseline); its size."""
    import numpy as np

    from dap_hvd.data.catalog import load_catalog

    cat = load_catalog(data, "train")
    keep = np.sort(np.random.default_rng(100 + seed).choice(len(cat), size=round(fraction * len(cat)), replace=False))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(f"train/{cat.paths[i]} {cat.labels[i]}\n" for i in keep))
    return len(keep)


# ---------------------------------------------------------------- running

def launcher() -> list[str]:
    return [str(Path(sysconfig.get_path("scripts")) / "horovodrun")]


def train_command(settings: Settings, spec: RunSpec, run_dir: Path) -> list[str]:
    dap_hvd = str(Path(sysconfig.get_path("scripts")) / "dap-hvd")
    common = ["--data", settings.data, "--out", str(run_dir), "--seed", str(spec.seed), "--no-progress"]
    if "--eval-every" not in settings.train_args:  # evaluate once, at the end: the figure compared
        common += ["--eval-every", str(settings.epochs)]
    train = [dap_hvd, "train", *common, *settings.train_args, *spec.flags]
    if settings.np == 1 and settings.hosts in ("localhost:1", "127.0.0.1:1"):
        return train  # one local process needs no launcher (its start-up is seconds per run)
    return [*launcher(), "--gloo", "-np", str(settings.np), "-H", settings.hosts, *train]


def record(spec: RunSpec, summary: dict, process_seconds: float) -> dict:
    """One finished run's figures (from its summary.json)."""
    epochs = summary["epochs"]
    return dict(key=spec.key, policy=spec.policy, budget=spec.budget, seed=spec.seed, params=spec.tuned.params,
                planned=spec.tuned.planned, top1=summary["top1"], top5=summary["top5"],
                compute=summary["compute_ratio_measured"] * spec.scale,
                # training wall clock: every epoch's seconds, loss recording, merge and selection included,
                # the evaluations left out (all runs evaluate the same test set once)
                wall=sum(e["seconds"] - (e.get("eval_seconds") or 0.0) for e in epochs),
                selection_seconds=sum(e.get("selection_seconds") or 0.0 for e in epochs),
                process_seconds=process_seconds, epochs=len(epochs), samples=summary["num_samples"])


def run_one(settings: Settings, spec: RunSpec, out: Path) -> dict:
    run_dir = out / "runs" / spec.key
    if run_dir.exists():  # a run interrupted mid-way (compare wrote it): start it again
        shutil.rmtree(run_dir)
    if spec.policy == "fixed_subset":
        write_subset_list(Path(settings.data), spec.tuned.params["fraction"], spec.seed, Path(spec.subset))
    cmd = train_command(settings, spec, run_dir)
    logs = out / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    t0 = time.perf_counter()
    with open(logs / f"{spec.key}.log", "w") as fh:
        fh.write(" ".join(cmd) + "\n")
        fh.flush()
        rc = subprocess.run(cmd, stdout=fh, stderr=subprocess.STDOUT, env=env).returncode
    seconds = time.perf_counter() - t0
    summary_path = run_dir / "summary.json"
    if rc != 0 or not summary_path.is_file():
        raise DapError(f"run {spec.key} failed (exit {rc}); its output: {logs / (spec.key + '.log')}")
    summary = json.loads(summary_path.read_text())
    shutil.rmtree(run_dir / "checkpoints", ignore_errors=True)  # the summary and the log are what compare keeps
    return record(spec, summary, seconds)


def best_entries(runs: list, budget: float, k: Optional[int]) -> list[str]:
    """The k entries (policies and baselines) with the best mean top-1 at `budget`."""
    by = {}
    for r in runs:
        if r["budget"] == budget:
            by.setdefault(r["policy"], []).append(r["top1"])
    ranked = sorted(by, key=lambda p: -statistics.mean(by[p]))
    return ranked if k is None else ranked[:k]


def open_out(out: Path, settings: Settings, resume: bool, force: bool) -> dict:
    """The state of the compare in `out`: a new one, or the earlier one to resume. Refuses a folder
    compare did not write (unless --force) and a finished compare's settings that differ."""
    state_file = out / STATE
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out: {out} is not a directory")
    previous = None
    if state_file.is_file():
        try:
            previous = json.loads(state_file.read_text())
        except (OSError, ValueError) as e:
            raise ConfigError(f"--out: {state_file} is not readable ({e}); pass --force to start over") from None
    if previous is not None and resume and not force:
        if previous.get("settings") != settings.to_dict():
            diff = sorted(k for k, v in settings.to_dict().items() if previous.get("settings", {}).get(k) != v)
            raise ConfigError(f"--resume: {out} holds a compare with other settings ({', '.join(diff)}); "
                              f"use another --out, or --force to start over")
        return previous
    if out.is_dir() and any(out.iterdir()) and not force:
        what = "an earlier compare; pass --resume to continue it" if previous is not None else \
            "files compare did not write"
        raise ConfigError(f"--out: {out} is not empty ({what}), or --force to start over there")
    if force and previous is not None:  # only what compare wrote
        for name in ("runs", "logs", "subsets"):
            shutil.rmtree(out / name, ignore_errors=True)
    out.mkdir(parents=True, exist_ok=True)
    return {"settings": settings.to_dict(), "runs": []}


def save_state(out: Path, state: dict) -> None:
    tmp = out / (STATE + ".tmp")
    tmp.write_text(json.dumps(state, indent=1))
    os.replace(tmp, out / STATE)


def run_compare(settings: Settings, out: Path, *, resume: bool = False, force: bool = False, parallel: int = 1,
                log: Callable[[str], None] = print) -> dict:
    """Every run of the compare not finished before (`parallel` at once), then the report; returns the report."""
    from dap_hvd.data.catalog import load_catalog

    data = Path(settings.data)
    for split in ("train", "val"):
        if not (data / split).is_dir():
            raise ConfigError(f"--data: {data} has no {split}/ folder "
                              f"(the ImageNet layout: DATA/{{train,val}}/<class>/)")
    state = open_out(out, settings, resume, force)
    n = len(load_catalog(data, "train"))
    state.update(num_train=n, num_val=len(load_catalog(data, "val")))
    done = {r["key"] for r in state["runs"]}
    first, rest = settings.budgets[0], settings.budgets[1:]
    todo = run_specs(settings, None, ["full"], n, out)
    todo = [s for seed in range(settings.seeds) for s in
            [t for t in todo if t.seed == seed] + [t for t in run_specs(settings, first, settings.policies[1:], n, out)
                                                   if t.seed == seed]]
    warn_off_budget(todo, log)
    before = sum(1 for s in todo if s.key in done)
    if before:
        log(f"compare: {before} of {len(todo)} runs at budget {first:g} done already (in {out / STATE}); "
            f"running the rest")
    t_start = time.time()
    progress = Progress(t_start)
    runner = Runner(settings, out, state, done, progress, log, parallel)
    runner.run(todo, extra=len(rest) * (settings.top_k or len(settings.policies)) * settings.seeds
               * statistics.mean(rest or [0]))
    for budget in rest:
        chosen = [p for p in best_entries(state["runs"], first, settings.top_k) if p != "full"]
        state.setdefault("deeper", {})[f"{budget:g}"] = chosen
        log(f"compare: budget {budget:g} for the {len(chosen)} best at {first:g}: {', '.join(chosen)}")
        specs = run_specs(settings, budget, [p for p in ORDER if p in chosen], n, out)
        warn_off_budget(specs, log)
        runner.run(specs)
    state["seconds"] = state.get("seconds", 0.0) + time.time() - t_start
    save_state(out, state)
    report = build_report(state)
    write_report(out, report)
    log(f"compare: wrote {out / REPORT_MD}, {out / REPORT_JSON} and {out / PLOT}")
    return report


def warn_off_budget(specs: list, log: Callable[[str], None], tolerance: float = 0.02) -> None:
    """Say where a policy's plan cannot reach the budget on this run (e.g. DaP's scaled schedule on very
    few epochs): its entry is still measured, at the compute shown."""
    seen = set()
    for s in specs:
        if s.budget is not None and abs(s.tuned.planned - s.budget) > tolerance and (s.policy, s.budget) not in seen:
            seen.add((s.policy, s.budget))
            log(f"compare: warning: {s.policy} cannot reach budget {s.budget:g} in {s.key.rsplit('-s', 1)[0]}: "
                f"its plan gives {s.tuned.planned:.3f} at best ({s.tuned.describe()})")


@dataclass
class Runner:
    """Runs specs `parallel` at a time; the state file is written (by this thread only) as each ends."""

    settings: Settings
    out: Path
    state: dict
    done: set
    progress: Progress
    log: Callable[[str], None]
    parallel: int = 1

    def run(self, specs: list, extra: float = 0.0) -> None:
        from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait

        pending = [s for s in specs if s.key not in self.done]
        queue, running, finished = list(pending), {}, 0
        with ThreadPoolExecutor(max_workers=self.parallel) as pool:
            while queue or running:
                while queue and len(running) < self.parallel:  # in list order: the first specs first
                    spec = queue.pop(0)
                    running[pool.submit(run_one, self.settings, spec, self.out)] = spec
                ended, _ = wait(running, return_when=FIRST_COMPLETED)
                for fut in ended:
                    spec = running.pop(fut)
                    rec = fut.result()  # a failed run stops the compare (the others finish first)
                    self.state["runs"].append(rec)
                    self.done.add(spec.key)
                    save_state(self.out, self.state)
                    write_report(self.out, build_report(self.state), plotted=False)  # what is finished so far
                    finished += 1
                    self.progress.compute += spec.tuned.planned
                    left = sum(s.tuned.planned for s in queue) + sum(s.tuned.planned for s in running.values()) / 2
                    eta = self.progress.eta(time.time(), left + extra)
                    param = f" ({spec.tuned.describe()})" if spec.tuned.params else ""
                    self.log(f"compare [{finished}/{len(pending)}] {spec.key}{param}: top-1 {rec['top1']:.4f}, "
                             f"compute {rec['compute']:.3f} (target {spec.budget or 1.0:g}), wall {rec['wall']:.0f} s"
                             + ("" if eta is None else f"; ETA {eta / 60:.1f} min"))


# ---------------------------------------------------------------- the report (pure)

def _mean_std(xs: list) -> tuple[float, float]:
    return statistics.mean(xs), (statistics.stdev(xs) if len(xs) > 1 else 0.0)


def build_report(state: dict) -> dict:
    """Per (policy, budget): top-1 mean ± std over seeds, compute target and measured, wall against
    full data of the same seed, and the paired gap to full data (per seed, then mean ± std)."""
    runs = state["runs"]
    full = {r["seed"]: r for r in runs if r["policy"] == "full"}
    entries = []
    groups = {}
    for r in runs:
        groups.setdefault((r["policy"], r["budget"]), []).append(r)
    for (policy, budget), rs in sorted(groups.items(), key=lambda kv: (kv[0][1] is not None, -(kv[0][1] or 0),
                                                                          ORDER.index(kv[0][0]) if kv[0][0] in ORDER
                                                                          else len(ORDER))):
        top, std = _mean_std([r["top1"] for r in rs])
        gaps = [r["top1"] - full[r["seed"]]["top1"] for r in rs if r["seed"] in full]
        walls = [r["wall"] / full[r["seed"]]["wall"] for r in rs if r["seed"] in full and full[r["seed"]]["wall"]]
        gap, gap_std = _mean_std(gaps) if gaps else (None, None)
        entries.append(dict(
            policy=policy, budget=budget, params=rs[0]["params"], seeds=len(rs),
            target=1.0 if budget is None else budget, planned=statistics.mean(r["planned"] for r in rs),
            compute=statistics.mean(r["compute"] for r in rs), top1=top, top1_std=std,
            gap=gap, gap_std=gap_std, gap_min=min(gaps) if gaps else None, gap_max=max(gaps) if gaps else None,
            wall=statistics.mean(walls) if walls else None, wall_seconds=statistics.mean(r["wall"] for r in rs),
            selection_seconds=statistics.mean(r["selection_seconds"] for r in rs)))
    return {"settings": state["settings"], "num_train": state.get("num_train"), "num_val": state.get("num_val"),
            "seconds": state.get("seconds"), "deeper": state.get("deeper", {}), "entries": entries,
            "conclusion": conclusion(entries), "against_fewer_epochs": against_fewer_epochs(runs), "runs": runs}


def conclusion(entries: list) -> dict:
    """The entries within 0.5 pt of full data (mean over seeds), the one of them that saves the most
    compute; else the closest entry."""
    pruned = [e for e in entries if e["policy"] != "full" and e["gap"] is not None]
    within = sorted((e for e in pruned if e["gap"] >= -0.005), key=lambda e: e["compute"])
    best = within[0] if within else None
    closest = max(pruned, key=lambda e: e["gap"]) if pruned else None
    return {"within": best, "all_within": within, "closest": closest,
            "pays": best is not None and best["compute"] <= 0.75 + 1e-9}


def against_fewer_epochs(runs: list) -> list:
    """Each policy against all data for fewer epochs at the same budget (the baseline a selection
    method must beat at equal compute): top-1 difference paired by seed, mean ± std."""
    short = {(r["budget"], r["seed"]): r["top1"] for r in runs if r["policy"] == "fewer_epochs"}
    by = {}
    for r in runs:
        if r["policy"] not in BASELINES and (r["budget"], r["seed"]) in short:
            by.setdefault((r["policy"], r["budget"]), []).append(r["top1"] - short[(r["budget"], r["seed"])])
    order = {p: i for i, p in enumerate(ORDER)}
    return [dict(policy=p, budget=b, diff=_mean_std(d)[0], std=_mean_std(d)[1], seeds=len(d))
            for (p, b), d in sorted(by.items(), key=lambda kv: (-kv[0][1], order.get(kv[0][0], len(order))))]


def _name(e: dict) -> str:
    label = LABEL.get(e["policy"], e["policy"])
    return f"{label}: {Tuned(e['params'], 0.0).describe()}" if e["params"] else label


def render(report: dict) -> str:
    """The markdown table and the conclusions that follow the numbers."""
    s = report["settings"]
    rows = ""
    for e in report["entries"]:
        gap = "–" if e["gap"] is None or e["policy"] == "full" else \
            f"{e['gap'] * 100:+.2f} ± {e['gap_std'] * 100:.2f} [{e['gap_min'] * 100:+.2f}, {e['gap_max'] * 100:+.2f}]"
        wall = "–" if e["wall"] is None else f"{e['wall']:.3f}"
        budget = "–" if e["budget"] is None else f"{e['budget']:g}"
        rows += (f"| {_name(e)} | {budget} | {e['planned']:.3f} | {e['compute']:.3f} | {wall} | "
                 f"{e['top1'] * 100:.2f} ± {e['top1_std'] * 100:.2f} | {gap} | {e['seeds']} |\n")
    deeper = ""
    for b, chosen in report.get("deeper", {}).items():
        deeper += f" Budget {b}: the {len(chosen)} best entries at {s['budgets'][0]:g} ({', '.join(chosen)})."
        # runs kept from an earlier pass of a resumed compare, when the best entries differed (an entry added since)
        kept = sorted({e["policy"] for e in report["entries"] if e["budget"] is not None
                       and f"{e['budget']:g}" == b and e["policy"] not in chosen})
        if kept:
            deeper += f" Also at {b}, from an earlier pass when it was among the best: {', '.join(kept)}."
    text = (f"{report['num_train']:,} training and {report['num_val']:,} test images, {s['epochs']} epochs, "
            f"{s['np']} rank{'s' if s['np'] > 1 else ''} per run (`-H {s['hosts']}`), "
            f"train flags `{' '.join(s['train_args']) or '(defaults)'}`, LR ×0.1 "
            f"at {', '.join(f'{f:g}' for f in s['lr_fractions'])} of each run; {s['seeds']} seeds per entry.{deeper} "
            "Compute: samples trained over those of the full-data run (target: the budget; planned: the plan's "
            f"figure, in expectation at {BELOW_MEAN_SHARE:.0%} of the samples below the mean loss where it depends "
            "on the losses). Wall: training wall clock (scoring and selection included, the one final evaluation "
            "left out) over the full-data run of the same seed. Δ: top-1 minus full data's of the same seed, mean ± "
            "std over seeds [min, max].\n\n"
            "| entry | budget | compute planned | compute measured | wall / full | top-1 % | Δ vs full, paired (pt) "
            "| seeds |\n|---|---|---|---|---|---|---|---|\n" + rows)
    return text + "\n" + render_conclusion(report)


def render_conclusion(report: dict) -> str:
    c = report["conclusion"]
    if c["within"] is not None:
        e = c["within"]
        line = (f"- **Most compute saved within 0.5 pt of full data (mean of seeds):** {_name(e)} at budget "
                f"{e['budget']:g}: compute {e['compute']:.3f} ({1 - e['compute']:.0%} saved), wall "
                f"{'–' if e['wall'] is None else format(e['wall'], '.3f')} of full data's, Δ {e['gap'] * 100:+.2f} ± {e['gap_std'] * 100:.2f} pt.")
        line += " That is ≥ 25% saved within 0.5 pt." if c["pays"] else " That is less than 25% saved."
        others = [e for e in c.get("all_within", [])[1:]]
        if others:
            line += " Also within 0.5 pt: " + "; ".join(
                f"{_name(e)} at budget {e['budget']:g} (compute {e['compute']:.3f}, Δ {e['gap'] * 100:+.2f} ± "
                f"{e['gap_std'] * 100:.2f} pt)" for e in others) + "."
    elif c["closest"] is not None:
        e = c["closest"]
        line = (f"- **No entry stays within 0.5 pt of full data (mean of seeds).** The closest: {_name(e)} at budget "
                f"{e['budget']:g}, compute {e['compute']:.3f}, Δ {e['gap'] * 100:+.2f} ± {e['gap_std'] * 100:.2f} "
                "pt.")
    else:
        return ""
    vs = report.get("against_fewer_epochs") or []
    if vs:
        line += ("\n- **Against all data for fewer epochs at the same budget** (top-1 difference paired by seed): "
                 + "; ".join(f"{LABEL.get(v['policy'], v['policy'])} at {v['budget']:g}: {v['diff'] * 100:+.2f} ± "
                             f"{v['std'] * 100:.2f} pt" for v in vs) + ".")
    return line + "\n"


def plot(report: dict, path: Path, title: str = "") -> None:
    """Top-1 against compute and against wall clock, one series per entry over the budgets."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.8), sharey=True)
    series = {}
    for e in report["entries"]:
        series.setdefault(e["policy"], []).append(e)
    for policy, es in series.items():
        es = sorted(es, key=lambda e: e["compute"])
        for ax, key in zip(axes, ("compute", "wall")):
            pts = [e for e in es if e[key] is not None]
            if pts:
                ax.errorbar([e[key] for e in pts], [e["top1"] * 100 for e in pts],
                            yerr=[e["top1_std"] * 100 for e in pts], marker="*" if policy == "full" else "o",
                            capsize=3, label=LABEL.get(policy, policy), linestyle="-" if len(pts) > 1 else "none")
    axes[0].set_xlabel("compute (samples trained / full-data run)")
    axes[1].set_xlabel("wall clock / full-data run (same seed)")
    axes[0].set_ylabel("top-1 % (mean ± std over seeds)")
    axes[0].legend(fontsize=7, loc="lower right")
    for ax in axes:
        ax.grid(alpha=0.3)
    s = report["settings"]
    fig.suptitle(title or f"dap-hvd compare: {s['epochs']} epochs, {s['seeds']} seeds")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_report(out: Path, report: dict, plotted: bool = True) -> None:
    (out / REPORT_MD).write_text("# dap-hvd compare\n\n" + render(report))
    (out / REPORT_JSON).write_text(json.dumps(report, indent=1))
    if plotted:
        plot(report, out / PLOT)


# ---------------------------------------------------------------- the command

def parse(argv: list[str]) -> tuple[Settings, argparse.Namespace]:
    from dap_hvd.policy.policies import POLICIES

    ap = argparse.ArgumentParser(prog="dap-hvd compare", description=__doc__.splitlines()[0],
                                 epilog="Train flags for every run (model, batch size, LR, ...) go after `--`.")
    ap.add_argument("--data", required=True, help="dataset root in the ImageNet layout (DATA/{train,val}/<class>/)")
    ap.add_argument("--epochs", type=int, required=True, help="the full-data run's length; every policy trains as "
                    "long, except 'fewer_epochs'")
    ap.add_argument("--budget", default="0.75", help="compute budget(s), a comma list in (0, 1): every entry is "
                    "tuned to each (default 0.75, DaP's ImageNet preset)")
    ap.add_argument("--policies",
                    help="comma list of policies and baselines beside full data (default: all of "
                         f"{', '.join(p for p in ORDER if p != 'full')})")
    ap.add_argument("--seeds", type=int, default=3, help="seeds per entry (default 3)")
    ap.add_argument("--top-k", type=int, help="budgets after the first: only the k entries with the best mean top-1 "
                    "at the first (default: all)")
    ap.add_argument("--lr-fractions", default=",".join(map(str, LR_FRACTIONS)),
                    help="where the LR is x0.1, as fractions of each run (default 0.25,0.5,0.75)")
    ap.add_argument("-np", "--num-proc", dest="np", type=int, default=1, help="ranks per run (horovodrun -np)")
    ap.add_argument("-H", "--hosts", help="horovodrun -H host:slots,... (default localhost:NP)")
    ap.add_argument("--parallel", type=int, default=1, help="runs at once on this host (default 1; each takes -np "
                    "ranks: e.g. 2 one-rank runs on a 2-core machine)")
    ap.add_argument("--out", default="runs/compare", help="the compare's folder (default runs/compare)")
    ap.add_argument("--resume", action="store_true", help="continue the compare in --out: finished runs are kept")
    ap.add_argument("--force", action="store_true", help="start over in a non-empty --out")
    own, extra = (argv[:argv.index("--")], argv[argv.index("--") + 1:]) if "--" in argv else (argv, [])
    a = ap.parse_args(own)

    def floats(text: str, flag: str) -> tuple[float, ...]:
        try:
            xs = tuple(float(x) for x in text.split(",") if x.strip())
        except ValueError:
            raise ConfigError(f"{flag}: expected a comma list of numbers, got {text!r}") from None
        if not xs or not all(0 < x < 1 for x in xs):
            raise ConfigError(f"{flag}: every value must lie in (0, 1), got {text!r}")
        return xs

    budgets = floats(a.budget, "--budget")
    if a.epochs < 2:
        raise ConfigError(f"--epochs: must be at least 2, got {a.epochs}")
    known = set(POLICIES) | set(BASELINES)
    given = [p.strip() for p in a.policies.split(",") if p.strip()] if a.policies else [p for p in ORDER if p in known]
    policies = [p for p in given if p != "full"]
    unknown = [p for p in policies if p not in known]
    if unknown:
        raise ConfigError(f"--policies: unknown {', '.join(unknown)}; choose from "
                          f"{', '.join(p for p in ORDER if p in known and p != 'full')}")
    if a.seeds < 1:
        raise ConfigError(f"--seeds: must be at least 1, got {a.seeds}")
    if a.np < 1:
        raise ConfigError(f"-np: must be at least 1, got {a.np}")
    if a.parallel < 1:
        raise ConfigError(f"--parallel: must be at least 1, got {a.parallel}")
    owned = [f for f in extra if f.split("=")[0] in OWNED_FLAGS]
    if owned:
        raise ConfigError(f"train flags after --: {', '.join(owned)} are set by compare for each run; drop them")
    settings = Settings(data=str(Path(a.data).resolve()), epochs=a.epochs, budgets=budgets,
                        policies=("full", *[p for p in ORDER if p in policies]), seeds=a.seeds, top_k=a.top_k,
                        np=a.np, hosts=a.hosts or f"localhost:{a.np}", train_args=tuple(extra),
                        lr_fractions=floats(a.lr_fractions, "--lr-fractions"))
    return settings, a


def main(argv: Optional[list] = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        settings, a = parse(argv)
        run_compare(settings, Path(a.out), resume=a.resume, force=a.force, parallel=a.parallel,
                    log=lambda line: print(line, flush=True))
    except DapError as e:
        print(f"dap-hvd compare: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("dap-hvd compare: interrupted; --resume continues it", file=sys.stderr)
        return 130
    return 0
