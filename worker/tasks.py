"""What a worker does with dream jobs, on the models this process already holds.

`run_dream` is named by string in each queued job ("worker.tasks.run_dream") and runs one job start to
finish, as any RQ worker would call it. `dreambot worker` (runner.DreamWorker) splits the same work in two:
`denoise` (the GPU half, for one job or a batch of compatible dreams) and `finish` (encode and publish,
in a finisher thread while the GPU takes the next job). The worker process installs its Runtime (models,
Redis, settings) once at start, so a job never loads a model.
"""

from __future__ import annotations

import io
import logging
import math
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import redis
from rq import get_current_job
from rq.timeouts import JobTimeoutException

from dreamcore import faults, metrics, params, results, stats
from dreamcore.cancel import cancel_key
from dreamcore.images import ImageStore, ImageStoreError, open_store
from dreamcore.job import DreamJob, JobError, origin_of, parse_job
from dreamcore.limits import Limiter
from dreamcore.redisconn import NotReplicated
from dreamcore.results import DreamResult, ImageInfo
from dreamcore.settings import Settings

from .encode import TooLargeError, encode_images
from .pipeline import DreamPipeline, Generation, StepEvent
from .preview import jpeg, latent_preview_image
from .prompts import PromptTooLong
from .safety import load_checker

log = logging.getLogger("dreambot.worker")


class JobRejected(Exception):
    """The job can't succeed however often it is tried; its member has been told why."""


class JobCancelled(Exception):
    """A member or an admin cancelled the job while it ran."""


LOAD = object()  # Runtime.checker's default: load the classifier the settings name


class SafetyCheckFailed(RuntimeError):
    """The output classifier could not score a job's images: nothing unscored is posted."""


@dataclass
class Scored:
    scores: list[float | None]
    seconds: float  # the classifier's time for the call these images were in (a batch's, like its stages)


def score_images(rt: Runtime, gens: list[Generation]) -> list[Scored]:
    """Every image of `gens` through the classifier in one batched call, before anything is published."""
    if rt.checker is None:
        return [Scored([None] * len(g.images), 0.0) for g in gens]
    images = [im for g in gens for im in g.images]
    try:
        scores, seconds = rt.checker.timed_scores(images)
    except JobTimeoutException:
        raise
    except Exception as err:
        if _is_oom(err):
            raise
        raise SafetyCheckFailed(f"{type(err).__name__}: {err}") from err
    out, k = [], 0
    for g in gens:
        out.append(Scored(scores[k:k + len(g.images)], seconds))
        k += len(g.images)
    return out


@dataclass
class Runtime:
    settings: Settings
    conn: redis.Redis
    pipeline: DreamPipeline
    name: str = "worker"
    limiter: Limiter | None = None
    store: ImageStore | None = None
    # The output classifier every image passes before it is published; by default loaded from the settings
    # (None there only when DREAMBOT_SAFETY_CHECK=false), so no way of building a worker skips it.
    checker: Any = LOAD

    def __post_init__(self):
        if self.limiter is None:
            self.limiter = Limiter(self.conn)
        if self.store is None:
            self.store = open_store(self.settings)
        if self.checker is LOAD:
            self.checker = load_checker(self.settings, getattr(self.pipeline, "device", None))


_runtime: Runtime | None = None


def install(runtime: Runtime) -> None:
    global _runtime
    _runtime = runtime


def runtime() -> Runtime:
    if _runtime is None:
        raise RuntimeError("worker runtime not installed: run jobs with `dreambot worker`")
    return _runtime


def _no_retry(job=None) -> None:
    """A job that failed on its own merits is not retried (retries are for workers that died)."""
    job = job if job is not None else get_current_job()
    if job is not None and job.retries_left:
        job.retries_left = 0
        job.connection.hset(job.key, "retries_left", 0)


