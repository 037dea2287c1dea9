"""The Drop-and-Pick schedule (Algorithm 1 of the DaP paper) as pure functions.

After training epoch tau:
  * drop: if tau > W and tau - T_prev == I and tau - T_start < alpha, keep the fraction p of the
    *current* subset with the largest losses of epoch tau, and set T_prev = tau;
  * pick: if tau in R, all data comes back and the cycle restarts: T_start = T_prev = tau.

Algorithm 1 as printed resets only T_start at a reuse epoch. With alpha set, tau - T_prev could
then never equal I again after the first cycle, so sampling would stop for good. The paper's own
computation figures (Tables 2, 3, 7) only come out when the interval count restarts too, so we
reset T_prev as well. tests/test_schedule.py checks every figure.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from fractions import Fraction
from typing import Optional

from dap_hvd import ConfigError, DapError

PRESETS: dict[str, dict] = {
    # Section 4.3.1: W=10, I=2, p=0.9, alpha=10, R=30/60/90 over 120 epochs (~75% compute).
    "imagenet": dict(epochs=120, warmup=10, interval=2, keep=0.9, active=10, reuse=(30, 60, 90)),
    # Table 2 baseline: ResNet-110 on CIFAR10, 300 epochs (63% compute).
    "cifar10": dict(epochs=300, warmup=40, interval=10, keep=0.9, active=None, reuse=(150,)),
    # Sized for the embedded sample dataset: minutes on 2 CPU cores, and still warm-up, drops,
    # a pick (reuse) and more drops.
    "sample": dict(epochs=12, warmup=3, interval=1, keep=0.8, active=None, reuse=(8,)),
}

# The LR decay epochs of each preset's recipe. They are their own setting, not R: the paper's
# CIFAR recipe divides the LR at 150 and 225 (section 4.1) but reuses data at 150 only, and a
# reuse ablation (Table 2(e), R empty) must not turn the LR schedule into a constant.
PRESET_LR_STEPS: dict[str, tuple[int, ...]] = {"imagenet": (30, 60, 90), "cifar10": (150, 225), "sample": (8,)}


# How `--epochs N` scales a preset written for E0 epochs: every epoch count at the same fraction
# of the run, so the imagenet preset over 40 epochs keeps its shape. `plan` prints the result.
SCALING_RULE = ("W, I, alpha, R and the LR decay epochs x N/E0, each rounded to the nearest epoch (halves up); "
                "I >= 1 and alpha > I (each cycle keeps a drop); reuse epochs stay within W+1..N and LR decay "
                "epochs within 1..N, and ones that meet merge")


@dataclass(frozen=True)
class ScaledPreset:
    """A preset's schedule and LR decay epochs over `epochs` (its own length: unchanged)."""

    name: str
    epochs: int
    params: dict  # Schedule's keyword arguments
    lr_steps: tuple[int, ...]

    @property
    def scaled(self) -> bool:
        return self.epochs != PRESETS[self.name]["epochs"]

    def describe(self, keys: tuple = ("warmup", "interval", "active", "reuse", "lr_steps")) -> str:
        """The preset's scaled values of `keys` (Schedule's names, and lr_steps)."""
        p = dict(self.params, lr_steps=self.lr_steps)
        shown = {"warmup": f"W={p['warmup']}", "interval": f"I={p['interval']}",
                 "active": f"alpha={p['active'] or 'unlimited'}",
                 "reuse": f"R={','.join(map(str, p['reuse'])) or '-'}",
                 "lr_steps": f"LR x0.1 after {','.join(map(str, p['lr_steps'])) or '-'}"}
        return (f"'{self.name}' preset ({PRESETS[self.name]['epochs']} epochs) scaled to {self.epochs}: "
                + " ".join(shown[k] for k in keys))

    def changed(self) -> tuple:
        """The keys whose values scaling changed (of W, I, alpha, R, lr_steps)."""
        base = dict(PRESETS[self.name], lr_steps=PRESET_LR_STEPS[self.name])
        now = dict(self.params, lr_steps=self.lr_steps)
        return tuple(k for k in ("warmup", "interval", "active", "reuse", "lr_steps") if base[k] != now[k])


