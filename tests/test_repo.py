"""The README's commands are the ones CI and users run."""

from conftest import REPO


def test_ci_runs_exactly_the_readme_test_command():
    ci = [l for l in (REPO / ".ci" / "run").read_text().splitlines() if l.startswith("bash scripts/setup.sh")]
    assert len(ci) == 1 and ci[0] in (REPO / "README.md").read_text()


def test_readme_main_job_command_is_horovodrun_train():
    assert "bash scripts/setup.sh && .venv/bin/horovodrun --gloo -np 2 .venv/bin/dap-hvd train" in \
        (REPO / "README.md").read_text()
