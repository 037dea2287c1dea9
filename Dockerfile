# syntax=docker/dockerfile:1
# GPU image for clusters: CUDA 13 + the pinned stack (torch 2.14.1, DALI, OpenMPI, Horovod 0.28.1
# built with NCCL by the same scripts/build_horovod.sh that CI uses), sshd for multi-node horovodrun.
#   docker build -t dap-hvd .
#   docker run --gpus all --ipc=host dap-hvd train --data /data/imagenet --preset imagenet
#   multi-node: docker run --gpus all --ipc=host --network=host -e DAP_HVD_SSHD=1 \
#               --device=/dev/infiniband --cap-add=IPC_LOCK -v ~/.ssh:/home/dap/.ssh:ro dap-hvd -- sleep infinity
# Needs a host driver for CUDA 13 (R580+). torch brings cuDNN and the CUDA libraries as wheels,
# Horovod links cudart statically and DALI brings nvImageCodec/nvJPEG, so the final stage needs
# only the CUDA base image.
ARG CUDA_IMAGE=nvidia/cuda:13.0.1-devel-ubuntu24.04
ARG CUDA_RUNTIME_IMAGE=nvidia/cuda:13.0.1-base-ubuntu24.04

FROM ${CUDA_IMAGE} AS build
ENV DEBIAN_FRONTEND=noninteractive PIP_NO_CACHE_DIR=1 VENV=/opt/dap-hvd
RUN apt-get update && apt-get install -y --no-install-recommends \
        python3 python3-venv python3-dev build-essential git libopenmpi-dev openmpi-bin \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY pyproject.toml README.md ./
COPY dap_hvd ./dap_hvd
COPY scripts ./scripts
RUN python3 -m venv "$VENV" \
    && "$VENV/bin/pip" install --upgrade pip wheel setuptools \
    && "$VENV/bin/pip" install . "cmake>=3.25,<4" psutil cloudpickle packaging
# Horovod with NCCL: build_horovod.sh finds the pip NCCL that torch uses (header and library of
# one release), so there is one NCCL in the image (CI runs the same discovery and configure).
RUN DAP_HVD_CACHE=/tmp/cache PATH="$VENV/bin:$PATH" scripts/build_horovod.sh "$VENV/bin/python" nccl \
    && "$VENV/bin/pip" install --no-deps /tmp/cache/wheels/*/horovod-*.whl \
    && "$VENV/bin/python" -c "import horovod.torch as h; assert h.nccl_built() and h.gloo_built() and h.mpi_built()" \
    && rm -rf /tmp/cache

FROM ${CUDA_RUNTIME_IMAGE}
ARG VERSION=0.1.0
LABEL org.opencontainers.image.title="dap-hvd" \
      org.opencontainers.image.description="Distributed ImageNet pre-training with Drop-and-Pick on Horovod + DALI" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.licenses="Apache-2.0"
ENV DEBIAN_FRONTEND=noninteractive VENV=/opt/dap-hvd PATH=/opt/dap-hvd/bin:$PATH \
    OMPI_MCA_btl_vader_single_copy_mechanism=none DAP_HVD_CACHE=/home/dap/.cache/dap-hvd
# ubuntu:24.04 ships a user 'ubuntu' with uid 1000: remove it so 'dap' can have that uid.
# libibverbs1 + ibverbs-providers: without them NCCL falls back from InfiniBand to TCP sockets.
# No host keys in the image: the entrypoint makes them per container when it starts sshd.
RUN apt-get update && apt-get install -y --no-install-recommends \
        python3 openmpi-bin openssh-server openssh-client libibverbs1 ibverbs-providers util-linux \
    && rm -rf /var/lib/apt/lists/* /etc/ssh/ssh_host_* \
    && (userdel --remove ubuntu 2> /dev/null || true) \
    && useradd --create-home --uid 1000 dap \
    && mkdir -p /run/sshd /home/dap/.ssh /home/dap/runs \
    && chown dap:dap /home/dap/runs \
    && sed -i 's/^#\?Port .*/Port 2222/; s/^#\?PasswordAuthentication .*/PasswordAuthentication no/' /etc/ssh/sshd_config
COPY --from=build /opt/dap-hvd /opt/dap-hvd
COPY --chown=dap:dap docker/ssh_config /home/dap/.ssh/config
COPY --chown=dap:dap launch /opt/dap-hvd-launch
COPY docker/entrypoint.sh /usr/local/bin/dap-hvd-entrypoint
WORKDIR /home/dap
EXPOSE 9400 2222
# Starts as root only to start sshd when asked (DAP_HVD_SSHD=1); training runs as 'dap'.
ENTRYPOINT ["dap-hvd-entrypoint"]
CMD ["train", "--help"]
