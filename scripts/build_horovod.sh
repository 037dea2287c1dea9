#!/usr/bin/env bash
# Build (or reuse) a Horovod 0.28.1 wheel that works with the torch installed in $PYTHON's env.
#
# Horovod 0.28.1 is the last release and does not build against current torch as published.
# We fetch its sdist with pip, apply three fixes, build a wheel and cache it, keyed by
# everything that changes the binary, so a second set-up does not rebuild.
#
# The three fixes:
#  (a) horovod/torch/CMakeLists.txt pins C++14; torch >= 2.14 headers need C++20 (2.1-2.13: 17).
#  (b) cmake/Modules/FindPytorch.cmake treats any CUDA-enabled torch as a CUDA build once it
#      finds a CUDA_HOME. A CPU-only build on a machine with nvcc but no CUDA runtime then fails
#      looking for cudart. We let HOROVOD_TORCH_NO_CUDA=1 opt out; GPU builds keep CUDA.
#  (c) With C++17+, gloo's out-of-line definition of Store::kDefaultTimeout collides at link
#      time with the inline constexpr one. We drop the out-of-line definition.
#
# Usage: scripts/build_horovod.sh PYTHON [cpu|nccl]   -> prints the wheel path on the last line.
# Env:   DAP_HVD_CACHE (default ~/.cache/dap-hvd), MAX_JOBS (default: nproc).
set -euo pipefail

PYTHON=${1:?usage: build_horovod.sh PYTHON [cpu|nccl]}
FLAVOR=${2:-cpu}
HOROVOD_VERSION=0.28.1
CACHE=${DAP_HVD_CACHE:-$HOME/.cache/dap-hvd}

die() { echo "build_horovod: $*" >&2; exit 1; }
case "$FLAVOR" in cpu|nccl) ;; *) die "flavor must be cpu or nccl, got '$FLAVOR'";; esac

torch_version=$("$PYTHON" -c 'import torch; print(torch.__version__)') \
  || die "torch must be installed in $PYTHON's environment before Horovod is built"
py_tag=$("$PYTHON" -c 'import sys; print(f"cp{sys.version_info[0]}{sys.version_info[1]}")')
script_hash=$(sha256sum "$0" | cut -c1-12)
key="horovod-${HOROVOD_VERSION}-torch${torch_version}-${py_tag}-${FLAVOR}-${script_hash}"
out="$CACHE/wheels/$key"

if compgen -G "$out/horovod-*.whl" > /dev/null; then
  echo "build_horovod: reusing cached wheel ($key)" >&2
  ls "$out"/horovod-*.whl
  exit 0
fi

# torch 2.14 headers use C++20 features; older 2.x need 17.
cxx_std=$("$PYTHON" - <<'PY'
import torch
major, minor = (int(x) for x in torch.__version__.split("+")[0].split(".")[:2])
print(20 if (major, minor) >= (2, 14) else 17)
PY
)

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
echo "build_horovod: fetching horovod==$HOROVOD_VERSION sdist" >&2
"$PYTHON" -m pip download -q --no-deps --no-binary :all: "horovod==$HOROVOD_VERSION" -d "$work" \
  || die "could not download the horovod==$HOROVOD_VERSION sdist"
tar -xzf "$work/horovod-$HOROVOD_VERSION.tar.gz" -C "$work"
src="$work/horovod-$HOROVOD_VERSION"

patch_file() {  # file, sed expression, text that must appear afterwards
  sed -i "$2" "$src/$1"
  grep -qF -- "$3" "$src/$1" || die "patch did not apply to $1 (sdist changed?)"
}
# (a)
patch_file horovod/torch/CMakeLists.txt \
  "s/set(CMAKE_CXX_STANDARD 14)/set(CMAKE_CXX_STANDARD $cxx_std)/" "CMAKE_CXX_STANDARD $cxx_std"
# (b)
patch_file cmake/Modules/FindPytorch.cmake \
  's/print(True if ((torch.version.cuda is not None) and (CUDA_HOME is not None)) else False)/import os; print(True if ((torch.version.cuda is not None) and (CUDA_HOME is not None) and os.environ.get(\x27HOROVOD_TORCH_NO_CUDA\x27) != \x271\x27) else False)/' \
  "HOROVOD_TORCH_NO_CUDA"
# (c)
sed -i '/^constexpr std::chrono::milliseconds Store::kDefaultTimeout;$/d' \
  "$src/third_party/gloo/gloo/rendezvous/store.cc"
! grep -q "^constexpr std::chrono::milliseconds Store::kDefaultTimeout" \
  "$src/third_party/gloo/gloo/rendezvous/store.cc" || die "patch (c) did not apply"

export HOROVOD_WITH_PYTORCH=1 HOROVOD_WITHOUT_TENSORFLOW=1 HOROVOD_WITHOUT_MXNET=1
export HOROVOD_WITH_GLOO=1 HOROVOD_WITH_MPI=1
if [ "$FLAVOR" = nccl ]; then
  export HOROVOD_GPU_OPERATIONS=NCCL
  unset HOROVOD_TORCH_NO_CUDA
else
  export HOROVOD_TORCH_NO_CUDA=1
  unset HOROVOD_GPU_OPERATIONS HOROVOD_GPU_ALLREDUCE HOROVOD_GPU_BROADCAST
fi
export MAKEFLAGS="-j${MAX_JOBS:-$(nproc)}"

echo "build_horovod: building $key (C++$cxx_std); this takes minutes" >&2
mkdir -p "$work/dist"
"$PYTHON" -m pip wheel -v --no-deps --no-build-isolation -w "$work/dist" "$src" > "$work/build.log" 2>&1 || {
  tail -n 60 "$work/build.log" >&2
  mkdir -p "$CACHE/logs" && cp "$work/build.log" "$CACHE/logs/$key.log"
  die "wheel build failed; full log: $CACHE/logs/$key.log"
}
mkdir -p "$out.tmp" && mv "$work"/dist/horovod-*.whl "$out.tmp"/ && rm -rf "$out" && mv "$out.tmp" "$out"
ls "$out"/horovod-*.whl