def scale_preset(name: str, epochs: int) -> ScaledPreset:
    """The preset `name` over `epochs` (>= 1), by SCALING_RULE; at the preset's own length every
    value is the preset's."""
    base = PRESETS[name]
    factor = Fraction(epochs, base["epochs"])

    def at(x: int) -> int:  # x * N/E0 to the nearest whole epoch, halves up (exact: no float)
        return math.floor(x * factor + Fraction(1, 2))

    warmup = at(base["warmup"])
    interval = max(1, at(base["interval"]))
    active = None if base["active"] is None else max(interval + 1, at(base["active"]))
    reuse = tuple(sorted({min(max(at(r), warmup + 1), epochs) for r in base["reuse"]})) if warmup < epochs else ()
    lr_steps = tuple(sorted({min(max(at(s), 1), epochs) for s in PRESET_LR_STEPS[name]}))
    params = dict(epochs=epochs, warmup=warmup, interval=interval, keep=base["keep"], active=active, reuse=reuse)
    return ScaledPreset(name, epochs, params, lr_steps)


@dataclass(frozen=True)
class Schedule:
    epochs: int
    warmup: int
    interval: int
    keep: float
    active: Optional[int] = None  # None: sample for the whole cycle
    reuse: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        problems = []  # every bad parameter, so one error lists them all

        def need(ok: bool, name: str, msg: str) -> bool:
            if not ok:
                problems.append(f"schedule parameter {name}: {msg}")
            return ok

        epochs_ok = need(_is_int(self.epochs) and self.epochs >= 1, "epochs (E, --epochs)",
                         f"epochs must be >= 1 (a whole number), got {self.epochs!r}")
        warmup_ok = need(_is_int(self.warmup) and self.warmup >= 0, "warmup (W, --warmup)",
                         f"must be an integer >= 0, got {self.warmup!r}")
        need(_is_int(self.interval) and self.interval >= 1, "interval (I, --interval)",
             f"must be an integer >= 1, got {self.interval!r}")
        need(isinstance(self.keep, (int, float)) and not isinstance(self.keep, bool)
             and math.isfinite(self.keep) and 0.0 < self.keep <= 1.0,
             "keep (p, --keep)", f"must be in (0, 1], got {self.keep!r}")
        need(self.active is None or (_is_int(self.active) and self.active >= 1),
             "active (alpha, --active)", f"must be an integer >= 1 or absent, got {self.active!r}")
        reuse = tuple(self.reuse)
        if epochs_ok:
            for r in reuse:
                need(_is_int(r) and 1 <= r <= self.epochs, "reuse (R, --reuse)",
                     f"epoch {r!r} is outside 1..{self.epochs}")
        need(len(set(reuse)) == len(reuse), "reuse (R, --reuse)", f"repeats an epoch: {list(reuse)}")
        # A pick inside the warm-up restarts the cycle there and silently moves every later drop
        # (T_prev resets at reuse), while all data is still in use anyway: refuse it.
        if warmup_ok:
            for r in reuse:
                need(not _is_int(r) or r > self.warmup, "reuse (R, --reuse)",
                     f"epoch {r} is inside the warm-up (W={self.warmup}), where all data is used anyway; "
                     f"choose reuse epochs after W, or --reuse none")
        if problems:
            raise ConfigError("; ".join(problems))
        object.__setattr__(self, "reuse", tuple(sorted(reuse)))
        object.__setattr__(self, "keep", float(self.keep))

    def to_dict(self) -> dict:
        return dict(epochs=self.epochs, warmup=self.warmup, interval=self.interval, keep=self.keep,
                    active=self.active, reuse=list(self.reuse))


