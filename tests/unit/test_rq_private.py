"""dreamcore/queue/rq_private.py against the installed RQ: every private member it calls exists with the shape
it assumes, and each wrapper does on a real Redis what the worker and FairQueue rely on. A new RQ release that
breaks one fails here, by name (pyproject.toml bounds rq to the release these run against)."""

from __future__ import annotations

import inspect
import sys

import pytest
import rq.worker.base
from rq import Queue, SimpleWorker
from rq.exceptions import StopRequested
from rq.job import JobStatus
from rq.serializers import JSONSerializer
from rq.worker import Worker

from dreamcore.queue import rq_private


def test_the_private_members_exist_with_the_shapes_the_adapter_calls():
    for name, params in (("_finalize_success", ["self", "job", "queue", "execution", "return_value"]),
                         ("_finalize_failure", ["self", "job", "queue", "execution", "exc_info"])):
        assert list(inspect.signature(getattr(Worker, name)).parameters) == params, name
    source = inspect.getsource(rq.worker.base)  # set in BaseWorker, read by the adapter
    assert "self._stop_requested" in source and "self._shutdown_requested_date" in source


def test_fetch_dequeued_job_gives_the_job_and_its_queue_or_none_once_its_hash_is_gone(rconn):
    from dreamcore.queue.rq_queues import FairQueue

    assert list(inspect.signature(Queue._fetch_dequeued_job).parameters) == [
        "connection", "queue_key", "job_id", "job_class", "serializer", "death_penalty_class"]
    q = Queue("adapter-fetch", connection=rconn, serializer=JSONSerializer)
    job = q.enqueue("builtins.len", [1, 2, 3])
    got, queue = rq_private.fetch_dequeued_job(FairQueue, rconn, q.key, job.id, serializer=JSONSerializer)
    assert got.id == job.id and got.args == [[1, 2, 3]]
    assert isinstance(queue, FairQueue) and queue.name == "adapter-fetch"
    job.delete()
    assert rq_private.fetch_dequeued_job(FairQueue, rconn, q.key, job.id, serializer=JSONSerializer) is None


def _started(rconn, name: str):
    """A job taken by a real SimpleWorker up to the point where the worker would run it."""
    q = Queue(name, connection=rconn, serializer=JSONSerializer)
    job = q.enqueue("builtins.len", [1, 2, 3])
    w = SimpleWorker([q], connection=rconn, serializer=JSONSerializer)
    w.register_birth()
    execution = w.prepare_execution(job)
    w.prepare_job_execution(job)
    return w, q, job, execution


def test_finalize_success_records_a_finished_job_with_its_value(rconn):
    w, q, job, execution = _started(rconn, "adapter-ok")
    rq_private.finalize_success(w, job, q, execution, 3)
    job.refresh()
    assert job.get_status() == JobStatus.FINISHED and job.return_value() == 3
    assert job.id in q.finished_job_registry.get_job_ids()


def test_finalize_failure_records_a_failed_job_with_its_traceback(rconn):
    w, q, job, execution = _started(rconn, "adapter-fail")
    try:
        raise ValueError("the job said no")
    except ValueError:
        rq_private.finalize_failure(w, job, q, execution, sys.exc_info())
    job.refresh()
    assert job.get_status() == JobStatus.FAILED and "the job said no" in (job.latest_result().exc_string or "")
    assert job.id in q.failed_job_registry.get_job_ids()


def test_stop_was_requested_reads_both_of_rqs_stop_marks(rconn):
    q = Queue("adapter-stop", connection=rconn, serializer=JSONSerializer)
    w = SimpleWorker([q], connection=rconn, serializer=JSONSerializer)
    w.unsubscribe = lambda: rq_private.unsubscribe(w)  # RQ's own waits a minute for its pubsub thread (below)
    assert not rq_private.stop_was_requested(w)
    w.work(burst=True)  # an empty burst ends without a stop request
    assert not rq_private.stop_was_requested(w)
    with pytest.raises(StopRequested):  # what SIGTERM does to an idle worker (RQ 3)
        w.request_stop(15, None)
    assert rq_private.stop_was_requested(w)


def test_unsubscribe_stops_the_pubsub_thread_within_its_bound(rconn):
    """RQ's own unsubscribe, on redis-py 8.2, waits for its pubsub thread's 60 s sleep: a minute per worker
    shutdown. The adapter's keeps RQ's intended one-second bound, and the thread still ends."""
    import time

    from dreamcore.queue.rq_queues import FairQueue
    from worker.runner import DreamWorker

    source = inspect.getsource(rq.worker.base.BaseWorker.subscribe)
    assert "pubsub_thread" in source and "run_in_thread" in source
    q = FairQueue("adapter-pubsub", connection=rconn, serializer=JSONSerializer)
    w = DreamWorker([q], connection=rconn, serializer=JSONSerializer)
    w.subscribe()
    w.pubsub.unsubscribe()  # what RQ's unsubscribe sends first; under load the thread reads the reply
    time.sleep(0.5)  # ... and is back in its 60 s wait before stop() is called: the case that hung
    t0 = time.monotonic()
    w.unsubscribe()
    assert time.monotonic() - t0 < 2.5
    assert w.pubsub_thread.daemon  # left to end on its own, it holds no exit up
