#!/usr/bin/env bash
# Here, before a GPU run and before its rehearsal: what the GPU machine lacks, put where the device tool carries
# it from (both folders git-ignored):
#   .whl/cp312/   the wheels of bench/device_wheels.txt for the machine's Python 3.12 (manylinux, x86-64)
#   .whl/cpXY/    the same for this interpreter, for the rehearsal here
#   .device/      redis-server with the libraries it was built against (all but glibc's own), and
#                 .device/bin/redis-server, a wrapper that runs it with them
# Nothing is downloaded on the GPU machine, which reaches no registry. Runs again in seconds (pip keeps what
# it has). Needs a package registry and a redis-server here (Debian/Ubuntu: apt-get install redis-server).
set -euo pipefail
cd "$(dirname "$0")/.."

here=$(python3 -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')
# The device README's platforms: pip matches a manylinux tag exactly, so every one a wheel may carry is named.
platforms=()
for p in manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_24_x86_64 manylinux_2_17_x86_64 \
         manylinux2014_x86_64 manylinux1_x86_64; do
  platforms+=(--platform "$p")
done
for version in 3.12 "$here"; do
  folder=".whl/cp${version/./}"
  mkdir -p "$folder"
  grep -v '^#' bench/device_wheels.txt | grep . >"$folder/requirements.txt"
  python3 -m pip download -q --disable-pip-version-check --no-deps --only-binary=:all: \
    --python-version "$version" --implementation cp "${platforms[@]}" -d "$folder" -r "$folder/requirements.txt"
  rm "$folder/requirements.txt"
  # One version of each: a wheel left from an older list would stop the whole install there.
  for wheel in "$folder"/*.whl; do
    name=$(basename "$wheel" | cut -d- -f1-2 | tr '_' '-' | tr 'A-Z' 'a-z')
    grep -qix "${name%-*}==${name##*-}" <(grep -v '^#' bench/device_wheels.txt | tr '_' '-') \
      || { echo "removing $wheel: not in bench/device_wheels.txt"; rm "$wheel"; }
  done
done

binary=$(command -v redis-server) || { echo "redis-server not found here: apt-get install redis-server" >&2; exit 3; }
rm -rf .device/redis && mkdir -p .device/redis/lib .device/bin
cp -L "$binary" .device/redis/redis-server
# Every library it links but glibc's own (libc, libm, the loader and friends), which the machine has, newer.
ldd "$binary" | awk '/=> \//{print $3}' | grep -vE '/(libc|libm|libpthread|libdl|librt|libresolv)\.so|ld-linux' \
  | while read -r lib; do cp -L "$lib" .device/redis/lib/; done
cat >.device/bin/redis-server <<'WRAP'
#!/bin/sh
# The carried redis-server (bench/device_fetch.sh), run with the libraries it was built against.
here=$(cd "$(dirname "$0")/../redis" && pwd)
LD_LIBRARY_PATH="$here/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}" exec "$here/redis-server" "$@"
WRAP
chmod +x .device/bin/redis-server
.device/bin/redis-server --version
du -sh .whl/cp312 .device | sed 's/^/carried: /'
