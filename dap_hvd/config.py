"""The one place configuration comes from: defaults < YAML file < CLI flags, validated here.

Every value lands in a frozen dataclass. Types and choices are checked by pydantic against the
dataclass annotations (imported only when a config is loaded, so `dap-hvd plan` stays fast);
ranges and combinations are checked below. Errors name the YAML key and the CLI flag, every bad
field at once, so a user can fix them without reading code. No torch import.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Optional

from dap_hvd import ConfigError
from dap_hvd.policy.policies import POLICIES, make_policy
from dap_hvd.policy.schedule import PRESET_LR_STEPS, PRESETS, Schedule

MODELS = ("resnet18", "resnet34", "resnet50", "resnet101", "resnet152", "densenet121",
          "densenet169", "mobilenet_v2", "mobilenet_v1", "resnet_small")
Model = Literal[MODELS]
Strategy = Literal[tuple(POLICIES)]
# pydantic's rules for every section: unknown keys are errors, and inf/nan are not numbers here.
_STRICT = {"extra": "forbid", "allow_inf_nan": False}


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
        the small-image defaults (32-px crops, resnet_small, the 'sample' preset)."""
        return self.root is None or (Path(self.root) / "sample-spec.json").is_file()


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

    prune_ratio: float = 0.5  # infobatch r: a below-mean sample is pruned with this probability
    anneal: float = 0.875  # infobatch delta: the first floor(delta * E) epochs prune, the rest use all data
    fraction: float = 0.5  # rs2 r: the share of the data each epoch trains


# Which policy reads which parameter: a parameter given for another policy is a mistake.
POLICY_PARAMS = {"infobatch": ("prune_ratio", "anneal"), "rs2": ("fraction",)}


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
        return self.model or ("resnet_small" if self.data.is_sample else "resnet50")

    @property
    def image_size(self) -> int:
        return self.data.image_size or (32 if self.data.is_sample else 224)

    @property
    def min_crop_area(self) -> float:
        # 8% of a 64-px sample image is a sliver that rarely shows the shape at all.
        if self.data.min_crop_area is not None:
            return self.data.min_crop_area
        return 0.25 if self.data.is_sample else 0.08

    @property
    def val_resize(self) -> int:
        return self.data.val_resize or int(round(self.image_size * 256 / 224))

    def base_lr(self, global_batch: int) -> float:
        """Linear scaling (Goyal et al.): 0.1 per 256 images. The tiny sample set with its small
        model trains far better at 0.8 per 256 (measured: top-1 0.52 -> 0.80 in 12 epochs)."""
        if self.optim.lr is not None:
            return self.optim.lr
        return (0.8 if self.data.is_sample else 0.1) * global_batch / 256

    @property
    def lr_warmup_epochs(self) -> float:
        if self.optim.lr_warmup_epochs is not None:
            return self.optim.lr_warmup_epochs
        return 1.0 if self.data.is_sample else 5.0

    @property
    def lr_steps(self) -> tuple[int, ...]:
        return self.optim.lr_steps or ()  # resolved from the preset by load_config

    def make_policy(self):
        p = self.policy
        return make_policy(self.strategy, self.schedule, prune_ratio=p.prune_ratio, anneal=p.anneal,
                           fraction=p.fraction)

    @property
    def data_root(self) -> Path:
        return Path(self.data.root) if self.data.root else default_sample_root()

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["schedule"] = self.schedule.to_dict()
        return d


# Sections of the YAML file, and the dataclass each one fills. Flags use dashes, keys underscores.
_SECTIONS = {"data": DataConfig, "optim": OptimConfig, "policy": PolicyConfig}
# The schedule section is resolved against a preset (and so are the LR decay epochs); its types:
_SCHEDULE_TYPES = {"preset": str, "epochs": int, "warmup": int, "interval": int, "keep": float,
                   "active": Optional[int], "reuse": tuple[int, ...]}
_FLAGS = {"root": "--data"}  # where the CLI flag is not the key's name
_NONE_WORDS = ("none", "inf", "unlimited", "")


