"""The plan of a compare (pure): its settings, each policy tuned to a budget by the plan machinery, the
train flags and run list that follow, and the fixed-subset baseline's file list."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

from dap_hvd import ConfigError

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