def _release(rt: Runtime, origin, job_id: str, refund: bool) -> None:
    if origin is None:
        return
    try:
        rt.limiter.release(origin.guild_id, origin.user_id, job_id, refund=refund)
    except redis.RedisError as err:  # the slot frees itself after its TTL
        log.warning("limit release failed", extra={"job_id": job_id, "error": type(err).__name__})


def fail_job(rt: Runtime, job_id: str, origin, request, reason: str, kind: str = "internal") -> None:
    """Tell the member (through their bot's outbox) and give the job's images back to their quota.
    `kind` is the reason's metrics label (dreamcore.metrics.FAIL_REASONS)."""
    result = DreamResult(job_id=job_id, status="failed", origin=origin, request=request, error=reason,
                         worker=rt.name)
    _publish_patiently(rt, result, [], ttl_s=rt.settings.failure_ttl_s)
    _release(rt, origin, job_id, refund=True)
    metrics.job_failed(kind)
    log.warning("job failed", extra={"job_id": job_id, "reason": reason})


def run_dream(payload) -> dict:
    """RQ's entry point for one job run alone (a variation, an upscale, or a dream with no companions)."""
    rt = runtime()
    current = get_current_job()
    # Failures are filed under RQ's own id, never under an id read from a payload that may be corrupt
    # (a made-up id could mark another member's job as done).
    job = _parse(rt, current.id if current is not None else "unknown", payload, current)
    ((published, cancelled, gone),) = _flags(rt, [job])
    if published:
        return _already_published(job)
    try:
        _precheck(rt, job, cancelled, gone)
        return _generate_and_publish(rt, job)
    except Exception as err:
        return _settle(rt, job, err, current)


def _parse(rt: Runtime, rq_id: str, payload, rq_job) -> DreamJob:
    """The job in `payload`. Raises JobRejected for a payload that can't be read (its member, if one can be
    found, has been told)."""
    try:
        job = parse_job(payload)
        if rq_job is not None and job.job_id != rq_job.id:
            raise JobError(f"job_id {job.job_id} does not match the queued job {rq_job.id}", field="job_id")
    except JobError as err:
        fail_job(rt, rq_id, origin_of(payload), None, f"this request could not be read ({err})", kind="bad_input")
        _no_retry(rq_job)
        raise JobRejected(str(err)) from None
    return job


def _already_published(job: DreamJob) -> dict:
    # A retry after a worker died between publishing and RQ's bookkeeping: the result is out.
    log.info("job already published, skipping", extra={"job_id": job.job_id})
    return {"status": "already-published"}


def _flags(rt: Runtime, jobs: list[DreamJob]) -> list[tuple[bool, bool, bool]]:
    """(published already, cancelled, channel gone) for each job, in one round trip to Redis."""
    if not jobs:
        return []
    # One MGET for every job of a batch (three EXISTS per job was the worker's second-largest item).
    got = [x is not None for x in rt.conn.mget(
        [k for job in jobs for k in (results.done_key(job.job_id), cancel_key(job.job_id),
                                     results.channel_gone_key(job.origin.channel_id))])]
    return [tuple(got[k:k + 3]) for k in range(0, len(got), 3)]  # type: ignore[misc]


def _settle(rt: Runtime, job: DreamJob, err: Exception, rq_job) -> dict:
    """Turn an exception out of a job's run into what RQ records, after telling the member. Returns RQ's
    return value (a cancelled job ends normally) or raises JobRejected."""
    if isinstance(err, JobRejected):
        _no_retry(rq_job)
        raise err
    if isinstance(err, JobCancelled):
        who = rt.conn.get(cancel_key(job.job_id))
        by = "you" if who is None or who.decode() == str(job.origin.user_id) else f"<@{who.decode()}>"
        fail_job(rt, job.job_id, job.origin, job.request, f"cancelled by {by}", kind="cancelled")
        _no_retry(rq_job)
        return {"status": "cancelled"}
    if isinstance(err, JobTimeoutException):
        reason = f"it took longer than the {rt.settings.job_timeout_s} s limit for one dream"
        kind = "timeout"
    elif isinstance(err, ImageStoreError):
        reason = "the image store could not be reached, so nothing was posted; please try again in a minute"
        kind = "store"
    elif _is_oom(err):
        _free_gpu_memory()
        reason = "the GPU ran out of memory on this one; try fewer images or another size"
        kind = "oom"
    elif isinstance(err, SafetyCheckFailed):
        reason = "the content filter could not check the images, so nothing was posted; please try again"
        kind = "safety"
    else:
        reason = f"the worker hit an internal error ({type(err).__name__}); nothing was posted"
        kind = "internal"
    log.error("job crashed", extra={"job_id": job.job_id}, exc_info=err)
    fail_job(rt, job.job_id, job.origin, job.request, reason, kind=kind)
    _no_retry(rq_job)
    raise JobRejected(reason) from err


