"""The worker on a real Redis and the tiny model: queue in, outbox out, bad jobs fail alone."""

from __future__ import annotations

import io
import zlib

import pytest
import redis
from PIL import Image
from rq.serializers import JSONSerializer

from dreamcore import keys
from dreamcore.queue.rq_queues import DreamQueue
from dreamcore.settings import get_settings
from tests.support.worker_run import drain, job_for, outbox, work


@pytest.fixture(scope="module")
def pipeline(tiny_model_dir):
    from worker.pipeline import DreamPipeline

    return DreamPipeline.load(str(tiny_model_dir / "base"), str(tiny_model_dir / "refiner"), "cpu")


def test_job_goes_through_queue_worker_and_outbox(tiny_env, rconn, pipeline):
    outbox(rconn)
    job = job_for(count=2)
    DreamQueue(rconn, get_settings()).enqueue(job)
    work(rconn, pipeline)
    result, images = drain(rconn)[job.job_id]
    assert result.status == "done"
    assert [i.seed for i in result.images] == [7, 8]
    assert result.base_steps + result.refiner_steps == 4 and result.refiner_steps == 1
    for data in images:
        img = Image.open(io.BytesIO(data))
        img.load()
        assert img.size == (1536, 640) and img.format == "PNG"
    assert images[0] != images[1]
    assert {"base_s", "refiner_s", "decode_s", "total_s"} <= set(result.timings)


def test_same_seed_same_bytes_through_the_queue(tiny_env, rconn, pipeline):
    outbox(rconn)
    a, b = job_for(seed=1234), job_for(seed=1234)
    q = DreamQueue(rconn, get_settings())
    q.enqueue(a)
    q.enqueue(b)
    work(rconn, pipeline)
    got = drain(rconn)
    assert got[a.job_id][1] == got[b.job_id][1]


def test_garbage_jobs_fail_alone_and_the_worker_goes_on(tiny_env, rconn, pipeline):
    outbox(rconn)
    q = DreamQueue(rconn, get_settings())
    good = job_for()
    # 1: a payload from a newer schema, 2: fields out of range, 3: not even a dict.
    newer = good.to_dict() | {"v": 6, "job_id": "aaaaaaaaaaaaaaaa"}
    broken = good.to_dict() | {"job_id": "bbbbbbbbbbbbbbbb"}
    broken["request"] = dict(broken["request"], count=99)
    rq_queue = q.queues["default"]
    for payload, jid in ((newer, "aaaaaaaaaaaaaaaa"), (broken, "bbbbbbbbbbbbbbbb"), ("garbage", "cccccccccccccccc")):
        rq_queue.enqueue("worker.tasks.run_dream", payload, job_id=jid)
    # 4: a job hash RQ itself can't decode.
    rq_queue.enqueue("worker.tasks.run_dream", {}, job_id="dddddddddddddddd")
    rconn.hset("rq:job:dddddddddddddddd", "data", zlib.compress(b"\x00not json"))
    q.enqueue(good)
    worker = work(rconn, pipeline)

    got = drain(rconn)
    assert got[good.job_id][0].status == "done"
    assert "schema version 6" in got["aaaaaaaaaaaaaaaa"][0].error
    assert "count" in got["bbbbbbbbbbbbbbbb"][0].error and "allowed 1 to 4" in got["bbbbbbbbbbbbbbbb"][0].error
    assert got["bbbbbbbbbbbbbbbb"][0].origin.user_id == 5  # the member can still be told
    failed = set(rq_queue.failed_job_registry.get_job_ids())
    # RQ itself refuses the undecodable hash: failed, logged, and the worker carries on.
    assert {"aaaaaaaaaaaaaaaa", "bbbbbbbbbbbbbbbb", "cccccccccccccccc", "dddddddddddddddd"} <= failed
    assert worker.get_state() != "busy"


def test_prompt_too_long_is_told_not_cut(tiny_env, rconn, pipeline):
    outbox(rconn)
    job = job_for(prompt="lighthouse " * 120)  # far beyond 4 CLIP windows
    DreamQueue(rconn, get_settings()).enqueue(job)
    work(rconn, pipeline)
    result, _ = drain(rconn)[job.job_id]
    assert result.status == "failed" and "tokens" in result.error and "300" in result.error


