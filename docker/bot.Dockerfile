# One Discord bot instance: `dreambot bot`. Needs Redis and a DISCORD_TOKEN; no GPU, and no torch.
# Build from the repository root:  docker build -f docker/bot.Dockerfile -t dreambot-bot .
# PYTHON_IMAGE: the Python base (bench/compose_up.sh builds a local stand-in from Debian's packages where
# Docker Hub can't be reached); the shipped default is the official slim image.
ARG PYTHON_IMAGE=python:3.11-slim-bookworm
FROM ${PYTHON_IMAGE}

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# Only the `bot` extra: discord.py and aiohttp on top of the shared core (pydantic, redis, rq).
WORKDIR /src
COPY . .
RUN pip install ".[bot]" \
 && cd / && rm -rf /src

# The bot image must never carry torch (several GB): fail the build if anything pulled it in.
RUN python -c "import importlib.util,sys; sys.exit(importlib.util.find_spec('torch') is not None)"
# The console script is there and the bot side imports with just the `bot` extra.
RUN dreambot --help >/dev/null && python -c "import bot.main, bot.client"
# The translation catalogs compiled beside the installed .po files (dreamcore/i18n.py reads the .mo; a catalog
# with an error fails the build).
RUN dreambot catalogs compile

# Non-root. Every path compose mounts a volume on exists here and belongs to that user: Docker creates a
# missing mount point owned by root, and a fresh named volume takes the ownership of the path it is
# mounted on (tests/e2e/test_deploy.py checks each mount against this list).
RUN useradd --create-home --uid 10001 --shell /usr/sbin/nologin dreambot \
 && mkdir -p /images \
 && chown dreambot:dreambot /images
USER dreambot
WORKDIR /home/dreambot

# Settings come from the environment (see .env.example). Python as PID 1 would ignore SIGTERM, so run it
# under an init: compose sets `init: true`; by hand, `docker run --init ...`.
CMD ["dreambot", "bot"]
