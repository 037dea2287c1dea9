"""Config: defaults < YAML < CLI, frozen, validated, errors that name the key and the flag."""

import dataclasses

import pytest

from dap_hvd import ConfigError
from dap_hvd.config import load_config


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
    assert cfg.model_name == "resnet_small" and cfg.image_size == 32 and cfg.lr_steps == (8,)


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


def test_a_preset_value_that_conflicts_with_a_flag_names_both():
    with pytest.raises(ConfigError) as e:
        load_config(None, {"epochs": 4})  # the sample preset reuses after epoch 8
    msg = str(e.value)
    assert "'sample' preset" in msg and "8" in msg and "--epochs 4" in msg and "--reuse" in msg
    with pytest.raises(ConfigError) as e:
        load_config(None, {"epochs": 4, "reuse": "none"})  # ... and decays the LR after epoch 8
    msg = str(e.value)
    assert "'sample' preset" in msg and "8" in msg and "--lr-steps" in msg and "--epochs 4" in msg
    assert load_config(None, {"epochs": 4, "reuse": "none", "lr_steps": "3"}).lr_steps == (3,)


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
    with pytest.raises(ConfigError, match=r"policy.fraction \(--fraction\): applies to --strategy rs2, not --strategy infobatch"):
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