def _where(section: Optional[str], key: str) -> str:
    dotted = f"{section}.{key}" if section else key
    return f"{dotted} ({_FLAGS.get(key, '--' + key.replace('_', '-'))})"


def _by_field(section: Optional[str], cls, build, key: Optional[str] = None):
    """Run a pydantic validation; its errors become one ConfigError naming every bad field
    (`key`: the field, when a single value is validated)."""
    from pydantic import ValidationError

    try:
        return build()
    except ValidationError as e:
        problems = []
        for err in e.errors():
            name = key or str(err["loc"][0])
            if err["type"] == "unexpected_keyword_argument":
                known = ", ".join(sorted(f.name for f in dataclasses.fields(cls)))
                problems.append(f"unknown config key {(section + '.' if section else '') + name!r}; known keys: {known}")
            else:
                problems.append(f"{_where(section, name)}: {err['msg'][0].lower() + err['msg'][1:]}, "
                                f"got {err['input']!r}")
        raise ConfigError("; ".join(problems)) from None


def _section(cls, section: Optional[str], values: dict, **given) -> Any:
    """cls(**values, **given), type-checked field by field. `given` are built already."""
    from pydantic import TypeAdapter

    return _by_field(section, cls, lambda: TypeAdapter(cls).validate_python({**values, **given}))


def _csv(value: Any) -> Any:
    """The CLI's (and YAML's, if quoted) list syntax: "30,60,90", or none/"" for the empty list."""
    if isinstance(value, str):
        return [] if value.strip().lower() in _NONE_WORDS else [v.strip() for v in value.split(",") if v.strip()]
    return value


def load_config(yaml_path: Optional[str] = None, overrides: Optional[dict] = None,
                raw: Optional[dict] = None) -> TrainConfig:
    """Build the run's config. `overrides` maps flag names (batch_size, keep, ...) or dotted
    YAML keys (data.batch_size) to values; None values mean 'not given'. `raw` is an already
    parsed config tree (a checkpoint's own), used instead of a YAML file."""
    source = yaml_path or "config"
    raw = dict(raw) if raw is not None else (_read_yaml(yaml_path) if yaml_path else {})
    tree: dict = {}
    for name in ("schedule", *_SECTIONS):
        section = raw.pop(name, None) or {}
        if not isinstance(section, dict):
            raise ConfigError(f"{source}: '{name}' must be a mapping of keys to values, "
                              f"got {type(section).__name__} {section!r}")
        tree[name] = dict(section)
    tree[None] = raw

    for key, value in (overrides or {}).items():
        if value is None:
            continue
        section, _, name = key.rpartition(".")
        if not section:
            section = _section_of(name)
        tree[section or None][name] = value
    if "lr_steps" in tree["optim"]:
        tree["optim"]["lr_steps"] = _csv(tree["optim"]["lr_steps"])

    # Every section is checked before any error is raised: one message lists every bad field.
    problems: list[str] = []

    def checked(build):
        try:
            return build()
        except ConfigError as e:
            problems.append(str(e))

    values = {key: checked(lambda: _schedule_value(key, value)) for key, value in tree["schedule"].items()}
    data = checked(lambda: _section(DataConfig, "data", tree["data"]))
    optim = checked(lambda: _section(OptimConfig, "optim", tree["optim"]))
    policy = checked(lambda: _section(PolicyConfig, "policy", tree["policy"]))
    if problems:
        raise ConfigError("; ".join(problems))
    preset = values.get("preset") or ("sample" if data.is_sample else "imagenet")
    schedule = _schedule(values, default_preset=preset)
    if optim.lr_steps is None:  # the preset's decay epochs; a preset value that no longer fits is named
        steps = PRESET_LR_STEPS.get(preset, ())
        late = [e for e in steps if e > schedule.epochs]
        if late:
            raise ConfigError(f"optim.lr_steps (--lr-steps): the '{preset}' preset decays the LR after epoch(s) "
                              f"{','.join(map(str, late))}, beyond --epochs {schedule.epochs}; "
                              f"pass --lr-steps to override it (e.g. --lr-steps {max(1, schedule.epochs * 2 // 3)})")
        optim = dataclasses.replace(optim, lr_steps=tuple(steps))
    cfg = _section(TrainConfig, None, tree[None], schedule=schedule, data=data, optim=optim, policy=policy)
    check_policy_params(cfg.strategy, tree["policy"])
    cfg.make_policy()  # each policy checks the ranges of its own parameters
    _validate(cfg)
    return cfg


