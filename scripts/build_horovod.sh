#!/usr/bin/env bash
# Build (or reuse) a Horovod 0.28.1 wheel that works with the torch installed in $PYTHON's env.
#
# Horovod 0.28.1 is the last release and does not build against current torch as published.
# We fetch its sdist with pip, apply four fixes, build a wheel and cache it, keyed by
# everything that changes the binary, so a second set-up does not rebuild.
#
# The fixes:
#  (a) horovod/torch/CMakeLists.txt pins C++14; torch >= 2.14 headers need C++20 (2.1-2.13: 17).
#  (b) cmake/Modules/FindPytorch.cmake treats any CUDA-enabled torch as a CUDA build once it
#      finds a CUDA_HOME. A CPU-only build on a machine with nvcc but no CUDA runtime then fails
#      looking for cudart. We let HOROVOD_TORCH_NO_CUDA=1 opt out; GPU builds keep CUDA.
#  (c) With C++17+, gloo's out-of-line definition of Store::kDefaultTimeout collides at link
#      time with the inline constexpr one. We drop the out-of-line definition.
#  (d) GlooContext::InitializeForProcessSet builds its device from its own, never-set gloo_iface_
#      instead of the global context's, so it ignores HOROVOD_GLOO_IFACE (--network-interface) and
#      falls back to the address the machine's hostname resolves to. Where that is a loopback
#      address (Debian's 127.0.1.1 entry, or hosts sharing a hostname) ranks on other hosts are
#      told to connect to 127.0.0.1 and the job dies at start. We copy the global context's.
#  (e) The launcher's RendezvousHandler.do_DELETE (horovod/runner/http/http_server.py) clears the
#      finished lists of every scope when one scope finishes. A job that calls hvd.shutdown() and
#      hvd.init() again then counts stale finishers, a scope's key cache is cleared while peers
#      still read it, and ranks get "Connection refused". We drop only the finished scope's list.
#
# The nccl flavor builds against the NCCL that torch's wheel brings (nvidia-nccl-cu13), so the
# image has one NCCL: header and library from the same release. That wheel is a namespace
# package (nvidia.nccl.__file__ is None) and ships only libnccl.so.2, while Horovod's FindNCCL
# looks for libnccl.so: we point it at a private folder holding that link.
#
# Usage: scripts/build_horovod.sh PYTHON [cpu|nccl] [--configure-only]
#        -> prints the wheel path on the last line. --configure-only (nccl) stops after the NCCL
#        discovery and a CMake configure with Horovod's own FindNCCL, printing what it found.
# Env:   DAP_HVD_CACHE (default ~/.cache/dap-hvd), MAX_JOBS (default: nproc),
#        HOROVOD_NCCL_HOME (another NCCL), HOROVOD_BUILD_CUDA_CC_LIST (default 80,90: A100, H100/H200),
#        HOROVOD_SDIST (a local horovod-0.28.1.tar.gz, for a machine without network),
#        HOROVOD_WITHOUT_MPI=1 (no MPI on the machine: Gloo only, with NCCL on GPUs).
set -euo pipefail

PYTHON=${1:?usage: build_horovod.sh PYTHON [cpu|nccl] [--configure-only]}
FLAVOR=${2:-cpu}
CONFIGURE_ONLY=${3:-}
HOROVOD_VERSION=0.28.1
CACHE=${DAP_HVD_CACHE:-$HOME/.cache/dap-hvd}

die() { echo "build_horovod: $*" >&2; exit 1; }
case "$FLAVOR" in cpu|nccl) ;; *) die "flavor must be cpu or nccl, got '$FLAVOR'";; esac

torch_version=$("$PYTHON" -c 'import torch; print(torch.__version__)') \
  || die "torch must be installed in $PYTHON's environment before Horovod is built"
py_tag=$("$PYTHON" -c 'import sys; print(f"cp{sys.version_info[0]}{sys.version_info[1]}")')
script_hash=$(sha256sum "$0" | cut -c1-12)
key="horovod-${HOROVOD_VERSION}-torch${torch_version}-${py_tag}-${FLAVOR}-${script_hash}"

if [ "$FLAVOR" = nccl ]; then
  nccl_home=${HOROVOD_NCCL_HOME:-$("$PYTHON" -c 'import nvidia.nccl as m; print(list(m.__path__)[0])' 2> /dev/null || true)}
  [ -n "$nccl_home" ] && [ -f "$nccl_home/include/nccl.h" ] \
    || die "no NCCL found: install torch's nvidia-nccl wheel, or set HOROVOD_NCCL_HOME (with include/nccl.h)"
  nccl_so=$(ls "$nccl_home"/lib/libnccl.so* 2> /dev/null | head -n 1)
  [ -n "$nccl_so" ] || die "$nccl_home/lib holds no libnccl.so*"
  nccl_version=$(awk '/#define NCCL_(MAJOR|MINOR|PATCH) /{v = v (v ? "." : "") $3} END {print v}' "$nccl_home/include/nccl.h")
  cuda_version=$("$PYTHON" -c 'import torch; print(torch.version.cuda)')
  key="$key-cuda${cuda_version}-nccl${nccl_version}"  # a new base image or NCCL means a new wheel
  nccl_lib="$CACHE/nccl-link/$nccl_version"
  mkdir -p "$nccl_lib" && ln -sf "$nccl_so" "$nccl_lib/libnccl.so"
  export HOROVOD_NCCL_INCLUDE="$nccl_home/include" HOROVOD_NCCL_LIB="$nccl_lib" HOROVOD_NCCL_LINK=SHARED
  unset HOROVOD_NCCL_HOME  # FindNCCL would search it before the link folder
  export HOROVOD_BUILD_CUDA_CC_LIST=${HOROVOD_BUILD_CUDA_CC_LIST:-80,90}
  echo "build_horovod: NCCL $nccl_version from $nccl_home (CUDA $cuda_version)" >&2
