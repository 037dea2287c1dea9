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
import functools
import json
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Callable, NamedTuple, Optional

from dap_hvd.bench import accuracy, gpu, loaders, machine, overhead, real, redundancy, selection, startup
from dap_hvd.bench.report import SECTIONS, measured_line, write_markdown

DEFAULT = ("startup", "overhead", "selection", "loaders", "accuracy", "redundancy")
# What --only can name, in the order a run measures them (accuracy also feeds (b) saving).
JOBS = ("gpu", "startup", "overhead", "selection", "loaders", "accuracy", "redundancy", "real", "long")


class View(NamedTuple):
    """A BENCHMARKS.md section, the results.json entry it is rendered from (and stamped by), its renderer
    (None: nothing to write, e.g. a result from before the section's format; the file keeps its text)."""

    section: str
    source: str
    render: Callable[[object], Optional[str]]


VIEWS = (
    View("real", "real", functools.partial(real.render, "real")),
    View("long", "long", functools.partial(real.render, "long")),
    View("machine", "machine", machine.render),
    View("gpu", "gpu", gpu.render),
    View("startup", "startup", startup.render),
    View("overhead", "overhead", overhead.render),
    View("saving", "accuracy", accuracy.render_saving),
    View("accuracy", "accuracy", accuracy.render),
    View("redundancy", "redundancy", redundancy.render),
    View("selection", "selection", selection.render),
    View("loaders", "loaders", loaders.render),
)


def _stamped(view: View, raw: dict) -> bool:
    """The GPU section is measured in parts, each with its own stamp, written by its renderer."""
    return not (view.source == "gpu" and raw["gpu"].get("part_stamps"))


def render(raw: dict) -> dict:
    """Every section results.json holds, as markdown, each followed by the run that measured it."""
    sections = {}
    stamps = raw.get("stamps", {})
    for view in VIEWS:
        value = raw.get(view.source)
        text = view.render(value) if value else None
        if text is None:
            continue
        if stamps.get(view.source) and _stamped(view, raw):
            text += measured_line(stamps[view.source])
        sections[view.section] = text
    return sections


def plot_compare(raw: dict, out: Path) -> None:
    """The Pareto plots of the compare sections (real, long) in `raw`, in bench/ beside `out`."""
    for name in ("real", "long"):
        if name in raw:
            real.plot(name, raw[name], out)


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="dap-hvd bench", description=__doc__.splitlines()[0])
    ap.add_argument("--only", default=",".join(DEFAULT),
                    help="comma list of: startup, overhead, selection, loaders, accuracy (includes saving), "
                         "redundancy; not in the default list: gpu (one GPU), real (Fashion-MNIST, every policy, "
                         "10 epochs, three budgets), long (the same over 40 epochs: about 75 min on 2 cores)")
    ap.add_argument("--compare-dir", default="bench-out", help="real, long: where their `dap-hvd compare` folders "
                    "are kept (an interrupted section resumes from them; default bench-out)")
    ap.add_argument("--policies", help="real, long: a comma list of the policies and baselines to compare "
                    "(default all)")
    ap.add_argument("--gpu-parts", default="micro,matrix,resume,saving",
                    help="gpu: which parts to run (micro, matrix, resume, saving); each is saved as it ends")
    ap.add_argument("--gpu-data",
                    help="gpu: folder for the generated JPEG sets, kept between calls (default: temporary)")
    ap.add_argument("--logs", help="gpu: folder for each training job's full output")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--num-samples", type=int, default=1_281_167)
    ap.add_argument("--out", default="BENCHMARKS.md")
    ap.add_argument("--results", default="bench/results.json")
    ap.add_argument("--merge", metavar="RESULTS_JSON", help="take the sections named by --only from another "
                    "host's results.json (e.g. the GPU section) into --results and rewrite --out; measures nothing")
    ap.add_argument("--render-only", action="store_true", help="rewrite --out from --results as they are "
                    "(today's renderers, the plots untouched); measures nothing")
    return ap


def merge(a: argparse.Namespace, only: set, raw: dict, results: Path) -> int:
    """--merge: the sections named by --only, and their stamps, from another host's results.json."""
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


def _jobs(a: argparse.Namespace, raw: dict, work: Path, data: Path, save: Callable[[], None]) -> dict:
    """Each section's measurement, by --only name, in the order they run."""
    policies = a.policies.split(",") if a.policies else None
    jobs = {
        "gpu": lambda: gpu.measure(work, a, raw, save),
        "startup": lambda: startup.measure(data, work, a.repeats),
        "overhead": lambda: overhead.measure(data, work, a.repeats),
        "selection": lambda: selection.measure(a.num_samples),
        "loaders": lambda: loaders.measure(work, a.repeats),
        "accuracy": lambda: accuracy.measure(data, work, a.seeds),  # also feeds (b) saving
        "redundancy": lambda: redundancy.measure(work, a.seeds),
        "real": lambda: real.measure("real", Path(a.compare_dir), a.seeds, policies),
        "long": lambda: real.measure("long", Path(a.compare_dir), a.seeds, policies),
    }
    assert tuple(jobs) == JOBS
    return jobs


def _after(name: str, result: dict, raw: dict, out: Path) -> None:
    """A section just measured: its plot, and its text on stdout."""
    if name == "accuracy":
        accuracy.plot(raw["accuracy"], out.parent / "bench" / accuracy.PLOT)
    if name in ("real", "long"):
        real.plot(name, result, out)
    shown = render(raw)
    print(*(shown[k] for k in (("saving", "accuracy") if name == "accuracy" else (name,))), sep="\n\n")
    print(flush=True)


def _stamp_run(raw: dict, argv: Optional[list]) -> dict:
    """Measure the machine for this run; sections an earlier run measured keep that run's stamp."""
    stamps = raw.setdefault("stamps", {})
    for name in SECTIONS:
        if name in raw and name not in stamps and "machine" in raw:
            stamps[name] = dict(date=raw["machine"]["date"], command=raw.get("command", "dap-hvd bench"))
    raw["machine"] = machine.measure()
    raw["command"] = " ".join(["dap-hvd bench", *(argv or [])])
    return dict(date=raw["machine"]["date"], command=raw["command"])


def measure(a: argparse.Namespace, only: set, raw: dict, results: Path, argv: Optional[list]) -> int:
    """Run the sections --only names, saving results.json and --out after each."""
    unknown = only - set(JOBS)
    if unknown:
        raise SystemExit(f"dap-hvd bench: --only: unknown section(s) {sorted(unknown)}; choose from {list(JOBS)}")
    stamp = _stamp_run(raw, argv)
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
        for name, job in _jobs(a, raw, work, data, save).items():
            if name not in only:
                continue
            result = job()
            if result is None:  # not measurable on this host (the GPU section on a CPU host)
                continue
            raw["stamps"][name] = stamp
            raw[name] = result
            _after(name, result, raw, Path(a.out))
            save()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    save()
    print(f"wrote {a.out} and {results} in {raw['suite_seconds'] / 60:.1f} min")
    return 0


def main(argv=None) -> int:
    a = build_parser().parse_args(argv)
    only = set(a.only.split(","))
    results = Path(a.results)
    raw = json.loads(results.read_text()) if results.exists() else {}
    if a.render_only:
        write_markdown(Path(a.out), render(raw))
        print(f"rendered {a.out} from {results}")
        return 0
    if a.merge:
        return merge(a, only, raw, results)
    return measure(a, only, raw, results, argv)
