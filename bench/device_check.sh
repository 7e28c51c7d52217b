#!/usr/bin/env bash
# The GPU check, sized for a short GPU window: one command, at most ~8 minutes on an H100/H200, nothing
# downloaded. It checks what is installed (the GPU machine reaches no package registry: missing wheels go in
# bench/wheels/, installed from there with --no-index), then runs bench/gpu_sdxl.py: the full-size SDXL 1.0
# base + refiner with random weights built on the GPU, the real worker (Redis, queue, make_worker) and
# vanilla diffusers side by side at 1024x1024, 40 steps, split 0.8, bf16, ending in its VERDICT line.
#
#   bash bench/device_check.sh              # on the GPU machine; figures to $OUT (or ./device-check)
#   bash bench/device_check.sh --rehearse   # here, on the CPU: the same steps on the tiny model
#
# Exit status: gpu_sdxl.py's (0 when its VERDICT passes), 3 when a package is missing.
set -euo pipefail
cd "$(dirname "$0")/.."
out="${OUT:-device-check}"
mkdir -p "$out"
rehearse=0
[[ "${1:-}" == "--rehearse" ]] && rehearse=1
budget_s="${DEVICE_CHECK_BUDGET_S:-480}"

say() { printf '[device-check %(%H:%M:%S)T] %s\n' -1 "$*" | tee -a "$out/device-check.log"; }

say "python $(python -c 'import sys; print(sys.version.split()[0])'); budget ${budget_s}s; rehearse=${rehearse}"
if ls bench/wheels/*.whl >/dev/null 2>&1; then
  say "installing the carried wheels (no index)"
  python -m pip install -q --no-index --find-links bench/wheels bench/wheels/*.whl 2>&1 | tail -3 | tee -a "$out/device-check.log"
fi
missing=$(python - <<'EOF'
import importlib
need = ["torch", "diffusers", "transformers", "accelerate", "safetensors", "redis", "rq", "pydantic",
        "pydantic_settings", "PIL", "numpy", "discord", "prometheus_client", "psutil"]
print(" ".join(m for m in need if importlib.util.find_spec(m) is None))
EOF
)
if [[ -n "$missing" ]]; then
  say "missing packages: $missing (put their wheels in bench/wheels/: pip download --only-binary=:all: ...)"
  exit 3
fi
python -c 'import torch, diffusers, transformers; print(f"torch {torch.__version__} (cuda {torch.version.cuda}), diffusers {diffusers.__version__}, transformers {transformers.__version__}; cuda available: {torch.cuda.is_available()}")' | tee -a "$out/device-check.log"
command -v redis-server >/dev/null || { say "redis-server not found (the worker path needs it: apt-get install redis-server, or carry the binary)"; exit 3; }
status=0
if [[ $rehearse == 1 ]]; then
  say "rehearsal: bench/gpu_sdxl.py --smoke (CPU, tiny model)"
  timeout "$budget_s" python bench/gpu_sdxl.py --smoke --out "$out/gpu_sdxl.txt" || status=$?
else
  command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee -a "$out/device-check.log"
  # The model folders go to local disk (from_pretrained is the path real weights take); ~11 GB in bf16.
  timeout "$budget_s" python bench/gpu_sdxl.py --model-dir "${MODEL_DIR:-/tmp/sdxl-random}" --out "$out/gpu_sdxl.txt" || status=$?
fi
say "done (status $status); VERDICT: $(grep -m1 '^VERDICT' "$out/gpu_sdxl.txt" || echo none)"
exit $status
