"""The launch scripts: horovodrun and mpirun each run a 2-slot job on localhost; the SLURM
script parses and its dry run prints the environment and the command it would execute."""

import json
import os
import shlex
import socket
import stat
import subprocess

import pytest
from conftest import REPO, run
from test_metrics import _free_base_port

pytestmark = pytest.mark.multirank
TRAIN = ["--epochs", "2", "--warmup", "1", "--interval", "1", "--keep", "0.7", "--reuse", "2", "--lr-steps", "none",
         "--batch-size", "16", "--no-progress", "--workers", "1"]


@pytest.mark.parametrize("script", ["horovodrun.sh", "mpirun.sh"])
def test_launcher_runs_two_slots_on_localhost(script, tiny_data, tmp_path):
    """Rank 1's metrics port is taken (another exporter): it serves on another port, the job goes
    on, and the targets file the launcher wrote ends up listing the port really used."""
    port, sd, out = _free_base_port(), tmp_path / "targets.json", tmp_path / "run"
    busy = socket.socket()
    busy.bind(("127.0.0.1", port + 1))
    busy.listen()
    try:
        p = run([str(REPO / "launch" / script), "-H", "localhost:2", "--", "--data", str(tiny_data), "--out", str(out),
                 "--metrics-host", "127.0.0.1", *TRAIN], env={"METRICS_PORT": str(port), "SD_FILE": str(sd)},
                timeout=300)
    finally:
        busy.close()
    assert json.loads((out / "summary.json").read_text())["world_size"] == 2
    warnings = [line for line in (p.stdout + p.stderr).splitlines() if "is taken" in line]
    assert len(warnings) == 1 and f"127.0.0.1:{port + 1} is taken" in warnings[0], p.stdout + p.stderr
    used = int(warnings[0].split("serving on ")[1].split()[0])
    assert json.loads(sd.read_text())[0]["targets"] == [f"localhost:{port}", f"localhost:{used}"]
    assert stat.S_IMODE(sd.stat().st_mode) == 0o644  # Prometheus may run as another user


def _dry(script, args, env, cwd=REPO):
    """A launcher's dry run -> ({exported var: value}, the command's argv)."""
    p = run(["bash", str(script), *args], env={"DRY_RUN": "1", **env}, timeout=60, cwd=cwd)
    lines = p.stdout.strip().splitlines()
    exports = dict(line[len("export "):].split("=", 1) for line in lines[:-1])
    assert all(line.startswith("export ") for line in lines[:-1]), p.stdout
    return {k: shlex.split(v)[0] if v else v for k, v in exports.items()}, shlex.split(lines[-1]), p


def test_dry_runs_print_the_environment_and_pass_the_ssh_port(tmp_path):
    env = {"SSH_PORT": "2222", "NETWORK_INTERFACE": "ib0", "SD_FILE": str(tmp_path / "sd.json"),
           "TORCHINDUCTOR_CACHE_DIR": "/local/inductor", "TRITON_CACHE_DIR": "/local/triton",
           "PYTORCH_CUDA_ALLOC_CONF": "expandable_segments:True", "METRICS_PORT": ""}
    exports, argv, _ = _dry(REPO / "launch" / "horovodrun.sh", ["-H", "n1:8,n2:8", "--", "--epochs", "3"], env)
    assert argv[argv.index("--ssh-port") + 1] == "2222" and argv[argv.index("-np") + 1] == "16"
    assert exports["NCCL_SOCKET_IFNAME"] == exports["GLOO_SOCKET_IFNAME"] == "ib0"
    assert exports["DAP_HVD_SD_FILE"] == str(tmp_path / "sd.json") and exports["CUDA_DEVICE_ORDER"] == "PCI_BUS_ID"
    assert argv[argv.index("--metrics-port") + 1] == "27400"  # outside a scheduler job: the default block
    exports, argv, _ = _dry(REPO / "launch" / "mpirun.sh", ["-H", "n1:8,n2:8", "--", "--epochs", "3"], env)
    assert argv[argv.index("plm_rsh_args") + 1] == "-p 2222"
    assert "--oversubscribe" not in argv  # a wrong -np must show
    assert argv[argv.index("--bind-to") + 1] == "none"  # the ranks bind to their GPU's cores themselves
    forwarded = {argv[i + 1] for i, a in enumerate(argv) if a == "-x"}
    assert {"TORCHINDUCTOR_CACHE_DIR", "TRITON_CACHE_DIR", "PYTORCH_CUDA_ALLOC_CONF", "DAP_HVD_SD_FILE",
            "NCCL_SOCKET_IFNAME"} <= forwarded
    exports, argv, _ = _dry(REPO / "launch" / "elastic.sh", ["--discovery", str(REPO / "launch" / "discover_hosts.sh"),
                                                             "--", "--epochs", "3"],
                            {**env, "HOSTS_FILE": str(_hosts_file(tmp_path))})
    assert argv[argv.index("--ssh-port") + 1] == "2222"


