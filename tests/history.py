"""Older releases of this project, unpacked from its git history, for tests that run them beside the new code."""

from __future__ import annotations

import io
import subprocess
import tarfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


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
