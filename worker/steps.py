"""What happens at every denoising step of a pipeline call: cancels are noticed, progress (with a preview of
each job's own latents) is published for the bot to show."""

from __future__ import annotations

import logging
import time

import redis

from dreamcore import faults, results
from dreamcore.job import DreamJob
from dreamcore.keys import cancel_key

from .errors import JobCancelled
from .pipeline import StepEvent
from .preview import jpeg, latent_preview_image
from .runtime import Runtime

log = logging.getLogger("dreambot.worker")

# Discord takes about one edit per message every two seconds, and the bot edits a reply at most that often
# (bot.progress.EDIT_EVERY_S). A quarter second more here: at exactly two, the jitter of a busy machine put
# every other nudge a little under two seconds after the last edit, and the bot dropped it.
PROGRESS_INTERVAL_S = 2.25
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
        self.poison = faults.hit("worker-nan")
        self.last = time.monotonic()  # of the last progress published; the first comes PROGRESS_INTERVAL_S in
        self.checked: float | None = None  # when Redis was last asked about cancels
        # A picture job's input score (worker/make.py): a preview is judged by the higher of it and its own.
        self.source_score: float | None = None

    def __call__(self, event: StepEvent) -> None:
        faults.hit("worker-mid-job")
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
                if event.parts > 1:  # a dream made in parts: its steps restart each part
                    fields.update(part=event.part, parts=event.parts)
                image = latent_preview_image(event.latents[sl])
                preview: bytes | None = jpeg(image)
                if self.rt.checker is not None:
                    try:  # judged like the finished images (bot.progress): a preview is an image too
                        score = self.rt.checker.scores([image])[0]
                        fields["nsfw_score"] = max(score, self.source_score or 0.0)
                    except Exception as err:  # noqa: BLE001 - no score, no preview; the job goes on
                        log.warning("preview not scored", extra={"job_id": job.job_id, "error": type(err).__name__})
                        preview = None
                results.publish_progress(self.rt.conn, job.origin.instance, job.job_id, fields, preview,
                                         stream_len=self.rt.settings.progress_stream_len)
        except redis.RedisError:
            pass  # progress is a courtesy; never fail or slow a job for it
