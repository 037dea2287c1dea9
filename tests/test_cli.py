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
                 "--reuse", "none", "--json"]) == 0
    p = json.loads(capsys.readouterr().out)
    assert p["policy"] == "rs2" and p["compute_ratio"] == p["compute_ratio_min"] == p["compute_ratio_max"] == 0.25
    assert [e["size"] for e in p["epochs"]] == [250] * 8
    assert main(["plan", "--strategy", "infobatch", "--epochs", "8", "--reuse", "none", "--num-samples", "1000"]) == 0
    out = capsys.readouterr().out
    assert "501..1000" in out and "depends on the losses" in out
    assert main(["plan", "--strategy", "infobatch", "--epochs", "8", "--reuse", "none", "--json"]) == 0
    p = json.loads(capsys.readouterr().out)
    # floor(0.875 * 8) = 7: epochs 2..7 may prune to half, 1 and 8 use all data
    assert p["compute_ratio"] is None and p["compute_ratio_min"] == __import__("pytest").approx((2 + 6 * 0.5) / 8)


def test_plan_gives_seta_its_bounds_and_nominal_ratio(capsys):
    assert main(["plan", "--strategy", "seta", "--prune-ratio", "0.3", "--groups", "5", "--window", "0.6",
                 "--epochs", "8", "--reuse", "none", "--num-samples", "1000", "--json"]) == 0
    p = json.loads(capsys.readouterr().out)
    # floor(0.875 * 8) = 7: epoch 1 the whole draw of 700, 2..7 a window of 3 of 5 groups, 8 a draw of 700
    assert p["policy"] == "seta" and p["params"]["prune_epochs"] == 7 and p["compute_ratio"] is None
    assert [e["size"] for e in p["epochs"]] == [700] * 8 and p["compute_ratio_max"] == 0.7
    assert p["compute_ratio_nominal"] == __import__("pytest").approx((2 * 0.7 + 6 * 0.7 * 0.6) / 8)
    assert main(["plan", "--strategy", "seta", "--epochs", "8", "--reuse", "none", "--num-samples", "1000"]) == 0
    assert "compute ratio: nominal 0.7000" in capsys.readouterr().out  # r = 0: (2 + 6 x 0.6) / 8
    assert main(["plan", "--strategy", "infobatch", "--window", "0.5"]) == 2
    assert "applies to --strategy seta, not --strategy infobatch" in capsys.readouterr().err


def test_plan_refuses_a_parameter_of_another_policy(capsys):
    assert main(["plan", "--fraction", "0.3"]) == 2
    assert "policy.fraction (--fraction): applies to --strategy rs2, not --strategy dap" in capsys.readouterr().err