def _is_oom(err: Exception) -> bool:
    import torch

    return isinstance(err, torch.cuda.OutOfMemoryError) or "out of memory" in str(err).lower()


def _free_gpu_memory() -> None:
    import gc

    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


PROGRESS_INTERVAL_S = 2.0  # Discord takes about one edit per message every two seconds
# A cancel is looked for at the first step and then at most this often: one MGET per step was the largest
# share of a job's Redis commands (40 of ~140), and at 15 steps/s per GPU the largest load a pool puts on
# Redis. A cancelled job still stops within this plus one step.
CANCEL_CHECK_S = 0.25


class StepHook:
    """The step callback of one pipeline call, for the jobs whose images it denoises (one job, or a batch).

    At its first step and then every CANCEL_CHECK_S it asks Redis, in one MGET, which of them were
    cancelled: a cancelled job alone stops the call at once; in a batch the others carry on and the cancelled
    one is dropped at the end. Every PROGRESS_INTERVAL_S of denoising (not at the first step: a job that
    takes less needs no progress, its images follow) it publishes each job's progress with a preview of
    that job's own latents.
    """

    def __init__(self, rt: Runtime, jobs: list[DreamJob]):
        self.rt = rt
        self.jobs = jobs
        self.keys = [cancel_key(j.job_id) for j in jobs]
        self.cancelled: set[str] = set()
        self.poison = faults.once("worker-nan")
        self.last = time.monotonic()  # of the last progress published; the first comes PROGRESS_INTERVAL_S in
        self.checked: float | None = None  # when Redis was last asked about cancels

    def __call__(self, event: StepEvent) -> None:
        faults.crash_here("worker-mid-job")
        if self.poison:  # tests only: what a broken fp16 VAE or a bad driver produces, to the first job here
            event.latents[(getattr(event, "rows", None) or {}).get(0, slice(None))].mul_(float("nan"))
        now = time.monotonic()
        # The last step too: a batch drops the members cancelled by then, so that look must be current.
        if self.checked is None or now - self.checked >= CANCEL_CHECK_S or event.done == event.total:
            self.checked = now
            try:
                flags = self.rt.conn.mget(self.keys)
            except redis.RedisError:
                flags = [None] * len(self.keys)  # Redis restarting: keep denoising; the result is published patiently
            self.cancelled.update(j.job_id for j, f in zip(self.jobs, flags, strict=True) if f is not None)
            if len(self.cancelled) == len(self.jobs):
                raise JobCancelled(",".join(sorted(self.cancelled)))
        if now - self.last < PROGRESS_INTERVAL_S or event.done == event.total:
            return  # the finished images follow at once: no progress edit for the last step
        self.last = now
        rows = getattr(event, "rows", None) or {0: slice(None)}
        try:
            for k, sl in rows.items():
                job = self.jobs[k]
                if job.job_id in self.cancelled:
                    continue
                fields = {"stage": event.stage, "step": event.step, "stage_total": event.stage_total,
                          "done": event.done, "total": event.total, "at": time.time()}
                image = latent_preview_image(event.latents[sl])
                preview: bytes | None = jpeg(image)
                if self.rt.checker is not None:
                    try:  # judged like the finished images (bot.progress): a preview is an image too
                        fields["nsfw_score"] = self.rt.checker.scores([image])[0]
                    except Exception as err:  # noqa: BLE001 - no score, no preview; the job goes on
                        log.warning("preview not scored", extra={"job_id": job.job_id, "error": type(err).__name__})
                        preview = None
                results.publish_progress(self.rt.conn, job.origin.instance, job.job_id, fields, preview,
                                         stream_len=self.rt.settings.progress_stream_len)
        except redis.RedisError:
            pass  # progress is a courtesy; never fail or slow a job for it


