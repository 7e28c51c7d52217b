"""What a bot instance may post for a finished job: the worker's result, checked against the bot's own record.

Workers are trusted to make images, not to say where they go: anyone who can write to Redis with a worker's
rights (a rented GPU host, a container beside it) could publish a result naming any channel. So the bot that
queues a job writes its own record of it (`record`: where it came from, guild, channel, member, the
interaction and its token; what was asked; what it starts from) in the same transaction as the enqueue, under
a key only bots may touch (the worker's ACL user can't read it either: interaction tokens never reach a
worker, the job payload goes without one). The record goes once its result is delivered; its TTL (the image
retention) only bounds what a job that never comes back leaves behind.

The relay (bot.relay) and the local demo read results only through `for_delivery`. It takes where the post
goes and what it says of the request from that record, never from the result a worker wrote, and reads
images only under the job's own keys in the image store. A result for a job this instance never queued, or
that names images outside its job, is a `Forgery`: refused, for the caller to log. A result that expired
before the bot came back to it is rebuilt from the record and the image store's copy of what came out
(`<job>/params.json`, kept as long as the images); when the store has nothing either, the member gets a
plain failure notice instead of silence.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import redis
from pydantic import ValidationError

from . import keys, params
from .i18n import N_, _
from .images import ImageStore, image_key
from .job import DreamJob, parse_job
from .present import TIMINGS
from .results import DreamResult, ImageInfo, load_meta
from .settings import Settings

log = logging.getLogger("dreambot.delivery")
_EXTENSION = {"png": "png", "webp": "webp", "jpeg": "jpg"}
# The reasons of a failure notice (its member reads "Couldn't dream this one: <reason>"): translated when the
# notice is made, in the language of the moment (the relay's, for the job's member).
FOREIGN_IMAGES = N_("its images came back in a form I no longer post (from a worker of an older release?), so "
                    "nothing was posted. Please dream it again")
FAILED = N_("something went wrong while it was made, and nothing was posted. Please dream it again")
EXPIRED = N_("its result is no longer kept (I was away longer than it is), so there is nothing to post. "
             "Please dream it again")


# --- The bot's own record of each job it queued ----------------------------------------------------------------

ADOPT_CHUNK = 500


def record_key(job_id: str) -> str:
    return keys.job_record(job_id)


def record(pipe, job: DreamJob, settings: Settings) -> None:
    """Record `job` (token included) on `pipe`, inside the transaction that queues it."""
    pipe.set(record_key(job.job_id), job.model_dump_json(), ex=settings.image_retention_days * 86400)


def load_record(conn: redis.Redis, job_id: str) -> DreamJob | None:
    """The job as its bot queued it; None when no bot recorded it (or the record can't be read: logged)."""
    raw = conn.get(record_key(job_id))
    if raw is None:
        return None
    try:
        return DreamJob.model_validate_json(raw)
    except ValidationError as err:
        log.warning("unreadable job record", extra={"job_id": job_id, "error": str(err)[:300]})
        return None


def forget_record(conn: redis.Redis, job_id: str) -> None:
    conn.delete(record_key(job_id))


# Compatibility: records for the jobs of a release whose bots kept none; goes when no deployment can still hold
# such a job (every one upgraded past that release with `adopt-jobs` run, or its queue drained).
def adopt_records(conn: redis.Redis, settings: Settings, queue_names: list[str]) -> dict[str, int]:
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
            ids.update(f[b"job_id"].decode() for _entry, f in conn.xrange(key_) if b"job_id" in f)
    adopted: dict[str, int] = {}
    ids_ = sorted(ids)
    for start in range(0, len(ids_), ADOPT_CHUNK):  # one round trip per chunk, however deep the queue
        chunk = ids_[start:start + ADOPT_CHUNK]
        with conn.pipeline(transaction=False) as pipe:
            for job_id in chunk:
                pipe.exists(record_key(job_id))
            recorded = pipe.execute()
        for job_id, has in zip(chunk, recorded, strict=True):
            if has:
                continue
            try:
                job = parse_job(Job.fetch(job_id, connection=conn, serializer=JSONSerializer).args[0])
            except Exception:  # gone, or unreadable (RQ or the schema refuses it): nothing to post for it
                continue
            if job.job_id == job_id:
                conn.set(record_key(job_id), job.model_dump_json(), ex=settings.image_retention_days * 86400)
                adopted[job.origin.instance] = adopted.get(job.origin.instance, 0) + 1
    log.info("jobs queued by bots without records adopted", extra={"adopted": adopted})
    return adopted


# --- What may be posted --------------------------------------------------------------------------------------


class Forgery(Exception):
    """A result this bot instance must not post: `str()` says why, for the log."""


@dataclass
class Delivery:
    result: DreamResult  # the origin, request, kind and source are the bot's own record's
    images: list[bytes]
    rebuilt: bool = False  # the result had expired: rebuilt from the record and the image store


def for_delivery(conn: redis.Redis, store: ImageStore, job_id: str, instance: str) -> Delivery:
    """The result of `job_id` as `instance` may post it. Raises Forgery when this instance never queued the
    job; redis.RedisError and ImageStoreError when Redis or the store can't be reached (try again later).
    Whatever else is wrong with a result (it names another origin or job, its images lie outside the job's
    keys or are no longer kept) is refused, logged, and becomes a notice to the job's own member."""
    job = load_record(conn, job_id)
    if job is None:
        raise Forgery("no bot queued this job (or its record expired)")
    if job.origin.instance != instance:
        raise Forgery(f"the job was queued by instance {job.origin.instance!r}")
    own = {"origin": job.origin, "request": job.request, "kind": job.kind, "source": job.source}

    def notice(error: str, why: str | None = None) -> Delivery:
        """`error`: one of the reasons above, marked with N_ (translated here); `why`: for the log."""
        if why:
            log.warning(why, extra={"job_id": job_id, "instance": instance})
        return Delivery(DreamResult(job_id=job_id, status="failed", error=_(error), **own), [])

    result = load_meta(conn, job_id)
    if result is None:
        return _rebuilt(conn, store, job, own) or notice(EXPIRED)
    o = result.origin
    if result.job_id != job_id or (o is not None and (o.instance, o.guild_id, o.channel_id, o.user_id) != (
            job.origin.instance, job.origin.guild_id, job.origin.channel_id, job.origin.user_id)):
        # A result that claims another place (or job) than its bot recorded: a forgery, never posted there.
        return notice(FAILED, "forged result refused: it names another origin than the bot recorded")
    images = []
    for i, info in enumerate(result.images):
        if info.key != image_key(job_id, i, info.format):
            # Bytes from anywhere but the job's own keys are not posted (a worker of a release before the
            # image store sent them inline): its member is told instead of left waiting.
            return notice(FOREIGN_IMAGES, "result refused: its images are not under the job's own keys")
        data = store.get(info.key)
        if data is None:
            return notice(EXPIRED, "result's images are no longer kept; its member is told")
        images.append(data)
    own["source"] = _judged_source(job, result.source)
    return Delivery(_checked(result, own, images), images)


def _judged_source(job, scored):
    """The job's own source, with the worker's score of a member's picture (the bot never ran the classifier
    on it): what was made from it is judged with that score, as a variation is with its source's."""
    if job.kind == "picture" and scored is not None and scored.nsfw_score is not None:
        return job.source.model_copy(update={"nsfw_score": scored.nsfw_score})
    return job.source


def _checked(result: DreamResult, own: dict, images: list[bytes]) -> DreamResult:
    """The worker's result with the bot's own record in place of where and what, the file names built
    here, and only the timings the bot shows (a worker's text reaches a post only as literal text:
    dreamcore.present)."""
    infos = [i.model_copy(update={"filename": _filename(result.job_id, k, i.seed, i.format),
                                  "size_bytes": len(data)})
             for k, (i, data) in enumerate(zip(result.images, images, strict=True))]
    timings = {k: v for k, v in result.timings.items() if k in TIMINGS}
    return result.model_copy(update={**own, "images": infos, "timings": timings})


def _filename(job_id: str, index: int, seed: int, fmt: str) -> str:
    return f"dream-{job_id}-{index}-{seed}.{_EXTENSION[fmt]}"


def _rebuilt(conn: redis.Redis, store: ImageStore, job, own: dict) -> Delivery | None:
    """A result that expired, from the image store's record of what came out and the images themselves;
    None when the store has not got them all."""
    p = params.load(conn, job.job_id, store)
    if p is None or p.job_id != job.job_id or not p.images or any(i.format not in _EXTENSION for i in p.images):
        return None
    infos, images = [], []
    for i, im in enumerate(p.images):
        key = image_key(job.job_id, i, im.format)
        data = store.get(key)
        if data is None:
            return None
        infos.append(ImageInfo(filename=_filename(job.job_id, i, im.seed, im.format), format=im.format,
                               width=im.width, height=im.height, seed=im.seed, size_bytes=len(data), key=key,
                               nsfw_score=im.nsfw_score))
        images.append(data)
    own = own | {"source": _judged_source(job, p.source)}
    result = DreamResult(job_id=job.job_id, status="done", images=infos,
                         timings={k: v for k, v in p.timings.items() if k in TIMINGS}, base_steps=p.base_steps,
                         refiner_steps=p.refiner_steps, prompt_note=p.prompt_note, worker=p.worker,
                         finished_at=p.finished_at or 0.0, **own)
    return Delivery(result, images, rebuilt=True)