def _hosts_file(tmp_path):
    f = tmp_path / "hosts"
    f.write_text("node1:4\nnode2:4\n")
    return f


def _fake_slurm(tmp_path, mpi_types="none\npmi2\npmix\n", command=""):
    """scontrol and srun for dry runs outside SLURM: the answers SLURM's own tools give."""
    bin_ = tmp_path / "slurm-bin"
    bin_.mkdir(exist_ok=True)
    (bin_ / "scontrol").write_text(
        "#!/bin/sh\n"
        'if [ "$1 $2" = "show hostnames" ]; then echo "$3" | tr , "\\n"; exit 0; fi\n'
        f'if [ "$1 $2" = "show job" ]; then echo "   Command={command} --data /d"; exit 0; fi\nexit 1\n')
    (bin_ / "srun").write_text(f'#!/bin/sh\n[ "$1" = --mpi=list ] && printf "MPI plugin types are...\\n{mpi_types}"\n')
    for f in bin_.iterdir():
        f.chmod(0o755)
    return f"{bin_}:{os.environ['PATH']}"


def test_slurm_script_parses_and_dry_runs(tmp_path):
    script = str(REPO / "launch" / "slurm.sbatch")
    subprocess.run(["bash", "-n", script], check=True)
    env = {"SLURM_JOB_ID": "1001", "SLURM_JOB_NODELIST": "gpu01,gpu02", "SLURM_NTASKS_PER_NODE": "8",
           "SLURM_NTASKS": "16", "SLURM_CPUS_PER_TASK": "12", "SD_FILE": str(tmp_path / "sd.json"), "METRICS_PORT": ""}
    exports, argv, p = _dry(script, ["--preset", "imagenet", "--data", "/datasets/imagenet"], env)
    assert argv[:2] == ["srun", "--mpi=pmix"] and "--cpus-per-task=12" in argv and exports["SRUN_CPUS_PER_TASK"] == "12"
    assert "--mpi" in argv[argv.index("train"):]
    assert argv[-4:] == ["--preset", "imagenet", "--data", "/datasets/imagenet"]
    assert "--resume auto" in shlex.join(argv)  # a requeued job continues its run
    assert argv[argv.index("--metrics-port") + 1] == str(27400 + (1001 % 64) * 16)  # this job's own port block
    # a dry run writes nothing, and says what it would write
    assert not (tmp_path / "sd.json").exists()
    assert "would run:" in p.stderr and "sd-file --hosts gpu01:8" in p.stderr
    _, argv, _ = _dry(script, [], {**env, "MODE": "horovodrun", "SSH_PORT": "2222"})
    assert argv[argv.index("-np") + 1] == "16" and argv[argv.index("-H") + 1] == "gpu01:8,gpu02:8"
    assert argv[argv.index("--ssh-port") + 1] == "2222"
    _, argv, _ = _dry(script, ["--data", "/data"], {**env, "MODE": "pyxis", "IMAGE": "registry#dap-hvd:1",
                                                    "CONTAINER_MOUNTS": "/data:/data:ro", "SRUN_MPI": "pmi2"})
    assert argv[:2] == ["srun", "--mpi=pmi2"] and "--container-image=registry#dap-hvd:1" in argv
    mounts = argv.index("--container-mounts=/data:/data:ro")
    assert argv[mounts + 1:mounts + 3] == ["dap-hvd", "train"]  # the image's dap-hvd, not this host's


