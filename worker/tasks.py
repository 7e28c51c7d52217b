"""The job function RQ runs: one dream job, start to finish, on the models this process already holds.

`run_dream` is named by string in each queued job ("worker.tasks.run_dream"); the worker process installs
its Runtime (models, Redis, settings) once at start, so a job never loads a model.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

import redis
from rq import get_current_job

from dreamcore import faults, results
from dreamcore.job import DreamJob, JobError, origin_of, parse_job
from dreamcore.results import DreamResult, ImageInfo
from dreamcore.settings import Settings

from .encode import TooLargeError, encode_images
from .pipeline import DreamPipeline, Generation

log = logging.getLogger("dreambot.worker")


class JobRejected(Exception):
    """The job can't succeed however often it is tried; its member has been told why."""


@dataclass
class Runtime:
    settings: Settings
    conn: redis.Redis
    pipeline: DreamPipeline
    name: str = "worker"
    stats: dict = field(default_factory=dict)


_runtime: Runtime | None = None


def install(runtime: Runtime) -> None:
    global _runtime
    _runtime = runtime


def runtime() -> Runtime:
    if _runtime is None:
        raise RuntimeError("worker runtime not installed: run jobs with `dreambot worker`")
    return _runtime


def _no_retry() -> None:
    """A job that failed on its own merits is not retried (retries are for workers that died)."""
    job = get_current_job()
    if job is not None and job.retries_left:
        job.retries_left = 0
        job.save_meta()
        job.connection.hset(job.key, "retries_left", 0)


def _fail(rt: Runtime, job_id: str, origin, request, reason: str) -> None:
    result = DreamResult(job_id=job_id, status="failed", origin=origin, request=request, error=reason,
                         worker=rt.name)
    results.publish(rt.conn, result, [], rt.settings.failure_ttl_s)
    log.warning("job failed", extra={"job_id": job_id, "reason": reason})


def run_dream(payload) -> dict:
    rt = runtime()
    current = get_current_job()
    fallback_id = current.id if current is not None else "unknown"
    try:
        job = parse_job(payload)
    except JobError as err:
        job_id = payload.get("job_id") if isinstance(payload, dict) and isinstance(payload.get("job_id"), str) else None
        _fail(rt, (job_id or fallback_id)[:64], origin_of(payload), None, f"this request could not be read ({err})")
        _no_retry()
        raise JobRejected(str(err)) from None

    if rt.conn.exists(results.done_key(job.job_id)):
        # A retry after a worker died between publishing and RQ's bookkeeping: the result is out.
        log.info("job already published, skipping", extra={"job_id": job.job_id})
        return {"status": "already-published"}

    try:
        return _generate_and_publish(rt, job)
    except JobRejected:
        _no_retry()
        raise


def _generate_and_publish(rt: Runtime, job: DreamJob) -> dict:
    req = job.request
    t0 = time.perf_counter()
    try:
        gen: Generation = rt.pipeline.generate(req)
    except ValueError as err:  # PromptTooLong and other input the model can't take
        _fail(rt, job.job_id, job.origin, req, str(err))
        raise JobRejected(str(err)) from None
    if gen.nan_detected:
        reason = "the model produced a blank (NaN) image; try another seed or fewer steps"
        _fail(rt, job.job_id, job.origin, req, reason)
        raise JobRejected(reason)

    t_enc = time.perf_counter()
    try:
        encoded = encode_images(gen.images, req.max_upload_bytes, stem=f"dream-{job.job_id}", seeds=gen.seeds)
    except TooLargeError as err:
        _fail(rt, job.job_id, job.origin, req, str(err))
        raise JobRejected(str(err)) from None
    timings = dict(gen.timings)
    timings["png_s"] = time.perf_counter() - t_enc
    timings["total_s"] = time.perf_counter() - t0

    result = DreamResult(
        job_id=job.job_id,
        status="done",
        origin=job.origin,
        request=req,
        images=[
            ImageInfo(filename=e.filename, format=e.format, width=e.width, height=e.height, seed=s,
                      size_bytes=len(e.data))
            for e, s in zip(encoded, gen.seeds, strict=True)
        ],
        timings={k: round(v, 4) for k, v in timings.items()},
        base_steps=gen.base_steps,
        refiner_steps=gen.refiner_steps,
        prompt_note=gen.prompt_note,
        worker=rt.name,
    )
    published = results.publish(rt.conn, result, [e.data for e in encoded], rt.settings.result_ttl_s)
    faults.crash_here("worker-after-publish")
    log.info("job done", extra={"job_id": job.job_id, "images": len(encoded), "seconds": timings["total_s"],
                                 "published": published})
    return {"status": "done", "images": len(encoded), "seconds": round(timings["total_s"], 3)}
