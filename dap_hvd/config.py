"""The one place configuration comes from: defaults < YAML file < CLI flags, validated here.

Every value lands in a frozen dataclass. Types and choices are checked by pydantic against the
dataclass annotations (imported only when a config is loaded, so `dap-hvd plan` stays fast);
ranges and combinations are checked below. Errors name the YAML key and the CLI flag, every bad
field at once, so a user can fix them without reading code. No torch import.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Literal, NamedTuple, Optional

from dap_hvd import ConfigError
from dap_hvd.policy.policies import POLICIES, REGISTRY, SCHEDULE_PARAMS, PolicyEntry, make_policy
from dap_hvd.policy.schedule import PRESETS, ScaledPreset, Schedule, scale_preset

MODELS = ("resnet18", "resnet34", "resnet50", "resnet101", "resnet152", "densenet121",
          "densenet169", "mobilenet_v2", "mobilenet_v1", "resnet_small")
Model = Literal[MODELS]
Strategy = Literal[tuple(POLICIES)]
# pydantic's rules for every section: unknown keys are errors, and inf/nan are not numbers here.
_STRICT = {"extra": "forbid", "allow_inf_nan": False}


# Images at most this many px on their shorter side (CIFAR 32, Fashion-MNIST 28, the sample data's
# 64) get the small-image defaults: resnet_small, a crop of at most 32 px, a 1-epoch LR warm-up.
SMALL_IMAGE_SIDE = 64
SMALL_CROP = 32


@functools.lru_cache(maxsize=16)
def image_side(root: str, train_list: Optional[str] = None) -> Optional[int]:
    """The shorter side in px of the first training image (the first file of the first class
    folder, or the file list's first line), read from its header; None when there is none or it
    cannot be read (the catalog reports the real problem later)."""
    from dap_hvd.data.catalog import IMAGE_EXTENSIONS

    try:
        if train_list:
            with open(train_list, encoding="utf-8") as f:
                first = next((line.split()[0] for line in f if line.strip()), None)
            path = None if first is None else os.path.join(root, first)
        else:
            train = os.path.join(root, "train")
            classes = sorted(e.path for e in os.scandir(train) if e.is_dir())
            files = sorted(e.path for e in os.scandir(classes[0]) if e.name.lower().endswith(IMAGE_EXTENSIONS)) \
                if classes else []
            path = files[0] if files else None
        if path is None:
            return None
        from PIL import Image  # reads the header only

        with Image.open(path) as im:
            return min(im.size)
    except (OSError, ValueError, IndexError):
        return None


def default_sample_root() -> Path:
    from dap_hvd.data.catalog import cache_root

    return cache_root() / "sample-data"


@dataclass(frozen=True)
class DataConfig:
    __pydantic_config__ = _STRICT

    root: Optional[str] = None  # ImageNet layout root; None: the embedded sample dataset
    train_list: Optional[str] = None  # optional "path label" file list (paths relative to root)
    val_list: Optional[str] = None
    loader: Literal["dali", "torch"] = "dali"
    dali_device: Literal["auto", "cpu", "gpu"] = "auto"  # auto: gpu if CUDA
    image_size: Optional[int] = None  # train crop; None: 224, or 32 on the sample data
    val_resize: Optional[int] = None  # shorter side before the center crop; None: size * 256/224
    batch_size: int = 64  # per rank
    workers: Optional[int] = None  # decode threads (DALI) / worker processes (torch) per rank; None: from the cores
    hw_decoder_load: Optional[float] = None  # share of JPEGs for the GPU's hardware decoder; None: DALI's 0.65
    on_bad_sample: Literal["error", "skip"] = "error"
    min_crop_area: Optional[float] = None  # RandomResizedCrop area floor; None: 0.08, or 0.25 on sample data
    color_jitter: float = 0.0  # brightness/contrast/saturation strength (Bag of Tricks 2.1)
    pca_lighting: float = 0.0  # AlexNet-style PCA noise std (Bag of Tricks uses 0.1)

    @property
    def is_sample(self) -> bool:
        """The embedded dataset (default), or any folder `make-sample-data` wrote: such data gets
        the small-image defaults, the 'sample' preset and its LR rule."""
        return is_sample_root(self.root)

    @property
    def native_side(self) -> Optional[int]:
        """The shorter side of the training images (the first one's), None when unknown."""
        return None if self.root is None else image_side(self.root, self.train_list)

    @property
    def small_images(self) -> bool:
        """The sample data, or images of at most SMALL_IMAGE_SIDE px: resnet50 at 224 px would
        upsample them many times over, for minutes per CPU step."""
        if self.is_sample:
            return True
        side = self.native_side
        return side is not None and side <= SMALL_IMAGE_SIDE


@dataclass(frozen=True)
class OptimConfig:
    __pydantic_config__ = _STRICT

    lr: Optional[float] = None  # None: 0.1 * global_batch / 256 (Goyal et al.); 0.8 * ... on sample data
    momentum: float = 0.9
    nesterov: bool = False
    weight_decay: float = 1e-4
    no_bias_decay: bool = True  # no weight decay on biases and BN parameters (Bag of Tricks 3.1)
    label_smoothing: float = 0.1
    lr_schedule: Literal["step", "cosine"] = "step"  # step: x0.1 after each lr_steps epoch
    lr_steps: Optional[tuple[int, ...]] = None  # x0.1 after these epochs; None: the preset's (imagenet 30,60,90)
    lr_warmup_epochs: Optional[float] = None  # gradual warm-up in full-data epochs; None: 5, or 1 on sample data
    zero_gamma: bool = True
    fp16_allreduce: bool = False  # horovod gradient compression
    amp: Literal["auto", "off", "bf16", "fp16"] = "auto"  # auto: bf16 on GPU, off on CPU
    channels_last: Literal["auto", "on", "off"] = "auto"  # auto: on GPU
    sync_bn: bool = False
    compile: bool = False  # torch.compile the model for full training batches (compiles once, at start)


@dataclass(frozen=True)
class PolicyConfig:
    """The parameters of the policies other than DaP's (whose schedule has its own section)."""

    __pydantic_config__ = _STRICT

    # infobatch r: a below-mean sample is pruned with this probability; seta r: each epoch draws 1-r of the data.
    prune_ratio: Optional[float] = None  # None: the policy's default (infobatch 0.5, seta 0.0)
    anneal: float = 0.875  # infobatch/seta delta: the first floor(delta * E) epochs prune, the rest do not
    fraction: float = 0.5  # rs2 r: the share of the data each epoch trains
    groups: int = 5  # seta k: loss groups (1-D k-means)
    window: float = 0.6  # seta w: round(k * w) consecutive groups train in a pruning epoch


@dataclass(frozen=True)
class TrainConfig:
    __pydantic_config__ = _STRICT

    schedule: Schedule
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    policy: PolicyConfig = field(default_factory=PolicyConfig)
    strategy: Strategy = "dap"  # a name in policies.POLICIES
    model: Optional[Model] = None  # None: resnet50, or resnet_small on the sample data
    seed: int = 0
    out: str = "runs/dap"
    resume: Optional[str] = None
    eval_every: int = 1
    keep_checkpoints: int = 2
    merge: Literal["allreduce", "allgather"] = "allreduce"  # how losses meet: dense sum | (index, loss) pairs
    metrics_port: int = 0  # 0: off; else rank r serves on metrics_port + local_rank
    metrics_host: str = "0.0.0.0"
    metrics_linger: float = 30.0  # after training, serve until a last scrape, at most this long (2 x 15 s)
    pushgateway: Optional[str] = None
    run_id: Optional[str] = None
    progress: bool = True
    max_steps_per_epoch: Optional[int] = None  # debugging: cap steps (every rank alike)
    stop_after: Optional[int] = None  # end cleanly after this epoch (checkpointed); --resume continues
    cpu_bind: bool = True  # GPU ranks: bind threads to CPUs near the GPU (affinity.py)
    elastic: bool = False  # Horovod Elastic: survive a lost host (rollback to the last epoch), take one back

    # Values that depend on the data, resolved here rather than scattered through the trainer.
    @property
    def model_name(self) -> str:
        return self.model or ("resnet_small" if self.data.small_images else "resnet50")

    @property
    def image_size(self) -> int:
        if self.data.image_size:
            return self.data.image_size
        if not self.data.small_images:
            return 224
        return min(SMALL_CROP, self.data.native_side or SMALL_CROP)

    @property
    def min_crop_area(self) -> float:
        # 8% of a small image is a sliver that rarely shows the object at all.
        if self.data.min_crop_area is not None:
            return self.data.min_crop_area
        return 0.25 if self.data.small_images else 0.08

    @property
    def val_resize(self) -> int:
        if self.data.val_resize:
            return self.data.val_resize
        side = self.data.native_side
        if self.data.small_images and side is not None and side <= self.image_size:
            return self.image_size  # the whole image: a 28-px digit has no border to crop away
        return int(round(self.image_size * 256 / 224))

    def base_lr(self, global_batch: int) -> float:
        """Linear scaling (Goyal et al.): proportional to the global batch, 0.1 per 256 images. The
        sample data's rate is 8x that (0.8 per 256): its small model and 12-epoch preset are tuned
        at that rate (the comparison belongs in BENCHMARKS.md)."""
        if self.optim.lr is not None:
            return self.optim.lr
        return (0.8 if self.data.is_sample else 0.1) * global_batch / 256

    @property
    def lr_warmup_epochs(self) -> float:
        if self.optim.lr_warmup_epochs is not None:
            return self.optim.lr_warmup_epochs
        return 1.0 if self.data.small_images else 5.0

    def small_image_note(self) -> Optional[str]:
        """What the small-image defaults chose, when they chose anything on the user's data."""
        if (self.model and self.data.image_size) or self.data.is_sample or not self.data.small_images:
            return None
        return (f"small images ({self.data.native_side} px) in {self.data.root}: {self.model_name} at "
                f"{self.image_size} px (val resize {self.val_resize}, crop area >= {self.min_crop_area:g}, LR warm-up "
                f"{self.lr_warmup_epochs:g} epoch(s)); pass --model / --image-size to choose others")

    @property
    def lr_steps(self) -> tuple[int, ...]:
        return self.optim.lr_steps or ()  # resolved from the preset by load_config

    def make_policy(self):
        return make_policy(self.strategy, self.schedule, **dataclasses.asdict(self.policy))

    @property
    def policy_params(self) -> dict:
        """The values of the PolicyConfig parameters the chosen policy reads."""
        policy = self.make_policy()  # its values, defaults resolved (prune_ratio's depends on the policy)
        return {k: getattr(policy, k) for k in REGISTRY[self.strategy].params if k in POLICY_KEYS}

    def used_schedule(self) -> dict:
        """The schedule as far as the chosen policy reads it: E, and DaP's parameters if it uses them."""
        used = set(REGISTRY[self.strategy].params)
        return {k: v for k, v in self.schedule.to_dict().items() if k == "epochs" or k in used}

    @property
    def data_root(self) -> Path:
        return Path(self.data.root) if self.data.root else default_sample_root()

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["schedule"] = self.schedule.to_dict()
        return d

    def resolved(self, base_lr: float) -> dict:
        """The config with every data-dependent default written out, so the file says what ran and
        means the same wherever it is read (evaluate on another data path, resume). `base_lr` is
        the run's (base_lr() at its global batch, or the one carried over on resume)."""
        d = self.to_dict()
        d["resume"] = d["stop_after"] = None
        d["model"] = self.model_name
        d["policy"] = self.policy_params  # only what the chosen policy reads: the others would be refused
        d["schedule"] = self.used_schedule()  # likewise: E, and DaP's parameters for dap and random
        d["data"].update(image_size=self.image_size, val_resize=self.val_resize, min_crop_area=self.min_crop_area)
        d["optim"].update(lr=base_lr, lr_steps=list(self.lr_steps), lr_warmup_epochs=self.lr_warmup_epochs)
        return d


# Sections of the YAML file, and the dataclass each one fills. Flags use dashes, keys underscores.
_SECTIONS = {"data": DataConfig, "optim": OptimConfig, "policy": PolicyConfig}
_FLAGS = {"root": "--data"}  # where the CLI flag is not the key's name
NONE_WORDS = ("none", "inf", "unlimited", "")


def _where(section: Optional[str], key: str) -> str:
    dotted = f"{section}.{key}" if section else key
    return f"{dotted} ({_FLAGS.get(key, '--' + key.replace('_', '-'))})"


def _by_field(section: Optional[str], cls, build):
    """Run a pydantic validation; its errors become one ConfigError naming every bad field."""
    from pydantic import ValidationError

    try:
        return build()
    except ValidationError as e:
        problems = []
        for err in e.errors():
            name = str(err["loc"][0])
            if err["type"] == "unexpected_keyword_argument":
                known = ", ".join(sorted(f.name for f in dataclasses.fields(cls)))
                dotted = (section + "." if section else "") + name
                problems.append(f"unknown config key {dotted!r}; known keys: {known}")
            else:
                problems.append(f"{_where(section, name)}: {err['msg'][0].lower() + err['msg'][1:]}, "
                                f"got {err['input']!r}")
        raise ConfigError("; ".join(problems)) from None


def _section(cls, section: Optional[str], values: dict, **given) -> Any:
    """cls(**values, **given), type-checked field by field. `given` are built already."""
    from pydantic import TypeAdapter

    return _by_field(section, cls, lambda: TypeAdapter(cls).validate_python({**values, **given}))


def csv_list(value: Any) -> Any:
    """The CLI's (and YAML's, if quoted) list syntax: "30,60,90", or none/"" for the empty list."""
    if isinstance(value, str):
        return [] if value.strip().lower() in NONE_WORDS else [v.strip() for v in value.split(",") if v.strip()]
    return value


POLICY_KEYS = tuple(f.name for f in dataclasses.fields(PolicyConfig))
# A stand-in for the sections that failed their type check, so the others are still checked.
_PLACEHOLDER = Schedule(epochs=1, warmup=0, interval=1, keep=1.0)


class Sections(NamedTuple):
    """The config's sections after their type check; None where it failed."""

    data: Optional[DataConfig]
    optim: Optional[OptimConfig]
    policy: Optional[PolicyConfig]
    top: Optional[TrainConfig]  # the top-level keys, over placeholder sections


def load_config(yaml_path: Optional[str] = None, overrides: Optional[dict] = None,
                raw: Optional[dict] = None, notes: Optional[list] = None) -> TrainConfig:
    """Build the run's config. `overrides` maps flag names (batch_size, keep, ...) or dotted
    YAML keys (data.batch_size) to values; None values mean 'not given'. `raw` is a run's own
    config tree (a checkpoint's, or config.yaml on --resume), used instead of a YAML file: it was
    checked when it was written, and the keys its policy does not read (which older runs wrote
    too) are dropped rather than refused. Every bad field, from the file and the flags alike,
    is named in one ConfigError. `notes` (a list) receives what the defaults chose, for the log."""
    problems: list[str] = []
    record = raw is not None
    raw = dict(raw) if record else (read_yaml(yaml_path) if yaml_path else {})
    overrides = {k: v for k, v in (overrides or {}).items() if v is not None}
    strategy = overrides.get("strategy", raw.get("strategy", "dap"))
    entry = REGISTRY.get(strategy) if isinstance(strategy, str) else None
    tree = _tree(raw, overrides, yaml_path or "config", entry if record else None, problems)
    default_preset = "sample" if is_sample_root(tree["data"].get("root")) else "imagenet"
    resolved = schedule_from(tree["schedule"], {}, strategy=strategy if entry is not None else "dap",
                             default_preset=default_preset, problems=problems)
    s = _typed_sections(tree, problems)
    if entry is not None:
        check_policy_params(strategy, [("schedule", k) for k in tree["schedule"]] +
                            [("policy", k) for k in tree["policy"] if k in POLICY_KEYS], problems)
    optim = s.optim
    if resolved is not None and optim is not None and optim.lr_steps is None:
        optim = dataclasses.replace(optim, lr_steps=resolved.preset.lr_steps)
    policy_obj = None
    if entry is not None and s.policy is not None:
        policy_obj = _checked(problems, lambda: make_policy(strategy, resolved.schedule if resolved else _PLACEHOLDER,
                                                            **dataclasses.asdict(s.policy)))
    _validate(problems, s.data, optim, s.top, resolved.schedule if resolved else None, policy_obj)
    if problems:
        raise ConfigError("; ".join(dict.fromkeys(problems)))  # in order, each once
    cfg = dataclasses.replace(s.top, schedule=resolved.schedule, data=s.data, optim=optim, policy=s.policy)
    if notes is not None:
        given = set(tree["schedule"]) | ({"lr_steps"} if "lr_steps" in tree["optim"] else set())
        notes.extend(n for n in (schedule_note(strategy, resolved.preset, given), cfg.small_image_note()) if n)
    return cfg


def _tree(raw: dict, overrides: dict, source: str, record_entry: Optional[PolicyEntry], problems: list) -> dict:
    """The config as {section: {key: value}} (None: the top level), the flags over the file. A
    run's record (`record_entry`: its policy) keeps only the keys that policy reads."""
    raw = dict(raw)
    tree: dict = {}
    for name in ("schedule", *_SECTIONS):
        section = raw.pop(name, None) or {}
        if not isinstance(section, dict):
            problems.append(f"{source}: '{name}' must be a mapping of keys to values, "
                            f"got {type(section).__name__} {section!r}")
            section = {}
        tree[name] = dict(section)
    tree[None] = raw
    if record_entry is not None:
        for name in ("schedule", "policy"):
            tree[name] = {k: v for k, v in tree[name].items() if k in record_entry.params or k in ("preset", "epochs")}
    for key, value in overrides.items():
        section, _, name = key.rpartition(".")
        if not section:
            section = _section_of(name)
        tree[section or None][name] = value
    if "lr_steps" in tree["optim"]:
        tree["optim"]["lr_steps"] = csv_list(tree["optim"]["lr_steps"])
    return tree


def is_sample_root(root) -> bool:
    """The data root is the embedded dataset (None) or a folder `make-sample-data` wrote."""
    return root is None or (isinstance(root, (str, Path)) and (Path(root) / "sample-spec.json").is_file())


def _checked(problems: list, build):
    """build(), or None with its ConfigError appended to `problems`."""
    try:
        return build()
    except ConfigError as e:
        problems.append(str(e))
        return None


def _typed_sections(tree: dict, problems: list) -> Sections:
    """Each section type-checked by pydantic; a section that fails is None, left out of the range checks."""
    return Sections(
        data=_checked(problems, lambda: _section(DataConfig, "data", tree["data"])),
        optim=_checked(problems, lambda: _section(OptimConfig, "optim", tree["optim"])),
        policy=_checked(problems, lambda: _section(PolicyConfig, "policy", tree["policy"])),
        top=_checked(problems, lambda: _section(TrainConfig, None, tree[None], schedule=_PLACEHOLDER, data=DataConfig(),
                                                optim=OptimConfig(), policy=PolicyConfig())))


# ---- The schedule section, typed without pydantic so that `plan` stays fast, by the lax rules
# pydantic applies to the other sections: a whole float is an integer, a numeric string a number,
# a bool a number. tests/test_config.py holds the two to the same answers.
SCHEDULE_KEYS = ("preset", "epochs", "warmup", "interval", "keep", "active", "reuse")
_WHOLE = re.compile(r"[+-]?[0-9]+(?:_[0-9]+)*(?:\.0*)?")


def _as_int(v: Any) -> int:
    v = v.decode() if isinstance(v, bytes) else v
    if isinstance(v, int):
        return int(v)
    if isinstance(v, float):
        if not math.isfinite(v):
            raise ValueError("input should be a finite number")
        if not v.is_integer():
            raise ValueError("input should be a valid integer, got a number with a fractional part")
        return int(v)
    if isinstance(v, str):
        if _WHOLE.fullmatch(v.strip()):
            return int(v.strip().split(".")[0])
        raise ValueError("input should be a valid integer, unable to parse string as an integer")
    raise ValueError("input should be a valid integer")


def _as_float(v: Any) -> float:
    v = v.decode() if isinstance(v, bytes) else v
    try:
        if isinstance(v, (int, float)):
            return float(v)
    except OverflowError:
        raise ValueError("input should be a valid number") from None
    if isinstance(v, str):
        try:
            if v.isascii():
                return float(v)
        except ValueError:
            pass
        raise ValueError("input should be a valid number, unable to parse string as a number")
    raise ValueError("input should be a valid number")


def _as_str(v: Any) -> str:
    if isinstance(v, (str, bytes)):
        return v.decode() if isinstance(v, bytes) else v
    raise ValueError("input should be a valid string")


def schedule_value(key: str, value: Any) -> Any:
    """One key of the schedule section, typed (ConfigError naming the key and its flag). Presence
    matters: `active` or `reuse` given as null or a none word means none; a key left out means the
    preset's."""
    if key not in SCHEDULE_KEYS:
        raise ConfigError(f"unknown config key 'schedule.{key}'; known keys: {', '.join(SCHEDULE_KEYS)}")

    def bad(msg, got) -> str:
        return f"{_where('schedule', key)}: {msg}, got {got!r}"

    try:
        if key in ("preset", "keep"):
            return _as_str(value) if key == "preset" else _as_float(value)
        if key == "active":
            none = value is None or (isinstance(value, str) and value.strip().lower() in NONE_WORDS)
            return None if none else _as_int(value)
        if key != "reuse":
            return _as_int(value)
    except ValueError as e:
        raise ConfigError(bad(e, value)) from None
    items = () if value is None else csv_list(value)
    if not isinstance(items, (list, tuple)):
        raise ConfigError(bad("input should be a valid tuple", items))
    typed, problems = [], []
    for item in items:
        try:
            typed.append(_as_int(item))
        except ValueError as e:
            problems.append(bad(e, item))
    if problems:
        raise ConfigError("; ".join(problems))
    return tuple(typed)


def schedule_from(raw: dict, overrides: dict, *, strategy: str, default_preset: str,
                  problems: list) -> Optional[ResolvedSchedule]:
    """The run's schedule, for `train` and `plan` alike: the schedule section `raw` (a YAML file's,
    or a run's record) with `overrides` (flag values; None: not given) over it, each value typed,
    the keys the policy `strategy` does not read left out (check_policy_params names them), then
    resolved against the preset given (else `default_preset`) scaled to E. Pure, and free of
    pydantic. Every problem is appended to `problems`; None when the schedule cannot be built."""
    given = {**raw, **{k: v for k, v in overrides.items() if v is not None}}
    values = {}
    for key, value in given.items():
        try:
            values[key] = schedule_value(key, value)
        except ConfigError as e:
            problems.append(str(e))
    reads = REGISTRY[strategy].params
    used = {k: v for k, v in values.items() if k in ("preset", "epochs") or k in reads}
    return resolve_schedule(strategy, used, default_preset, problems)


def _flags(keys: Iterable[str]) -> str:
    return ", ".join(_FLAGS.get(k, "--" + k.replace("_", "-")) for k in keys)


def check_policy_params(strategy: str, given: Iterable[tuple[str, str]], problems: list) -> None:
    """A parameter the chosen policy does not read would be silently ignored: each one given
    (as (section, key)) is a problem naming the policies that read it and the flags this one
    reads (train and plan alike). Unknown keys are the type check's to report."""
    reads = REGISTRY[strategy].params
    for section, key in given:
        if key in ("preset", "epochs") or key in reads:
            continue
        users = [name for name, e in REGISTRY.items() if key in e.params]
        if not users:
            continue
        theirs = f"reads {_flags(reads)}" if reads else "reads only --epochs"
        problems.append(f"{_where(section, key)}: applies to --strategy {' or '.join(users)}, not --strategy "
                        f"{strategy}, which {theirs}")


@dataclass(frozen=True)
class ResolvedSchedule:
    schedule: Schedule
    preset: ScaledPreset  # the preset at the run's length (its LR decay epochs, and how it was scaled)


def resolve_schedule(strategy: str, values: dict, default_preset: str, problems: list) -> Optional[ResolvedSchedule]:
    """The schedule from a preset scaled to the run's --epochs and the values given beside it
    (already typed: by pydantic for a config, by argparse for `plan`; only those the policy
    reads). Every problem is appended to `problems`; None when the schedule cannot be built."""
    values = dict(values)
    preset = values.pop("preset", None) or default_preset
    if preset not in PRESETS:
        problems.append(f"schedule.preset (--preset): unknown preset {preset!r}; choose from {sorted(PRESETS)}")
        return None
    epochs = values.get("epochs", PRESETS[preset]["epochs"])
    if not (isinstance(epochs, int) and not isinstance(epochs, bool) and epochs >= 1):
        problems.append(f"schedule.epochs (--epochs): epochs must be >= 1, got {epochs!r}")
        # The preset cannot be scaled to it; the other values given are still checked, at the
        # preset's own length.
        trial = {**PRESETS[preset], "reuse": (), **values, "epochs": PRESETS[preset]["epochs"]}
        try:
            Schedule(**trial)
        except ConfigError as e:
            problems.append(str(e))
        return None
    scaled = scale_preset(preset, epochs)
    params = dict(scaled.params)
    params.update(values)
    uses_schedule = set(SCHEDULE_PARAMS) <= set(REGISTRY[strategy].params)
    if not uses_schedule:  # only the run length counts: the preset's schedule is not this policy's
        params = dict(scaled.params)
    elif "reuse" not in values:  # R came from the preset: say so when the user's flags no longer fit it
        misfit = [r for r in params["reuse"] if not params["warmup"] < r <= epochs]
        if misfit:
            given = ", ".join(f"--{k} {values[k]}" for k in ("epochs", "warmup") if k in values)
            problems.append(f"schedule.reuse (--reuse): the '{preset}' preset reuses all data after epoch(s) "
                            f"{','.join(map(str, misfit))}{' at this length' if scaled.scaled else ''}, which does "
                            f"not fit {given or 'the schedule'} (reuse epochs must lie in W+1..E = "
                            f"{params['warmup'] + 1}..{epochs}); pass --reuse to override it, e.g. --reuse none")
            return None
    try:
        return ResolvedSchedule(Schedule(**params), scaled)
    except ConfigError as e:
        problems.append(str(e))
        return None


def schedule_note(strategy: str, preset: ScaledPreset, given: set) -> Optional[str]:
    """The values the run takes from its preset that --epochs scaled (None: it takes none)."""
    reads = set(REGISTRY[strategy].params) | {"lr_steps"}
    takes = tuple(k for k in preset.changed() if k in reads and k not in given)
    if not takes:
        return None
    return (f"schedule: {preset.describe(takes)} (x{preset.epochs}/{PRESETS[preset.name]['epochs']}, rounded; "
            f"`dap-hvd plan` shows the rule)")


def _section_of(name: str) -> Optional[str]:
    if name in SCHEDULE_KEYS:
        return "schedule"
    for section, cls in _SECTIONS.items():
        if name in {f.name for f in dataclasses.fields(cls)}:
            return section
    return None


def _validate(problems: list, d: Optional[DataConfig], o: Optional[OptimConfig], top: Optional[TrainConfig],
              schedule: Optional[Schedule], policy) -> None:
    """The ranges and combinations, of every section that passed its type check (None: it did
    not): each failure is appended to `problems`."""
    def check(cond: bool, section: Optional[str], key: str, msg: str) -> None:
        if not cond:
            problems.append(f"{_where(section, key)}: {msg}")

    if d is not None:
        _check_data(check, d)
    if o is not None:
        _check_optim(check, o, schedule)
    if top is not None:
        _check_run(check, top, schedule, policy)


def _check_data(check, d: DataConfig) -> None:
    check(d.batch_size >= 1, "data", "batch_size", f"must be >= 1, got {d.batch_size}")
    check(d.workers is None or d.workers >= 1, "data", "workers", f"must be >= 1, got {d.workers}")
    check(d.hw_decoder_load is None or 0 <= d.hw_decoder_load <= 1, "data", "hw_decoder_load",
          f"must be in [0, 1], got {d.hw_decoder_load}")
    check(d.image_size is None or d.image_size >= 8, "data", "image_size", f"must be >= 8, got {d.image_size}")
    check(d.min_crop_area is None or 0 < d.min_crop_area <= 1, "data", "min_crop_area",
          f"must be in (0, 1], got {d.min_crop_area}")
    check(0 <= d.color_jitter <= 1, "data", "color_jitter", f"must be in [0, 1], got {d.color_jitter}")
    check(d.pca_lighting >= 0, "data", "pca_lighting", f"must be >= 0, got {d.pca_lighting}")
    root_ok = d.root is None or Path(d.root).is_dir()
    check(root_ok, "data", "root", f"{d.root} is not a directory")
    if root_ok and (d.image_size is None or d.image_size >= 8):
        crop = TrainConfig(schedule=_PLACEHOLDER, data=d).image_size
        check(d.val_resize is None or d.val_resize >= crop, "data", "val_resize",
              f"must be >= the crop size {crop}, got {d.val_resize}")


def _check_optim(check, o: OptimConfig, schedule: Optional[Schedule]) -> None:
    # fp16 gradients scaled by the GradScaler (65536 at first) are cast to fp16 and *summed* across
    # ranks before Horovod divides: they overflow, and most steps would be skipped.
    check(not (o.amp == "fp16" and o.fp16_allreduce), "optim", "fp16_allreduce",
          "cannot be combined with --amp fp16: the loss-scaled gradients overflow fp16 when summed across "
          "ranks; use --amp bf16 with --fp16-allreduce, or drop --fp16-allreduce")
    # SyncBatchNorm allreduces inside its forward and backward: a compiled graph would break at
    # every BN layer, paying the compile time for nothing.
    check(not (o.compile and o.sync_bn), "optim", "compile", "cannot be combined with --sync-bn: Horovod's "
          "SyncBatchNorm calls an allreduce inside every BN layer, which splits the compiled graph at each one; "
          "drop one of the two")
    check(o.lr is None or o.lr > 0, "optim", "lr", f"must be > 0, got {o.lr}")
    check(0 <= o.momentum < 1, "optim", "momentum", f"must be in [0, 1), got {o.momentum}")
    check(o.weight_decay >= 0, "optim", "weight_decay", f"must be >= 0, got {o.weight_decay}")
    check(0 <= o.label_smoothing < 1, "optim", "label_smoothing", f"must be in [0, 1), got {o.label_smoothing}")
    check(o.lr_warmup_epochs is None or o.lr_warmup_epochs >= 0, "optim", "lr_warmup_epochs",
          f"must be >= 0, got {o.lr_warmup_epochs}")
    if schedule is not None:
        for s in o.lr_steps or ():
            check(1 <= s <= schedule.epochs, "optim", "lr_steps", f"epoch {s} outside 1..{schedule.epochs}")


def _check_run(check, top: TrainConfig, schedule: Optional[Schedule], policy) -> None:
    check(top.eval_every >= 1, None, "eval_every", f"must be >= 1, got {top.eval_every}")
    check(top.keep_checkpoints >= 1, None, "keep_checkpoints", f"must be >= 1, got {top.keep_checkpoints}")
    check(top.metrics_linger >= 0, None, "metrics_linger", f"must be >= 0, got {top.metrics_linger}")
    check(0 <= top.metrics_port <= 65535, None, "metrics_port",
          f"must be a port number or 0/off, got {top.metrics_port}")
    if schedule is not None:
        check(top.stop_after is None or 1 <= top.stop_after <= schedule.epochs, None, "stop_after",
              f"must be in 1..{schedule.epochs}, got {top.stop_after}")
    check(top.max_steps_per_epoch is None or top.max_steps_per_epoch >= 1, None, "max_steps_per_epoch",
          "must be >= 1")
    # A capped epoch trains only part of the subset, so a loss-driven selection would rank
    # samples it never saw. Refused rather than silently selecting among a part.
    if policy is not None:
        check(top.max_steps_per_epoch is None or not policy.ranks_by_loss, None,
              "max_steps_per_epoch", f"cannot be combined with --strategy {top.strategy}, which ranks samples "
              f"by their losses; a capped epoch sees only part of the subset (use --strategy random, rs2 or "
              f"full to debug with capped epochs)")


def read_yaml(path: str) -> dict:
    import yaml  # small, but only needed when a config file is given

    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"--config: {path} does not exist")
    try:
        data = yaml.safe_load(p.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"--config: {path} is not valid YAML: {e}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"--config: {path} must hold a mapping at the top level")
    return data
