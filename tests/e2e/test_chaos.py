"""The shortened chaos run (bench/chaos.py --quick): nothing lost, nothing posted twice, under worker
SIGKILLs, a Redis restart and Discord 429/5xx bursts."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

from tests.support import ROOT


@pytest.mark.timeout(600)
def test_quick_chaos_run_loses_nothing_and_posts_nothing_twice():
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "chaos.py"), "--quick"], capture_output=True,
                          text=True, timeout=560, cwd=ROOT)
    line = next((x for x in proc.stdout.splitlines() if x.startswith("jobs ")), "")
    print("\n" + proc.stdout[-600:])
    m = re.fullmatch(r"jobs (\d+), delivered (\d+), told-failed (\d+), lost (\d+), duplicated (\d+)", line)
    assert m, proc.stdout[-3000:] + proc.stderr[-3000:]
    n, d, f, lost, dup = map(int, m.groups())
    assert d + f == n and lost == 0 and dup == 0
    assert d > 0
    assert proc.returncode == 0
