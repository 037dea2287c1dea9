"""Config: defaults < YAML < CLI, frozen, validated, errors that name the key and the flag."""

import dataclasses
from typing import Optional

import pytest

from dap_hvd import ConfigError
from dap_hvd.config import load_config
from dap_hvd.policy.schedule import PRESETS, Schedule


def test_yaml_then_cli_precedence(tmp_path):
    y = tmp_path / "c.yaml"
    y.write_text("strategy: random\nschedule: {preset: cifar10, interval: 20}\ndata: {batch_size: 32, loader: torch}\n"
                 "optim: {lr: 0.2, lr_schedule: cosine}\n")
    cfg = load_config(str(y), {"batch_size": 16, "keep": 0.8, "strategy": None})
    assert cfg.strategy == "random" and cfg.data.batch_size == 16 and cfg.data.loader == "torch"
    assert (cfg.schedule.epochs, cfg.schedule.interval, cfg.schedule.keep) == (300, 20, 0.8)
    assert cfg.optim.lr == 0.2 and cfg.optim.lr_schedule == "cosine"
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.seed = 3


def test_sample_defaults():
    cfg = load_config(None, {"reuse": "4,8", "epochs": 10})
    # the sample preset's LR decay (after 8 of 12 epochs) scales to --epochs 10: 8 x 10/12 = 6.67 -> 7
    assert cfg.model_name == "resnet_small" and cfg.image_size == 32 and cfg.lr_steps == (7,)


@pytest.mark.parametrize("preset,reuse,expected", [
    ("imagenet", None, (30, 60, 90)), ("cifar10", None, (150, 225)), ("sample", None, (8,)),
    # a reuse ablation (Table 2(e)) must not change the LR schedule
    ("imagenet", "", (30, 60, 90)), ("imagenet", "none", (30, 60, 90)), ("imagenet", "60", (30, 60, 90)),
    ("cifar10", "none", (150, 225)),
])
def test_lr_decay_epochs_are_the_presets_own_not_the_reuse_epochs(preset, reuse, expected):
    cfg = load_config(None, {"preset": preset, "reuse": reuse})
    assert cfg.lr_steps == expected
    assert load_config(None, {"preset": preset, "reuse": reuse, "lr_steps": "5,7"}).lr_steps == (5, 7)
    assert load_config(None, {"preset": preset, "lr_steps": "none"}).lr_steps == ()


def test_reuse_none_is_accepted_like_active_none():
    cfg = load_config(None, {"preset": "cifar10", "reuse": "none", "active": "none"})
    assert cfg.schedule.reuse == () and cfg.schedule.active is None


def test_a_preset_scales_to_the_epochs_asked_for():
    # the imagenet preset over 40 of its 120 epochs: every epoch count x 1/3, to the nearest epoch
    cfg = load_config(None, {"preset": "imagenet", "epochs": 40})
    assert cfg.schedule == Schedule(epochs=40, warmup=3, interval=1, keep=0.9, active=3, reuse=(10, 20, 30))
    assert cfg.lr_steps == (10, 20, 30)
    # the sample preset over 4 epochs (its reuse and LR decay after 8 of 12 do not fit 4 unscaled)
    cfg = load_config(None, {"epochs": 4})
    assert (cfg.schedule.warmup, cfg.schedule.reuse, cfg.lr_steps) == (1, (3,), (3,))
    # a flag given beside the preset wins over its scaled value
    cfg = load_config(None, {"preset": "imagenet", "epochs": 40, "warmup": 5, "lr_steps": "30"})
    assert (cfg.schedule.warmup, cfg.schedule.reuse, cfg.lr_steps) == (5, (10, 20, 30), (30,))
    # ... and a combination that cannot work is refused, naming both values
    with pytest.raises(ConfigError) as e:
        load_config(None, {"preset": "imagenet", "epochs": 40, "warmup": 20})
    msg = str(e.value)
    assert "'imagenet' preset" in msg and "10,20" in msg and "--epochs 40" in msg and "--warmup 20" in msg
    assert "--reuse" in msg
    # the preset's own length leaves it as the paper has it
    assert load_config(None, {"preset": "imagenet", "epochs": 120}).schedule == Schedule(**PRESETS["imagenet"])


@pytest.mark.parametrize("strategy,flag", [("rs2", {"fraction": 0.5}), ("full", {}),
                                           ("infobatch", {"prune_ratio": 0.3})])
