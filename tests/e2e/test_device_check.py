"""The GPU run's one call, rehearsed here exactly as it will run there (bench/device_check.sh): the carried
wheels fetched by bench/device_fetch.sh and installed with --no-deps into a folder first on PYTHONPATH, the
carried redis-server first on PATH, every wheel's requirements checked, then bench/gpu_sdxl.py's rows in order
on the CPU with the tiny model. What it prints is no measurement; that every row runs is the point."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support import ROOT

ROWS = [
    "SDPA kernel", "smoke: tiny model through the worker", "matrix product", "device copy",
    "vanilla diffusers, batch of 1", "worker, queue of 8, uncompiled", "worker, 1 job alone",
    "worker, queue of 8, turbo", "vanilla diffusers, batch of 8", "compile: cold warm-up", "worker, queue of 8, compiled",
    "restart with the compiled code on disk", "worker, queue of 8, uncompiled + step cache every 3 steps",
    "worker, queue of 8, uncompiled + fp8 dynamic", "worker, queue of 8, uncompiled + refiner's last 4 steps unguided",
]


def _env(**extra) -> dict:
    # python3 in the scripts is this interpreter, as on the machine it is the image's only one.
    return {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}", **extra}


@pytest.fixture(scope="module")
def carried():
    """bench/device_fetch.sh: the wheels (from the package registry) and the redis-server, as before a GPU run."""
    done = subprocess.run(["bash", "bench/device_fetch.sh"], cwd=ROOT, env=_env(), capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    return done.stdout


def test_the_gpu_run_rehearsed_as_it_will_run(carried, tmp_path):
    out = tmp_path / "out"
    # A budget the CPU can't outrun when another test shares its two cores (CI ran out of the default 300 s once).
    done = subprocess.run(["bash", "bench/device_check.sh", "--rehearse"], cwd=ROOT,
                          env=_env(OUT=str(out), DEVICE_CHECK_BUDGET_S="600"), capture_output=True, text=True,
                          timeout=900)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    log = (out / "device-check.log").read_text()
    assert log.count("requirements: all met") == 2  # on this interpreter, and on the machine as listed
    assert "Redis server v=" in log
    text = (out / "gpu_sdxl.txt").read_text()
    # The carried wheels are what ran, and the carried redis-server.
    assert "diffusers, pydantic and redis from /tmp/dreambot-site-" in text
    assert f"redis-server {ROOT / '.device' / 'bin' / 'redis-server'}" in text
    rows = [json.loads(line) for line in (out / "rows.jsonl").read_text().splitlines()]
    assert [r["name"] for r in rows] == ROWS, [(r["name"], r["status"], r["note"]) for r in rows]
    assert all(r["status"] == "ok" for r in rows), [r for r in rows if r["status"] != "ok"]
    assert next(r for r in rows if r["name"] == "worker, queue of 8, compiled")["extra"]["deviation"] < 1e-2
    assert next(r for r in rows if r["name"] == "worker, queue of 8, uncompiled")["images"] == 8
    # Turbo on the same worker, which loaded the adapter: its 8 images, charged a fraction of a standard one.
    turbo = next(r for r in rows if r["name"] == "worker, queue of 8, turbo")
    assert turbo["images"] == 8 and 0 < turbo["extra"]["charged"] < 0.1 and turbo["extra"]["vs_quality"] > 0
    assert 0 < next(r for r in rows if "step cache" in r["name"])["extra"]["deviation"] < 0.1
    # The restarted worker looks for the compiled code under the name the first one saved it by.
    saved = re.search(r"sdxl-[0-9a-f]{16}\.bin", next(r for r in rows if r["name"] == "compile: cold warm-up")["note"])
    assert saved and saved.group(0) in next(r for r in rows if r["name"].startswith("restart with"))["note"]
    assert "VERDICT (rehearsal: not a measurement):" in text and "vanilla batch 1" in text


def test_a_requirement_the_machine_would_miss_is_caught_before_the_run(carried, tmp_path):
    wheels = (ROOT / "bench" / "device_wheels.txt").read_text()
    short = tmp_path / "wheels.txt"
    short.write_text(wheels.replace("typing-inspection==0.4.2\n", ""))
    done = subprocess.run([sys.executable, "bench/device_deps.py", "--against", "listed", "--list", str(short)],
                          cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 1
    assert "UNMET: pydantic needs typing-inspection>=0.4.2: neither carried nor on the machine" in done.stdout
    # A wheel listed but not fetched.
    empty = tmp_path / "empty"
    empty.mkdir()
    shutil.copy(next((ROOT / ".whl" / "cp312").glob("redis-*.whl")), empty)
    done = subprocess.run([sys.executable, "bench/device_deps.py", "--against", "listed", "--wheels", str(empty)],
                          cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 1 and "diffusers==0.42.1: no wheel in" in done.stdout
