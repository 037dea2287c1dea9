"""Running a compare: its folder (resume point, house rules), each run a real `horovodrun` job, `--parallel`
runs at once, the state saved and the report rewritten as each run ends."""

from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import sysconfig
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

from dap_hvd import ConfigError, DapError
from dap_hvd.compare.plan import ORDER, RunSpec, Settings, run_specs, write_subset_list
from dap_hvd.compare.report import PLOT, REPORT_JSON, REPORT_MD, build_report, write_report
from dap_hvd.files import write_atomic

STATE = "compare.json"  # the record of a compare: its settings and every finished run (the resume point)


@dataclass
class Progress:
    """The ETA of a compare from the runs finished in this invocation: wall seconds per unit of planned
    compute (with --parallel runs, the wall clock they shared)."""

    start: float
    compute: float = 0.0

    def eta(self, now: float, remaining: float) -> Optional[float]:
        return None if self.compute <= 0 else (now - self.start) / self.compute * remaining


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
    write_atomic(out / STATE, json.dumps(state, indent=1).encode())


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

