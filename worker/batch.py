"""The one way a job goes through the worker, in two halves: `denoise` (the GPU half: several dreams that
share a batch key as one denoising call, or one job of any kind alone) and `finish` (encode and publish, in
a finisher thread while the GPU takes the next batch). A job run by a plain RQ worker (tasks.run_dream) is a
batch of one. Every member ends as an Ended (what RQ records), or as a Made waiting for `finish`; the helpers
return those, one per member, rather than fill lists passed in."""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from rq.timeouts import JobTimeoutException

from dreamcore import metrics, stats
from dreamcore.job import DreamJob

from . import admit
from .classifier import Scored, score_images
from .errors import JobCancelled, free_gpu_memory, is_oom
from .failure import input_error, settle
from .make import make_images, with_faces
from .pipeline import Generation
from .publish import publish_generation, units_made
from .runtime import Runtime, runtime
from .steps import StepHook

log = logging.getLogger("dreambot.worker")


@dataclass
class Claimed:
    """One RQ job of a batch, as the worker took it: RQ's id (trusted), the raw payload (not yet)."""

    rq_id: str
    payload: Any
    rq_job: Any = None  # rq.job.Job, for retry bookkeeping


@dataclass
class Ended:
    """How one job of a batch ended, for RQ: a return value, or the exception with its traceback."""

    value: dict | None = None
    exc_info: tuple | None = None

    @property
    def failed(self) -> bool:
        return self.exc_info is not None


def _capture(fn, *args) -> Ended:
    try:
        return Ended(value=fn(*args))
    except Exception:
        return Ended(exc_info=sys.exc_info())


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
def denoise(members: list[Claimed]) -> tuple[list[Ended | None], list[Made]]:
    """The GPU half of running `members`. Returns an Ended for every member that ended here (failed,
    cancelled, skipped; None for the others) and a Made for every member whose images wait for `finish`.

    Each job is admitted, checked and has its prompts encoded on its own (a bad one fails alone); the rest
    go through one base + refiner call (the pipeline splits it where prompt lengths differ). If the batch
    runs out of GPU memory its jobs are run again one at a time. A timeout, or anything else that stops the
    call, fails every job in it, each member told.
    """
    rt = runtime()
    ended: dict[int, Ended | Made] = {}
    admitted: dict[int, DreamJob] = {}  # whom a timeout must tell
    try:
        parsed: list[tuple[int, DreamJob]] = []
        for i, m in enumerate(members):
            outcome = _capture(admit.parse, rt, m.rq_id, m.payload, m.rq_job)
            if outcome.failed:
                ended[i] = outcome
            else:
                parsed.append((i, outcome.value))
        live: list[tuple[int, DreamJob, Any]] = []
        for (i, job), (published, cancelled, gone) in zip(parsed, admit.flags(rt, [j for _, j in parsed]),
                                                          strict=True):
            if published:
                ended[i] = Ended(value=admit.already_published(job))
                continue
            admitted[i] = job
            rq_job = members[i].rq_job
            try:
                admit.precheck(rt, job, cancelled, gone)
                if job.kind != "dream" or len(members) == 1:
                    ended[i] = _make_alone(rt, i, job, rq_job)
                    continue
                try:
                    live.append((i, job, rt.pipeline.prepare(job.request)))
                except ValueError as err:
                    raise input_error(rt, job, err) from None
            except Exception as err:
                ended[i] = _capture(settle, rt, job, err, rq_job)
        if live:
            ended.update(_denoise_batch(rt, members, live))
        ended.update(_scored(rt, members, [e for e in ended.values() if isinstance(e, Made)]))
    except JobTimeoutException as err:
        ended.update(getattr(err, "made_before", {}))
        for i, job in admitted.items():
            if i not in ended:
                ended[i] = _capture(settle, rt, job, err, members[i].rq_job)
    outcomes = [e if isinstance(e := ended.get(i), Ended) else None for i in range(len(members))]
    return outcomes, [e for e in ended.values() if isinstance(e, Made)]


