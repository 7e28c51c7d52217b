"""Cancelling a dream: a waiting job leaves the queue at once, a running one stops at its next step.

Only the member who asked, or an admin of the guild the job came from, may cancel it; a job id from
another guild is answered as unknown, so ids can't be probed across servers.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import redis
from rq.job import JobStatus

from . import results
from .i18n import _
from .job import JobError, parse_job
from .keys import CANCEL_TTL_S, cancel_key
from .limits.limiter import Limiter
from .queue.fair_order import DM_GUILD, parse_owner
from .queue.rq_queues import DreamQueue
from .results import DreamResult

log = logging.getLogger(__name__)


@dataclass
class CancelOutcome:
    ok: bool
    message: str


def cancel_job(conn: redis.Redis, queue: DreamQueue, limiter: Limiter, job_id: str, actor_id: int,
               actor_guild_id: int | None, actor_is_admin: bool, ttl_s: int) -> CancelOutcome:
    job_id = job_id.strip().strip("`")
    rq_job = queue.fetch(job_id) if job_id.isalnum() and len(job_id) <= 64 else None
    unknown = CancelOutcome(False, _("I know no dream `{job_id}` in this server.").format(job_id=job_id[:20]))
    if rq_job is None:
        return unknown
    guild, user = parse_owner(str(rq_job.meta.get("owner", "")))
    if guild != str(actor_guild_id or DM_GUILD):
        return unknown
    if user != str(actor_id) and not actor_is_admin:
        return CancelOutcome(False, _("Only the member who asked for this dream, or a server admin, can cancel it."))

    status = rq_job.get_status()
    if status in (JobStatus.FINISHED, JobStatus.FAILED, JobStatus.CANCELED, JobStatus.STOPPED):
        return CancelOutcome(False, _("Dream `{job_id}` has already ended ({status}).").format(job_id=job_id,
                                                                                              status=status))
    running = status == JobStatus.STARTED
    if not running and not queue.remove(job_id):
        # A worker took it between the status read and now: stop it at its next step instead.
        running = rq_job.get_status() in (JobStatus.STARTED, JobStatus.QUEUED)
    if running:
        conn.set(cancel_key(job_id), str(actor_id), ex=CANCEL_TTL_S)
        # The quota comes back now (the worker's notice, when it stops, finds it released already).
        limiter.release(int(guild) if guild != DM_GUILD else None, int(user), job_id, refund=True)
        return CancelOutcome(True, _("Dream `{job_id}` is being made; it stops at its next step.").format(
            job_id=job_id))
    try:
        rq_job.cancel()
    except Exception as err:  # RQ refuses a job it already counts as cancelled; it is out of the queue
        log.info("rq cancel skipped", extra={"job_id": job_id, "error": type(err).__name__})
    try:
        job = parse_job(rq_job.args[0])
    except (JobError, IndexError):
        return CancelOutcome(True, _("Dream `{job_id}` cancelled.").format(job_id=job_id))
    # The reason its member reads in the failure notice (worded as a worker words its own, worker/failure.py).
    why = (_("cancelled by you") if user == str(actor_id) else
           _("cancelled by {member}").format(member=f"<@{actor_id}>"))
    results.publish(conn, DreamResult(job_id=job_id, status="failed", origin=job.origin, request=job.request,
                                      error=why), ttl_s, queue.settings)
    limiter.release(job.origin.guild_id, job.origin.user_id, job_id, refund=True)
    return CancelOutcome(True, _("Dream `{job_id}` cancelled; its images went back to the quota.").format(
        job_id=job_id))
