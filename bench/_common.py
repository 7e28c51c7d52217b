"""Shared by the bench scripts: paths, a private Redis configured like production, limits, small statistics.

The scripts run as `python bench/<name>.py`, so this directory is sys.path[0] and `import _common` works.
"""

from __future__ import annotations

import math
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
for p in (ROOT,):
    if str(p) not in sys.path:
        sys.path.insert(0, str(p))

os.environ.setdefault("HF_HUB_OFFLINE", "1")
# One image store for the bench's own worker and the bots it starts (tests/support/fleet.py passes this on).
os.environ.setdefault("DREAMBOT_IMAGE_DIR", tempfile.mkdtemp(prefix="dreambot-bench-images-"))

import redis  # noqa: E402

from dreamcore.localredis import LocalRedis  # noqa: E402

# Generous limits: the benches measure the machinery, not the limits refusing work. The values are the
# highest dreamcore/settings.py accepts (DREAMBOT_LIMIT_USER_MAX_ACTIVE stops at 50, so the benches spread
# their requests over many members instead of setting 1000).
GENEROUS_LIMITS = {
    "DREAMBOT_LIMIT_COOLDOWN_S": "0",
    "DREAMBOT_LIMIT_USER_MAX_ACTIVE": "50",
    "DREAMBOT_LIMIT_USER_IMAGES_HOUR": "1000",
    "DREAMBOT_LIMIT_USER_IMAGES_DAY": "5000",
    "DREAMBOT_LIMIT_GUILD_IMAGES_HOUR": "5000",
    "DREAMBOT_LIMIT_GUILD_IMAGES_DAY": "20000",
    "DREAMBOT_LIMIT_MAX_IMAGES": "4",
    "DREAMBOT_LIMIT_MAX_STEPS": "100",
    "DREAMBOT_LIMIT_GUILD_MAX_QUEUED": "1000",
    "DREAMBOT_MAX_WAIT_MIN": "1440",
    "DREAMBOT_LOG_LEVEL": "INFO",
}


def start_redis() -> LocalRedis:
    """A private redis-server as docker-compose runs it: AOF on, fsync once a second (LocalRedis's own
    default, fsync on every write, is for the crash tests)."""
    server = LocalRedis().start()
    conn = redis.Redis.from_url(server.url)
    conn.config_set("appendfsync", "everysec")
    conn.close()
    return server


def machine() -> str:
    load = " ".join(f"{x:.1f}" for x in os.getloadavg())
    return (f"{os.cpu_count()}-core {platform.machine()} CPU, {platform.python_implementation()} "
            f"{platform.python_version()}, load average {load} at start")


def pct(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100); nan for no values."""
    if not values:
        return math.nan
    s = sorted(values)
    k = max(0, min(len(s) - 1, math.ceil(q / 100 * len(s)) - 1))
    return s[k]


def fmt_ms(v: float) -> str:
    return "-" if math.isnan(v) else f"{v:.1f}"


def commandstats(conn: redis.Redis) -> dict[str, tuple[int, int]]:
    """{command: (calls, usec)} from INFO commandstats (commands run inside Lua scripts included)."""
    raw = conn.info("commandstats")
    out = {}
    for key, v in raw.items():
        name = key.removeprefix("cmdstat_")
        out[name] = (int(v["calls"]), int(v["usec"]))
    return out


def stats_delta(after: dict, before: dict, exclude: tuple[str, ...] = ("info",)) -> dict[str, tuple[int, int]]:
    out = {}
    for name, (calls, usec) in after.items():
        if name in exclude:
            continue
        c0, u0 = before.get(name, (0, 0))
        if calls - c0:
            out[name] = (calls - c0, usec - u0)
    return out


def proc_cpu_s(pid: int) -> float:
    """utime + stime of a process, in seconds (Linux /proc)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return math.nan
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def wait_until(predicate, timeout: float, interval: float = 0.02) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return predicate()
