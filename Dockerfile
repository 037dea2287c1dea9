# syntax=docker/dockerfile:1
# GPU image for clusters: CUDA 13 + the pinned stack (torch 2.14.1, DALI, OpenMPI, Horovod 0.28.1
# built with NCCL by the same scripts/build_horovod.sh that CI uses), sshd for multi-node horovodrun.
#   docker build -t dap-hvd .
#   docker run --gpus all --ipc=host dap-hvd train --data /data/imagenet --preset imagenet
ARG CUDA_IMAGE=nvidia/cuda:13.0.1-cudnn-devel-ubuntu24.04
ARG CUDA_RUNTIME_IMAGE=nvidia/cuda:13.0.1-cudnn-runtime-ubuntu24.04

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
# Horovod with NCCL: the pip NCCL that torch uses, so there is one NCCL in the image.
RUN NCCL_HOME=$("$VENV/bin/python" -c 'import nvidia.nccl, os; print(os.path.dirname(nvidia.nccl.__file__))') \
    && HOROVOD_NCCL_HOME="$NCCL_HOME" HOROVOD_NCCL_LINK=SHARED DAP_HVD_CACHE=/tmp/cache \
       PATH="$VENV/bin:$PATH" scripts/build_horovod.sh "$VENV/bin/python" nccl \
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
RUN apt-get update && apt-get install -y --no-install-recommends \
        python3 openmpi-bin libopenmpi3 openssh-server openssh-client \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --create-home --uid 1000 dap \
    && mkdir -p /run/sshd /home/dap/.ssh \
    && sed -i 's/^#\?Port .*/Port 2222/; s/^#\?PasswordAuthentication .*/PasswordAuthentication no/' /etc/ssh/sshd_config
COPY --from=build /opt/dap-hvd /opt/dap-hvd
COPY --chown=dap:dap docker/ssh_config /home/dap/.ssh/config
COPY --chown=dap:dap launch /opt/dap-hvd-launch
USER 1000:1000
WORKDIR /home/dap
EXPOSE 9400 2222
ENTRYPOINT ["dap-hvd"]
CMD ["train", "--help"]
