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

from . import redisconn
from .images import ImageStore, image_key
from .job import DreamRequest, JobSource, Kind, Origin
from .keys import (
    DELIVERED_TTL_S,
    PROGRESS_TTL_S,
    delivered_key,
    done_key,
    outbox_key,
    progress_key,
    progress_stream_key,
    published_key,
    result_key,
)
from .settings import Settings


class ImageInfo(BaseModel):
    model_config = ConfigDict(extra="forbid")
    filename: str
    format: Literal["png", "webp", "jpeg"]
    width: int
    height: int
    seed: int
    size_bytes: int
    # Where the bytes are in the image store: always the job's own key (image_key), which the bot checks.
    key: str | None = Field(None, max_length=200)
    # The output classifier's score (worker/classifier.py); None when the worker runs without it.
    nsfw_score: float | None = Field(None, ge=0.0, le=1.0)


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
    # What made it (a variation or an upscale names its source image). Compatibility: left out of the stored
    # JSON for a plain dream, so a bot of the release before variations (which forbids unknown keys) still
    # reads its results; goes when no bot of that release runs.
    kind: Kind = "dream"
    source: JobSource | None = None

    def to_json(self) -> str:
        return self.model_dump_json(exclude={"kind", "source"} if self.kind == "dream" else None)




def publish_progress(conn: redis.Redis, instance: str, job_id: str, fields: dict, preview: bytes | None,
                     stream_len: int = 1000) -> None:
    """Latest progress of a running job, and a nudge to its instance (lossy: only the latest state matters,
    so the nudges have their own stream, capped at `stream_len`; results never share it). The preview is a
    small JPEG (at most 256 px a side, ~10 KB), one per running job, deleted when the job publishes."""
    with conn.pipeline(transaction=False) as pipe:
        key = progress_key(job_id)
        pipe.hset(key, mapping={k: str(v) for k, v in fields.items()})
        if preview is not None:
            pipe.hset(key, "preview", preview)
        pipe.expire(key, PROGRESS_TTL_S)
        pipe.xadd(progress_stream_key(instance), {"job_id": job_id, "status": "progress"},
                  maxlen=stream_len, approximate=True)
        pipe.execute()


def load_progress(conn: redis.Redis, job_id: str) -> tuple[dict[str, str], bytes | None]:
    raw = conn.hgetall(progress_key(job_id))
    preview = raw.pop(b"preview", None)
    return {k.decode(): v.decode() for k, v in raw.items()}, preview


GROUP = "deliver"


def store_images(store: ImageStore, result: DreamResult, images: list[bytes]) -> None:
    """Write a finished job's images to the image store and point its result at them (claim check: the
    result that travels through Redis carries keys, never bytes)."""
    for i, (info, data) in enumerate(zip(result.images, images, strict=True)):
        info.key = image_key(result.job_id, i, info.format)
        store.put(info.key, data)


# KEYS: 1 done marker, 2 result, 3 progress. ARGV: 1 status, 2 the result's JSON, 3 TTL (s), 4 job id,
# 5 finished at, then (when the result has an instance to go to) 6 its result stream, 7 its published set.
# The done marker, the result and the stream entry are one step: there is no moment where a retry would
# find the marker and not the result, so nothing between two steps can make a result vanish. The stream and
# the set are named in ARGV, not KEYS: a worker's Redis user may only add to them (XADD, ZADD, EXPIRE:
# deploy/redis/users.acl), which Redis checks command by command inside the script.
PUBLISH_LUA = r"""
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[3])
redis.call('DEL', KEYS[2], KEYS[3])
redis.call('HSET', KEYS[2], 'meta', ARGV[2])
redis.call('EXPIRE', KEYS[2], ARGV[3])
if ARGV[6] then
  redis.call('XADD', ARGV[6], '*', 'job_id', ARGV[4], 'status', ARGV[1])
  redis.call('ZADD', ARGV[7], ARGV[5], ARGV[4])
  redis.call('EXPIRE', ARGV[7], ARGV[3])
end
return 1
"""


def publish(conn: redis.Redis, result: DreamResult, ttl_s: int, settings: Settings) -> bool:
    """Record the result and tell its instance, in one atomic step (PUBLISH_LUA). False if this job was
    already published.

    The result's images must already be in the image store (`store_images`). The result entry goes to
    the instance's result stream, which is never trimmed: an entry leaves it only when a bot has posted it
    and acknowledged it. The job's progress hash (and its preview) goes now: nothing reads it any more.
    With replicas, it returns only once one has the result (redisconn.transaction; NotReplicated else)."""
    if any(i.key is None for i in result.images):
        raise ValueError("publish a result only after store_images: its images have no store keys")
    instance = result.origin.instance if result.origin else None
    keys_ = [done_key(result.job_id), result_key(result.job_id), progress_key(result.job_id)]
    script = conn.register_script(PUBLISH_LUA)
    args = [result.status, result.to_json(), ttl_s, result.job_id, repr(result.finished_at)]
    if instance:
        args += [outbox_key(instance), published_key(instance)]
    (wrote,) = redisconn.transaction(conn, settings, lambda pipe: script(keys=keys_, args=args, client=pipe))
    return bool(wrote)


