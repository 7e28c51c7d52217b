"""A worker run in the test process over the session's Redis: a job as bot1 would queue it, the worker in burst
mode on the tiny pipeline, and what it published, read from bot1's outbox."""

from __future__ import annotations

from dreamcore import results
from dreamcore.job import make_job, make_origin, make_request
from dreamcore.settings import get_settings
from tests.support.fleet import image_store


def job_for(prompt="a lighthouse at dusk", user=5, **kw):
    kw.setdefault("steps", 4)
    kw.setdefault("seed", 7)
    origin = make_origin(instance="bot1", guild_id=1, channel_id=2, user_id=user)
    return make_job(make_request(prompt=prompt, aspect="12:5", **kw), origin)


def outbox(conn):
    box = results.Outbox(conn, "bot1", "test")
    box.ensure_group()
    return box


def drain(conn):
    """Every result in bot1's outbox, by job id: (result, images)."""
    box = outbox(conn)
    got = {}
    for entry in box.read(block_ms=100, count=100):
        got[entry.job_id] = results.load(conn, image_store(), entry.job_id)
        box.ack(entry)
    return got


def work(conn, pipeline):
    from worker.runner import make_worker

    worker = make_worker(get_settings(), conn, pipeline, name="test-worker")
    worker.work(burst=True, logging_level="WARNING")
    return worker
