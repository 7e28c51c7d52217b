"""`dreambot demo` end to end in a subprocess: private redis-server, queue, worker, outbox, files."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from PIL import Image


def test_demo_writes_images_of_the_asked_size(tiny_model_dir, tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("REDIS_URL", "DREAMBOT_"))}
    env["HF_HUB_OFFLINE"] = "1"
    out = tmp_path / "out"
    proc = subprocess.run(
        # The README's order: --tiny straight before the prompt.
        [sys.executable, "-m", "dreambot", "demo", "--tiny", "a lighthouse at dusk", "--tiny-dir", str(tiny_model_dir),
         "--aspect", "7:9", "--count", "2", "--seed", "3", "--steps", "5", "--out", str(out)],
        env=env, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "started a private redis-server" in proc.stdout
    assert "seed 3, 4" in proc.stdout and "896x1152" in proc.stdout
    pngs = sorted(out.glob("*.png"))
    assert len(pngs) == 2
    for p in pngs:
        with Image.open(p) as img:
            img.load()
            assert img.size == (896, 1152)
    meta = json.loads(next(out.glob("*.json")).read_text())
    assert meta["status"] == "done" and meta["request"]["prompt"] == "a lighthouse at dusk"
    assert meta["base_steps"] == 4 and meta["refiner_steps"] == 1


def test_demo_reports_bad_options(tiny_model_dir, tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("REDIS_URL", "DREAMBOT_"))}
    proc = subprocess.run(
        [sys.executable, "-m", "dreambot", "demo", "x", "--tiny", "--tiny-dir", str(tiny_model_dir), "--count", "9"],
        env=env, capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 2
    assert "count" in proc.stdout and "allowed 1 to 4" in proc.stdout
