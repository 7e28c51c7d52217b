# One GPU worker: `dreambot worker` loads SDXL base + refiner once and serves the dream queues.
# Build from the repository root:  docker build -f docker/worker.Dockerfile -t dreambot-worker .
# Run with one GPU (NVIDIA Container Toolkit) and a volume at /models for the weights (~14 GB, fetched once).
#
# torch 2.9.1 from PyPI: its Linux x86_64 wheel is the CUDA 12.8 build (cuDNN 9.10, with its CUDA libraries
# as pip packages), which drives Ampere, Ada, Hopper (sm_90) and Blackwell (sm_100, sm_120) cards; the host
# needs an NVIDIA driver of the 570 series or newer. pyproject.toml's torch range admits exactly what the
# suite (2.13.0, CPU) and this image run.
# PYTHON_IMAGE: the Python base (bench/compose_up.sh builds a local stand-in from Debian's packages where
# Docker Hub can't be reached); the shipped default is the official slim image.
ARG PYTHON_IMAGE=python:3.11-slim-bookworm
FROM ${PYTHON_IMAGE}

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    HF_HOME=/models

# torch first, on its own: a layer the code changes below don't rebuild.
RUN pip install "torch==2.9.1"
# torch.compile (DREAMBOT_COMPILE, auto: on with a GPU): Triton builds a small C launcher for its kernels with
# the system's C compiler, which the slim image lacks; without it the worker would run uncompiled.
RUN apt-get update \
 && apt-get install -y --no-install-recommends gcc libc6-dev \
 && rm -rf /var/lib/apt/lists/*

WORKDIR /src
COPY . .
# fp8: torchao, for DREAMBOT_FP8 (off by default).
RUN pip install ".[worker,fp8]" \
 && cd / && rm -rf /src

# Still the CUDA 12.8 build of torch after the install (no GPU is needed to check that).
RUN python -c "import sys, torch; print('torch', torch.__version__, 'cuda', torch.version.cuda); sys.exit(not (torch.version.cuda or '').startswith('12.8'))"
RUN dreambot --help >/dev/null
# The face pass's detector: OpenCV's cascade file, inside its wheel.
RUN python -c "from worker.faces import _detector; _detector()"

# Non-root. Every path compose mounts a volume on exists here and belongs to that user: Docker creates a
# missing mount point owned by root, and a fresh named volume takes the ownership of the path it is
# mounted on (tests/e2e/test_deploy.py checks each mount against this list).
RUN useradd --create-home --uid 10001 --shell /usr/sbin/nologin dreambot \
 && mkdir -p /models /images \
 && chown dreambot:dreambot /models /images
USER dreambot
WORKDIR /home/dreambot
VOLUME ["/models"]

# On SIGTERM the worker drains: it finishes the job in hand, then exits, so give it a long stop timeout and
# an init to pass the signal on (compose: `init: true`, `stop_grace_period`; by hand: `docker run --init
# --gpus '"device=0"' --stop-timeout 900 ...`).
CMD ["dreambot", "worker"]
