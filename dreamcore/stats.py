"""Measured throughput, kept in Redis, for queue ETAs and for refusing work the pool can't reach in time."""

from __future__ import annotations

import json
from dataclasses import dataclass

import redis
from rq import Worker

from .queue import PRIORITIES, DreamQueue

STATS_KEY = "dream:stats"
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


def waiting(queue: DreamQueue) -> list[tuple[str, str, int]]:
    """(job id, owner, images) of every waiting job, in the order workers will take them."""
    conn = queue.connection
    ids: list[str] = []
    for p in PRIORITIES:
        ids.extend(x.decode() for x in conn.lrange(queue.queues[p].key, 0, -1))
    if not ids:
        return []
    with conn.pipeline(transaction=False) as pipe:
        for jid in ids:
            pipe.hget(f"rq:job:{jid}", "meta")
        metas = pipe.execute()
    out = []
    for jid, raw in zip(ids, metas, strict=True):
        try:
            meta = json.loads(raw) if raw else {}
        except ValueError:
            meta = {}
        out.append((jid, str(meta.get("owner", "")), int(meta.get("images", 1) or 1)))
    return out


def eta_s(images_ahead: int, own_images: int, s_per_image: float | None, workers: int) -> float | None:
    """Seconds until a job with `images_ahead` waiting before it is done; None before anything was measured."""
    if s_per_image is None:
        return None
    return (images_ahead + own_images) * s_per_image / max(1, workers)


@dataclass(frozen=True)
class Place:
    job_id: str
    owner: str
    images: int
    position: int  # 0 = next to run
    eta_s: float | None  # until this job is done; None before anything was measured


def places(queue: DreamQueue) -> list[Place]:
    """Every waiting job with its position and ETA: the one walk that /dream, /dreamqueue and the live
    queue updates all read from."""
    spi = seconds_per_image(queue.connection)
    workers = worker_count(queue.connection)
    out, ahead = [], 0
    for pos, (jid, owner, n) in enumerate(waiting(queue)):
        out.append(Place(jid, owner, n, pos, eta_s(ahead, n, spi, workers)))
        ahead += n
    return out
