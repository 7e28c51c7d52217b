# rq-dashboard (https://github.com/Parallels/rq-dashboard): a web view of the RQ queues dream-high,
# dream-default, dream-low and dream-relax, the workers and the failed-job registry. Nothing of dreambot goes in: the
# image is rq-dashboard alone, pinned. Its Redis comes from RQ_DASHBOARD_REDIS_URL (docker-compose.yml).
# It has no login and can delete and requeue jobs: compose publishes it on 127.0.0.1 only.
ARG PYTHON_IMAGE=python:3.11-slim-bookworm
FROM ${PYTHON_IMAGE}

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

RUN pip install "rq-dashboard==0.9.0"

RUN useradd --create-home --uid 10001 --shell /usr/sbin/nologin dashboard
USER dashboard
WORKDIR /home/dashboard

EXPOSE 9181
CMD ["rq-dashboard", "--bind", "0.0.0.0", "--port", "9181"]
