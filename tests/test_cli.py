"""What a newcomer meets first: --version, presets, help on every flag, plan from a config."""

import argparse
import json

from dap_hvd import __version__
from dap_hvd.cli import build_parser, main


def test_version(capsys):
    try:
        main(["--version"])
    except SystemExit as e:
        assert e.code == 0
    assert capsys.readouterr().out.strip() == f"dap-hvd {__version__}"


def test_every_flag_of_every_command_has_help():
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    missing = [(name, a.option_strings or a.dest) for name, p in sub.choices.items() for a in p._actions
               if a.help is None and not isinstance(a, argparse._HelpAction)]
    assert missing == []


def test_plan_lists_presets_and_reads_a_config(tmp_path, capsys):
    assert main(["plan", "--list-presets"]) == 0
    out = capsys.readouterr().out
    assert "imagenet" in out and "LR x0.1 after 150,225" in out and "sample" in out
    cfg = tmp_path / "c.yaml"
    cfg.write_text("schedule: {preset: cifar10, interval: 20}\n")
    assert main(["plan", "--config", str(cfg), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["compute_ratio"] == \
        __import__("pytest").approx(0.79, abs=0.01)
    assert main(["plan", "--config", str(cfg), "--keep", "0.8", "--json"]) == 0  # flags override the file
    assert json.loads(capsys.readouterr().out)["schedule"]["keep"] == 0.8


def test_gpu_benchmark_says_it_was_skipped_on_a_cpu_host(tmp_path):
    import subprocess
    import sys

    import pytest

    torch = pytest.importorskip("torch")
    if torch.cuda.is_available():
        pytest.skip("this host has a GPU: the section runs for real there")
    md, res = tmp_path / "B.md", tmp_path / "r.json"
    p = subprocess.run([sys.executable, "-m", "dap_hvd", "bench", "--only", "gpu", "--out", str(md), "--results",
                        str(res)], capture_output=True, text=True, timeout=300,
                       env={**__import__("os").environ, "DAP_HVD_CACHE": str(tmp_path / "cache")})
    assert p.returncode == 0, p.stderr[-2000:]
    assert "gpu: skipped: no CUDA device on this host" in p.stdout
    assert "gpu" not in json.loads(res.read_text()) and "GPU: ResNet-50" not in md.read_text()


def test_plan_gives_rs2_exactly_and_infobatch_within_bounds(capsys):
    assert main(["plan", "--strategy", "rs2", "--fraction", "0.25", "--epochs", "8", "--num-samples", "1000",
                 "--json"]) == 0
    p = json.loads(capsys.readouterr().out)
    assert p["policy"] == "rs2" and p["compute_ratio"] == p["compute_ratio_min"] == p["compute_ratio_max"] == 0.25
    assert [e["size"] for e in p["epochs"]] == [250] * 8
    assert main(["plan", "--strategy", "infobatch", "--epochs", "8", "--num-samples", "1000"]) == 0
    out = capsys.readouterr().out
    assert "501..1000" in out and "depends on the losses" in out
    assert main(["plan", "--strategy", "infobatch", "--epochs", "8", "--json"]) == 0
    p = json.loads(capsys.readouterr().out)
    # floor(0.875 * 8) = 7: epochs 2..7 may prune to half, 1 and 8 use all data
    assert p["compute_ratio"] is None and p["compute_ratio_min"] == __import__("pytest").approx((2 + 6 * 0.5) / 8)


def test_plan_gives_seta_its_bounds_and_nominal_ratio(capsys):
    assert main(["plan", "--strategy", "seta", "--prune-ratio", "0.3", "--groups", "5", "--window", "0.6",
                 "--epochs", "8", "--num-samples", "1000", "--json"]) == 0
    p = json.loads(capsys.readouterr().out)
    # floor(0.875 * 8) = 7: epoch 1 the whole draw of 700, 2..7 a window of 3 of 5 groups, 8 a draw of 700
    assert p["policy"] == "seta" and p["params"]["prune_epochs"] == 7 and p["compute_ratio"] is None
    assert [e["size"] for e in p["epochs"]] == [700] * 8 and p["compute_ratio_max"] == 0.7
    assert p["compute_ratio_nominal"] == __import__("pytest").approx((2 * 0.7 + 6 * 0.7 * 0.6) / 8)
    assert main(["plan", "--strategy", "seta", "--epochs", "8", "--num-samples", "1000"]) == 0
    assert "compute ratio: nominal 0.7000" in capsys.readouterr().out  # r = 0: (2 + 6 x 0.6) / 8
    assert main(["plan", "--strategy", "infobatch", "--window", "0.5"]) == 2
    assert "applies to --strategy seta, not --strategy infobatch" in capsys.readouterr().err


def test_plan_refuses_a_parameter_of_another_policy(capsys):
    assert main(["plan", "--fraction", "0.3"]) == 2
    assert "policy.fraction (--fraction): applies to --strategy rs2, not --strategy dap" in capsys.readouterr().err
    # RS2 would train its default 50%: the flag it reads is named
    assert main(["plan", "--strategy", "rs2", "--keep", "0.3"]) == 2
    assert "schedule.keep (--keep): applies to --strategy dap or random, not --strategy rs2, which reads --fraction" \
        in capsys.readouterr().err
    assert main(["plan", "--strategy", "full", "--reuse", "8", "--interval", "2"]) == 2
    err = capsys.readouterr().err
    assert "schedule.reuse (--reuse)" in err and "schedule.interval (--interval)" in err and "only --epochs" in err


def test_plan_of_a_policy_without_daps_schedule_fits_any_length(capsys):
    # the default imagenet preset reuses all data after 30,60,90 epochs; RS2 reuses nothing
    assert main(["plan", "--strategy", "rs2", "--fraction", "0.5", "--epochs", "8"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("rs2: E=8 fraction=0.5; LR x0.1 after 2,4,6") and "compute ratio: 0.5000" in out


def test_plan_prints_the_preset_scaled_to_the_epochs_and_its_rule(capsys):
    assert main(["plan", "--epochs", "40", "--num-samples", "1000"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("dap: E=40 W=3 I=1 p=0.9 alpha=3 R=10,20,30 N=1000; LR x0.1 after 10,20,30")
    assert "'imagenet' preset (120 epochs) scaled to 40" in out and "rounded to the nearest epoch (halves up)" in out
    assert "compute ratio: 0.85" in out
    assert main(["plan", "--epochs", "40", "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert d["lr_steps"] == [10, 20, 30] and d["preset"]["scaled"] and len(d["epochs"]) == 40
    assert main(["plan", "--epochs", "0"]) == 2
    assert capsys.readouterr().err.strip() == \
        "dap-hvd plan: error: schedule.epochs (--epochs): epochs must be >= 1, got 0"


def test_plan_config_reports_the_same_problems_as_train(tmp_path, capsys):
    from test_config import BAD_YAML, BAD_YAML_FIELDS

    from dap_hvd import ConfigError
    from dap_hvd.config import load_config

    y = tmp_path / "bad.yaml"
    y.write_text(BAD_YAML)
    try:
        load_config(str(y))
    except ConfigError as e:
        expected = str(e)
    assert main(["plan", "--config", str(y)]) == 2
    assert capsys.readouterr().err.strip() == f"dap-hvd plan: error: {expected}"
    assert all(field in expected for field in BAD_YAML_FIELDS)


def test_plan_into_a_closed_pipe_is_quiet():
    import subprocess
    import sys

    p = subprocess.run(f"{sys.executable} -m dap_hvd plan --preset imagenet --json | head -1", shell=True,
                       capture_output=True, text=True, timeout=60)
    assert p.stdout.strip() == "{" and "Traceback" not in p.stderr and "BrokenPipe" not in p.stderr


def test_plan_config_takes_every_policy_flag_over_the_file(tmp_path, capsys):
    cfg = tmp_path / "seta.yaml"
    cfg.write_text("strategy: seta\nschedule: {epochs: 10}\npolicy: {groups: 5, window: 0.6}\n")
    assert main(["plan", "--config", str(cfg), "--groups", "4", "--window", "0.5", "--json"]) == 0
    params = json.loads(capsys.readouterr().out)["params"]
    assert (params["groups"], params["window"]) == (4, 0.5)
