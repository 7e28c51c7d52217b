"""A job's result out to its bot: the images encoded and written to the image store, the result (done, or failed
with the reason its member reads) published to the bot's outbox (the bot settles the quota when it takes the
result). Each step rides out a short outage of the store or of Redis, since the images exist only in this
process until published.

Encoding, so the files fit Discord's upload limit: PNG first, lossless, and what people expect to save. If the
whole set is over the limit (four 1-megapixel PNGs of detailed images can pass 25 MB), step down through WebP
and then JPEG qualities, always encoding the whole set in one format so the images of a job look alike. If
even the smallest setting is too big, say so instead of uploading something broken.
"""

from __future__ import annotations

import io
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass

import redis
from PIL import Image

from dreamcore import cost, faults, metrics, params, results, stats
from dreamcore.i18n import N_
from dreamcore.images import ImageStoreError
from dreamcore.job import DreamJob
from dreamcore.redisconn import NotReplicated
from dreamcore.results import DreamResult, ImageInfo

from .classifier import Scored, score_images
from .errors import JobRejected, free_gpu_memory
from .pipeline import Generation
from .runtime import Runtime

log = logging.getLogger("dreambot.worker")


# --- Encoding: files that fit Discord's upload limit ---------------------------------------------------------

# (format, Pillow save options), tried in order until the set fits.
LADDER: list[tuple[str, dict]] = [
    # zlib level 1, not Pillow's 6: measured here on a 1024x1024 photo-like frame, 12% less encoding time
    # (170 vs 192 ms) for 3% more bytes; the time is CPU the worker spends per image, the bytes are not
    # near Discord's limit.
    ("png", {"optimize": False, "compress_level": 1}),
    ("webp", {"quality": 95, "method": 4}),
    ("webp", {"quality": 90, "method": 4}),
    ("webp", {"quality": 80, "method": 4}),
    ("jpeg", {"quality": 90, "optimize": True}),
    ("jpeg", {"quality": 80, "optimize": True}),
    ("jpeg", {"quality": 70, "optimize": True}),
]
_PIL_FORMAT = {"png": "PNG", "webp": "WEBP", "jpeg": "JPEG"}
_EXTENSION = {"png": "png", "webp": "webp", "jpeg": "jpg"}


class TooLargeError(ValueError):
    """The images do not fit the upload limit at any format or quality we allow."""


@dataclass
class EncodedImage:
    filename: str
    data: bytes
    format: str  # "png" | "webp" | "jpeg"
    width: int
    height: int


def _encode_one(image: Image.Image, fmt: str, options: dict) -> bytes:
    buf = io.BytesIO()
    (image if image.mode == "RGB" else image.convert("RGB")).save(buf, format=_PIL_FORMAT[fmt], **options)
    return buf.getvalue()


def encode_images(
    images: Sequence[Image.Image], max_total_bytes: int, stem: str, seeds: Sequence[int]
) -> list[EncodedImage]:
    """Encode every image in the first format of LADDER whose files together fit in `max_total_bytes`.

    Files are named f"{stem}-{i}-{seed}.{ext}" (i from 0), so the seed to make an image again is in its name.
    Raises TooLargeError when even the lowest JPEG quality is over the limit.
    """
    if len(images) != len(seeds):
        raise ValueError(f"{len(images)} images but {len(seeds)} seeds")
    if not images:
        return []
    smallest = None
    for fmt, options in LADDER:
        blobs = [_encode_one(img, fmt, options) for img in images]
        size = sum(len(b) for b in blobs)
        smallest = size if smallest is None else min(smallest, size)
        if size <= max_total_bytes:
            return [
                EncodedImage(
                    filename=f"{stem}-{i}-{seed}.{_EXTENSION[fmt]}",
                    data=blob,
                    format=fmt,
                    width=img.width,
                    height=img.height,
                )
                for i, (img, seed, blob) in enumerate(zip(images, seeds, blobs, strict=True))
            ]
    raise TooLargeError(
        f"{len(images)} image(s) need at least {smallest:,} bytes even as JPEG quality {LADDER[-1][1]['quality']},"
        f" over the {max_total_bytes:,}-byte upload limit; ask for fewer images"
    )


# --- Publishing ----------------------------------------------------------------------------------------------


def fail_job(rt: Runtime, job_id: str, origin, request, reason: str, kind: str = "internal") -> None:
    """Tell the member (through their bot's outbox; the bot gives the job's cost back to their quota).
    `kind` is the reason's metrics label (dreamcore.metrics.FAIL_REASONS)."""
    result = DreamResult(job_id=job_id, status="failed", origin=origin, request=request, error=reason,
                         worker=rt.name)
    publish_patiently(rt, result, [], ttl_s=rt.settings.failure_ttl_s)
    metrics.job_failed(kind)
    log.warning("job failed", extra={"job_id": job_id, "reason": reason})


