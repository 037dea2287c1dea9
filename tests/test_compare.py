"""`dap-hvd compare`: the budget tuning, the report's arithmetic, the house rules on --out, and a real
compare on tiny data (2 entries, 1 seed, 2 epochs, 2 Gloo ranks) that is killed after its first run and
resumed without re-running it."""

import json
import os
import signal
import subprocess
import time

import pytest
from conftest import DAP_HVD, run, spawn

from dap_hvd import ConfigError
from dap_hvd.compare import plan, report, runner
from dap_hvd.policy.schedule import PRESETS


def test_the_imagenet_schedule_scales_to_the_run_and_the_lr_decays_at_the_same_fractions():
    s = plan.scaled_schedule(120)
    p = PRESETS["imagenet"]
    assert (s.warmup, s.interval, s.active, s.reuse) == (p["warmup"], p["interval"], p["active"], p["reuse"])
    s = plan.scaled_schedule(40)
    assert (s.warmup, s.interval, s.active, s.reuse) == (3, 1, 3, (10, 20, 30))
    assert plan.lr_steps(40) == (10, 20, 30) and plan.lr_steps(30) == (8, 15, 22)
    assert plan.lr_steps(120) == (30, 60, 90)


@pytest.mark.parametrize("budget", [0.75, 0.55])
def test_every_policy_is_tuned_to_the_budget_by_its_plan(budget):
    from dap_hvd.policy.policies import make_policy

    n, epochs = 6000, 40
    for policy in ("dap", "random", "infobatch", "rs2", "fewer_epochs", "fixed_subset"):
        t = plan.tune(policy, budget, epochs, n)
        assert abs(t.planned - budget) < 0.01, (policy, t)
    dap = plan.tune("dap", budget, epochs, n)
    exact = make_policy("dap", plan.scaled_schedule(epochs, dap.params["keep"])).plan(n).compute_ratio
    assert abs(exact - dap.planned) < 1e-12 and t.params
    # InfoBatch's compute depends on the losses: the budget is met at the assumed share below the mean
    ib = plan.tune("infobatch", budget, epochs, n)
    pruned_epochs = int(0.875 * epochs) - 1
    assert abs(1 - pruned_epochs / epochs * ib.params["prune_ratio"] * plan.BELOW_MEAN_SHARE - budget) < 0.002
    assert plan.tune("fewer_epochs", budget, epochs, n).params == {"epochs": round(budget * epochs)}


def test_policy_flags_compress_the_lr_schedule_for_fewer_epochs_and_keep_it_for_the_rest():
    t = plan.tune("fewer_epochs", 0.75, 40, 6000)
    flags = plan.policy_flags("fewer_epochs", t, 40, None)
    assert flags[flags.index("--epochs") + 1] == "30" and flags[flags.index("--lr-steps") + 1] == "8,15,22"
    flags = plan.policy_flags("rs2", plan.tune("rs2", 0.75, 40, 6000), 40, None)
    assert flags[:4] == ("--strategy", "rs2", "--fraction", "0.75") and "10,20,30" in flags


def _runs(**gaps):
    """Full data and one entry per keyword, 3 seeds; entry top-1 = full + gap[seed]."""
    full = [0.90, 0.91, 0.92]
    runs = [dict(key=f"full-s{s}", policy="full", budget=None, seed=s, params={}, planned=1.0,
                 top1=t, top5=1.0, compute=1.0, wall=100.0 + s, selection_seconds=0.0, process_seconds=110.0,
                 epochs=40, samples=6000) for s, t in enumerate(full)]
    for policy, (budget, compute, gap) in gaps.items():
        runs += [dict(key=f"b{budget}-{policy}-s{s}", policy=policy, budget=budget, seed=s, params={"x": 0.5},
                      planned=budget, top1=full[s] + g, top5=1.0, compute=compute, wall=(100.0 + s) * compute + 1,
                      selection_seconds=1.0, process_seconds=90.0, epochs=40, samples=6000)
                 for s, g in enumerate(gap)]
    return {"settings": plan.Settings(data="/d", epochs=40, budgets=(0.75,), policies=("full", "rs2", "dap"),
                                         seeds=3, top_k=None, np=2, hosts="localhost:2", train_args=()).to_dict(),
            "runs": runs, "num_train": 6000, "num_val": 10000}