def _is_int(x) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


@dataclass(frozen=True)
class DapState:
    """Everything the schedule remembers between epochs (checkpointed with the run)."""

    t_start: int
    t_prev: int

    def to_dict(self) -> dict:
        """The checkpoint's and the broadcast's form: {"t_start": ..., "t_prev": ...}."""
        return dict(t_start=self.t_start, t_prev=self.t_prev)

    @classmethod
    def from_dict(cls, d: dict) -> "DapState":
        return cls(t_start=d["t_start"], t_prev=d["t_prev"])


def initial_state(schedule: Schedule) -> DapState:
    return DapState(t_start=schedule.warmup, t_prev=schedule.warmup)


DROP, PICK, STAY = "drop", "pick", "stay"


@dataclass(frozen=True)
class Decision:
    action: str  # DROP: keep fraction p of the current subset; PICK: all data; STAY: unchanged
    state: DapState


def decide(schedule: Schedule, state: DapState, epoch: int) -> Decision:
    """What to do after training `epoch` (1-based). Pure: returns the next state."""
    drop = (
        epoch > schedule.warmup
        and epoch - state.t_prev == schedule.interval
        and (schedule.active is None or epoch - state.t_start < schedule.active)
    )
    if epoch in schedule.reuse:
        # A pick supersedes a drop due at the same epoch: the whole dataset comes back.
        return Decision(PICK, DapState(t_start=epoch, t_prev=epoch))
    if drop:
        return Decision(DROP, replace(state, t_prev=epoch))
    return Decision(STAY, state)


def keep_count(n: int, keep: float) -> int:
    """floor(p * n), at least 1. Exact in decimal: floor(0.29 * 100) is 29, not 28."""
    return max(1, int(Fraction(repr(keep)) * n)) if n > 0 else 0


@dataclass(frozen=True)
class EpochPlan:
    epoch: int
    fraction: float  # of the full dataset trained in this epoch (the upper bound when it is not known ahead)
    size: Optional[int]  # exact subset size when the number of samples is known (upper bound likewise)
    event: str  # what this epoch trains on: warmup | full | drop (newly reduced) | subset | pick | prune | draw
    action: str  # the policy's step after this epoch: drop | pick | stay | prune | full | draw | end
    # Set where the size depends on the scores (InfoBatch): the lower bound, in expectation.
    min_fraction: Optional[float] = None
    min_size: Optional[int] = None
    # Set where a policy has a size it aims at within the bounds (SeTa's window of equal groups).
    nominal_fraction: Optional[float] = None

    @property
    def exact(self) -> bool:
        return self.min_fraction is None

    @property
    def low_fraction(self) -> float:
        return self.fraction if self.exact else self.min_fraction

    @property
    def low_size(self) -> Optional[int]:
        return self.size if self.exact else self.min_size

    def to_dict(self) -> dict:
        """The row as `plan --json` writes it (the action under its recorded name, "after")."""
        return dict(epoch=self.epoch, fraction=self.fraction, size=self.size, event=self.event, after=self.action,
                    min_fraction=self.min_fraction, min_size=self.min_size, nominal_fraction=self.nominal_fraction)


class PlanMismatch(DapError):
    """An exact policy's selection differs from its plan."""


