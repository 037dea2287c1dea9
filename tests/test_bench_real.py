"""The real-data section's arithmetic: points over seeds, wall ratios per seed, and conclusions
that follow the numbers (not the papers)."""

from dap_hvd import bench_real


def _res(runs):
    levels = {p: [[None, 1.0]] if p == "full" else [] for p in bench_real.POLICIES}
    levels["dap"] = [[0.7, 0.63]]
    levels["random"] = [[0.7, 0.63]]
    levels["rs2"] = [[0.5, 0.5]]
    return dict(config=dict(bench_real.SMALL), seeds=2, num_train=6000, num_val=5000, num_train_tenth=600,
                levels=levels, runs=runs)


def _run(policy, param, seed, top1, compute, wall, which="full"):
    return dict(set=which, policy=policy, param=param, seed=seed, top1=top1, top5=1.0, compute=compute, wall=wall,
                train_seconds=wall, epochs=10)


def test_points_average_seeds_and_take_wall_ratios_against_the_same_seed():
    res = _res([_run("full", None, 0, 0.90, 1.0, 100), _run("full", None, 1, 0.92, 1.0, 200),
                _run("rs2", 0.5, 0, 0.89, 0.5, 52), _run("rs2", 0.5, 1, 0.91, 0.5, 98)])
    pts = bench_real.points(res)
    rs2 = pts["rs2"][0]
    assert rs2["n"] == 2 and abs(rs2["top1"] - 0.90) < 1e-12 and abs(rs2["wall"] - (0.52 + 0.49) / 2) < 1e-12
    assert abs(rs2["std"] - 0.014142) < 1e-5


def test_conclusions_name_the_cheapest_point_within_half_a_point_and_the_dap_random_gap():
    res = _res([_run("full", None, s, 0.90, 1.0, 100) for s in (0, 1)]
               + [_run("rs2", 0.5, s, 0.897, 0.5, 51) for s in (0, 1)]
               + [_run("dap", 0.7, s, 0.899, 0.63, 64) for s in (0, 1)]
               + [_run("random", 0.7, s, 0.889, 0.63, 64) for s in (0, 1)]
               + [_run("full", None, s, 0.80, 1.0, 10, "tenth") for s in (0, 1)]
               + [_run("dap", 0.7, s, 0.77, 0.63, 7, "tenth") for s in (0, 1)])
    text = bench_real.render(res)
    assert "RS2 (fraction r) at 0.5: compute 0.500 (50% saved), wall-clock ratio 0.510" in text
    assert "**Goal (≥ 30% saved within 0.5 pt, wall within 2 points of compute):** met" in text
    assert "p=0.7: +1.00 pt (DaP ahead at 1 of 1 levels)" in text
    assert "-0.10 pt on all 6,000 images and -3.00 pt on a tenth" in text
    res["runs"] = [r for r in res["runs"] if r["policy"] != "rs2"]
    res["runs"] = [dict(r, top1=0.85) if r["policy"] == "dap" and r["set"] == "full" else r for r in res["runs"]]
    assert "No policy stays within 0.5 pt" in bench_real.render(res)


def test_every_runs_flags_are_ones_its_policy_reads(tmp_path):
    """A flag a policy does not read is refused: the sweep gives each policy only its own."""
    from dap_hvd.cli import _NOT_CONFIG, build_parser
    from dap_hvd.config import load_config

    params = {"full": None, "dap": 0.7, "random": 0.7, "fewer_epochs": 5, "infobatch": 0.5, "rs2": 0.5}
    for policy, param in params.items():
        args = bench_real._args(bench_real.SMALL, policy, param, tmp_path, tmp_path, 0)
        a = build_parser().parse_args(["train", *map(str, args)])
        cfg = load_config(None, {k: v for k, v in vars(a).items() if k not in _NOT_CONFIG})
        assert cfg.schedule.epochs == (param if policy == "fewer_epochs" else bench_real.SMALL["epochs"])