def test_the_report_pairs_each_seed_with_full_data_and_names_the_cheapest_entry_within_half_a_point():
    state = _runs(rs2=(0.75, 0.75, [-0.001, -0.004, -0.007]), dap=(0.75, 0.74, [-0.02, -0.01, -0.03]))
    rep = report.build_report(state)
    rs2 = next(e for e in rep["entries"] if e["policy"] == "rs2")
    assert abs(rs2["gap"] + 0.004) < 1e-12 and abs(rs2["gap_std"] - 0.003) < 1e-12
    assert (rs2["gap_min"], rs2["gap_max"]) == pytest.approx((-0.007, -0.001))
    assert rs2["wall"] == pytest.approx(sum(((100 + s) * 0.75 + 1) / (100 + s) for s in range(3)) / 3)
    assert rep["conclusion"]["within"]["policy"] == "rs2" and rep["conclusion"]["pays"]
    text = report.render(rep)
    assert "| RS2: x 0.5 | 0.75 | 0.750 | 0.750 |" in text
    assert "-0.40 ± 0.30 [-0.70, -0.10]" in text
    assert "(25% saved)" in text and "That is ≥ 25% saved within 0.5 pt." in text
    # a mean gap over 0.5 pt is not within, even when one seed is: the closest entry is named instead
    state = _runs(rs2=(0.75, 0.75, [0.0, -0.006, -0.01]), dap=(0.75, 0.74, [-0.02, -0.01, -0.03]))
    text = report.render(report.build_report(state))
    assert "No entry stays within 0.5 pt" in text and "The closest: RS2: x 0.5 at budget 0.75" in text


def test_the_best_entries_of_the_first_budget_pick_the_deeper_runs():
    state = _runs(rs2=(0.75, 0.75, [0.0] * 3), dap=(0.75, 0.74, [-0.01] * 3), infobatch=(0.75, 0.76, [-0.02] * 3))
    assert runner.best_entries(state["runs"], 0.75, 2) == ["rs2", "dap"]


def test_deeper_runs_of_an_entry_no_longer_among_the_best_are_named_as_such():
    """A resumed compare that gained an entry (the random-drop control in section (f)) can change
    the best entries of the first budget; the deeper runs made before stay, and the text says why."""
    state = _runs(dap=(0.75, 0.75, [0.0] * 3), infobatch=(0.55, 0.55, [-0.03] * 3))
    state["runs"] += [dict(r, key=r["key"].replace("infobatch", "dap"), policy="dap")
                      for r in state["runs"] if r["policy"] == "infobatch"]
    state["deeper"] = {"0.55": ["dap"]}
    text = report.render(report.build_report(state))
    assert "Budget 0.55: the 1 best entries at 0.75 (dap). Also at 0.55, from an earlier pass when it was among " \
           "the best: infobatch." in text
    state["deeper"] = {"0.55": ["dap", "infobatch"]}
    assert "earlier pass" not in report.render(report.build_report(state))


def _settings(tmp_path, **kw):
    return plan.Settings(**dict(dict(data=str(tmp_path), epochs=2, budgets=(0.5,), policies=("full", "rs2"),
                                        seeds=1, top_k=None, np=2, hosts="localhost:2", train_args=()), **kw))