fi
[ "${HOROVOD_WITHOUT_MPI:-0}" = 1 ] && key="$key-nompi"
out="$CACHE/wheels/$key"

if [ -z "$CONFIGURE_ONLY" ] && compgen -G "$out/horovod-*.whl" > /dev/null; then
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
if [ -n "${HOROVOD_SDIST:-}" ]; then
  [ -f "$HOROVOD_SDIST" ] || die "HOROVOD_SDIST=$HOROVOD_SDIST: no such file"
  cp "$HOROVOD_SDIST" "$work/horovod-$HOROVOD_VERSION.tar.gz"
else
  echo "build_horovod: fetching horovod==$HOROVOD_VERSION sdist" >&2
  "$PYTHON" -m pip download -q --no-deps --no-binary :all: "horovod==$HOROVOD_VERSION" -d "$work" \
    || die "could not download the horovod==$HOROVOD_VERSION sdist"
fi
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

# (d)
patch_file horovod/common/gloo/gloo_context.cc \
  's/^  assert(global_context.IsEnabled());$/&\n  gloo_iface_ = global_context.gloo_iface_;  \/\/ dap-hvd fix (d)/' \
  "gloo_iface_ = global_context.gloo_iface_;"

# (e)
patch_file horovod/runner/http/http_server.py \
  's/^                        self.server.finished_list.clear()$/                        self.server.finished_list.pop(scope, None)  # dap-hvd fix (e)/' \
  "finished_list.pop(scope, None)  # dap-hvd fix (e)"

if [ -n "$CONFIGURE_ONLY" ]; then  # what the image build depends on, checked without a GPU or a build
  [ "$FLAVOR" = nccl ] || die "--configure-only checks the nccl flavor"
  mkdir -p "$work/probe"
  cat > "$work/probe/CMakeLists.txt" <<CMAKE
cmake_minimum_required(VERSION 3.13)
project(nccl_probe LANGUAGES NONE)
list(APPEND CMAKE_MODULE_PATH "$src/cmake/Modules")
find_package(NCCL REQUIRED)
message(STATUS "probe: NCCL_INCLUDE_DIRS=\${NCCL_INCLUDE_DIRS} NCCL_LIBRARIES=\${NCCL_LIBRARIES} NCCL_MAJOR_VERSION=\${NCCL_MAJOR_VERSION}")
CMAKE
  cmake -S "$work/probe" -B "$work/probe/build" > "$work/probe.log" 2>&1 || { cat "$work/probe.log" >&2; die "CMake could not find NCCL"; }
  grep -E "probe:|Found NCCL" "$work/probe.log"
  exit 0
fi

export HOROVOD_WITH_PYTORCH=1 HOROVOD_WITHOUT_TENSORFLOW=1 HOROVOD_WITHOUT_MXNET=1
export HOROVOD_WITH_GLOO=1
if [ "${HOROVOD_WITHOUT_MPI:-0}" = 1 ]; then
  unset HOROVOD_WITH_MPI
else
  export HOROVOD_WITH_MPI=1
fi
if [ "$FLAVOR" = nccl ]; then
  export HOROVOD_GPU_OPERATIONS=NCCL
  unset HOROVOD_TORCH_NO_CUDA
else
  export HOROVOD_TORCH_NO_CUDA=1
  unset HOROVOD_GPU_OPERATIONS HOROVOD_GPU_ALLREDUCE HOROVOD_GPU_BROADCAST
fi
export MAKEFLAGS="-j${MAX_JOBS:-$(nproc)}"
# CMake 4 refuses the gloo submodule's cmake_minimum_required(VERSION 2.8.12) unless told otherwise.
export CMAKE_POLICY_VERSION_MINIMUM=${CMAKE_POLICY_VERSION_MINIMUM:-3.5}
# GCC 13+ no longer pulls <string>, <cstdint>, <stdexcept>... in transitively; horovod/common/ relies on it
# (group_table.h, common.h). Forcing them into every C++ unit is harmless for older compilers.
export CXXFLAGS="${CXXFLAGS:-} -include cstdint -include string -include stdexcept -include memory -include functional -include algorithm"

echo "build_horovod: building $key (C++$cxx_std); this takes minutes" >&2
mkdir -p "$work/dist"
"$PYTHON" -m pip wheel -v --no-deps --no-build-isolation -w "$work/dist" "$src" > "$work/build.log" 2>&1 || {
  tail -n 60 "$work/build.log" >&2
  mkdir -p "$CACHE/logs" && cp "$work/build.log" "$CACHE/logs/$key.log"
  die "wheel build failed; full log: $CACHE/logs/$key.log"
}
mkdir -p "$out.tmp" && mv "$work"/dist/horovod-*.whl "$out.tmp"/ && rm -rf "$out" && mv "$out.tmp" "$out"
ls "$out"/horovod-*.whl
