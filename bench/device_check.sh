#!/usr/bin/env bash
# The GPU run in one call, and its rehearsal here: the same steps, the same install, the same script.
#
# On the GPU machine (the device tool's `run`, carry [".whl/cp312", ".device"], timeout_s 600):
#     bash bench/device_check.sh
# Here, on the CPU with the tiny model (tests/e2e/test_device_check.py runs exactly this):
#     bash bench/device_fetch.sh && bash bench/device_check.sh --rehearse
#
# Steps: (1) the carried wheels (bench/device_wheels.txt, fetched here by bench/device_fetch.sh) installed with
# --no-deps into a folder put first on PYTHONPATH, the device README's line; (2) the carried redis-server put
# first on PATH; (3) bench/device_deps.py: every requirement of every wheel met; (4) bench/gpu_sdxl.py, its rows
# flushed to $OUT as they end, a table and the VERDICT last. Everything printed is also in $OUT (default
# ./device-check): device-check.log, gpu_sdxl.txt, rows.jsonl.
#
# Exit status: gpu_sdxl.py's (0: it ran to its table; 4: the smoke failed), 3 when a step before it failed.
set -euo pipefail
cd "$(dirname "$0")/.."
rehearse=0
[[ "${1:-}" == "--rehearse" ]] && rehearse=1
out="${OUT:-device-check}"
mkdir -p "$out"
log="$out/device-check.log"
# The device call's limit is 600 s: the script's rows end inside the budget, its table comes after.
budget_s="${DEVICE_CHECK_BUDGET_S:-$([[ $rehearse == 1 ]] && echo 300 || echo 520)}"
say() { printf '[device-check %(%H:%M:%S)T] %s\n' -1 "$*" | tee -a "$log"; }
fail() { say "STOP: $*"; exit 3; }

tag=$(python3 -c 'import sys; print(f"cp{sys.version_info[0]}{sys.version_info[1]}")')
say "python3 $(python3 -c 'import sys; print(sys.version.split()[0])') ($tag); rehearse=$rehearse; budget ${budget_s}s"

# 1. The wheels.
site="${DEVICE_SITE:-$(mktemp -d /tmp/dreambot-site-XXXXXX)}"
ls .whl/"$tag"/*.whl >/dev/null 2>&1 || fail "no wheels in .whl/$tag: run bench/device_fetch.sh here and carry .whl/$tag"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$site" .whl/"$tag"/*.whl \
  2>&1 | grep -v "Running pip as the 'root' user" | tee -a "$log" || true
export PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}"
say "wheels installed into $site"

# 2. redis-server, carried.
[[ -x .device/bin/redis-server ]] || fail "no .device/bin/redis-server: run bench/device_fetch.sh here and carry .device"
export PATH="$PWD/.device/bin:$PATH"
say "$(redis-server --version)" || fail "the carried redis-server does not run here"

# 3. Every requirement met: by what is installed now, and (the rehearsal) by the machine as listed.
python3 bench/device_deps.py --against installed 2>&1 | tee -a "$log" || fail "a carried wheel's requirement is unmet"
if [[ $rehearse == 1 ]]; then
  python3 bench/device_deps.py --against listed 2>&1 | tee -a "$log" || fail "the GPU machine would miss a requirement"
fi
if [[ $rehearse == 0 ]] && command -v nvidia-smi >/dev/null; then
  nvidia-smi --query-gpu=name,memory.total,memory.used,clocks.sm,clocks.max.sm,driver_version --format=csv,noheader \
    | tee -a "$log" || true
fi

# 4. The run. SIGINT past the budget's end leaves the script its table; the kill comes later still.
status=0
args=(--budget-s "$budget_s" --out "$out")
[[ $rehearse == 1 ]] && args+=(--rehearse)
PYTHONUNBUFFERED=1 timeout --signal=INT --kill-after=20 $((budget_s + 40)) python3 bench/gpu_sdxl.py "${args[@]}" \
  || status=$?
say "done (status $status); $(grep -m1 '^VERDICT' "$out/gpu_sdxl.txt" || echo 'no VERDICT')"
exit $status