def publish_generation(rt: Runtime, job: DreamJob, gen: Generation, t0: float, share: float = 1.0,
                        record: bool = True, scored: Scored | None = None) -> dict:
    """Encode a job's images and publish them to its bot's outbox. `share` is the job's part of
    a batch's images (stage times are the batch's; metrics get this job's share); `record` is False when the
    batch records its seconds per image once for all its jobs; `scored` is what the output classifier made
    of its images (scored here when the caller has not)."""
    req = job.request
    if scored is None:
        (scored,) = score_images(rt.checker, [gen])
    if gen.nan_detected:
        free_gpu_memory()
        reason = N_("the model produced a blank (NaN) image; try another seed or fewer steps")
        fail_job(rt, job.job_id, job.origin, req, reason, kind="nan")
        raise JobRejected(reason)

    t_enc = time.perf_counter()
    try:
        encoded = encode_images(gen.images, req.max_upload_bytes, stem=f"dream-{job.job_id}", seeds=gen.seeds)
    except TooLargeError as err:  # no encoding fits one upload: the request asked for too much
        fail_job(rt, job.job_id, job.origin, req, str(err), kind="bad_input")
        raise JobRejected(str(err)) from None
    timings = dict(gen.timings)
    if rt.checker is not None:
        timings["safety_s"] = scored.seconds
    timings["png_s"] = time.perf_counter() - t_enc
    timings["total_s"] = time.perf_counter() - t0

    result = DreamResult(
        job_id=job.job_id,
        status="done",
        origin=job.origin,
        request=req,
        images=[
            ImageInfo(filename=e.filename, format=e.format, width=e.width, height=e.height, seed=s,
                      size_bytes=len(e.data), nsfw_score=score)
            for e, s, score in zip(encoded, gen.seeds, scored.scores, strict=True)
        ],
        timings={k: round(v, 4) for k, v in timings.items()},
        base_steps=gen.base_steps,
        refiner_steps=gen.refiner_steps,
        prompt_note=gen.prompt_note,
        worker=rt.name,
        kind=job.kind,
        source=(job.source.model_copy(update={"nsfw_score": gen.source_score})
                if job.source is not None and gen.source_score is not None else job.source),
    )
    published = publish_patiently(rt, result, [e.data for e in encoded])
    faults.hit("worker-after-publish")
    if record:
        stats.record_job(rt.conn, timings["total_s"], units_made(rt, job, gen), stats.speed_key(job))
    shared = {k: v * share if k.endswith("_s") and k not in ("png_s",) else v for k, v in timings.items()}
    metrics.observe_stages(shared, len(encoded), refiner_ran=gen.refiner_steps > 0)
    metrics.job_done()
    log.info("job done", extra={"job_id": job.job_id, "images": len(encoded), "seconds": timings["total_s"],
                                 "published": published, "batch_images": timings.get("batch_images", len(encoded))})
    return {"status": "done", "images": len(encoded), "seconds": round(timings["total_s"], 3)}


def units_made(rt: Runtime, job: DreamJob, gen: Generation) -> float:
    """What the job cost (dreamcore.cost), at the size it came out and with the faces its pass redrew: the
    measure of the pool's speed."""
    return cost.made(job, rt.settings.upscale_tile, rt.settings.upscale_overlap, (gen.width, gen.height),
                     gen.timings)


STORE_PATIENCE_S = 30.0
# How long a published result may stay on the primary alone before the worker goes on: longer than a Sentinel
# failover takes (a few seconds), short enough that a pool with no replica at all is not held up for long.
REPLICATION_PATIENCE_S = 10.0


def patiently(fn, errors: tuple[type[Exception], ...], patience_s: float, job_id: str, what: str):
    """`fn()`, tried again with a doubling back-off (0.5 s up to 10 s) while it raises one of `errors`;
    past `patience_s` the error goes up."""
    delay = 0.5
    deadline = time.monotonic() + patience_s
    while True:
        try:
            return fn()
        except errors as err:
            if time.monotonic() > deadline:
                raise
            log.warning(f"{what} failed, retrying", extra={"job_id": job_id, "error": str(err) or type(err).__name__,
                                                           "in_s": delay})
            time.sleep(delay)
            delay = min(delay * 2, 10)


def store_patiently(rt: Runtime, result: DreamResult, images: list[bytes], patience_s: float | None = None):
    """Write the images (and the buttons' record) to the image store, riding out a short outage; past
    `patience_s` the ImageStoreError goes up and the job fails alone, its member told (nothing is posted:
    the result is published only after every image is stored)."""
    def store():
        results.store_images(rt.store, result, images)
        faults.hit("publish-after-images")
        if result.origin is not None and result.request is not None:
            params.save_to_store(rt.store, params.from_result(result))
        faults.hit("publish-after-params")

    patiently(store, (ImageStoreError,), STORE_PATIENCE_S if patience_s is None else patience_s,
               result.job_id, "image store write")


def publish_patiently(rt: Runtime, result: DreamResult, images: list[bytes], ttl_s: int | None = None,
                       patience_s: float = 120) -> bool:
    """The images exist only in this process until published: ride out a Redis restart rather than lose them."""
    if images:
        store_patiently(rt, result, images)
    settle_by = time.monotonic() + REPLICATION_PATIENCE_S

    def publish() -> bool:
        while True:
            try:
                done = results.publish(rt.conn, result, ttl_s or rt.settings.result_ttl_s, rt.settings)
                faults.hit("publish-after-result")
                return done
            except NotReplicated as err:
                # On the primary, not yet on a replica. Returning now would let RQ record the job as finished,
                # and a failover that loses this primary would lose the result with nothing left to run it
                # again. So publish again: the script finds its own done marker and writes nothing, and its
                # WAIT then says whether the first write has reached a replica (the replication stream is one
                # ordered log); on a new primary that never got it, it publishes it afresh.
                if time.monotonic() > settle_by:
                    log.warning("result published but not yet replicated; going on",
                                extra={"job_id": result.job_id, "error": str(err)})
                    return True
                log.info("result not yet replicated, publishing again", extra={"job_id": result.job_id})
                time.sleep(0.5)

    return patiently(publish, (redis.RedisError,), patience_s, result.job_id, "publish")
