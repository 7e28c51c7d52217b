"""Results on their way back: the worker publishes, the owning bot (or the local demo) delivers.

Bot tokens live only in the bot process that owns them, so a worker never posts to Discord itself: it
stores the result in Redis and adds an entry to the outbox stream of the instance that took the command.
That instance reads its outbox with a consumer group, so a result survives a bot restart, and records a
delivery marker so a result is posted once even when a worker or a bot crashes half-way.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Literal

import redis
from pydantic import BaseModel, ConfigDict, Field

from .job import DreamRequest, JobSource, Origin
from .keys import (  # noqa: F401  (re-exported: callers name keys through results)
    DELIVERED_TTL_S,
    PROGRESS_TTL_S,
    channel_gone_key,
    delivered_key,
    done_key,
    outbox_key,
    progress_key,
    result_key,
)


class ImageInfo(BaseModel):
    model_config = ConfigDict(extra="forbid")
    filename: str
    format: Literal["png", "webp", "jpeg"]
    width: int
    height: int
    seed: int
    size_bytes: int


class DreamResult(BaseModel):
    """What a finished (or failed) job hands back; `error` is fit to show the member."""

    model_config = ConfigDict(extra="forbid")
    v: Literal[1] = 1
    job_id: str
    status: Literal["done", "failed"]
    origin: Origin | None
    request: DreamRequest | None = None
    images: list[ImageInfo] = Field(default_factory=list)
    error: str | None = None
    timings: dict[str, float] = Field(default_factory=dict)
    base_steps: int = 0
    refiner_steps: int = 0
    prompt_note: str | None = None
    worker: str = ""
    finished_at: float = Field(default_factory=time.time)
    # What made it (a variation or an upscale names its source image). Left out of the stored JSON for a
    # plain dream, so a bot of the previous release (which forbids unknown keys) still reads its results.
    kind: Literal["dream", "variation", "upscale"] = "dream"
    source: JobSource | None = None

    def to_json(self) -> str:
        return self.model_dump_json(exclude={"kind", "source"} if self.kind == "dream" else None)




def publish_progress(conn: redis.Redis, instance: str, job_id: str, fields: dict, preview: bytes | None) -> None:
    """Latest progress of a running job, and a nudge to its instance (lossy: only the latest state matters)."""
    with conn.pipeline(transaction=False) as pipe:
        key = progress_key(job_id)
        pipe.hset(key, mapping={k: str(v) for k, v in fields.items()})
        if preview is not None:
            pipe.hset(key, "preview", preview)
        pipe.expire(key, PROGRESS_TTL_S)
        pipe.xadd(outbox_key(instance), {"job_id": job_id, "status": "progress"},
                  maxlen=OUTBOX_MAXLEN, approximate=True)
        pipe.execute()


def load_progress(conn: redis.Redis, job_id: str) -> tuple[dict[str, str], bytes | None]:
    raw = conn.hgetall(progress_key(job_id))
    preview = raw.pop(b"preview", None)
    return {k.decode(): v.decode() for k, v in raw.items()}, preview


GROUP = "deliver"
OUTBOX_MAXLEN = 10_000


def publish(conn: redis.Redis, result: DreamResult, images: list[bytes], ttl_s: int) -> bool:
    """Store the result and tell its instance, atomically. False if this job was already published."""
    instance = result.origin.instance if result.origin else None
    if not conn.set(done_key(result.job_id), result.status, nx=True, ex=ttl_s):
        return False
    with conn.pipeline(transaction=True) as pipe:
        key = result_key(result.job_id)
        pipe.delete(key)
        pipe.hset(key, "meta", result.to_json())
        for i, data in enumerate(images):
            pipe.hset(key, f"img:{i}", data)
        pipe.expire(key, ttl_s)
        if instance:
            pipe.xadd(outbox_key(instance), {"job_id": result.job_id, "status": result.status},
                      maxlen=OUTBOX_MAXLEN, approximate=True)
        pipe.execute()
    return True


def load(conn: redis.Redis, job_id: str) -> tuple[DreamResult, list[bytes]] | None:
    raw = conn.hgetall(result_key(job_id))
    if not raw or b"meta" not in raw:
        return None
    result = DreamResult.model_validate_json(raw[b"meta"])
    images = [raw[f"img:{i}".encode()] for i in range(len(result.images))]
    return result, images


def load_image(conn: redis.Redis, job_id: str, index: int) -> bytes | None:
    """One stored image of a finished job; None once the result has expired (or never existed)."""
    return conn.hget(result_key(job_id), f"img:{index}")


def has_image(conn: redis.Redis, job_id: str, index: int) -> bool:
    return bool(conn.hexists(result_key(job_id), f"img:{index}"))


@dataclass
class OutboxEntry:
    entry_id: str
    job_id: str
    status: str


class Outbox:
    """One instance's results waiting to be posted, read through a Redis consumer group."""

    def __init__(self, conn: redis.Redis, instance: str, consumer: str, claim_idle_ms: int = 60_000):
        self.conn = conn
        self.key = outbox_key(instance)
        self.consumer = consumer
        self.claim_idle_ms = claim_idle_ms

    def ensure_group(self) -> None:
        try:
            self.conn.xgroup_create(self.key, GROUP, id="0", mkstream=True)
        except redis.ResponseError as err:
            if "BUSYGROUP" not in str(err):
                raise

    def read(self, block_ms: int = 1000, count: int = 10) -> list[OutboxEntry]:
        """Entries a dead consumer left unacknowledged first, then new ones."""
        entries = []
        claimed = self.conn.xautoclaim(self.key, GROUP, self.consumer, self.claim_idle_ms, "0-0", count=count)
        entries.extend(claimed[1])
        if not entries:
            got = self.conn.xreadgroup(GROUP, self.consumer, {self.key: ">"}, count=count, block=block_ms)
            for _stream, items in got or []:
                entries.extend(items)
        out = []
        for entry_id, fields in entries:
            if not fields:  # deleted by trimming while pending
                self.ack(entry_id)
                continue
            out.append(OutboxEntry(_s(entry_id), _s(fields.get(b"job_id", b"")), _s(fields.get(b"status", b""))))
        return out

    def ack(self, entry_id) -> None:
        self.conn.xack(self.key, GROUP, entry_id)

    def delivered(self, job_id: str) -> bool:
        return bool(self.conn.exists(delivered_key(job_id)))

    def mark_delivered(self, job_id: str, where: str, ttl_s: int = DELIVERED_TTL_S) -> None:
        self.conn.set(delivered_key(job_id), where, ex=ttl_s)


def _s(v) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)