def _precheck(rt: Runtime, job: DreamJob, cancelled: bool, gone: bool) -> None:
    """Before spending GPU time: a job cancelled while it waited, or with nowhere to post, ends here
    (`cancelled` and `gone` as _flags read them)."""
    if cancelled:
        raise JobCancelled(job.job_id)
    if gone:
        reason = "the channel it was asked in has been deleted"
        fail_job(rt, job.job_id, job.origin, job.request, reason, kind="channel_gone")
        raise JobRejected(reason)
    if faults.once("worker-oom"):
        import torch

        raise torch.cuda.OutOfMemoryError("CUDA out of memory (injected by DREAMBOT_TEST_FAULTS)")


def _input_error(rt: Runtime, job: DreamJob, err: ValueError) -> JobRejected:
    """PromptTooLong, a source image gone, other input the model can't take: the member is told why."""
    fail_job(rt, job.job_id, job.origin, job.request, str(err),
             kind="prompt_too_long" if isinstance(err, PromptTooLong) else "bad_input")
    return JobRejected(str(err))


def _generate_and_publish(rt: Runtime, job: DreamJob) -> dict:
    t0 = time.perf_counter()
    try:
        gen: Generation = _make_images(rt, job)
    except ValueError as err:
        raise _input_error(rt, job, err) from None
    (scored,) = score_images(rt, [gen])
    return _publish_generation(rt, job, gen, t0, scored=scored)


def _publish_generation(rt: Runtime, job: DreamJob, gen: Generation, t0: float, share: float = 1.0,
                        record: bool = True, scored: Scored | None = None) -> dict:
    """Encode a job's images, publish them to its bot's outbox, settle its quota. `share` is the job's part of
    a batch's images (stage times are the batch's; metrics get this job's share); `record` is False when the
    batch records its seconds per image once for all its jobs; `scored` is what the output classifier made
    of its images (scored here when the caller has not)."""
    req = job.request
    if scored is None:
        (scored,) = score_images(rt, [gen])
    if gen.nan_detected:
        _free_gpu_memory()
        reason = "the model produced a blank (NaN) image; try another seed or fewer steps"
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
        source=job.source,
    )
    published = _publish_patiently(rt, result, [e.data for e in encoded])
    faults.crash_here("worker-after-publish")
    _release(rt, job.origin, job.job_id, refund=False)
    if record:
        stats.record_job(rt.conn, timings["total_s"], len(encoded))
    shared = {k: v * share if k.endswith("_s") and k not in ("png_s",) else v for k, v in timings.items()}
    metrics.observe_stages(shared, len(encoded), refiner_ran=gen.refiner_steps > 0)
    metrics.job_done()
    log.info("job done", extra={"job_id": job.job_id, "images": len(encoded), "seconds": timings["total_s"],
                                 "published": published, "batch_images": timings.get("batch_images", len(encoded))})
    return {"status": "done", "images": len(encoded), "seconds": round(timings["total_s"], 3)}


# -- batches ---------------------------------------------------------------------------------------------


@dataclass
class Claimed:
    """One RQ job of a batch, as the worker took it: RQ's id (trusted), the raw payload (not yet)."""

    rq_id: str
    payload: Any
    rq_job: Any = None  # rq.job.Job, for retry bookkeeping


