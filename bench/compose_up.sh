#!/usr/bin/env bash
# Start the shipped docker-compose.yml for real on this machine and dream through it (bench/compose_up.py).
# Installs what it needs when missing (Debian's docker.io engine, debootstrap, docker-compose 1.29), starts
# dockerd when none answers, builds the local base images (bench/local_images.sh), then runs the bench.
#   bash bench/compose_up.sh [--keep]
set -euo pipefail
cd "$(dirname "$0")/.."

need=()
command -v dockerd >/dev/null || need+=(docker.io)
command -v debootstrap >/dev/null || need+=(debootstrap)
command -v docker-compose >/dev/null || need+=(docker-compose)
if [ ${#need[@]} -gt 0 ]; then
  echo "installing ${need[*]}"
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi
if ! docker info >/dev/null 2>&1; then
  echo "starting dockerd (log: /tmp/dockerd.log)"
  (dockerd >/tmp/dockerd.log 2>&1 &)
  for _ in $(seq 1 60); do docker info >/dev/null 2>&1 && break; sleep 1; done
  docker info >/dev/null
fi
bash bench/local_images.sh
exec python bench/compose_up.py "$@"
