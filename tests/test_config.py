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


def test_sample_defaults_and_lr_steps_follow_reuse():
    cfg = load_config(None, {"reuse": "4,8", "epochs": 10})
    assert cfg.model_name == "resnet_small" and cfg.image_size == 32 and cfg.lr_steps == (4, 8)


@pytest.mark.parametrize("overrides,needle", [
    ({"batch_size": 0}, "--batch-size"), ({"loader": "pil"}, "--loader"), ({"lr": -1}, "--lr"),
    ({"strategy": "best"}, "--strategy"), ({"keep": 0}, "--keep"), ({"reuse": "500"}, "--reuse"),
    ({"label_smoothing": 1.0}, "--label-smoothing"), ({"data.root": "/nonexistent/x"}, "--data"),
    ({"min_crop_area": 0}, "--min-crop-area"), ({"stop_after": 99}, "--stop-after"),
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
