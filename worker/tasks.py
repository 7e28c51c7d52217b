"""RQ's entry points for dream jobs: `run_dream`, named by string in every queued job
("worker.tasks.run_dream"), and `on_abandoned`, RQ's exception handler, which tells the member of a job whose
workers kept dying.

A job has one way through the worker, whoever runs it: batch.py's `denoise` (the GPU half) then `finish`
(encode and publish). `dreambot worker` (runner.DreamWorker) runs batches of claimed jobs that way, with
`finish` in a finisher thread; `run_dream`, for any plain RQ worker, runs its job as a batch of one.
"""

from __future__ import annotations

import logging

from rq import get_current_job

from dreamcore import keys
from dreamcore.job import JobError, origin_of, parse_job

from .batch import Claimed, denoise, finish
from .publish import fail_job
from .runtime import runtime

log = logging.getLogger("dreambot.worker")


def run_dream(payload) -> dict:
    """RQ's entry point for one job: a batch of one through `denoise` and `finish`. Returns RQ's return value,
    or raises what the job ended with (its member told already), as RQ expects of a failed job."""
    current = get_current_job()
    # Failures are filed under RQ's own id, never under an id read from a payload that may be corrupt
    # (a made-up id could mark another member's job as done).
    member = Claimed(current.id if current is not None else "unknown", payload, current)
    outcomes, made = denoise([member])
    (outcome,) = finish(made, outcomes)
    if outcome.failed:
        raise outcome.exc_info[1].with_traceback(outcome.exc_info[2])
    return outcome.value


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
    if rt.conn.exists(keys.done_key(job.id)):
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
