"""The GPU worker: SDXL base + refiner pipeline, prompt encoding, image encoding, and a tiny test model."""