def test_policies_without_daps_schedule_are_not_checked_against_it(strategy, flag):
    # the imagenet preset unscaled reuses all data after 30, 60, 90: no such epoch exists in 8,
    # and none of these policies reuses data
    cfg = load_config(None, {"preset": "imagenet", "strategy": strategy, "epochs": 8, **flag})
    assert cfg.schedule.epochs == 8 and cfg.make_policy().plan(100).epochs[-1].epoch == 8


@pytest.mark.parametrize("strategy,given,reads", [
    ("rs2", {"keep": 0.3}, "which reads --fraction"),
    ("rs2", {"reuse": "none"}, "which reads --fraction"),
    ("infobatch", {"interval": 5}, "which reads --prune-ratio, --anneal"),
    ("full", {"keep": 0.3}, "which reads only --epochs"),
    ("full", {"warmup": 1}, "which reads only --epochs"),
    ("dap", {"fraction": 0.5}, "which reads --warmup, --interval, --keep, --active, --reuse"),
])
def test_a_flag_the_policy_does_not_read_is_refused_naming_the_ones_it_does(strategy, given, reads):
    with pytest.raises(ConfigError) as e:
        load_config(None, {"strategy": strategy, **given})
    (key,) = given
    assert f"(--{key.replace('_', '-')}): applies to --strategy" in str(e.value)
    assert f"not --strategy {strategy}, {reads}" in str(e.value)


def test_epochs_below_1_is_named_first():
    with pytest.raises(ConfigError) as e:
        load_config(None, {"epochs": 0})
    assert str(e.value) == "schedule.epochs (--epochs): epochs must be >= 1, got 0"


def test_range_errors_are_reported_for_every_field_at_once():
    with pytest.raises(ConfigError) as e:
        load_config(None, {"keep": 1.5, "lr": -1, "image_size": 0})
    msg = str(e.value)
    assert "--keep" in msg and "must be in (0, 1], got 1.5" in msg
    assert "optim.lr (--lr): must be > 0, got -1" in msg and "data.image_size (--image-size): must be >= 8" in msg
    with pytest.raises(ConfigError) as e:
        load_config(None, {"epochs": 0, "keep": 1.5, "strategy": "rs2", "fraction": 2.0, "momentum": 1.0})
    msg = str(e.value)
    assert msg.startswith("schedule.epochs (--epochs): epochs must be >= 1")
    for part in ("(--keep): applies to --strategy dap or random", "policy.fraction (--fraction): must be in (0, 1]",
                 "optim.momentum (--momentum)"):
        assert part in msg


BAD_YAML = """\
learning_rate: 0.1
strategy: dap
schedule: {epochs: many}
policy: {fraction: 0.5}
data: {batch_szie: 3, image_size: 0}
optim: {lr: fast, momentum: 2}
"""
BAD_YAML_FIELDS = ("unknown config key 'learning_rate'", "schedule.epochs (--epochs): input should be a valid integer",
                   "policy.fraction (--fraction): applies to --strategy rs2", "unknown config key 'data.batch_szie'",
                   "optim.lr (--lr): input should be a valid number")


def test_a_yaml_file_with_many_problems_gets_one_error_naming_each(tmp_path):
    y = tmp_path / "bad.yaml"
    y.write_text(BAD_YAML)
    with pytest.raises(ConfigError) as e:
        load_config(str(y))
    for field in BAD_YAML_FIELDS:
        assert field in str(e.value)


def test_small_images_get_the_small_model_and_size(tmp_path):
    from PIL import Image

    root = tmp_path / "fm"
    for split in ("train", "val"):
        for c in ("a", "b"):
            (root / split / c).mkdir(parents=True)
            for i in range(2):
                Image.new("L", (28, 28), 40 * i).save(root / split / c / f"{i}.png")
    notes = []
    cfg = load_config(None, {"data.root": str(root), "epochs": 4}, notes=notes)
    assert (cfg.model_name, cfg.image_size, cfg.val_resize, cfg.lr_warmup_epochs) == ("resnet_small", 28, 28, 1.0)
    assert any(n.startswith(f"small images (28 px) in {root}: resnet_small at 28 px") for n in notes)
    assert any("'imagenet' preset (120 epochs) scaled to 4" in n for n in notes)
    cfg = load_config(None, {"data.root": str(root), "model": "resnet18", "image_size": 32})
    assert (cfg.model_name, cfg.image_size) == ("resnet18", 32) and cfg.small_image_note() is None
    big = tmp_path / "big"
    (big / "train" / "a").mkdir(parents=True)
    Image.new("RGB", (300, 200)).save(big / "train" / "a" / "0.jpg")
    cfg = load_config(None, {"data.root": str(big)})
    assert (cfg.model_name, cfg.image_size, cfg.lr_warmup_epochs) == ("resnet50", 224, 5.0)


