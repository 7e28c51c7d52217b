# One GPU worker: `dreambot worker` loads SDXL base + refiner once and serves the dream queues.
# Build from the repository root:  docker build -f docker/worker.Dockerfile -t dreambot-worker .
# Run with one GPU (NVIDIA Container Toolkit) and a volume at /models for the weights (~14 GB, fetched once).
#
# The base ships Python 3.11 and torch 2.5.1 built for CUDA 12.4 (pip wheels, driver >= 525 on the host).
# pyproject caps torch at <= 2.14.1; the pin below keeps pip on the base's CUDA build instead of
# replacing it with another wheel.
FROM pytorch/pytorch:2.5.1-cuda12.4-cudnn9-runtime

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    HF_HOME=/models

WORKDIR /src
COPY . .
RUN pip install ".[worker]" "torch==2.5.1" \
 && cd / && rm -rf /src

# Still the CUDA build of torch after the install (no GPU is needed to check that).
RUN python -c "import sys, torch; print('torch', torch.__version__, 'cuda', torch.version.cuda); sys.exit(torch.version.cuda is None)"
RUN dreambot --help >/dev/null

# Non-root; /models belongs to that user so a fresh named volume mounted there is writable.
RUN useradd --create-home --uid 10001 --shell /usr/sbin/nologin dreambot \
 && mkdir -p /models \
 && chown dreambot:dreambot /models
USER dreambot
WORKDIR /home/dreambot
VOLUME ["/models"]

# On SIGTERM the worker drains: it finishes the job in hand, then exits, so give it a long stop timeout and
# an init to pass the signal on (compose: `init: true`, `stop_grace_period`; by hand: `docker run --init
# --gpus '"device=0"' --stop-timeout 900 ...`).
CMD ["dreambot", "worker"]
