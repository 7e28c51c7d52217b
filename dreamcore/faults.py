"""Fault points for crash tests: a process dies exactly where a real crash would hurt most.

Off unless DREAMBOT_TEST_FAULTS names a point (comma-separated). It is read from the environment and not
from Settings on purpose: it is no setting an operator should ever find in .env.
"""

from __future__ import annotations

import os
import signal


def armed(point: str) -> bool:
    return point in {p.strip() for p in os.environ.get("DREAMBOT_TEST_FAULTS", "").split(",") if p.strip()}


def crash_here(point: str) -> None:
    """SIGKILL this process at `point` when armed: nothing is flushed, no handler runs."""
    if armed(point):
        os.kill(os.getpid(), signal.SIGKILL)


_fired: set[str] = set()


def once(point: str) -> bool:
    """True the first time an armed point is reached in this process, False after (and when unarmed)."""
    if not armed(point) or point in _fired:
        return False
    _fired.add(point)
    return True


def break_connection(point: str, error: type[Exception] | None = None) -> None:
    """Raise `error` (by default redis.ConnectionError) at `point` the first time it is reached when armed: the
    connection broke right there (in a retry loop, the next try runs as after a real break)."""
    if once(point):
        if error is None:
            import redis

            error = redis.ConnectionError
        raise error(f"connection broken at {point} (injected by DREAMBOT_TEST_FAULTS)")