@dataclass
class Outcome:
    """How one job of a batch ended, for RQ: a return value, or the exception with its traceback."""

    value: dict | None = None
    exc_info: tuple | None = None

    @property
    def failed(self) -> bool:
        return self.exc_info is not None


def _capture(fn, *args) -> Outcome:
    try:
        return Outcome(value=fn(*args))
    except Exception:
        return Outcome(exc_info=sys.exc_info())


@dataclass
class Made:
    """A job whose images exist and wait to be encoded and published (the part that needs no GPU)."""

    index: int  # its place among the members
    job: DreamJob
    gen: Generation
    t0: float
    share: float  # its part of its batch's images
    record: bool  # fold its time into the seconds-per-image average (a batch does that once for all)
    rq_job: Any = None
    scored: Scored | None = None  # the output classifier's verdict, from one call for the whole batch


def denoise(members: list[Claimed]) -> tuple[list[Outcome | None], list[Made]]:
    """The GPU half of running `members`: several dreams that share a batch key as one denoising batch, or
    one job of any kind alone. Returns an Outcome for every member that ended here (failed, cancelled,
    skipped) and a Made for every member whose images wait for `finish`.

    Each job is admitted, checked and has its prompts encoded on its own (a bad one fails alone); the rest
    go through one base + refiner call (the pipeline splits it where prompt lengths differ). If the batch
    runs out of GPU memory its jobs are run again one at a time. A timeout, or anything else that stops the
    call, fails every job in it, each member told.
    """
    rt = runtime()
    outcomes: list[Outcome | None] = [None] * len(members)
    made: list[Made] = []
    live: list[tuple[int, DreamJob, Any]] = []
    admitted: dict[int, DreamJob] = {}  # whom a timeout must tell
    try:
        parsed: list[tuple[int, DreamJob]] = []
        for i, m in enumerate(members):
            outcome = _capture(_parse, rt, m.rq_id, m.payload, m.rq_job)
            if outcome.failed:
                outcomes[i] = outcome
            else:
                parsed.append((i, outcome.value))
        for (i, job), (published, cancelled, gone) in zip(parsed, _flags(rt, [j for _, j in parsed]), strict=True):
            m = members[i]
            if published:
                outcomes[i] = Outcome(value=_already_published(job))
                continue
            admitted[i] = job
            try:
                _precheck(rt, job, cancelled, gone)
                if job.kind != "dream" or len(members) == 1:
                    _make_alone(rt, i, job, m.rq_job, outcomes, made)
                    continue
                try:
                    prepared = rt.pipeline.prepare(job.request)
                except ValueError as err:
                    raise _input_error(rt, job, err) from None
            except Exception as err:
                outcomes[i] = _capture(_settle, rt, job, err, m.rq_job)
                continue
            live.append((i, job, prepared))
        if live:
            _denoise_batch(rt, members, live, outcomes, made)
        _score_made(rt, members, outcomes, made)
    except JobTimeoutException as err:
        done = {m.index for m in made}
        for i, job in admitted.items():
            if outcomes[i] is None and i not in done:
                outcomes[i] = _capture(_settle, rt, job, err, members[i].rq_job)
    return outcomes, made


def _score_made(rt: Runtime, members: list[Claimed], outcomes: list, made: list[Made]) -> None:
    """Every image made in this call through the classifier at once, on the worker's device, while the
    GPU half still runs; a failure fails those jobs (each member told) rather than post unscored images."""
    if not made:
        return
    try:
        for m, scored in zip(made, score_images(rt, [m.gen for m in made]), strict=True):
            m.scored = scored
    except JobTimeoutException:
        raise
    except Exception as err:
        for m in made:
            outcomes[m.index] = _capture(_settle, rt, m.job, err, members[m.index].rq_job)
        made.clear()


