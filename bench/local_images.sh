#!/usr/bin/env bash
# Local stand-ins for the base images docker-compose.yml builds on, made from Debian's packages, for a machine
# that reaches Debian's mirror but not Docker Hub:
#   dreambot-local/python:3.11-bookworm  for python:3.11-slim-bookworm (the bot, worker and dashboard images'
#                                        PYTHON_IMAGE): Debian 12's Python 3.11 in a venv on the PATH, so
#                                        `python`, `pip` and installed scripts work as in the official image
#   dreambot-local/redis:7-bookworm      for redis:7-alpine: Debian 12's redis-server 7.0 and redis-cli, run
#                                        as the image's own `redis` user with /data belonging to it
# Each is debootstrapped into a folder and `docker import`ed once; an image already there is kept (REBUILD=1
# makes them again). The worker's torch is not a stand-in: its Dockerfile installs the shipped one from PyPI.
# The Python image trusts what this machine trusts: the CAs in /usr/local/share/ca-certificates (a proxy that
# inspects TLS on the way to PyPI, as in this sandbox and in many companies) are added to its bundle, and pip
# is pointed at that bundle (a venv's pip otherwise reads only its own copy of certifi's).
set -euo pipefail

MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
WORK=${DREAMBOT_ROOTFS_DIR:-/var/tmp/dreambot-rootfs}
PY_IMAGE=dreambot-local/python:3.11-bookworm
REDIS_IMAGE=dreambot-local/redis:7-bookworm

say() { printf '[local-images %s] %s\n' "$(date +%T)" "$*"; }

have() { [ "${REBUILD:-0}" != 1 ] && docker image inspect "$1" >/dev/null 2>&1; }

rootfs() {  # rootfs <dir> <comma-separated packages>
  rm -rf "$1"
  mkdir -p "$(dirname "$1")"
  debootstrap --variant=minbase --include="$2" bookworm "$1" "$MIRROR" >"$1.log" 2>&1 \
    || { tail -20 "$1.log"; exit 1; }
  rm -rf "$1"/var/cache/apt/archives/*.deb "$1"/var/lib/apt/lists/*
}

if have "$PY_IMAGE"; then
  say "$PY_IMAGE is there"
else
  say "building $PY_IMAGE (debootstrap bookworm + python3)"
  dir=$WORK/python
  rootfs "$dir" python3,python3-venv,ca-certificates
  if ls /usr/local/share/ca-certificates/*.crt >/dev/null 2>&1; then
    cp /usr/local/share/ca-certificates/*.crt "$dir/usr/local/share/ca-certificates/"
    chroot "$dir" update-ca-certificates >/dev/null
  fi
  printf '[global]\ncert = /etc/ssl/certs/ca-certificates.crt\n' > "$dir/etc/pip.conf"
  chroot "$dir" python3 -m venv /usr/local/python
  tar -C "$dir" -c . | docker import \
    --change 'ENV PATH=/usr/local/python/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'ENV LANG=C.UTF-8' \
    --change 'CMD ["python3"]' - "$PY_IMAGE" >/dev/null
  rm -rf "$dir"
  say "$PY_IMAGE built: $(docker run --rm "$PY_IMAGE" python --version)"
fi

if have "$REDIS_IMAGE"; then
  say "$REDIS_IMAGE is there"
else
  say "building $REDIS_IMAGE (debootstrap bookworm + redis-server)"
  dir=$WORK/redis
  rootfs "$dir" redis-server,redis-tools
  mkdir -p "$dir/data"
  chroot "$dir" chown redis:redis /data
  tar -C "$dir" -c . | docker import \
    --change 'USER redis' --change 'WORKDIR /data' \
    --change 'CMD ["redis-server"]' - "$REDIS_IMAGE" >/dev/null
  rm -rf "$dir"
  say "$REDIS_IMAGE built: $(docker run --rm "$REDIS_IMAGE" redis-server --version | cut -d' ' -f1-3)"
fi
