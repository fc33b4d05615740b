# aLAN's image. NVIDIA GPU (the default):  docker build -t alan .
#               CPU only:                  docker build -t alan:cpu --build-arg VARIANT=cpu .
# Needs BuildKit (Docker 23+, and `docker compose build`): it builds only the chosen base and mounts the cache.

ARG VARIANT=cuda
# `base`, not `runtime`: PyTorch's wheels bring their own CUDA libraries (cuBLAS, cuDNN…), which faster-whisper uses
# too (see ldconfig below). The base image adds what the NVIDIA Container Toolkit needs to mount the host's driver
# and to refuse one too old for CUDA 12.8 (older than 570), saving ~2 GB of libraries nothing here would load.
ARG CUDA_IMAGE=nvidia/cuda:12.8.1-base-ubuntu24.04
ARG CPU_IMAGE=ubuntu:24.04
# PyTorch built for the base's CUDA (cu128), or for CPUs only (~200 MB instead of ~3 GB).
ARG CUDA_TORCH_INDEX=https://download.pytorch.org/whl/cu128
ARG CPU_TORCH_INDEX=https://download.pytorch.org/whl/cpu

FROM ${CUDA_IMAGE} AS base-cuda
ARG CUDA_TORCH_INDEX
ENV TORCH_INDEX_URL=${CUDA_TORCH_INDEX}

FROM ${CPU_IMAGE} AS base-cpu
ARG CPU_TORCH_INDEX
ENV TORCH_INDEX_URL=${CPU_TORCH_INDEX}

FROM base-${VARIANT}
ARG DEBIAN_FRONTEND=noninteractive
# Ubuntu 24.04's Python is 3.12 (aLAN needs 3.11+). libopus0: Discord voice. tini: PID 1 that forwards `docker stop`'s
# SIGTERM (Python as PID 1 ignores it until the event loop installs its handler) and reaps Ray's worker processes.
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv libopus0 ca-certificates tini \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --system --gid 10001 alan \
    && useradd --system --uid 10001 --gid alan --create-home --home-dir /home/alan --shell /usr/sbin/nologin alan \
    && install -d -o alan -g alan -m 0700 /data /models

# The venv belongs to root: the running aLAN can't change its own code.
RUN python3 -m venv /opt/alan
ENV PATH=/opt/alan/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# Dependencies first, from pyproject.toml alone, so that editing aLAN's code reuses this (multi-GB) layer: PyTorch
# from the variant's index, then the rest, with the `cluster` extra for `alan speech serve` (Ray Serve).
RUN --mount=type=cache,target=/root/.cache/pip \
    --mount=type=bind,source=pyproject.toml,target=/tmp/alan/pyproject.toml \
    pip install --index-url "$TORCH_INDEX_URL" torch \
    && python -c "import tomllib; p = tomllib.load(open('/tmp/alan/pyproject.toml', 'rb'))['project']; print('\n'.join(p['dependencies'] + p['optional-dependencies']['cluster']))" > /tmp/requirements.txt \
    && pip install -r /tmp/requirements.txt \
    && rm /tmp/requirements.txt
# faster-whisper (CTranslate2) loads cuBLAS and cuDNN by name: let it find those PyTorch's wheels installed (none on
# the CPU variant: an empty list).
RUN find /opt/alan -type d -path '*/site-packages/nvidia/*/lib' > /etc/ld.so.conf.d/alan-nvidia.conf && ldconfig

# Then aLAN itself, from a read-write bind of the build context (pip builds in it; nothing of it stays in the image).
RUN --mount=type=cache,target=/root/.cache/pip \
    --mount=type=bind,target=/tmp/alan,rw \
    pip install --no-deps /tmp/alan

# Data (the database, voices) and the model caches live in volumes; both folders are the alan user's alone.
ENV ALAN_DATA_DIR=/data \
    HF_HOME=/models/huggingface
# The alan user, by number: Kubernetes' runAsNonRoot can only check a numeric user.
USER 10001:10001
WORKDIR /home/alan

# Healthy while `alan run`'s event loop keeps beating; loading the models on start may take minutes.
HEALTHCHECK --interval=30s --timeout=10s --start-period=10m --retries=3 CMD ["alan", "health"]
ENTRYPOINT ["/usr/bin/tini", "--", "alan"]
CMD ["run"]
