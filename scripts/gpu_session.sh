#!/usr/bin/env bash
# The GPU checks, on a machine lent through the `device` tool (its notes are not in this repo): it has
# torch, CUDA, NCCL, nvcc and cmake but no DALI, no Horovod, no MPI and no network.
# Run from the project's root on that machine, one phase per call, calls back to back:
#   start    copy chunk.00 and the Horovod sdist to /tmp/gpu, and build Horovod (NCCL + Gloo, no
#            MPI) in the background while the other chunks travel (a background process outlives
#            its call there; the build takes about 2 minutes on 16 cores)
#   copy N   copy .gpu/chunk.0N (and .gpu/extra, the Python wheels the project needs) to /tmp/gpu
#   setup    unpack DALI, install the wheels, wait for the Horovod build, install Horovod and the
#            project, and check them (NCCL allreduce on the GPU, DALI, imports); the wheel -> $OUT
#   bench P  `dap-hvd bench --only gpu --gpu-parts P`; results.json and every job's log -> $OUT
# Prepared here by `bash ../shared/gpu/stage.sh` plus `scripts/gpu_session.sh stage-extra`. Calls:
#   carry [.gpu/chunk.00, .gpu/SHA256SUMS, .gpu/unpack.sh, .gpu/hvd]   bash scripts/gpu_session.sh start
#   carry [.gpu/chunk.01] ... [.gpu/chunk.03]                           bash scripts/gpu_session.sh copy N
#   carry [.gpu/chunk.04, .gpu/extra]                                   bash scripts/gpu_session.sh copy 4
#   bash scripts/gpu_session.sh setup
#   bash scripts/gpu_session.sh bench resume,saving    (about 7 min on an H100)
#   bash scripts/gpu_session.sh bench micro            (about 3 min; a cold Inductor cache adds 1 min)
#   bash scripts/gpu_session.sh bench matrix           (about 7 min)
# 30 minutes of device time fit this once (23 min measured, 3 of them staging and building); the
# machine is given back 30 s after a call ends. Parts a session does not run keep the repo's figures.
set -uo pipefail
OUT=${OUT:-/tmp/gpu-out}
G=/tmp/gpu
export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
scripts_dir=$(python3 -c 'import sysconfig; print(sysconfig.get_path("scripts"))' 2> /dev/null)
export PATH="$scripts_dir:$PATH"

pipi() {  # offline installs; a distro Python may need --break-system-packages (PEP 668)
  python3 -m pip install -q --no-index --no-cache-dir "$@" 2> $G/pip.err \
    || python3 -m pip install -q --no-index --no-cache-dir --break-system-packages "$@"
}

build() {
  cp scripts/build_horovod.sh $G/build_horovod.sh
  DAP_HVD_CACHE=$G/cache HOROVOD_SDIST=$G/horovod-0.28.1.tar.gz HOROVOD_WITHOUT_MPI=1 \
    HOROVOD_BUILD_CUDA_CC_LIST=${CC_LIST:-90} MAX_JOBS=$(nproc) \
    bash $G/build_horovod.sh python3 nccl > $G/wheel.path 2> $G/build.log
  echo $? > $G/build.rc
}

case "${1:-}" in
  stage-extra)  # here, before the session: the project's pure-Python and small binary deps, cp312
    mkdir -p .gpu/extra .gpu/hvd
    python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
      --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
      -d .gpu/extra pydantic pydantic-core annotated-types typing-inspection typing-extensions pyyaml \
      safetensors cloudpickle psutil packaging "setuptools>=77" wheel
    python3 -m pip download -q --no-deps --no-binary=:all: -d .gpu/hvd horovod==0.28.1
    # Horovod's setup_requires: pip would fetch cffi from the network during the build.
    python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
      --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .gpu/hvd cffi pycparser
    du -sh .gpu/extra .gpu/hvd ;;
  start)
    mkdir -p $G && cp .gpu/chunk.00 .gpu/SHA256SUMS .gpu/unpack.sh .gpu/hvd/horovod-0.28.1.tar.gz $G/
    pipi --find-links .gpu/hvd cffi pycparser
    nvidia-smi -L; nvcc --version | tail -n 1; python3 -c 'import torch; print("torch", torch.__version__, torch.version.cuda)'
    rm -f $G/build.rc
    setsid nohup bash "$0" build > /dev/null 2>&1 < /dev/null &
    sleep 5; echo "build started: $(tail -n 2 $G/build.log)" ;;
  build) build ;;
  copy)
    cp ".gpu/chunk.0$2" $G/ && [ ! -d .gpu/extra ] || cp -r .gpu/extra $G/
    echo "copied chunk.0$2; horovod build: $( [ -f $G/build.rc ] && echo "rc $(cat $G/build.rc)" || tail -c 300 $G/build.log)" ;;
  setup)
    set -e
    mkdir -p "$OUT"
    bash $G/unpack.sh
    pipi --find-links $G/extra "setuptools>=77" wheel pydantic pyyaml safetensors cloudpickle psutil packaging
    if [ ! -f $G/build.rc ] && ! pgrep -f build_horovod.sh > /dev/null; then
      echo "the background build is gone (the machine ends a call's processes?): building now"; build
    fi
    for _ in $(seq 600); do [ -f $G/build.rc ] && break; sleep 1; done
    cp $G/build.log "$OUT/horovod-build.log"
    [ "$(cat $G/build.rc)" = 0 ] || { tail -n 40 $G/build.log; exit 1; }
    wheel=$(tail -n 1 $G/wheel.path)
    pipi --no-deps "$wheel"
    cp "$wheel" "$OUT/"
    pipi --no-deps --no-build-isolation -e .
    horovodrun --gloo -np 1 -H localhost:1 python3 -c '
import torch, horovod.torch as hvd, nvidia.dali as dali
hvd.init(); torch.cuda.set_device(hvd.local_rank())
x = hvd.allreduce(torch.ones(4, device="cuda"), op=hvd.Sum)
import horovod
print("horovod", horovod.__version__, "nccl", hvd.nccl_built(), "gloo", hvd.gloo_built(), "mpi", hvd.mpi_built(),
      "allreduce on", x.device, x.tolist(), "| DALI", dali.__version__, "| torch", torch.__version__)
import dap_hvd.train' 2>&1 | tee "$OUT/smoke.log" ;;
  bench)
    mkdir -p "$OUT/logs"
    # Parts not run in this session keep the figures in the repo's copy: one merge brings all home.
    [ -f $G/results.json ] || cp bench/results.json $G/results.json
    dap-hvd bench --only gpu --gpu-parts "$2" --gpu-data /tmp/gpu-data --logs "$OUT/logs" \
      --results $G/results.json --out $G/BENCHMARKS.md 2>&1 | tee "$OUT/bench-$2.log"
    cp $G/results.json $G/BENCHMARKS.md "$OUT/" ;;
  *) echo "usage: $0 start | copy N | setup | bench PARTS | stage-extra" >&2; exit 2 ;;
esac
