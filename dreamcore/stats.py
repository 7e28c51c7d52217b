"""Measured throughput, kept in Redis, for queue ETAs and for refusing work the pool can't reach in time.

Speed is kept as seconds per unit of cost (dreamcore.cost), a moving average per kind of job (a dream, a
variation, an upscale: their units are estimates, and each kind's estimate errs its own way), per mode where
the mode runs another path (a turbo dream's four steps leave its fixed costs weighing more: `speed_key`),
and one over every job. The work ahead of a waiting job mixes kinds and modes, so it is timed with the
overall figure; the job's own part with its own kind's and mode's.
"""

from __future__ import annotations

import redis
from rq import Worker

from .job import KINDS
from .keys import STATS_KEY
from .modes import TURBO_KINDS
from .queue.fair_order import Place

EWMA_ALPHA = 0.2  # about the last ten jobs
SPEED_KEYS = (*KINDS, *(f"turbo-{k}" for k in TURBO_KINDS))
_FIELDS = ("s_per_unit", *(f"s_per_unit:{k}" for k in SPEED_KEYS))


def speed_key(job) -> str:
    """The figure a job's (a dreamcore.job.DreamJob's) own time is measured and foretold by: its kind's, or
    for a turbo job its kind's in turbo."""
    return f"turbo-{job.kind}" if job.request.mode == "turbo" else job.kind


def record_job(conn: redis.Redis, seconds: float, units: float, kind: str = "dream") -> None:
    """Fold one finished job (or batch) into the moving averages of seconds per unit, overall and its kind's."""
    per_unit = seconds / max(0.01, units)
    old = dict(zip(("all", "kind"), conn.hmget(STATS_KEY, ["s_per_unit", f"s_per_unit:{kind}"]), strict=True))

    def ewma(prev) -> str:
        return f"{per_unit if prev is None else (1 - EWMA_ALPHA) * float(prev) + EWMA_ALPHA * per_unit:.4f}"

    with conn.pipeline() as pipe:
        pipe.hset(STATS_KEY, mapping={"s_per_unit": ewma(old["all"]), f"s_per_unit:{kind}": ewma(old["kind"])})
        pipe.hincrbyfloat(STATS_KEY, "units", round(units, 2))
        pipe.hincrby(STATS_KEY, "jobs", 1)
        pipe.execute()


# Seconds per unit are believed up to this: no GPU this project runs on takes ten minutes for one standard
# image, and a figure past it (a worker's bug, or anyone with a worker's Redis rights) would tell every
# server "busy" (per-server backpressure reads it).
MAX_S_PER_UNIT = 600.0


def _speed(raw) -> float | None:
    try:
        value = float(raw) if raw is not None else None
    except ValueError:
        return None
    return None if value is None or not value > 0 else min(value, MAX_S_PER_UNIT)


class Speed:
    """The pool's measured speed, read once: seconds per unit overall and per kind (None before anything
    was measured), and how many workers share the work."""

    def __init__(self, conn: redis.Redis):
        got = dict(zip(_FIELDS, conn.hmget(STATS_KEY, list(_FIELDS)), strict=True))
        self.overall = _speed(got["s_per_unit"])
        self.per_kind = {k: v for k in SPEED_KEYS if (v := _speed(got[f"s_per_unit:{k}"])) is not None}
        self.workers = Worker.count(connection=conn)

    def of(self, kind: str | None) -> float | None:
        """Seconds per unit of a speed key (speed_key), the overall figure before that key was measured."""
        return self.per_kind.get(kind or "", self.overall)

    def eta_s(self, units_ahead: float, own_units: float, kind: str | None = None) -> float | None:
        """Seconds until a job with `units_ahead` of work before it is done; None before anything was measured."""
        if self.overall is None:
            return None
        own = self.of(kind) or self.overall
        return (units_ahead * self.overall + own_units * own) / max(1, self.workers)


def seconds_per_unit(conn: redis.Redis, kind: str | None = None) -> float | None:
    return Speed(conn).of(kind)


def etas(conn: redis.Redis, places: dict[str, Place], kinds: dict[str, str] | None = None) -> dict[str, float | None]:
    """ETA of each job from its place in the queue (one read of the measured speed and workers for all)."""
    if not places:
        return {}
    speed, kinds = Speed(conn), kinds or {}
    return {jid: speed.eta_s(p.units_ahead, p.units, kinds.get(jid)) for jid, p in places.items()}


def eta_for(queue, job_ids: list[str], kinds: dict[str, str] | None = None) -> dict[str, tuple[int, float | None]]:
    """(position, ETA) of each waiting job in `job_ids` (a dreamcore.queue.rq_queues.DreamQueue's): O(log n) each,
    one round trip for all; `kinds`: a job's speed key (speed_key) where it is known."""
    places = queue.places(job_ids)
    return {jid: (places[jid].ahead, eta) for jid, eta in etas(queue.connection, places, kinds).items()}
