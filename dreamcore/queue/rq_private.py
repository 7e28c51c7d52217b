"""Every use of RQ's private API, in one place (rq is pinned to the release tests/unit/test_rq_private.py checks).

DreamWorker runs RQ's job bookkeeping itself, after the fact, so the GPU can start the next job while the
last one's images are still being encoded (worker/runner.py): RQ's public API has no way to say "this job
finished, record it" from outside `perform_job`. FairQueue (rq_queues.py) claims a job in its own script and
then fetches it as RQ's own dequeue does. These wrappers are the only places that reach past RQ's public API,
and each has a test that fails on an RQ release that renamed or reshaped what it calls.
"""

from __future__ import annotations

import inspect
from typing import Any

UNSUBSCRIBE_WAIT_S = 1.0


def fetch_dequeued_job(queue_class, connection, queue_key: str, job_id: str, job_class=None, serializer=None,
                       death_penalty_class=None):
    """What RQ's dequeue does with a job id it took off a queue: (job, queue), or None when the job's hash is
    gone."""
    return queue_class._fetch_dequeued_job(connection, queue_key, job_id, job_class=job_class,
                                           serializer=serializer, death_penalty_class=death_penalty_class)


def finalize_success(worker, job, queue, execution, return_value: Any) -> None:
    """What RQ does after a job function returned: results, registries, callbacks."""
    worker._finalize_success(job, queue, execution, return_value)


def finalize_failure(worker, job, queue, execution, exc_info) -> None:
    """What RQ does after a job function raised: retries, the failed registry, exception handlers."""
    worker._finalize_failure(job, queue, execution, exc_info)


def stop_was_requested(worker) -> bool:
    """Whether the work loop ended on a stop signal rather than on a lost Redis. A busy worker sets
    `_stop_requested`; an idle one told to stop raises StopRequested without it (RQ 3) but records its
    shutdown date."""
    return bool(getattr(worker, "_stop_requested", False)) or getattr(worker, "_shutdown_requested_date", None) is not None


def unsubscribe(worker) -> None:
    """RQ's Worker.unsubscribe with the bounded wait it means (`join(timeout=1)`). redis-py 8.2's
    PubSubWorkerThread.stop() joins the thread itself, without a bound, and RQ runs that thread with a 60 s
    sleep: once unsubscribed, it waits out those 60 s before it looks again, so every worker shutdown took up
    to a minute. The thread is a daemon: left to end on its own, it holds nothing up."""
    thread = getattr(worker, "pubsub_thread", None)
    if not thread:
        return
    worker.pubsub.unsubscribe()
    if "timeout" in inspect.signature(thread.stop).parameters:
        thread.stop(timeout=UNSUBSCRIBE_WAIT_S)
    else:  # redis-py before 8.2: stop() only clears the flag
        thread.stop()
        thread.join(timeout=UNSUBSCRIBE_WAIT_S)
    worker.pubsub.close()
