#!/usr/bin/env bash
# One-command set-up: installs the whole stack into .venv at the repository root.
# Idempotent: a second run reuses the venv and the cached Horovod wheel. Each step names itself
# when it fails, and the env is only marked ready (.venv/.dap-hvd-ready) once every check passed.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
VENV=$ROOT/.venv
PY=${PYTHON:-python3}
FLAVOR=${DAP_HVD_HOROVOD_FLAVOR:-cpu}   # cpu | nccl (the Docker image builds nccl)

step() { STEP="$*"; echo "==> [setup] $*"; }
trap 'rc=$?; [ $rc -eq 0 ] || echo "!! [setup] FAILED at step: ${STEP:-start} (exit $rc)" >&2' EXIT

step "check Python >= 3.10"
"$PY" -c 'import sys; sys.exit(sys.version_info < (3, 10))' || { echo "need Python >= 3.10" >&2; exit 1; }

step "system packages: OpenMPI (libopenmpi-dev, openmpi-bin)"
if ! command -v mpicc > /dev/null || ! command -v mpirun > /dev/null; then
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends \
    libopenmpi-dev openmpi-bin > /dev/null
fi

step "system packages for the multi-host tests: openssh-server, iproute2"
# tests/test_multihost.py runs "hosts" in network namespaces, each with its own sshd. Nothing is
# started here: the tests start and stop their own sshds.
if [ ! -x /usr/sbin/sshd ] || ! command -v ssh > /dev/null || ! command -v ip > /dev/null; then
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends \
    openssh-server openssh-client iproute2 > /dev/null
fi

step "virtual environment at .venv"
rm -f "$VENV/.dap-hvd-ready"
[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
"$VENV/bin/python" -m pip install -q --upgrade pip wheel setuptools

step "python packages: torch, torchvision, DALI, mpi4py, prometheus-client (pinned in pyproject.toml)"
# cmake/psutil/cloudpickle/packaging are Horovod's build and runtime needs.
"$VENV/bin/python" -m pip install -q -e ".[test,bench]" "cmake>=3.25,<4" psutil cloudpickle packaging

step "Horovod 0.28.1 wheel ($FLAVOR): build from patched sdist, or reuse the cached one"
WHEEL=$(PATH="$VENV/bin:$PATH" scripts/build_horovod.sh "$VENV/bin/python" "$FLAVOR" | tail -n 1)
[ -f "$WHEEL" ] || { echo "no wheel produced" >&2; exit 1; }

step "install Horovod from $(basename "$WHEEL")"
"$VENV/bin/python" -m pip install -q --no-deps --force-reinstall "$WHEEL"

step "verify the stack imports, and Horovod has Gloo and MPI"
FLAVOR="$FLAVOR" "$VENV/bin/python" - <<'PY'
import os
import horovod, horovod.torch as hvd, nvidia.dali, torchvision, mpi4py, prometheus_client, dap_hvd  # noqa: F401
assert hvd.gloo_built(), "horovod was built without Gloo"
assert hvd.mpi_built(), "horovod was built without MPI"
if os.environ["FLAVOR"] == "nccl":
    assert hvd.nccl_built(), "horovod (nccl flavor) was built without NCCL"
import torch
print(f"    torch {torch.__version__}, torchvision {torchvision.__version__}, "
      f"DALI {nvidia.dali.__version__}, horovod {horovod.__version__} (gloo+mpi), mpi4py {mpi4py.__version__}")
PY

touch "$VENV/.dap-hvd-ready"
STEP=done
echo "==> [setup] ready: $VENV"
