"""The README's commands are the ones CI and users run."""

from conftest import REPO


def test_ci_runs_exactly_the_readme_test_command():
    ci = [l for l in (REPO / ".ci" / "run").read_text().splitlines() if l.startswith("bash scripts/setup.sh")]
    assert len(ci) == 1 and ci[0] in (REPO / "README.md").read_text()


def test_readme_main_job_command_is_the_horovodrun_launcher_training_two_ranks():
    import subprocess

    assert "bash scripts/setup.sh && launch/horovodrun.sh -np 2" in (REPO / "README.md").read_text()
    p = subprocess.run(["bash", str(REPO / "launch" / "horovodrun.sh"), "-np", "2"], capture_output=True, text=True,
                       env={**__import__("os").environ, "DRY_RUN": "1"}, timeout=60, cwd=REPO)
    assert p.returncode == 0, p.stderr
    argv = p.stdout.strip().splitlines()[-1].split()  # the command, after the environment it exports
    assert argv[1:4] == ["--gloo", "-np", "2"] and argv[argv.index("-H") + 1].startswith("localhost:")
    assert argv[argv.index("-H") + 2].endswith("dap-hvd") and argv[argv.index("-H") + 3] == "train"
