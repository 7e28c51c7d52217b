"""The failure policy: what an exception out of a job's run becomes. Its member is told why (through their
bot's outbox), its quota given back, and RQ records it without a retry, since retries are for workers that
died, not for jobs that fail on their own merits."""

from __future__ import annotations

import logging

from rq import get_current_job
from rq.timeouts import JobTimeoutException

from dreamcore.i18n import N_
from dreamcore.images import ImageStoreError
from dreamcore.job import DreamJob
from dreamcore.keys import cancel_key

from .errors import JobCancelled, JobRejected, SafetyCheckFailed, free_gpu_memory, is_oom
from .prompts import PromptTooLong
from .publish import fail_job
from .runtime import Runtime

log = logging.getLogger("dreambot.worker")


def no_retry(job=None) -> None:
    """A job that failed on its own merits is not retried (retries are for workers that died)."""
    job = job if job is not None else get_current_job()
    if job is not None and job.retries_left:
        job.retries_left = 0
        job.connection.hset(job.key, "retries_left", 0)


def settle(rt: Runtime, job: DreamJob, err: Exception, rq_job) -> dict:
    """Turn an exception out of a job's run into what RQ records, after telling the member. Returns RQ's
    return value (a cancelled job ends normally) or raises JobRejected."""
    if isinstance(err, JobRejected):
        no_retry(rq_job)
        raise err
    if isinstance(err, JobCancelled):
        who = rt.conn.get(cancel_key(job.job_id))
        mine = who is None or who.decode() == str(job.origin.user_id)
        reason = N_("cancelled by you") if mine else f"cancelled by <@{who.decode()}>"
        fail_job(rt, job.job_id, job.origin, job.request, reason, kind="cancelled")
        no_retry(rq_job)
        return {"status": "cancelled"}
    if isinstance(err, JobTimeoutException):
        reason = f"it took longer than the {rt.settings.job_timeout_s} s limit for one dream"
        kind = "timeout"
    elif isinstance(err, ImageStoreError):
        reason = N_("the image store could not be reached, so nothing was posted; please try again in a minute")
        kind = "store"
    elif is_oom(err):
        free_gpu_memory()
        reason = N_("the GPU ran out of memory on this one; try fewer images or another size")
        kind = "oom"
    elif isinstance(err, SafetyCheckFailed):
        reason = N_("the content filter could not check the images, so nothing was posted; please try again")
        kind = "safety"
    else:
        reason = f"the worker hit an internal error ({type(err).__name__}); nothing was posted"
        kind = "internal"
    log.error("job crashed", extra={"job_id": job.job_id}, exc_info=err)
    fail_job(rt, job.job_id, job.origin, job.request, reason, kind=kind)
    no_retry(rq_job)
    raise JobRejected(reason) from err


def input_error(rt: Runtime, job: DreamJob, err: ValueError) -> JobRejected:
    """PromptTooLong, a source image gone, other input the model can't take: the member is told why."""
    fail_job(rt, job.job_id, job.origin, job.request, str(err),
             kind="prompt_too_long" if isinstance(err, PromptTooLong) else "bad_input")
    return JobRejected(str(err))
