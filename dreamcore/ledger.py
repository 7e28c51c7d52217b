"""What a bot recorded about each job it queued, so that what comes back is posted only where it was asked.

Workers are trusted to make images, not to say where they go: anyone who can write to Redis with a
worker's rights (a rented GPU host, a container beside it) could publish a result naming any channel. So
the bot that queues a job writes its own record of it (where it came from: guild, channel, member, the
interaction and its token; what was asked; what it starts from) in the same transaction as the enqueue,
under a key only bots may touch (the worker's ACL user can't read it either: interaction tokens never reach
a worker, the job payload goes without one). The relay (bot.relay) posts a result only through this
record: to its channel and interaction, with the text of its request, the images read from the store under
the job's own keys. A result whose job has no record here, or a record of another bot instance, is refused
and logged as a forgery. The record goes once its result is delivered; its TTL (the image retention) only
bounds what a job that never comes back leaves behind.
"""

from __future__ import annotations

import logging

import redis
from pydantic import ValidationError

from . import keys
from .job import DreamJob, parse_job
from .settings import Settings

log = logging.getLogger("dreambot.ledger")
ADOPT_CHUNK = 500


def key(job_id: str) -> str:
    return keys.job_record(job_id)


def write(pipe, job: DreamJob, settings: Settings) -> None:
    """Record `job` (token included) on `pipe`, inside the transaction that queues it."""
    pipe.set(key(job.job_id), job.model_dump_json(), ex=settings.image_retention_days * 86400)


def load(conn: redis.Redis, job_id: str) -> DreamJob | None:
    """The job as its bot queued it; None when no bot recorded it (or the record can't be read: logged)."""
    raw = conn.get(key(job_id))
    if raw is None:
        return None
    try:
        return DreamJob.model_validate_json(raw)
    except ValidationError as err:
        log.warning("unreadable job record", extra={"job_id": job_id, "error": str(err)[:300]})
        return None


def forget(conn: redis.Redis, job_id: str) -> None:
    conn.delete(key(job_id))


def adopt(conn: redis.Redis, settings: Settings, queue_names: list[str]) -> dict[str, int]:
    """`dreambot adopt-jobs`, run once by the operator when upgrading from a release whose bots kept no records,
    with every worker stopped: write the record of each job those bots queued and nobody has posted yet
    (waiting, running, or finished but not delivered), from the job's own payload, so those results are
    posted rather than refused. It trusts what Redis holds at that moment, which is why it is the operator's
    step at a moment no worker runs, never something a bot does by itself: a job without a record is
    otherwise never posted. Returns how many jobs it adopted per bot instance."""
    from rq import Queue
    from rq.job import Job
    from rq.registry import StartedJobRegistry
    from rq.serializers import JSONSerializer

    ids: set[str] = {i.decode() for i in conn.hkeys(keys.FQ_JOBS)}
    for name in queue_names:
        ids.update(i.decode() for i in conn.lrange(Queue.redis_queue_namespace_prefix + name, 0, -1))
        ids.update(StartedJobRegistry(name, connection=conn).get_job_ids())
    for key_ in conn.scan_iter(keys.published_key("*")):
        ids.update(i.decode() for i in conn.zrange(key_, 0, -1))
    for key_ in conn.scan_iter(keys.outbox_key("*")):
        if not key_.decode().endswith(":progress"):
            ids.update(f[b"job_id"].decode() for _, f in conn.xrange(key_) if b"job_id" in f)
    adopted: dict[str, int] = {}
    ids_ = sorted(ids)
    for start in range(0, len(ids_), ADOPT_CHUNK):  # one round trip per chunk, however deep the queue
        chunk = ids_[start:start + ADOPT_CHUNK]
        with conn.pipeline(transaction=False) as pipe:
            for job_id in chunk:
                pipe.exists(key(job_id))
            recorded = pipe.execute()
        for job_id, has in zip(chunk, recorded, strict=True):
            if has:
                continue
            try:
                job = parse_job(Job.fetch(job_id, connection=conn, serializer=JSONSerializer).args[0])
            except Exception:  # gone, or unreadable (RQ or the schema refuses it): nothing to post for it
                continue
            if job.job_id == job_id:
                conn.set(key(job_id), job.model_dump_json(), ex=settings.image_retention_days * 86400)
                adopted[job.origin.instance] = adopted.get(job.origin.instance, 0) + 1
    log.info("jobs queued by bots without records adopted", extra={"adopted": adopted})
    return adopted