def test_capped_epochs_are_refused_for_loss_driven_selection():
    with pytest.raises(ConfigError, match=r"--max-steps-per-epoch.*--strategy dap"):
        load_config(None, {"max_steps_per_epoch": 2})
    assert load_config(None, {"max_steps_per_epoch": 2, "strategy": "random"}).max_steps_per_epoch == 2


def test_a_yaml_section_of_the_wrong_type_is_named(tmp_path):
    y = tmp_path / "c.yaml"
    y.write_text("optim: [1, 2]\n")
    with pytest.raises(ConfigError, match=r"'optim' must be a mapping"):
        load_config(str(y))


@pytest.mark.parametrize("overrides,needle", [
    ({"batch_size": 0}, "--batch-size"), ({"loader": "pil"}, "--loader"), ({"lr": -1}, "--lr"),
    ({"strategy": "best"}, "--strategy"), ({"keep": 0}, "--keep"), ({"reuse": "500"}, "--reuse"),
    ({"label_smoothing": 1.0}, "--label-smoothing"), ({"data.root": "/nonexistent/x"}, "--data"),
    ({"min_crop_area": 0}, "--min-crop-area"), ({"stop_after": 99}, "--stop-after"),
    ({"compile": True, "sync_bn": True}, r"optim.compile \(--compile\): cannot be combined with --sync-bn"),
])
def test_bad_values_name_the_flag(overrides, needle):
    with pytest.raises(ConfigError, match=needle):
        load_config(None, overrides)