def _make_alone(rt: Runtime, i: int, job: DreamJob, rq_job) -> Ended | Made:
    t0 = time.perf_counter()
    try:
        try:
            gen = make_images(rt, job)
        except ValueError as err:
            raise input_error(rt, job, err) from None
    except JobTimeoutException:
        raise
    except Exception as err:
        return _capture(settle, rt, job, err, rq_job)
    return Made(i, job, gen, t0, 1.0, True, rq_job)


def _denoise_batch(rt: Runtime, members: list[Claimed], live) -> dict[int, Ended | Made]:
    """One generate_prepared call for the live members, and one face pass over what it made; how each of
    them ended, by index."""
    jobs = [job for _, job, _ in live]
    hook = StepHook(rt, jobs)
    t0 = time.perf_counter()
    try:
        gens = rt.pipeline.generate_prepared([p for _, _, p in live], on_step=hook)
        gens = with_faces(rt, jobs, gens, hook)
    except JobTimeoutException:
        raise
    except Exception as err:
        if is_oom(err) and len(live) > 1:
            free_gpu_memory()
            log.warning("batch ran out of GPU memory; running its jobs one at a time",
                        extra={"jobs": [j.job_id for j in jobs]})
            alone: dict[int, Ended | Made] = {}
            try:
                for i, job, _ in live:
                    alone[i] = _make_alone(rt, i, job, members[i].rq_job)
            except JobTimeoutException as err:
                err.made_before = alone  # the images finished before the limit are still published
                raise
            return alone
        return {i: _capture(settle, rt, job, JobCancelled(job.job_id) if isinstance(err, JobCancelled) else err,
                            members[i].rq_job) for i, job, _ in live}
    images = sum(len(g.images) for g in gens)
    stats.record_job(rt.conn, time.perf_counter() - t0,
                     sum(units_made(rt, job, g) for (_, job, _), g in zip(live, gens, strict=True)),
                     stats.speed_key(live[0][1]))  # one batch key: one kind and mode
    metrics.batch_ran(len(live), images)
    out: dict[int, Ended | Made] = {}
    for (i, job, _), gen in zip(live, gens, strict=True):
        if job.job_id in hook.cancelled:
            out[i] = _capture(settle, rt, job, JobCancelled(job.job_id), members[i].rq_job)
        else:
            out[i] = Made(i, job, gen, t0, len(gen.images) / images, False, members[i].rq_job)
    return out


def _scored(rt: Runtime, members: list[Claimed], made: list[Made]) -> dict[int, Ended | Made]:
    """Every image made in this call through the classifier at once, while the GPU half still runs: each
    Made with its verdict, or, when the classifier fails, each job failed (its member told) rather than
    posted unscored."""
    if not made:
        return {}
    try:
        verdicts = score_images(rt.checker, [m.gen for m in made])
    except JobTimeoutException:
        raise
    except Exception as err:
        return {m.index: _capture(settle, rt, m.job, err, members[m.index].rq_job) for m in made}
    return {m.index: dataclasses.replace(m, scored=s) for m, s in zip(made, verdicts, strict=True)}


def finish(made: list[Made], outcomes: list[Ended | None]) -> list[Ended]:
    """The CPU half: encode each made job's images and publish them to its bot, jobs side by side (Pillow's
    encoders release the GIL). Returns every member's Ended: `outcomes`' own, the made jobs' filled in."""
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
            outcomes[i] = Ended(exc_info=(RuntimeError, RuntimeError("this job was left unsettled"), None))
    return outcomes  # type: ignore[return-value]


def _publish_or_settle(rt: Runtime, m: Made) -> dict:
    try:
        return publish_generation(rt, m.job, m.gen, m.t0, share=m.share, record=m.record, scored=m.scored)
    except Exception as err:
        return settle(rt, m.job, err, m.rq_job)


def batch_timeout(timeouts: list[int], images: int) -> int:
    """A batch's time limit: one job's limit (sized for up to four images) per four images it holds."""
    return max(timeouts) * max(1, math.ceil(images / 4))
