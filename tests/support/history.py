"""Older releases of this project, unpacked from its git history, for tests that run them beside the new code."""

from __future__ import annotations

import io
import os
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.support import ROOT


class NoHistory(Exception):
    """The clone has no git history to read (a tarball, or git missing)."""


def unpack_newest(changed_file: str, marker: str, paths: list[str], out: Path) -> str | None:
    """Unpack `paths` of the newest of the last 50 commits that changed `changed_file` and whose copy of it
    contains `marker`, into `out`; its path, or None when none of them does. NoHistory without git history."""
    try:
        revs = subprocess.run(["git", "log", "--format=%H", "-n", "50", "--", changed_file], cwd=ROOT,
                              capture_output=True, text=True, check=True).stdout.split()
    except (OSError, subprocess.CalledProcessError) as err:
        raise NoHistory(str(err)) from err
    for rev in revs:
        text = subprocess.run(["git", "show", f"{rev}:{changed_file}"], cwd=ROOT, capture_output=True,
                              text=True).stdout
        if marker in text:
            tar = subprocess.run(["git", "archive", rev, *paths], cwd=ROOT, capture_output=True, check=True).stdout
            out.mkdir()
            with tarfile.open(fileobj=io.BytesIO(tar)) as t:
                t.extractall(out, filter="data")
            return str(out)
    return None


def release_reading(tmp_path: Path, version: int, paths: list[str]) -> str:
    """The newest commit whose worker reads schema versions up to `version`, its `paths` unpacked; the test
    is skipped without git history, and fails there in CI."""
    try:
        old = unpack_newest("dreamcore/job.py", f"SCHEMA_VERSION = {version}", paths, tmp_path / "previous")
    except NoHistory:
        old = None
    if old is None:
        # .ci/run fetches the history and sets DREAMBOT_REQUIRE_HISTORY, so CI can't pass this by skipping.
        why = f"no git history with a worker of schema version {version} here (a shallow clone or a tarball)"
        if os.environ.get("DREAMBOT_REQUIRE_HISTORY"):
            pytest.fail(why + "; .ci/run needs the full history: git fetch --unshallow")
        pytest.skip(why)
    return old


def run_old_worker(old: str, module: str, env: dict, answered: Callable[[], bool], timeout: float = 240) -> str:
    """`python -m <module> worker --burst` of the release unpacked at `old`, until `answered()` says its jobs
    have their results; then it is stopped if it has not exited. Releases before 376c3c8 could take a minute
    to exit once done (redis-py's unbounded join of RQ's pubsub thread), which says nothing about the jobs.
    Returns what it printed; raises if it exits with an error, or answers nothing within `timeout`."""
    with tempfile.TemporaryFile() as out:
        proc = subprocess.Popen([sys.executable, "-m", module, "worker", "--burst"], env=env, cwd=old,
                                stdout=out, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        try:
            while not answered():
                if proc.poll() is not None and not answered():
                    break
                if time.monotonic() > deadline:
                    raise TimeoutError(f"the old worker answered nothing in {timeout:g} s")
                time.sleep(0.2)
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        out.seek(0)
        text = out.read().decode(errors="replace")
    assert proc.returncode in (0, -9), text[-3000:]  # a clean exit, or stopped here once done
    assert answered(), text[-3000:]
    return text