def _schedule_value(key: str, value: Any) -> Any:
    """One schedule key, its type checked by pydantic. Presence matters: a key given as null
    means 'none', a key left out means 'the preset's'."""
    from pydantic import TypeAdapter

    if key not in _SCHEDULE_TYPES:
        raise ConfigError(f"unknown config key 'schedule.{key}'; known keys: {', '.join(_SCHEDULE_TYPES)}")
    if key == "reuse":
        value = () if value is None else _csv(value)
    elif key == "active" and isinstance(value, str) and value.strip().lower() in _NONE_WORDS:
        value = None
    return _by_field("schedule", Schedule, lambda: TypeAdapter(_SCHEDULE_TYPES[key]).validate_python(value), key=key)


def check_policy_params(strategy: str, given) -> None:
    """A policy parameter given for another policy would be silently ignored: refuse it (train
    and plan alike)."""
    for key in sorted(given):
        users = [name for name, keys in POLICY_PARAMS.items() if key in keys]
        if not users:
            known = ", ".join(sorted(k for keys in POLICY_PARAMS.values() for k in keys))
            raise ConfigError(f"unknown config key 'policy.{key}'; known keys: {known}")
        if strategy not in users:
            raise ConfigError(f"{_where('policy', key)}: applies to --strategy {' or '.join(users)}, "
                              f"not --strategy {strategy}")


def _section_of(name: str) -> Optional[str]:
    if name in _SCHEDULE_TYPES:
        return "schedule"
    for section, cls in _SECTIONS.items():
        if name in {f.name for f in dataclasses.fields(cls)}:
            return section
    return None


def _schedule(values: dict, default_preset: str) -> Schedule:
    """A Schedule from a preset and the values given beside it (already typed: by pydantic for a
    config, by argparse for `plan`); Schedule checks their ranges."""
    values = dict(values)
    preset = values.pop("preset", None) or default_preset
    if preset not in PRESETS:
        raise ConfigError(f"schedule.preset (--preset): unknown preset {preset!r}; choose from {sorted(PRESETS)}")
    params = dict(PRESETS[preset])
    params.update(values)
    if "reuse" not in values:  # R came from the preset: say so when the user's flags no longer fit it
        misfit = [r for r in params["reuse"] if not params["warmup"] < r <= params["epochs"]]
        if misfit:
            given = ", ".join(f"--{k} {values[k]}" for k in ("epochs", "warmup") if k in values)
            raise ConfigError(f"schedule.reuse (--reuse): the '{preset}' preset reuses all data after epoch(s) "
                              f"{','.join(map(str, misfit))}, which does not fit {given or 'the schedule'} "
                              f"(reuse epochs must lie in W+1..E = {params['warmup'] + 1}..{params['epochs']}); "
                              f"pass --reuse to override it, e.g. --reuse none")
    return Schedule(**params)


def _check(cond: bool, section: Optional[str], key: str, msg: str) -> None:
    if not cond:
        raise ConfigError(f"{_where(section, key)}: {msg}")


