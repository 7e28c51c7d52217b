"""What a member reads when a limit refuses their dream: durations rounded up, quotas with when they free up."""

from __future__ import annotations

import math

from .cost import units_text
from .limits import HOUR


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


def quota_message(kind: str, used: float, limit: int, units: float, retry: float | None) -> str:
    """Quotas count units of cost (dreamcore.cost): one standard image (1024x1024, 40 steps) is one."""
    who = "this server's " if kind.startswith("guild") else ""
    span = "hourly" if kind.endswith("hour") else "daily"
    label = f"{who}{span} quota"
    need = f"{units_text(units)} standard image{'s' * (units != 1)}"
    if retry is None:
        return f"this dream counts as {need} but {label} is {limit}; ask for fewer or smaller images"
    if used >= limit:
        return f"{label} {units_text(used)}/{limit} standard images used, resets in {human_duration(retry)}"
    return (f"{label} {units_text(used)}/{limit} standard images used and this dream counts as {need}; "
            f"enough frees up in {human_duration(retry)}")