def finish(made: list[Made], outcomes: list[Outcome | None]) -> list[Outcome]:
    """The CPU half: encode each made job's images and publish them to its bot, jobs side by side (Pillow's
    encoders release the GIL). Fills in `outcomes` and returns it, every member settled."""
    rt = runtime()
    outcomes = list(outcomes)
    if len(made) == 1:
        m = made[0]
        outcomes[m.index] = _capture(_publish_or_settle, rt, m)
    elif made:
        with ThreadPoolExecutor(max_workers=min(len(made), os.cpu_count() or 1), thread_name_prefix="finish") as ex:
            for m, outcome in zip(made, ex.map(lambda m: _capture(_publish_or_settle, rt, m), made), strict=True):
                outcomes[m.index] = outcome
    for i, o in enumerate(outcomes):  # a member with no outcome would be a bug here: fail it loudly
        if o is None:
            outcomes[i] = Outcome(exc_info=(RuntimeError, RuntimeError("this job was left unsettled"), None))
    return outcomes  # type: ignore[return-value]


def _make_alone(rt: Runtime, i: int, job: DreamJob, rq_job, outcomes: list, made: list[Made]) -> None:
    t0 = time.perf_counter()
    try:
        try:
            gen = _make_images(rt, job)
        except ValueError as err:
            raise _input_error(rt, job, err) from None
    except JobTimeoutException:
        raise
    except Exception as err:
        outcomes[i] = _capture(_settle, rt, job, err, rq_job)
        return
    made.append(Made(i, job, gen, t0, 1.0, True, rq_job))


def _denoise_batch(rt: Runtime, members: list[Claimed], live, outcomes: list, made: list[Made]) -> None:
    jobs = [job for _, job, _ in live]
    hook = StepHook(rt, jobs)
    t0 = time.perf_counter()
    try:
        gens = rt.pipeline.generate_prepared([p for _, _, p in live], on_step=hook)
    except JobTimeoutException:
        raise
    except Exception as err:
        if _is_oom(err) and len(live) > 1:
            _free_gpu_memory()
            log.warning("batch ran out of GPU memory; running its jobs one at a time",
                        extra={"jobs": [j.job_id for j in jobs]})
            for i, job, _ in live:
                _make_alone(rt, i, job, members[i].rq_job, outcomes, made)
            return
        for i, job, _ in live:
            e = JobCancelled(job.job_id) if isinstance(err, JobCancelled) else err
            outcomes[i] = _capture(_settle, rt, job, e, members[i].rq_job)
        return
    images = sum(len(g.images) for g in gens)
    stats.record_job(rt.conn, time.perf_counter() - t0, images)
    metrics.batch_ran(len(live), images)
    for (i, job, _), gen in zip(live, gens, strict=True):
        if job.job_id in hook.cancelled:
            outcomes[i] = _capture(_settle, rt, job, JobCancelled(job.job_id), members[i].rq_job)
            continue
        made.append(Made(i, job, gen, t0, len(gen.images) / images, False, members[i].rq_job))


def _publish_or_settle(rt: Runtime, m: Made) -> dict:
    try:
        return _publish_generation(rt, m.job, m.gen, m.t0, share=m.share, record=m.record, scored=m.scored)
    except Exception as err:
        return _settle(rt, m.job, err, m.rq_job)


def batch_timeout(timeouts: list[int], images: int) -> int:
    """A batch's time limit: one job's limit (sized for up to four images) per four images it holds."""
    return max(timeouts) * max(1, math.ceil(images / 4))


class SourceGone(ValueError):
    """A variation's or an upscale's source image has expired (or can't be read): the member is told why."""


