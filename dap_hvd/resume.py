"""What a resume may change, as pure functions of the checkpoint's record and the new config.

May change: the world size and per-rank batch (the LR follows the global batch by the linear
rule, or is the `--lr` given on the resume), and a larger --epochs. May not: anything that changes
what the finished epochs mean, or how the next ones continue them: the schedule the policy reads,
the LR curve and recipe, the model and its input size, the precision, the strategy and its
parameters, the seed and the dataset. No torch import.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

from dap_hvd.config import TrainConfig
from dap_hvd.policy.policies import REGISTRY, SCHEDULE_PARAMS

# Recipe values a resume may not change: (section, key in the resolved config, flag).
RECIPE = (("optim", "lr_schedule", "--lr-schedule"), ("optim", "lr_warmup_epochs", "--lr-warmup-epochs"),
          ("optim", "label_smoothing", "--label-smoothing"), ("optim", "weight_decay", "--weight-decay"),
          ("optim", "momentum", "--momentum"), ("optim", "nesterov", "--nesterov"),
          ("optim", "amp", "--amp"), ("data", "image_size", "--image-size"))


@dataclass(frozen=True)
class Change:
    what: str  # the setting, with its flag
    then: Any
    now: Any


def recipe_of(cfg: TrainConfig) -> dict:
    """The resolved recipe values RECIPE names, as a checkpoint's `config` records them."""
    return {"optim": dict(lr_schedule=cfg.optim.lr_schedule, lr_warmup_epochs=cfg.lr_warmup_epochs,
                          label_smoothing=cfg.optim.label_smoothing, weight_decay=cfg.optim.weight_decay,
                          momentum=cfg.optim.momentum, nesterov=cfg.optim.nesterov, amp=cfg.optim.amp),
            "data": dict(image_size=cfg.image_size)}


def changes(meta: dict, cfg: TrainConfig, dataset_digest: str) -> list[Change]:
    """Every setting that differs between the checkpoint's record (`meta`) and `cfg`."""
    found = []
    old_sched, new_sched = dict(meta.get("schedule") or {}), cfg.schedule.to_dict()
    for key in (k for k in SCHEDULE_PARAMS if k in REGISTRY[cfg.strategy].params):
        if key in old_sched and old_sched[key] != new_sched[key]:
            found.append(Change(f"schedule {key} (--{key})", old_sched[key], new_sched[key]))
    for key, new in (("lr_steps", list(cfg.lr_steps)), ("model", cfg.model_name), ("strategy", cfg.strategy),
                     ("policy", cfg.policy_params), ("seed", cfg.seed), ("dataset_digest", dataset_digest)):
        if key in meta and meta[key] != new:
            found.append(Change(key, meta[key], new))
    old, new = meta.get("config") or {}, recipe_of(cfg)
    for section, key, flag in RECIPE:
        before = (old.get(section) or {}).get(key, new[section][key])  # older records lack some keys
        if before != new[section][key]:
            found.append(Change(f"{section}.{key} ({flag})", before, new[section][key]))
    return found


def unmade_final_step(meta: dict, cfg: TrainConfig) -> Optional[str]:
    """Why an extension of this finished run cannot follow its plan, or None. Runs written before
    the policy made the step due after the final epoch saved the final epoch's own subset with the
    state after that step (DaP's T_prev or T_start equal to the epoch): extended, they would train
    other sizes than the plan says."""
    done, state = meta["epoch"], meta.get("policy_state")
    history = meta.get("history") or []
    if not set(SCHEDULE_PARAMS) <= set(REGISTRY[cfg.strategy].params):
        return None  # only DaP's schedule drops or picks (old `full` runs kept its state, never its steps)
    if cfg.schedule.epochs <= done or not history or history[-1].get("after") != "end" or state is None:
        return None
    if done not in (state.get("t_prev"), state.get("t_start")):
        return None  # nothing was due: the subset is the one the plan continues with
    step = "pick" if state.get("t_start") == done else "drop"
    return (f"it ended at epoch {done} without making the {step} due after it (an older dap-hvd wrote it), so "
            f"--epochs {cfg.schedule.epochs} would not train what its plan says; move "
            f"checkpoints/epoch-{done:04d}.pt aside to continue from the checkpoint before it, which trains "
            f"epoch {done} again and makes the {step}")


def resume_lr(meta: dict, given: Optional[float], global_batch: int) -> float:
    """The base LR of a resumed run: the `--lr` given on the resume command (the base LR at this
    global batch, as on a fresh start), else the run's own carried to this global batch by the
    linear rule. The same whether or not the global batch changed."""
    if given is not None:
        return given
    old_gb = meta.get("global_batch")
    return meta["base_lr"] * (global_batch / old_gb if old_gb else 1.0)