def _validate(cfg: TrainConfig) -> None:
    d, o = cfg.data, cfg.optim
    _check(d.batch_size >= 1, "data", "batch_size", f"must be >= 1, got {d.batch_size}")
    _check(d.workers is None or d.workers >= 1, "data", "workers", f"must be >= 1, got {d.workers}")
    _check(d.hw_decoder_load is None or 0 <= d.hw_decoder_load <= 1, "data", "hw_decoder_load",
           f"must be in [0, 1], got {d.hw_decoder_load}")
    # fp16 gradients scaled by the GradScaler (65536 at first) are cast to fp16 and *summed* across
    # ranks before Horovod divides: they overflow, and most steps would be skipped.
    _check(not (o.amp == "fp16" and o.fp16_allreduce), "optim", "fp16_allreduce",
           "cannot be combined with --amp fp16: the loss-scaled gradients overflow fp16 when summed across "
           "ranks; use --amp bf16 with --fp16-allreduce, or drop --fp16-allreduce")
    # SyncBatchNorm allreduces inside its forward and backward: a compiled graph would break at
    # every BN layer, paying the compile time for nothing.
    _check(not (o.compile and o.sync_bn), "optim", "compile", "cannot be combined with --sync-bn: Horovod's "
           "SyncBatchNorm calls an allreduce inside every BN layer, which splits the compiled graph at each one; "
           "drop one of the two")
    _check(d.image_size is None or d.image_size >= 8, "data", "image_size", f"must be >= 8, got {d.image_size}")
    _check(d.val_resize is None or d.val_resize >= cfg.image_size, "data", "val_resize",
           f"must be >= the crop size {cfg.image_size}, got {d.val_resize}")
    _check(d.min_crop_area is None or 0 < d.min_crop_area <= 1, "data", "min_crop_area",
           f"must be in (0, 1], got {d.min_crop_area}")
    _check(0 <= d.color_jitter <= 1, "data", "color_jitter", f"must be in [0, 1], got {d.color_jitter}")
    _check(d.pca_lighting >= 0, "data", "pca_lighting", f"must be >= 0, got {d.pca_lighting}")
    if d.root is not None:
        _check(Path(d.root).is_dir(), "data", "root", f"{d.root} is not a directory")
    _check(o.lr is None or o.lr > 0, "optim", "lr", f"must be > 0, got {o.lr}")
    _check(0 <= o.momentum < 1, "optim", "momentum", f"must be in [0, 1), got {o.momentum}")
    _check(o.weight_decay >= 0, "optim", "weight_decay", f"must be >= 0, got {o.weight_decay}")
    _check(0 <= o.label_smoothing < 1, "optim", "label_smoothing", f"must be in [0, 1), got {o.label_smoothing}")
    _check(o.lr_warmup_epochs is None or o.lr_warmup_epochs >= 0, "optim", "lr_warmup_epochs", f"must be >= 0, got {o.lr_warmup_epochs}")
    for s in cfg.lr_steps:
        _check(1 <= s <= cfg.schedule.epochs, "optim", "lr_steps", f"epoch {s} outside 1..{cfg.schedule.epochs}")
    _check(cfg.eval_every >= 1, None, "eval_every", f"must be >= 1, got {cfg.eval_every}")
    _check(cfg.keep_checkpoints >= 1, None, "keep_checkpoints", f"must be >= 1, got {cfg.keep_checkpoints}")
    _check(cfg.metrics_linger >= 0, None, "metrics_linger", f"must be >= 0, got {cfg.metrics_linger}")
    _check(0 <= cfg.metrics_port <= 65535, None, "metrics_port", f"must be a port number or 0/off, got {cfg.metrics_port}")
    _check(cfg.stop_after is None or 1 <= cfg.stop_after <= cfg.schedule.epochs, None, "stop_after",
           f"must be in 1..{cfg.schedule.epochs}, got {cfg.stop_after}")
    _check(cfg.max_steps_per_epoch is None or cfg.max_steps_per_epoch >= 1, None, "max_steps_per_epoch", "must be >= 1")
    # A capped epoch trains only part of the subset, so a loss-driven selection would rank
    # samples it never saw. Refused rather than silently selecting among a part.
    _check(cfg.max_steps_per_epoch is None or not cfg.make_policy().uses_scores, None,
           "max_steps_per_epoch", f"cannot be combined with --strategy {cfg.strategy}, which ranks samples "
           f"by their losses; a capped epoch sees only part of the subset (use --strategy random, rs2 or full "
           f"to debug with capped epochs)")


def _read_yaml(path: str) -> dict:
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
