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
import sys
from pathlib import Path
from typing import NamedTuple, Optional

from dap_hvd import ConfigError, DapError
from dap_hvd.compare.plan import BASELINES, LR_FRACTIONS, ORDER, Settings
from dap_hvd.compare.runner import run_compare

# Flags compare sets itself for every run; given after `--` they would make the runs unequal.
OWNED_FLAGS = ("--strategy", "--epochs", "--seed", "--out", "--data", "--keep", "--warmup", "--interval",
               "--active", "--reuse", "--preset", "--lr-steps", "--train-list", "--prune-ratio", "--anneal",
               "--fraction", "--resume", "--stop-after", "--config", "--window", "--groups")


def build_parser() -> argparse.ArgumentParser:
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
    return ap


def _fractions(text: str, flag: str) -> tuple[float, ...]:
    """A comma list of numbers in (0, 1)."""
    try:
        xs = tuple(float(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise ConfigError(f"{flag}: expected a comma list of numbers, got {text!r}") from None
    if not xs or not all(0 < x < 1 for x in xs):
        raise ConfigError(f"{flag}: every value must lie in (0, 1), got {text!r}")
    return xs


def _policies(text: Optional[str]) -> list[str]:
    """--policies, without `full` (it always runs); all of them when not given."""
    from dap_hvd.policy.policies import POLICIES

    known = set(POLICIES) | set(BASELINES)
    given = [p.strip() for p in text.split(",") if p.strip()] if text else [p for p in ORDER if p in known]
    policies = [p for p in given if p != "full"]
    unknown = [p for p in policies if p not in known]
    if unknown:
        raise ConfigError(f"--policies: unknown {', '.join(unknown)}; choose from "
                          f"{', '.join(p for p in ORDER if p in known and p != 'full')}")
    return policies


class Parsed(NamedTuple):
    settings: Settings
    args: argparse.Namespace  # --out, --resume, --force, --parallel: how to run it, not what it measures


def parse(argv: list[str]) -> Parsed:
    own, extra = (argv[:argv.index("--")], argv[argv.index("--") + 1:]) if "--" in argv else (argv, [])
    a = build_parser().parse_args(own)
    budgets = _fractions(a.budget, "--budget")
    if a.epochs < 2:
        raise ConfigError(f"--epochs: must be at least 2, got {a.epochs}")
    policies = _policies(a.policies)
    for flag, value in (("--seeds", a.seeds), ("-np", a.np), ("--parallel", a.parallel)):
        if value < 1:
            raise ConfigError(f"{flag}: must be at least 1, got {value}")
    owned = [f for f in extra if f.split("=")[0] in OWNED_FLAGS]
    if owned:
        raise ConfigError(f"train flags after --: {', '.join(owned)} are set by compare for each run; drop them")
    settings = Settings(data=str(Path(a.data).resolve()), epochs=a.epochs, budgets=budgets,
                        policies=("full", *[p for p in ORDER if p in policies]), seeds=a.seeds, top_k=a.top_k,
                        np=a.np, hosts=a.hosts or f"localhost:{a.np}", train_args=tuple(extra),
                        lr_fractions=_fractions(a.lr_fractions, "--lr-fractions"))
    return Parsed(settings, a)


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
