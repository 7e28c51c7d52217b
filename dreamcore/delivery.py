"""What a bot instance may post for a finished job: the worker's result, checked against the bot's own record.

The relay (bot.relay) and the local demo read results only through `for_delivery`. It takes where the post
goes and what it says of the request from the record the bot wrote when it queued the job
(dreamcore.ledger), never from the result a worker wrote, and reads images only under the job's own keys in
the image store. A result for a job this instance never queued, or that names images outside its job, is a
`Forgery`: refused, for the caller to log. A result that expired before the bot came back to it is rebuilt
from the record and the image store's copy of what came out (`<job>/params.json`, kept as long as the
images); when the store has nothing either, the member gets a plain failure notice instead of silence.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import redis

from . import ledger, params
from .images import ImageStore, image_key
from .results import DreamResult, ImageInfo, load_meta

log = logging.getLogger("dreambot.delivery")
_EXTENSION = {"png": "png", "webp": "webp", "jpeg": "jpg"}
FOREIGN_IMAGES = ("its images came back in a form I no longer post (from a worker of an older release?), so "
                  "nothing was posted. Please dream it again")
EXPIRED = ("it finished while I was away, and its result is no longer kept, so there is nothing to post. "
           "Please dream it again")


class Forgery(Exception):
    """A result this bot instance must not post: `str()` says why, for the log."""


@dataclass
class Delivery:
    result: DreamResult  # the origin, request, kind and source are the bot's own record's
    images: list[bytes]
    rebuilt: bool = False  # the result had expired: rebuilt from the record and the image store


def for_delivery(conn: redis.Redis, store: ImageStore, job_id: str, instance: str) -> Delivery | None:
    """The result of `job_id` as `instance` may post it. None when the job's images are no longer in the
    store (the result names them but they are gone). Raises Forgery; redis.RedisError and ImageStoreError
    when Redis or the store can't be reached (try again later)."""
    job = ledger.load(conn, job_id)
    if job is None:
        raise Forgery("no bot queued this job (or its record expired)")
    if job.origin.instance != instance:
        raise Forgery(f"the job was queued by instance {job.origin.instance!r}")
    own = {"origin": job.origin, "request": job.request, "kind": job.kind, "source": job.source}
    result = load_meta(conn, job_id)
    if result is None:
        return _rebuilt(conn, store, job, own)
    if result.job_id != job_id:
        raise Forgery(f"the result stored under this job names job {result.job_id!r}")
    images = []
    for i, info in enumerate(result.images):
        if info.key != image_key(job_id, i, info.format):
            # Bytes from anywhere but the job's own keys are not posted (a worker of a release before the
            # image store sent them inline): its member is told instead of left waiting.
            log.warning("result refused: its images are not under the job's own keys",
                        extra={"job_id": job_id, "image": i, "key": str(info.key)[:200]})
            return Delivery(DreamResult(job_id=job_id, status="failed", error=FOREIGN_IMAGES, **own), [])
        data = store.get(info.key)
        if data is None:
            return None
        images.append(data)
    return Delivery(result.model_copy(update=own), images)


def _rebuilt(conn: redis.Redis, store: ImageStore, job, own: dict) -> Delivery:
    p = params.load(conn, job.job_id, store)
    if p is not None and p.job_id == job.job_id and p.images and all(i.format in _EXTENSION for i in p.images):
        infos, images = [], []
        for i, im in enumerate(p.images):
            key = image_key(job.job_id, i, im.format)
            data = store.get(key)
            if data is None:
                break
            infos.append(ImageInfo(filename=f"dream-{job.job_id}-{i}-{im.seed}.{_EXTENSION[im.format]}",
                                   format=im.format, width=im.width, height=im.height, seed=im.seed,
                                   size_bytes=len(data), key=key, nsfw_score=im.nsfw_score))
            images.append(data)
        else:
            result = DreamResult(job_id=job.job_id, status="done", images=infos, timings=p.timings,
                                 base_steps=p.base_steps, refiner_steps=p.refiner_steps, prompt_note=p.prompt_note,
                                 worker=p.worker, finished_at=p.finished_at or 0.0, **own)
            return Delivery(result, images, rebuilt=True)
    return Delivery(DreamResult(job_id=job.job_id, status="failed", error=EXPIRED, **own), [], rebuilt=True)
