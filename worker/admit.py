"""Before a job gets GPU time: its payload read and checked against RQ's own id, and whether it was published
already, cancelled while it waited, or has no channel left to post in (one MGET for a whole batch)."""

from __future__ import annotations

import logging

from dreamcore import faults, keys
from dreamcore.i18n import N_
from dreamcore.job import DreamJob, JobError, origin_of, parse_job
from dreamcore.keys import cancel_key

from .errors import JobCancelled, JobRejected
from .failure import no_retry
from .publish import fail_job
from .runtime import Runtime

log = logging.getLogger("dreambot.worker")


def parse(rt: Runtime, rq_id: str, payload, rq_job) -> DreamJob:
    """The job in `payload`. Raises JobRejected for a payload that can't be read (its member, if one can be
    found, has been told)."""
    try:
        job = parse_job(payload)
        if rq_job is not None and job.job_id != rq_job.id:
            raise JobError(f"job_id {job.job_id} does not match the queued job {rq_job.id}", field="job_id")
    except JobError as err:
        fail_job(rt, rq_id, origin_of(payload), None, f"this request could not be read ({err})", kind="bad_input")
        no_retry(rq_job)
        raise JobRejected(str(err)) from None
    return job


def already_published(job: DreamJob) -> dict:
    # A retry after a worker died between publishing and RQ's bookkeeping: the result is out.
    log.info("job already published, skipping", extra={"job_id": job.job_id})
    return {"status": "already-published"}


def flags(rt: Runtime, jobs: list[DreamJob]) -> list[tuple[bool, bool, bool]]:
    """(published already, cancelled, channel gone) for each job, in one round trip to Redis."""
    if not jobs:
        return []
    # One MGET for every job of a batch (three EXISTS per job was the worker's second-largest item).
    got = [x is not None for x in rt.conn.mget(
        [k for job in jobs for k in (keys.done_key(job.job_id), cancel_key(job.job_id),
                                     keys.channel_gone_key(job.origin.channel_id))])]
    return [tuple(got[k:k + 3]) for k in range(0, len(got), 3)]  # type: ignore[misc]


def precheck(rt: Runtime, job: DreamJob, cancelled: bool, gone: bool) -> None:
    """Before spending GPU time: a job cancelled while it waited, or with nowhere to post, ends here
    (`cancelled` and `gone` as flags() reads them)."""
    if cancelled:
        raise JobCancelled(job.job_id)
    if gone:
        reason = N_("the channel it was asked in has been deleted")
        fail_job(rt, job.job_id, job.origin, job.request, reason, kind="channel_gone")
        raise JobRejected(reason)
    faults.hit("worker-oom")
