"""RQ's entry points for dream jobs: `run_dream`, named by string in every queued job
("worker.tasks.run_dream") and running one job start to finish as any RQ worker would call it, and
`on_abandoned`, RQ's exception handler, which tells the member of a job whose workers kept dying.

`dreambot worker` (runner.DreamWorker) runs the same work in two halves instead (batch.py: `denoise` on the
GPU, `finish` in a finisher thread). The pieces both paths share have their own rooms: runtime.py (the
process's models and connections), admit.py (before the GPU), steps.py (each denoising step), make.py (a
job's images), publish.py (the result out), failure.py (what an exception becomes).
"""

from __future__ import annotations

import logging
import time

from rq import get_current_job

from dreamcore import results
from dreamcore.job import DreamJob, JobError, origin_of, parse_job

from . import admit
from .classifier import score_images
from .failure import input_error, settle
from .make import make_images
from .pipeline import Generation
from .publish import fail_job, publish_generation
from .runtime import Runtime, runtime

log = logging.getLogger("dreambot.worker")


def run_dream(payload) -> dict:
    """RQ's entry point for one job run alone (a variation, an upscale, or a dream with no companions)."""
    rt = runtime()
    current = get_current_job()
    # Failures are filed under RQ's own id, never under an id read from a payload that may be corrupt
    # (a made-up id could mark another member's job as done).
    job = admit.parse(rt, current.id if current is not None else "unknown", payload, current)
    ((published, cancelled, gone),) = admit.flags(rt, [job])
    if published:
        return admit.already_published(job)
    try:
        admit.precheck(rt, job, cancelled, gone)
        return _generate_and_publish(rt, job)
    except Exception as err:
        return settle(rt, job, err, current)


def _generate_and_publish(rt: Runtime, job: DreamJob) -> dict:
    t0 = time.perf_counter()
    try:
        gen: Generation = make_images(rt, job)
    except ValueError as err:
        raise input_error(rt, job, err) from None
    (scored,) = score_images(rt.checker, [gen])
    return publish_generation(rt, job, gen, t0, scored=scored)


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
