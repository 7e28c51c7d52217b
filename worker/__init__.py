"""The GPU worker: holds SDXL base + refiner in memory and serves the dream queues."""

import os

# transformers warns at import time about optional image-processor backends this worker never uses.
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