def _make_images(rt: Runtime, job: DreamJob) -> Generation:
    """Dispatch on the job's kind; every kind runs on the models this process already holds."""
    hook = StepHook(rt, [job])
    if job.kind == "dream":
        return rt.pipeline.generate(job.request, on_step=hook)
    src = job.source
    try:
        data = results.load_image(rt.store, src.job_id, src.index, src.format)
    except ImageStoreError as err:
        raise SourceGone(f"the image it starts from can't be read from the image store just now ({err}); "
                         "try again in a minute") from None
    if data is None:
        raise SourceGone(f"that image is no longer kept (job {src.job_id}, image {src.index + 1}): images are kept "
                         f"{_human_s(rt.settings.image_retention_days * 86400)}. Try Reroll instead")
    from PIL import Image, UnidentifiedImageError

    try:
        image = Image.open(io.BytesIO(data))
        image.load()
    except (UnidentifiedImageError, OSError) as err:
        raise SourceGone(f"the image it starts from can't be read ({type(err).__name__})") from None
    if job.kind == "variation":
        return rt.pipeline.vary(job.request, image, src.strength, on_step=hook)
    from dreamcore.params import MAX_UPSCALED_SIDE

    if max(image.size) * 2 > MAX_UPSCALED_SIDE:
        raise SourceGone(f"that image is {image.width}x{image.height} already; upscales stop at "
                         f"{MAX_UPSCALED_SIDE} pixels a side")
    return rt.pipeline.upscale(job.request, image, src.strength, on_step=hook, tile=rt.settings.upscale_tile,
                               overlap=rt.settings.upscale_overlap)


def _human_s(seconds: int) -> str:
    if seconds % 86400 == 0:
        return f"{seconds // 86400} day{'s' * (seconds > 86400)}"
    if seconds % 3600 == 0:
        return f"{seconds // 3600} hour{'s' * (seconds > 3600)}"
    return f"{seconds // 60} minutes"


STORE_PATIENCE_S = 30.0


def _patiently(fn, errors: tuple[type[Exception], ...], patience_s: float, job_id: str, what: str):
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


def _store_patiently(rt: Runtime, result: DreamResult, images: list[bytes], patience_s: float | None = None):
    """Write the images (and the buttons' record) to the image store, riding out a short outage; past
    `patience_s` the ImageStoreError goes up and the job fails alone, its member told (nothing is posted:
    the result is published only after every image is stored)."""
    def store():
        results.store_images(rt.store, result, images)
        if result.origin is not None and result.request is not None:
            params.save_to_store(rt.store, params.from_result(result))

    _patiently(store, (ImageStoreError,), STORE_PATIENCE_S if patience_s is None else patience_s,
               result.job_id, "image store write")


def _publish_patiently(rt: Runtime, result: DreamResult, images: list[bytes], ttl_s: int | None = None,
                       patience_s: float = 120) -> bool:
    """The images exist only in this process until published: ride out a Redis restart rather than lose them."""
    if images:
        _store_patiently(rt, result, images)
    def publish() -> bool:
        try:
            return results.publish(rt.conn, result, ttl_s or rt.settings.result_ttl_s, rt.settings)
        except NotReplicated as err:
            # On the primary, not yet on a replica: publishing again would find its own done marker.
            # Should the primary die before it replicates, the job's lease runs out and it is run again.
            log.warning("result published but not yet replicated", extra={"job_id": result.job_id,
                                                                           "error": str(err)})
            return True

    return _patiently(publish, (redis.RedisError,), patience_s, result.job_id, "publish")


def on_abandoned(job, exc_type, exc_value, tb) -> bool:
    """RQ exception handler, also called for jobs whose worker died. When no retry is left, the job goes to
    RQ's failed registry (our dead letters), its member is told and its quota given back."""
    try:
        ours = job.func_name == "worker.tasks.run_dream"
    except Exception:  # a job hash RQ itself can't decode: nobody to tell, RQ records the failure
        return True
    if not ours or (job.retries_left or 0) > 0:
        return True
    rt = runtime()
    if rt.conn.exists(results.done_key(job.id)):
        return True  # already told (a failure the job published itself, or a result that went out)
    try:
        payload = job.args[0]
    except Exception:
        payload = None
    origin = origin_of(payload)
    try:
        request = parse_job(payload).request
    except JobError:
        request = None
    tries = int(job.meta.get("tries") or rt.settings.job_retries + 1)
    fail_job(rt, job.id, origin, request,
             f"the worker making it stopped responding {tries} time{'s' * (tries > 1)}; it was not retried again",
             kind="crashed")
    return True