def test_slurm_script_runs_from_the_spool_copy_and_checks_srun_mpi(tmp_path):
    """sbatch runs a copy of the script from its spool folder, from the submit directory: the
    script finds launch/ through SLURM's record of the script it was given."""
    spool = tmp_path / "spool"
    spool.mkdir()
    copy = spool / "slurm_script"
    copy.write_text((REPO / "launch" / "slurm.sbatch").read_text())
    elsewhere = tmp_path / "submit"
    elsewhere.mkdir()
    env = {"SLURM_JOB_ID": "77", "SLURM_JOB_NODELIST": "gpu01", "SLURM_NTASKS_PER_NODE": "2", "SLURM_NTASKS": "2",
           "SLURM_SUBMIT_DIR": str(elsewhere), "SD_FILE": str(tmp_path / "sd.json"),
           "PATH": _fake_slurm(tmp_path, command=str(REPO / "launch" / "slurm.sbatch"))}
    _, argv, _ = _dry(copy, ["--data", "/d"], env, cwd=elsewhere)
    assert argv[0] == "srun" and argv[-2:] == ["--data", "/d"]
    # nothing to find: one line saying what to set
    p = run(["bash", str(copy)], env={**env, "DRY_RUN": "1", "PATH": _fake_slurm(tmp_path, command="/nowhere/x")},
            cwd=elsewhere, check=False, timeout=60)
    assert p.returncode != 0 and p.stderr.strip().splitlines()[-1].startswith(
        "slurm.sbatch: cannot find launch/common.sh; set DAP_HVD_LAUNCH"), p.stderr
    # an --mpi type this Slurm lacks: refused before srun starts anything
    env["PATH"] = _fake_slurm(tmp_path, mpi_types="none\npmi2\n", command=str(REPO / "launch" / "slurm.sbatch"))
    p = run(["bash", str(copy), "--data", "/d"], env={**env, "METRICS_PORT": "0"}, cwd=elsewhere, check=False,
            timeout=60)
    assert p.returncode == 2 and "SRUN_MPI=pmix is not in 'srun --mpi=list'" in p.stderr, p.stderr


def test_a_failed_job_ends_with_the_one_line_error(tiny_data, tmp_path):
    """horovodrun prints its own traceback when a rank fails; the launcher repeats our error last."""
    p = run([str(REPO / "launch" / "horovodrun.sh"), "-H", "localhost:2", "--", "--data", str(tiny_data),
             "--out", str(tmp_path / "r"), *TRAIN, "--keep", "1.5"], env={"METRICS_PORT": "0"}, timeout=300,
            check=False)
    assert p.returncode != 0
    tail = p.stderr.strip().splitlines()[-1]
    assert "dap-hvd train: error" in tail and "--keep" in tail


def test_elastic_needs_the_elastic_launcher_which_dry_runs(tiny_data, tmp_path):
    """Under plain horovodrun a reset could never re-form the job: --elastic is refused there."""
    p = run([str(REPO / "launch" / "horovodrun.sh"), "-H", "localhost:2", "--", "--data", str(tiny_data),
             "--out", str(tmp_path / "r"), *TRAIN, "--elastic"], env={"METRICS_PORT": "0"}, timeout=300, check=False)
    assert p.returncode != 0
    assert "--elastic: needs horovodrun's elastic mode" in p.stderr.strip().splitlines()[-1]
    hosts = tmp_path / "hosts"
    hosts.write_text("# the nodes\nnode1:4\nnode2:4\n")
    env = {"DRY_RUN": "1", "HOSTS_FILE": str(hosts), "SD_FILE": str(tmp_path / "sd.json"), "ELASTIC_TIMEOUT": "30"}
    p = run([str(REPO / "launch" / "elastic.sh"), "--discovery", str(REPO / "launch" / "discover_hosts.sh"),
             "--min-np", "4", "--", "--epochs", "3"], env=env, timeout=60)
    argv = shlex.split(p.stdout.strip().splitlines()[-1])  # after the exported environment
    assert argv[argv.index("-np") + 1] == "8" and argv[argv.index("--min-np") + 1] == "4"
    assert argv[argv.index("--max-np") + 1] == "8" and argv[argv.index("--elastic-timeout") + 1] == "30"
    assert "--host-discovery-script" in argv and argv[-2:] == ["--epochs", "3"] and "--elastic" in argv
