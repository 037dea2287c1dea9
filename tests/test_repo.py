"""The README's commands are the ones CI and users run, and the documentation's links lead somewhere."""

import os
import re
import subprocess

from conftest import REPO

DOCS = [REPO / "README.md", REPO / "BENCHMARKS.md", *sorted((REPO / "docs").glob("*.md"))]
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")  # [text](target); images too


def test_ci_runs_exactly_the_readme_test_command():
    ci = [line for line in (REPO / ".ci" / "run").read_text().splitlines() if line.startswith("bash scripts/setup.sh")]
    assert len(ci) == 1 and ci[0] in (REPO / "README.md").read_text()
    assert ".venv/bin/ruff check ." in ci[0], "style is checked before the tests"


def test_readme_main_job_command_is_the_horovodrun_launcher_training_two_ranks():
    assert "bash scripts/setup.sh && launch/horovodrun.sh -np 2" in (REPO / "README.md").read_text()
    p = subprocess.run(["bash", str(REPO / "launch" / "horovodrun.sh"), "-np", "2"], capture_output=True, text=True,
                       env={**os.environ, "DRY_RUN": "1"}, timeout=60, cwd=REPO)
    assert p.returncode == 0, p.stderr
    argv = p.stdout.strip().splitlines()[-1].split()  # the command, after the environment it exports
    assert argv[1:4] == ["--gloo", "-np", "2"] and argv[argv.index("-H") + 1].startswith("localhost:")
    assert argv[argv.index("-H") + 2].endswith("dap-hvd") and argv[argv.index("-H") + 3] == "train"


def _anchors(md: str) -> set[str]:
    """GitHub's heading ids: lower case, punctuation dropped, each space a hyphen."""
    heads = re.findall(r"^#{1,6} +(.+?) *$", re.sub(r"```.*?```", "", md, flags=re.S), re.M)
    return {re.sub(r"[^\w\- ]", "", h.lower()).replace(" ", "-") for h in heads}


def _links(md: str) -> list[str]:
    prose = re.sub(r"```.*?```", "", md, flags=re.S)
    prose = re.sub(r"`[^`\n]*`(?!\])", "", prose)  # inline code, but not a link text like [`x`](y)
    return [t for t in LINK.findall(prose) if not re.match(r"[a-z][a-z0-9+.-]*:", t)]  # no http:, mailto:


def test_documentation_exists_where_the_readme_sends_a_newcomer():
    names = {p.name for p in (REPO / "docs").glob("*.md")}
    assert {"training.md", "design.md", "multinode.md", "observability.md", "build.md"} <= names
    assert len((REPO / "README.md").read_text().splitlines()) <= 160, "the README stays short; details go to docs/"


def test_every_relative_link_points_to_a_file_of_the_repo_and_an_existing_heading():
    bad = []
    for doc in DOCS:
        for target in _links(doc.read_text()):
            path, _, anchor = target.partition("#")
            dest = (doc.parent / path).resolve() if path else doc
            if not dest.is_relative_to(REPO.resolve()):
                bad.append(f"{doc.name}: {target} leaves the repository")
            elif not dest.exists():
                bad.append(f"{doc.name}: {target} does not exist")
            elif anchor and dest.suffix == ".md" and anchor not in _anchors(dest.read_text()):
                bad.append(f"{doc.name}: {target} names no heading of {dest.name}")
    assert not bad, "\n".join(bad)


def test_the_metrics_page_lists_every_metric_the_trainer_exports():
    exported = set(re.findall(r'"(dap_[a-z0-9_]+)"', (REPO / "dap_hvd" / "metrics.py").read_text())) - {"dap_hvd"}
    documented = (REPO / "docs" / "observability.md").read_text()
    assert exported and not {m for m in exported if f"`{m}" not in documented}