def load_meta(conn: redis.Redis, job_id: str) -> DreamResult | None:
    raw = conn.hget(result_key(job_id), "meta")
    return None if raw is None else DreamResult.model_validate_json(raw)


def load(conn: redis.Redis, store: ImageStore, job_id: str) -> tuple[DreamResult, list[bytes]] | None:
    """A published result and its images' bytes (from the store, under the keys the result names); None
    when the result has expired or an image is no longer kept. Raises ImageStoreError when the store can't
    be reached. What a bot posts goes through dreamcore.delivery, which checks those keys are the job's."""
    result = load_meta(conn, job_id)
    if result is None:
        return None
    images = []
    for info in result.images:
        data = store.get(info.key) if info.key else None
        if data is None:
            return None
        images.append(data)
    return result, images


def load_image(store: ImageStore, job_id: str, index: int, fmt: str = "png") -> bytes | None:
    """One image of a finished job, for as long as the store keeps it (DREAMBOT_IMAGE_RETENTION_DAYS)."""
    return store.get(image_key(job_id, index, fmt))


def has_image(store: ImageStore, job_id: str, index: int, fmt: str = "png") -> bool:
    return store.exists(image_key(job_id, index, fmt))


def undelivered(conn: redis.Redis, instance: str, older_than_s: float = 0.0) -> list[str]:
    """Jobs published for `instance` and not yet marked delivered (oldest first), published at least
    `older_than_s` ago: what a bot sweeps for at start, whatever happened to its result stream."""
    key = published_key(instance)
    ids = [_s(j) for j in conn.zrangebyscore(key, "-inf", time.time() - older_than_s)]
    if not ids:
        return []
    with conn.pipeline(transaction=False) as pipe:
        for j in ids:
            pipe.exists(delivered_key(j))
        done = pipe.execute()
    gone = [j for j, d in zip(ids, done, strict=True) if d]
    if gone:
        conn.zrem(key, *gone)
    return [j for j, d in zip(ids, done, strict=True) if not d]


@dataclass
class OutboxEntry:
    entry_id: str
    job_id: str
    status: str
    stream: str = ""  # the stream it came from; "" for a result found by the start-up sweep


class Outbox:
    """One instance's two streams, read through one Redis consumer group: results (lossless: an entry
    leaves only when acknowledged, then it is deleted) and progress nudges (lossy, capped)."""

    def __init__(self, conn: redis.Redis, instance: str, consumer: str, claim_idle_ms: int = 60_000):
        self.conn = conn
        self.instance = instance
        self.key = outbox_key(instance)
        self.progress_key = progress_stream_key(instance)
        self.consumer = consumer
        self.claim_idle_ms = claim_idle_ms

    def ensure_group(self) -> None:
        for key in (self.key, self.progress_key):
            try:
                self.conn.xgroup_create(key, GROUP, id="0", mkstream=True)
            except redis.ResponseError as err:
                if "BUSYGROUP" not in str(err):
                    raise

    def read(self, block_ms: int = 1000, count: int = 10) -> list[OutboxEntry]:
        """Entries a dead consumer left unacknowledged first, then new ones."""
        entries = []
        for key in (self.key, self.progress_key):
            claimed = self.conn.xautoclaim(key, GROUP, self.consumer, self.claim_idle_ms, "0-0", count=count)
            entries.extend((key, e) for e in claimed[1])
        if not entries:
            got = self.conn.xreadgroup(GROUP, self.consumer, {self.key: ">", self.progress_key: ">"},
                                       count=count, block=block_ms)
            for stream, items in got or []:
                entries.extend((_s(stream), e) for e in items)
        out = []
        for stream, (entry_id, fields) in entries:
            entry = OutboxEntry(_s(entry_id), _s((fields or {}).get(b"job_id", b"")),
                                _s((fields or {}).get(b"status", b"")), stream)
            if not fields:  # a progress nudge trimmed away while pending: nothing left to read
                self.ack(entry)
                continue
            out.append(entry)
        return out

    def ack(self, entry: OutboxEntry) -> None:
        if not entry.stream:
            return
        with self.conn.pipeline(transaction=True) as pipe:
            pipe.xack(entry.stream, GROUP, entry.entry_id)
            pipe.xdel(entry.stream, entry.entry_id)  # handled: the stream keeps only what is not
            pipe.execute()

    def delivered(self, job_id: str) -> bool:
        return bool(self.conn.exists(delivered_key(job_id)))

    def mark_delivered(self, job_id: str, where: str, ttl_s: int = DELIVERED_TTL_S) -> None:
        with self.conn.pipeline(transaction=True) as pipe:
            pipe.set(delivered_key(job_id), where, ex=ttl_s)
            pipe.zrem(published_key(self.instance), job_id)
            pipe.execute()

    def sweep(self, max_age_s: float, settle_s: float = 5.0) -> list[OutboxEntry]:
        """Results published for this instance but never marked delivered, whatever became of their
        stream entries (a Redis that lost its stream in a failover, an entry deleted by hand): handed to
        the relay like stream entries (the delivered marker keeps them exactly-once). `settle_s` leaves
        the results of the last moments to their stream entries."""
        key = published_key(self.instance)
        self.conn.zremrangebyscore(key, "-inf", time.time() - max_age_s)
        return [OutboxEntry("", j, "swept") for j in undelivered(self.conn, self.instance, settle_s)]


def _s(v) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)
