"""Fault points for crash tests: a process dies, or a connection breaks, exactly where a real failure would
hurt most. Production code reaches this module through one call, `hit(point)`, and every point it may name
is in POINTS with what arming it does; unarmed (always, outside the tests), `hit` returns False at the cost of
one environment lookup.

Armed by DREAMBOT_TEST_FAULTS (point names, comma-separated). It is read from the environment and not from
Settings on purpose: it is no setting an operator should ever find in .env.
"""

from __future__ import annotations

import os
import signal

KILL = "kill"  # SIGKILL the process there: nothing is flushed, no handler runs
BREAK_REDIS = "break-redis"  # raise redis.ConnectionError there once: the reply to that call never came
BREAK_STORE = "break-store"  # raise ImageStoreError there once: the image store dropped the connection
OOM = "oom"  # raise a CUDA out-of-memory error there once
ONCE = "once"  # `hit` is True the first time (the caller breaks what it makes: a NaN image)

POINTS = {
    "bot-after-post": KILL,  # bot: the result posted, its delivery not yet recorded
    "worker-mid-job": KILL,  # worker: in a denoising step
    "worker-after-publish": KILL,  # worker: the result published, RQ not yet told
    "worker-oom": OOM,  # worker: a job admitted, before its GPU work
    "worker-nan": ONCE,  # worker: the first batch's latents poisoned (a broken fp16 VAE or driver)
    "publish-after-images": BREAK_STORE,  # worker: images stored, the buttons' record not yet
    "publish-after-params": BREAK_STORE,  # worker: everything stored, the result not yet published
    "publish-after-result": BREAK_REDIS,  # worker: the result published, the script's reply lost
}

_fired: set[str] = set()


def armed(point: str) -> bool:
    listed = os.environ.get("DREAMBOT_TEST_FAULTS")
    return bool(listed) and point in {p.strip() for p in listed.split(",")}


def hit(point: str) -> bool:
    """Production code's one hook: does what arming `point` does (POINTS). Returns True only for a ONCE point
    the first time it is reached armed; a KILL point acts every time, the others the first time."""
    action = POINTS[point]  # a KeyError here is a misspelt point: every point is declared above
    if not armed(point):
        return False
    if action == KILL:
        os.kill(os.getpid(), signal.SIGKILL)
    if point in _fired:
        return False
    _fired.add(point)
    message = f"{point} (injected by DREAMBOT_TEST_FAULTS)"
    if action == BREAK_REDIS:
        import redis

        raise redis.ConnectionError(f"connection broken at {message}")
    if action == BREAK_STORE:
        from .images import ImageStoreError

        raise ImageStoreError(f"connection broken at {message}")
    if action == OOM:
        raise RuntimeError(f"CUDA out of memory at {message}")
    return True