def test_out_rules_refuse_a_foreign_folder_an_unresumed_compare_and_changed_settings(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    with pytest.raises(ConfigError, match="files compare did not write"):
        runner.open_out(out, _settings(tmp_path), resume=False, force=False)
    with pytest.raises(ConfigError, match="files compare did not write"):
        runner.open_out(out, _settings(tmp_path), resume=True, force=False)
    (out / "notes.txt").unlink()
    runner.save_state(out, {"settings": _settings(tmp_path).to_dict(), "runs": [{"key": "full-s0"}]})
    with pytest.raises(ConfigError, match="pass --resume to continue it"):
        runner.open_out(out, _settings(tmp_path), resume=False, force=False)
    with pytest.raises(ConfigError, match=r"other settings \(epochs\)"):
        runner.open_out(out, _settings(tmp_path, epochs=3), resume=True, force=False)
    assert runner.open_out(out, _settings(tmp_path), resume=True, force=False)["runs"] == [{"key": "full-s0"}]
    (out / "runs" / "x").mkdir(parents=True)
    (out / "mine.txt").write_text("kept")
    assert runner.open_out(out, _settings(tmp_path), resume=False, force=True)["runs"] == []
    assert not (out / "runs").exists() and (out / "mine.txt").read_text() == "kept"


def test_bad_flags_get_one_line(tmp_path):
    for args, needle in ((["--budget", "1.2"], "--budget: every value must lie in (0, 1)"),
                         (["--policies", "dap,nope"], "--policies: unknown nope"),
                         (["--", "--epochs", "3"], "train flags after --: --epochs are set by compare")):
        p = run([DAP_HVD, "compare", "--data", str(tmp_path), "--epochs", "4", "--out", str(tmp_path / "o"), *args],
                check=False, timeout=60)
        assert p.returncode == 2 and p.stderr.strip().count("\n") == 0, p.stderr
        assert needle in p.stderr, p.stderr


def test_a_compare_reports_and_resumes_after_a_kill_without_rerunning_finished_runs(tiny_data, tmp_path):
    out = tmp_path / "cmp"
    cmd = [DAP_HVD, "compare", "--data", str(tiny_data), "--epochs", "2", "--budget", "0.5", "--policies", "rs2",
           "--seeds", "1", "-np", "2", "--out", str(out), "--", "--workers", "1"]
    proc = spawn(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    state = out / runner.STATE
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None:
        if state.is_file() and len(json.loads(state.read_text())["runs"]) == 1:
            break
        time.sleep(0.1)
    assert proc.poll() is None, f"the compare ended before the kill:\n{proc.communicate()[0][-3000:]}"
    os.killpg(proc.pid, signal.SIGKILL)  # the whole job: compare, horovodrun and its ranks
    first_out = proc.communicate()[0]
    assert "compare [1/2] full-s0" in first_out and "ETA" in first_out
    first = json.loads(state.read_text())["runs"]
    assert [r["key"] for r in first] == ["full-s0"]
    partial = json.loads((out / report.REPORT_JSON).read_text())  # the report of what had finished
    assert [e["policy"] for e in partial["entries"]] == ["full"] and not (out / report.PLOT).exists()
    log_mtime = (out / "logs" / "full-s0.log").stat().st_mtime

    refused = run(cmd, check=False, timeout=60)
    assert refused.returncode == 2 and "pass --resume to continue it" in refused.stderr
    p = run([*cmd[:cmd.index("--")], "--resume", *cmd[cmd.index("--"):]], timeout=240)
    assert "1 of 2 runs at budget 0.5 done already" in p.stdout and "compare [1/1] b0.5-rs2-s0" in p.stdout
    assert "full-s0:" not in p.stdout
    runs = json.loads(state.read_text())["runs"]
    assert runs[0] == first[0] and [r["key"] for r in runs] == ["full-s0", "b0.5-rs2-s0"]
    assert (out / "logs" / "full-s0.log").stat().st_mtime == log_mtime

    rep = json.loads((out / report.REPORT_JSON).read_text())
    by = {e["policy"]: e for e in rep["entries"]}
    assert set(by) == {"full", "rs2"} and rep["num_train"] == 400 and rep["num_val"] == 120
    assert by["full"]["compute"] == 1.0 and by["rs2"]["compute"] == pytest.approx(0.5)
    assert 0 <= by["rs2"]["top1"] <= 1 and by["rs2"]["gap"] == pytest.approx(by["rs2"]["top1"] - by["full"]["top1"])
    assert 0 < by["rs2"]["wall"] < 2
    md = (out / report.REPORT_MD).read_text()
    assert "| full data | – | 1.000 | 1.000 | 1.000 |" in md and "| RS2: fraction 0.5 | 0.5 |" in md
    assert (out / report.PLOT).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not (out / "runs" / "full-s0" / "checkpoints").exists()


def test_a_plan_that_cannot_reach_the_budget_is_said_once_per_entry(tmp_path):
    lines = []
    specs = plan.run_specs(_settings(tmp_path, epochs=3, seeds=2, policies=("full", "dap", "rs2")), 0.75,
                              ["dap", "rs2"], 400, tmp_path)
    runner.warn_off_budget(specs, lines.append)
    # DaP's ImageNet schedule scaled to 3 epochs picks all data back after epochs 1 and 2: never below 1.0
    assert lines == ["compare: warning: dap cannot reach budget 0.75 in b0.75-dap: its plan gives 1.000 at best "
                     "(keep 0.01)"]


def test_each_policy_is_set_against_fewer_epochs_at_the_same_budget_by_seed():
    state = _runs(rs2=(0.75, 0.75, [-0.001, -0.004, -0.007]), fewer_epochs=(0.75, 0.75, [-0.011, -0.010, -0.012]),
                  dap=(0.55, 0.55, [-0.02] * 3))
    rep = report.build_report(state)
    assert [(v["policy"], v["budget"]) for v in rep["against_fewer_epochs"]] == [("rs2", 0.75)]
    v = rep["against_fewer_epochs"][0]
    assert v["diff"] == pytest.approx(0.007) and v["std"] == pytest.approx(0.0026458, abs=1e-6) and v["seeds"] == 3
    text = report.render(rep)
    assert "RS2 at 0.75: +0.70 ± 0.26 pt" in text
    assert "Also within 0.5 pt" not in text  # rs2 alone is within; fewer epochs is 1.1 pt short
