"""The operator's commands, run as an operator runs them: `dreambot server` and `dreambot adopt-jobs`."""

from __future__ import annotations

import os
import subprocess
import sys

from dreamcore import servers


def _dreambot(redis_url: str, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "REDIS_URL": redis_url}
    return subprocess.run([sys.executable, "-m", "dreambot", *args], env=env, capture_output=True, text=True,
                          timeout=60)


def test_the_operator_sets_shows_and_clears_a_servers_policy(redis_url, rconn):
    out = _dreambot(redis_url, "server", "123456789", "--priority", "high", "--max-queued", "40",
                    "--units-day", "300")
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "server 123456789: priority high, max-queued 40, units-hour none, units-day 300"
    assert servers.get(rconn, 123456789) == servers.ServerPolicy(priority="high", max_queued=40, units_day=300)
    out = _dreambot(redis_url, "server", "123456789", "--units-day", "none")
    assert "units-day none" in out.stdout and "max-queued 40" in out.stdout
    assert _dreambot(redis_url, "server", "123456789", "--clear").stdout.strip() == (
        "server 123456789: priority default, max-queued none, units-hour none, units-day none")
    bad = _dreambot(redis_url, "server", "123456789", "--max-queued", "0")
    assert bad.returncode == 2 and "a whole number from 1, or none" in bad.stderr
    bad = _dreambot(redis_url, "server", "not-an-id")
    assert bad.returncode == 2 and "is not a Discord id" in bad.stderr
    too_many = _dreambot(redis_url, "server", "123456789", "--max-queued", "100001")
    assert too_many.returncode == 2 and "max_queued" in too_many.stderr


def test_adopt_jobs_says_what_it_adopted(redis_url):
    out = _dreambot(redis_url, "adopt-jobs")
    assert out.returncode == 0 and out.stdout.strip() == "adopted 0 jobs", out.stdout + out.stderr