@dataclass(frozen=True)
class Plan:
    num_epochs: int  # E, the run's length
    num_samples: Optional[int]
    epochs: tuple[EpochPlan, ...] = field(default=())  # one row per epoch, 1..E
    policy: str = "dap"
    params: dict = field(default_factory=dict)  # the policy's own parameters, for display and records
    schedule: Optional[Schedule] = None  # DaP's schedule, for the policies that follow it (dap, random)

    @property
    def exact(self) -> bool:
        return all(e.exact for e in self.epochs)

    def check(self, epoch: int, subset: int) -> None:
        """An exact plan is what trains: its size for `epoch` is the subset's, or the LR grid (keyed
        to the planned steps) and the planned compute would silently bend. A mismatch is a bug."""
        if epoch > len(self.epochs):
            return
        row = self.epochs[epoch - 1]
        if row.exact and row.size is not None and row.size != subset:
            raise PlanMismatch(f"epoch {epoch}: the {self.policy} plan trains {row.size} samples, but the selection "
                               f"holds {subset}; an exact plan must match what trains (this is a bug: please report "
                               f"it with the run's train.log)")

    def _ratio(self, low: bool) -> float:
        if self.num_samples:
            return sum(e.low_size if low else e.size for e in self.epochs) / (self.num_samples * self.num_epochs)
        return sum(e.low_fraction if low else e.fraction for e in self.epochs) / self.num_epochs

    @property
    def compute_ratio(self) -> Optional[float]:
        """Samples trained over E full epochs (exact sizes when num_samples is known); None when
        the sizes depend on the scores (see compute_bounds)."""
        return self._ratio(low=False) if self.exact else None

    @property
    def compute_bounds(self) -> tuple[float, float]:
        return self._ratio(low=True), self._ratio(low=False)

    @property
    def nominal_ratio(self) -> Optional[float]:
        """The compute ratio if every epoch had its nominal size; None where a policy has none."""
        if not any(e.nominal_fraction is not None for e in self.epochs):
            return self.compute_ratio
        if any(e.nominal_fraction is None and not e.exact for e in self.epochs):
            return None
        return sum(e.fraction if e.nominal_fraction is None else e.nominal_fraction
                   for e in self.epochs) / self.num_epochs

    def describe(self) -> str:
        low, high = self.compute_bounds
        return f"{high:.3f}" if self.exact else f"{low:.3f}..{high:.3f}"

    def to_dict(self) -> dict:
        low, high = self.compute_bounds
        return {
            "policy": self.policy,
            "params": self.params,
            "schedule": self.schedule_record(),
            "num_samples": self.num_samples,
            "compute_ratio": self.compute_ratio,
            "compute_ratio_min": low,
            "compute_ratio_max": high,
            "compute_ratio_nominal": self.nominal_ratio,
            "epochs": [e.to_dict() for e in self.epochs],
        }

    def schedule_record(self) -> dict:
        """DaP's schedule as records hold it. A policy without one records the schedule that never
        drops nor picks: all E epochs are warm-up (the record format predates the other policies)."""
        if self.schedule is not None:
            return self.schedule.to_dict()
        e = self.num_epochs
        return dict(epochs=e, warmup=e, interval=1, keep=1.0, active=None, reuse=[])


def plan(schedule: Schedule, num_samples: Optional[int] = None) -> Plan:
    """The per-epoch subset sizes the schedule produces, before any GPU hour is spent."""
    check_num_samples(num_samples)
    state = initial_state(schedule)
    fraction, size, event = 1.0, num_samples, "warmup"
    rows = []
    for epoch in range(1, schedule.epochs + 1):
        if epoch <= schedule.warmup:
            event = "warmup"
        decision = decide(schedule, state, epoch)
        rows.append(EpochPlan(epoch, fraction if size is None else size / num_samples, size, event, decision.action))
        state = decision.state
        if decision.action == PICK:
            fraction, size, event = 1.0, num_samples, "pick"
        elif decision.action == DROP:
            fraction *= schedule.keep
            size = None if size is None else keep_count(size, schedule.keep)
            event = "drop"
        else:
            event = "full" if fraction == 1.0 else "subset"
    return Plan(schedule.epochs, num_samples, tuple(rows), policy="dap", params=schedule.to_dict(), schedule=schedule)


def check_num_samples(num_samples: Optional[int]) -> None:
    """N for a plan's exact sizes: None (fractions only) or an integer >= 1."""
    if num_samples is not None and (not _is_int(num_samples) or num_samples < 1):
        raise ConfigError(f"--num-samples: must be an integer >= 1, got {num_samples!r}")
