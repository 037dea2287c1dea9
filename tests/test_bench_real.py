"""`bench --only real|long` is a thin caller of `dap-hvd compare`: the compare it runs, and how its
report becomes a BENCHMARKS.md section (the arithmetic itself is tested in test_compare.py)."""

from pathlib import Path

from test_compare import _runs

from dap_hvd.bench import real as bench_real
from dap_hvd.bench import suite
from dap_hvd.bench.report import write_markdown
from dap_hvd.compare.report import build_report


def test_the_long_section_is_a_40_epoch_compare_of_every_entry_at_two_budgets():
    s = bench_real.settings("long", Path("/data"), 3)
    assert (s.epochs, s.budgets, s.top_k, s.seeds, s.np) == (40, (0.75, 0.55), 3, 3, 1)
    assert s.policies == ("full", "fewer_epochs", "dap", "infobatch", "seta", "rs2", "fixed_subset", "random")
    assert bench_real.CONFIGS["long"]["val_per_class"] is None  # the whole 10,000-image test set
    assert "resnet_small" in s.train_args
    assert bench_real.settings("real", Path("/data"), 1, ["rs2"]).policies == ("full", "rs2")


def test_a_compare_report_renders_as_its_section_and_an_older_result_keeps_its_text(tmp_path):
    rep = build_report(_runs(rs2=(0.75, 0.75, [-0.001, -0.004, -0.007])))
    sec = suite.render({"long": rep, "real": {"runs": [], "levels": {}}})
    assert "long" in sec and "real" not in sec
    assert "That is ≥ 25% saved within 0.5 pt." in sec["long"] and "bench/pareto_long.png" in sec["long"]
    md = tmp_path / "B.md"
    write_markdown(md, sec)
    assert "## (f) Long schedule" in md.read_text()
    suite.plot_compare({"long": rep}, md)
    assert (tmp_path / "bench" / "pareto_long.png").stat().st_size > 1000
