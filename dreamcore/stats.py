"""Measured throughput, kept in Redis, for queue ETAs and for refusing work the pool can't reach in time."""

from __future__ import annotations

import redis
from rq import Worker

from .fairq import Place
from .keys import STATS_KEY  # noqa: F401  (re-exported)
from .queue import DreamQueue

EWMA_ALPHA = 0.2  # about the last ten jobs


def record_job(conn: redis.Redis, seconds: float, images: int) -> None:
    """Fold one finished job into the moving average of seconds per image (per worker)."""
    per_image = seconds / max(1, images)
    old = conn.hget(STATS_KEY, "s_per_image")
    new = per_image if old is None else (1 - EWMA_ALPHA) * float(old) + EWMA_ALPHA * per_image
    with conn.pipeline() as pipe:
        pipe.hset(STATS_KEY, mapping={"s_per_image": f"{new:.4f}"})
        pipe.hincrby(STATS_KEY, "images", images)
        pipe.hincrby(STATS_KEY, "jobs", 1)
        pipe.execute()


def seconds_per_image(conn: redis.Redis) -> float | None:
    v = conn.hget(STATS_KEY, "s_per_image")
    return float(v) if v is not None else None


def worker_count(conn: redis.Redis) -> int:
    return Worker.count(connection=conn)


def eta_s(images_ahead: int, own_images: int, s_per_image: float | None, workers: int) -> float | None:
    """Seconds until a job with `images_ahead` waiting before it is done; None before anything was measured."""
    if s_per_image is None:
        return None
    return (images_ahead + own_images) * s_per_image / max(1, workers)


def etas(conn: redis.Redis, places: dict[str, Place]) -> dict[str, float | None]:
    """ETA of each job from its place in the queue (one read of the measured speed and workers for all)."""
    if not places:
        return {}
    spi, workers = seconds_per_image(conn), worker_count(conn)
    return {jid: eta_s(p.images_ahead, p.images, spi, workers) for jid, p in places.items()}


def eta_for(queue: DreamQueue, job_ids: list[str]) -> dict[str, tuple[int, float | None]]:
    """(position, ETA) of each waiting job in `job_ids`: O(log n) each, one round trip for all."""
    places = queue.places(job_ids)
    return {jid: (places[jid].ahead, eta) for jid, eta in etas(queue.connection, places).items()}