def test_retried_job_is_not_generated_twice(tiny_env, rconn, pipeline):
    outbox(rconn)
    job = job_for()
    q = DreamQueue(rconn, get_settings())
    q.enqueue(job)
    work(rconn, pipeline)
    # As if the worker died after publishing but before RQ recorded success: the job runs again.
    q.queues["default"].enqueue("worker.tasks.run_dream", job.to_dict(), job_id=job.job_id)
    work(rconn, pipeline)
    entries = rconn.xrange(keys.outbox_key("bot1"))
    finished = [e[1][b"job_id"].decode() for e in entries if e[1][b"status"] != b"progress"]
    assert finished.count(job.job_id) == 1


def test_missing_weights_stop_the_worker_at_start(tiny_env, monkeypatch, tmp_path):
    import subprocess
    import sys

    env = dict(tiny_env, DREAMBOT_BASE_MODEL=str(tmp_path / "nope"))
    out = subprocess.run([sys.executable, "-m", "dreambot", "worker", "--burst"], env=env,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 2
    assert "DREAMBOT_BASE_MODEL" in out.stdout and str(tmp_path / "nope") in out.stdout


def test_json_serializer_everywhere(rconn):
    # What the bot writes must be readable by a worker that does not trust pickle.
    job = job_for()
    DreamQueue(rconn, get_settings()).enqueue(job)
    data = zlib.decompress(rconn.hget(f"rq:job:{job.job_id}", "data"))
    assert JSONSerializer.loads(data)[2][0]["job_id"] == job.job_id
    assert isinstance(rconn, redis.Redis)


def test_a_plain_rq_worker_runs_the_job_function_start_to_finish(tiny_env, rconn, pipeline):
    """`worker.tasks.run_dream`, the function each job names, works under any RQ worker, not only under
    DreamWorker (which splits it into denoise and finish): what an operator's
    `rq worker --queue-class dreamcore.queue.rq_queues.FairQueue` would run (the class that takes jobs in fair order)."""
    from rq import SimpleWorker

    from dreamcore.queue import rq_private
    from worker import runtime as tasks

    tasks.install(tasks.Runtime(settings=get_settings(), conn=rconn, pipeline=pipeline, name="plain-rq"))
    outbox(rconn)
    q = DreamQueue(rconn, get_settings())
    job = job_for(seed=99)
    q.enqueue(job)
    from dreamcore.queue.rq_queues import FairQueue

    plain = SimpleWorker(list(q.queues.values()), connection=rconn, serializer=JSONSerializer, queue_class=FairQueue)
    # RQ's own unsubscribe waits out its pubsub thread's 60 s sleep on this redis-py (dreamcore/queue/rq_private.py):
    # the adapter's bounded one, so the test takes the seconds the job takes, not a minute more.
    plain.unsubscribe = lambda: rq_private.unsubscribe(plain)
    plain.work(burst=True, logging_level="WARNING")
    result, images = drain(rconn)[job.job_id]
    assert result.status == "done" and result.worker == "plain-rq"
    assert Image.open(io.BytesIO(images[0])).size == (1536, 640)
    assert q.fetch(job.job_id).get_status() == "finished"


def test_a_stop_asked_while_a_job_is_recorded_waits_for_that_and_then_stops(tiny_env, rconn, pipeline, monkeypatch):
    """SIGTERM while the worker records a job whose images are out (RQ's bookkeeping, settled before it waits
    for work): the job is recorded as finished, and the worker stops then, without waiting for more work."""
    import os
    import signal
    import time

    from rq.job import Job

    from dreamcore.queue import rq_private
    from worker.runner import make_worker

    outbox(rconn)
    job = job_for()
    DreamQueue(rconn, get_settings()).enqueue(job)
    worker = make_worker(get_settings(), rconn, pipeline, name="stop-test-worker")
    worker.worker_ttl = 35  # RQ waits for work dequeue_timeout = ttl - 15 s at a time: a missed stop shows
    record = rq_private.finalize_success
    told = []

    def stopped_while_recording(*args, **kwargs):
        told.append(time.monotonic())
        os.kill(os.getpid(), signal.SIGTERM)  # handled on this (the main) thread before the next line
        return record(*args, **kwargs)

    monkeypatch.setattr(rq_private, "finalize_success", stopped_while_recording)
    handlers = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        worker.work(logging_level="WARNING")
        took = time.monotonic() - told[0]  # from the stop request to the work loop's end
    finally:
        for s, h in handlers.items():
            signal.signal(s, h)
    assert Job.fetch(job.job_id, connection=rconn, serializer=JSONSerializer).get_status() == "finished"
    assert rq_private.stop_was_requested(worker)
    assert took < 10, f"the worker waited {took:.0f} s for work after it was told to stop"
    result, images = drain(rconn)[job.job_id]
    assert result.status == "done" and len(images) == 1
