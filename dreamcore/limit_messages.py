"""What a member reads when a limit refuses their dream: durations rounded up, quotas with when they free up."""

from __future__ import annotations

import math

from .limits import (
    HOUR,
)


def human_duration(seconds: float) -> str:
    """Rounded up, so a member who waits that long is never refused again: 23 s, 4 min 10 s, 5 h 12 min."""
    s = max(1, math.ceil(seconds - 1e-6))
    if s < 60:
        return f"{s} s"
    if s < HOUR:
        m, r = divmod(s, 60)
        return f"{m} min {r} s" if r else f"{m} min"
    h, m = divmod(math.ceil(s / 60), 60)
    return f"{h} h {m} min" if m else f"{h} h"


def dreams(n: int) -> str:
    return f"{n} dream" if n == 1 else f"{n} dreams"


def quota_message(kind: str, used: int, limit: int, images: int, retry: float | None) -> str:
    who = "this server's " if kind.startswith("guild") else ""
    span = "hourly" if kind.endswith("hour") else "daily"
    label = f"{who}{span} quota"
    if retry is None:
        return (f"this dream asks for {images} images but {label} is {limit}; ask for fewer images")
    if used >= limit:
        return f"{label} {used}/{limit} images, resets in {human_duration(retry)}"
    return (f"{label} {used}/{limit} images and this dream needs {images}; "
            f"enough frees up in {human_duration(retry)}")