def test_unknown_yaml_key_and_bad_yaml(tmp_path):
    y = tmp_path / "c.yaml"
    y.write_text("data: {batchsize: 3}\n")
    with pytest.raises(ConfigError, match="data.batchsize"):
        load_config(str(y))
    y.write_text("a: [1,\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(str(y))
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(str(tmp_path / "missing.yaml"))


def test_policy_parameters_from_yaml_and_flags(tmp_path):
    y = tmp_path / "c.yaml"
    y.write_text("strategy: infobatch\npolicy: {prune_ratio: 0.3}\n")
    cfg = load_config(str(y), {"anneal": 0.75})
    assert (cfg.policy.prune_ratio, cfg.policy.anneal) == (0.3, 0.75)
    assert cfg.make_policy().prune_epochs == int(0.75 * cfg.schedule.epochs)
    assert load_config(None, {"strategy": "rs2", "fraction": "0.4"}).make_policy().fraction == 0.4
    # a parameter of another policy would be ignored silently: refused, naming both
    with pytest.raises(ConfigError,
                       match=r"policy.fraction \(--fraction\): applies to --strategy rs2, not --strategy infobatch"):
        load_config(str(y), {"fraction": 0.3})
    with pytest.raises(ConfigError, match=r"policy.prune_ratio \(--prune-ratio\): must be in \(0, 1\)"):
        load_config(None, {"strategy": "infobatch", "prune_ratio": 1.5})
    with pytest.raises(ConfigError, match=r"--max-steps-per-epoch.*--strategy infobatch"):
        load_config(None, {"strategy": "infobatch", "max_steps_per_epoch": 2})


def test_seta_parameters_from_yaml_and_flags(tmp_path):
    y = tmp_path / "c.yaml"
    y.write_text("strategy: seta\npolicy: {groups: 4, window: 0.5}\n")
    p = load_config(str(y), {"prune_ratio": "0.2"}).make_policy()
    assert (p.name, p.prune_ratio, p.groups, p.window, p.anneal) == ("seta", 0.2, 4, 0.5, 0.875)
    assert load_config(None, {"strategy": "seta"}).make_policy().prune_ratio == 0.0  # the reference's default
    assert load_config(None, {"strategy": "infobatch"}).make_policy().prune_ratio == 0.5
    with pytest.raises(ConfigError, match=r"policy.groups \(--groups\): applies to --strategy seta, not --strategy "
                                          r"infobatch"):
        load_config(None, {"strategy": "infobatch", "groups": 3})
    with pytest.raises(ConfigError, match=r"policy.window \(--window\): must be in \(0, 1\]"):
        load_config(str(y), {"window": 1.5})
    with pytest.raises(ConfigError, match=r"--max-steps-per-epoch.*--strategy seta"):
        load_config(None, {"strategy": "seta", "max_steps_per_epoch": 2})


def test_type_errors_are_reported_for_every_field_at_once():
    with pytest.raises(ConfigError) as e:
        load_config(None, {"batch_size": "many", "loader": "pil", "nesterov": "maybe", "lr": "inf", "keep": "most"})
    msg = str(e.value)
    for field in ("schedule.keep (--keep)", "data.batch_size", "data.loader", "optim.nesterov", "optim.lr"):
        assert field in msg
    with pytest.raises(ConfigError) as e:
        load_config(None, {"batch_size": "many", "loader": "pil"})
    msg = str(e.value)
    assert "data.batch_size (--batch-size): input should be a valid integer" in msg and "'many'" in msg
    assert "data.loader (--loader): input should be 'dali' or 'torch', got 'pil'" in msg
    with pytest.raises(ConfigError, match=r"optim.lr \(--lr\): input should be a finite number"):
        load_config(None, {"lr": "inf"})
    with pytest.raises(ConfigError, match=r"unknown config key 'policy.ratio'; known keys: anneal, fraction, groups, "
                                          r"prune_ratio, window"):
        load_config(None, {"policy.ratio": 0.3})


@pytest.mark.parametrize("strategy", ["dap", "rs2", "full"])
def test_resolved_config_writes_out_what_the_run_uses(strategy):
    cfg = load_config(None, {"strategy": strategy, "epochs": 6, "resume": "x", "stop_after": 2})
    d = cfg.resolved(0.25)
    assert d["resume"] is None and d["stop_after"] is None and d["model"] == cfg.model_name
    assert d["policy"] == cfg.policy_params and d["schedule"] == cfg.used_schedule()
    assert (d["data"]["image_size"], d["data"]["val_resize"], d["data"]["min_crop_area"]) == \
        (cfg.image_size, cfg.val_resize, cfg.min_crop_area)
    assert d["optim"]["lr"] == 0.25 and d["optim"]["lr_steps"] == list(cfg.lr_steps)
    assert d["optim"]["lr_warmup_epochs"] == cfg.lr_warmup_epochs
    assert cfg.to_dict()["resume"] == "x"  # a copy: the config itself is unchanged


SCHEDULE_INPUTS = (1, 0, -3, 12.0, 12.5, "12", " 7 ", "1_000", "+3", "12.0", "x", "", "0.5", " 0.5", "1e3", "inf",
                   "nan", "0x10", True, False, 0.5, None, float("inf"), float("nan"), [8], (8,), [8, "9"], ["a", 2.5],
                   "8,9", {"a": 1}, b"5", 10**30)


@pytest.mark.parametrize("key", ["preset", "epochs", "warmup", "interval", "keep", "active", "reuse"])
def test_the_schedule_is_typed_without_pydantic_by_pydantics_rules(key):
    """schedule_from keeps `plan` free of pydantic; its typing gives pydantic's answers, values and messages."""
    from pydantic import TypeAdapter, ValidationError

    from dap_hvd.config import NONE_WORDS, csv_list, schedule_value

    kind = {"preset": str, "keep": float, "active": Optional[int], "reuse": tuple[int, ...]}.get(key, int)
    for value in SCHEDULE_INPUTS:
        given = value
        if key == "reuse":
            given = () if value is None else csv_list(value)
        elif key == "active" and isinstance(value, str) and value.strip().lower() in NONE_WORDS:
            given = None
        try:
            expected = TypeAdapter(kind).validate_python(given)
        except ValidationError as e:
            expected = "; ".join(f"schedule.{key} (--{key}): {err['msg'][0].lower() + err['msg'][1:]}, "
                                 f"got {err['input']!r}" for err in e.errors())
        try:
            got = schedule_value(key, value)
        except ConfigError as e:
            got = str(e)
        assert got == expected or (got != got and expected != expected), (key, value)  # nan == nan
        assert type(got) is type(expected), (key, value)


def test_plan_and_train_report_a_bad_schedule_value_alike(capsys):
    from dap_hvd.cli import main

    with pytest.raises(ConfigError) as e:
        load_config(None, {"active": "y", "reuse": "4,x"})  # the flags in their parser order
    assert main(["plan", "--reuse", "4,x", "--active", "y"]) == 2
    assert capsys.readouterr().err.strip() == f"dap-hvd plan: error: {e.value}"
