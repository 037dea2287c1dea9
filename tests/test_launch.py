"""The launch scripts: horovodrun and mpirun each run a 2-slot job on localhost; the SLURM
script parses and its dry run prints the command it would execute."""

import json
import shlex
import subprocess

import pytest

from conftest import REPO, run
from test_metrics import _free_base_port

pytestmark = pytest.mark.multirank
TRAIN = ["--epochs", "2", "--warmup", "1", "--interval", "1", "--keep", "0.7", "--reuse", "2", "--lr-steps", "none", "--batch-size", "16",
         "--no-progress", "--workers", "1"]


@pytest.mark.parametrize("script", ["horovodrun.sh", "mpirun.sh"])
def test_launcher_runs_two_slots_on_localhost(script, tiny_data, tmp_path):
    port, sd, out = _free_base_port(), tmp_path / "targets.json", tmp_path / "run"
    run([str(REPO / "launch" / script), "-H", "localhost:2", "--", "--data", str(tiny_data), "--out", str(out),
         "--metrics-host", "127.0.0.1", *TRAIN], env={"METRICS_PORT": str(port), "SD_FILE": str(sd)}, timeout=300)
    assert json.loads((out / "summary.json").read_text())["world_size"] == 2
    assert json.loads(sd.read_text())[0]["targets"] == [f"localhost:{port}", f"localhost:{port + 1}"]


def test_slurm_script_parses_and_dry_runs(tmp_path):
    script = str(REPO / "launch" / "slurm.sbatch")
    subprocess.run(["bash", "-n", script], check=True)
    env = {"DRY_RUN": "1", "SLURM_JOB_NODELIST": "gpu01,gpu02", "SLURM_NTASKS_PER_NODE": "8", "SLURM_NTASKS": "16",
           "SD_FILE": str(tmp_path / "sd.json")}
    p = run(["bash", script, "--preset", "imagenet", "--data", "/datasets/imagenet"], env=env, timeout=60)
    assert p.stdout.startswith("srun --mpi=pmix") and "train --mpi" in p.stdout and "--preset imagenet" in p.stdout
    assert "--resume auto" in p.stdout  # a requeued job continues its run
    # a dry run writes nothing, and says what it would write
    assert not (tmp_path / "sd.json").exists()
    assert "would run:" in p.stderr and "sd-file --hosts gpu01:8" in p.stderr
    p = run(["bash", script], env={**env, "MODE": "horovodrun"}, timeout=60)
    argv = shlex.split(p.stdout)
    assert argv[argv.index("-np") + 1] == "16" and argv[argv.index("-H") + 1] == "gpu01:8,gpu02:8"


def test_a_failed_job_ends_with_the_one_line_error(tiny_data, tmp_path):
    """horovodrun prints its own traceback when a rank fails; the launcher repeats our error last."""
    p = run([str(REPO / "launch" / "horovodrun.sh"), "-H", "localhost:2", "--", "--data", str(tiny_data),
             "--out", str(tmp_path / "r"), *TRAIN, "--keep", "1.5"], env={"METRICS_PORT": "0"}, timeout=120,
            check=False)
    assert p.returncode != 0
    tail = p.stderr.strip().splitlines()[-1]
    assert "dap-hvd train: error" in tail and "--keep" in tail


def test_elastic_needs_the_elastic_launcher_which_dry_runs(tiny_data, tmp_path):
    """Under plain horovodrun a reset could never re-form the job: --elastic is refused there."""
    p = run([str(REPO / "launch" / "horovodrun.sh"), "-H", "localhost:2", "--", "--data", str(tiny_data),
             "--out", str(tmp_path / "r"), *TRAIN, "--elastic"], env={"METRICS_PORT": "0"}, timeout=120, check=False)
    assert p.returncode != 0
    assert "--elastic: needs horovodrun's elastic mode" in p.stderr.strip().splitlines()[-1]
    hosts = tmp_path / "hosts"
    hosts.write_text("# the nodes\nnode1:4\nnode2:4\n")
    env = {"DRY_RUN": "1", "HOSTS_FILE": str(hosts), "SD_FILE": str(tmp_path / "sd.json"), "ELASTIC_TIMEOUT": "30"}
    p = run([str(REPO / "launch" / "elastic.sh"), "--discovery", str(REPO / "launch" / "discover_hosts.sh"),
             "--min-np", "4", "--", "--epochs", "3"], env=env, timeout=60)
    argv = shlex.split(p.stdout)
    assert argv[argv.index("-np") + 1] == "8" and argv[argv.index("--min-np") + 1] == "4"
    assert argv[argv.index("--max-np") + 1] == "8" and argv[argv.index("--elastic-timeout") + 1] == "30"
    assert "--host-discovery-script" in argv and argv[-2:] == ["--epochs", "3"] and "--elastic" in argv
