# syntax=docker/dockerfile:1
# GPU image for clusters: CUDA 13 + the pinned stack (torch 2.14.1, DALI, OpenMPI, Horovod 0.28.1
# built with NCCL by the same scripts/build_horovod.sh that CI uses), sshd for multi-node runs.
# The commands an operator runs (one node, several nodes, SLURM/Pyxis) are in docs/build.md "Docker" and docs/multinode.md.
#   DOCKER_BUILDKIT=1 docker build -t dap-hvd .          (--build-arg MAX_JOBS=N: compile jobs)
# Needs a host driver for CUDA 13 (R580+). torch brings cuDNN and the CUDA libraries as wheels,
# Horovod links cudart statically and DALI brings nvImageCodec/nvJPEG, so the final stage needs
# only the CUDA base image.
# Pinned by digest: the manifest-list digests public projects pin for these two tags. They were
# not pulled from here (no registry access); refresh with
#   docker buildx imagetools inspect nvidia/cuda:13.0.1-base-ubuntu24.04
ARG CUDA_IMAGE=nvidia/cuda:13.0.1-devel-ubuntu24.04@sha256:7d2f6a8c2071d911524f95061a0db363e24d27aa51ec831fcccf9e76eb72bc92
ARG CUDA_RUNTIME_IMAGE=nvidia/cuda:13.0.1-base-ubuntu24.04@sha256:f8ef28f579ea42a44b415d2c5d46f788e6a9b395c6c83f2929416e1fc192c143

FROM ${CUDA_IMAGE} AS build
# Parallel nvcc and C++20 torch-header compiles take 2-4 GB each: cap them on many-core hosts.
ARG MAX_JOBS=8
ENV DEBIAN_FRONTEND=noninteractive VENV=/opt/dap-hvd PIP_CACHE_DIR=/root/.cache/pip
RUN apt-get update && apt-get install -y --no-install-recommends \
        python3 python3-venv python3-dev build-essential git libopenmpi-dev openmpi-bin \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
# Layers from the slowest-changing up: the dependencies (about 6 GB of wheels), then the Horovod
# compile, then the package's own code, so an edit to dap_hvd/ rebuilds only the last layer.
COPY pyproject.toml ./
RUN --mount=type=cache,target=/root/.cache/pip \
    python3 -m venv "$VENV" \
    && "$VENV/bin/pip" install --upgrade pip wheel setuptools \
    && "$VENV/bin/python" -c "import tomllib; deps = tomllib.load(open('pyproject.toml', 'rb'))['project']; \
                              print('\n'.join(deps['dependencies']))" > /tmp/requirements.txt \
    && "$VENV/bin/pip" install -r /tmp/requirements.txt "cmake>=3.25,<4" psutil cloudpickle packaging
# Horovod with NCCL: build_horovod.sh finds the pip NCCL that torch uses (header and library of
# one release), so there is one NCCL in the image (CI runs the same discovery and configure).
# Its wheel cache survives rebuilds in a cache mount, keyed by torch/Python/flavor/script.
COPY scripts/build_horovod.sh ./scripts/
# (the script prints the wheel's path last: the cache may hold wheels of earlier builds too)
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
RUN --mount=type=cache,target=/cache/dap-hvd --mount=type=cache,target=/root/.cache/pip \
    wheel=$(DAP_HVD_CACHE=/cache/dap-hvd MAX_JOBS="$MAX_JOBS" PATH="$VENV/bin:$PATH" \
            scripts/build_horovod.sh "$VENV/bin/python" nccl | tail -n 1) \
    && "$VENV/bin/pip" install --no-deps "$wheel" \
    && "$VENV/bin/python" -c "import horovod.torch as h; assert h.nccl_built() and h.gloo_built() and h.mpi_built()"
COPY README.md ./
COPY dap_hvd ./dap_hvd
RUN "$VENV/bin/pip" install --no-cache-dir --no-deps --no-build-isolation . && "$VENV/bin/dap-hvd" --version

FROM ${CUDA_RUNTIME_IMAGE}
ARG VERSION=0.1.0
LABEL org.opencontainers.image.title="dap-hvd" \
      org.opencontainers.image.description="Distributed ImageNet pre-training with Drop-and-Pick on Horovod + DALI" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.licenses="Apache-2.0"
# video: the GPU's hardware JPEG decoder (nvJPEG's hardware backend, DALI's --hw-decoder-load)
# is reachable only with the driver's video capability; the CUDA base image asks for
# compute,utility only. SSH_PORT: the port of the containers' sshd, which the launchers turn
# into horovodrun --ssh-port and mpirun's plm_rsh_args.
ENV DEBIAN_FRONTEND=noninteractive VENV=/opt/dap-hvd PATH=/opt/dap-hvd/bin:$PATH \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility,video SSH_PORT=2222 \
    OMPI_MCA_btl_vader_single_copy_mechanism=none DAP_HVD_CACHE=/home/dap/.cache/dap-hvd
# ubuntu:24.04 ships a user 'ubuntu' with uid 1000: remove it so 'dap' can have that uid.
# libibverbs1 + ibverbs-providers: without them NCCL falls back from InfiniBand to TCP sockets.
# gcc + libc6-dev + python3-dev: --compile's Triton compiles a small C driver module at run time
# (a C compiler and Python.h); about 200 MB more image (Debian 12's Installed-Size of the same
# packages; not measured on this image).
# No host keys in the image: the entrypoint makes them per container when it starts sshd.
COPY docker/ssh-setup.sh /usr/local/bin/dap-hvd-ssh-setup
RUN apt-get update && apt-get install -y --no-install-recommends \
        python3 openmpi-bin openssh-server openssh-client libibverbs1 ibverbs-providers util-linux \
        gcc libc6-dev python3-dev \
    && rm -rf /var/lib/apt/lists/* /etc/ssh/ssh_host_* \
    && (userdel --remove ubuntu 2> /dev/null || true) \
    && useradd --create-home --uid 1000 dap \
    && mkdir -p /run/sshd /home/dap/runs /home/dap/.cache/dap-hvd \
    && chown -R dap:dap /home/dap/runs /home/dap/.cache \
    && dap-hvd-ssh-setup /etc
COPY --from=build /opt/dap-hvd /opt/dap-hvd
COPY --chown=dap:dap launch /opt/dap-hvd-launch
COPY docker/entrypoint.sh /usr/local/bin/dap-hvd-entrypoint
WORKDIR /home/dap
# Metrics: rank r serves on the launchers' base port + local rank (27400-28423, see launch/common.sh).
EXPOSE 27400-27415 2222
# Starts as root only to install mounted ssh keys and start sshd; training runs as 'dap'.
ENTRYPOINT ["dap-hvd-entrypoint"]
CMD ["train", "--help"]
