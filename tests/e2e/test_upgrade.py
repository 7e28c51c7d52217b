"""A release upgrade with dreams still waiting: the previous release's bots queued them in RQ's plain lists
(its own fair-push script); the new worker serves every one of them, then the new queue's jobs."""

from __future__ import annotations

import io
import json
import subprocess
import sys

import pytest
from PIL import Image

from dreamcore import results
from dreamcore.job import make_job, make_origin, make_request
from dreamcore.queue import fair_order
from dreamcore.queue.rq_queues import DreamQueue, queue_names
from dreamcore.settings import get_settings
from tests.support.fleet import image_store
from tests.support.history import NoHistory, unpack_newest


@pytest.fixture(scope="module")
def pipeline(tiny_model_dir):
    from worker.pipeline import DreamPipeline

    return DreamPipeline.load(str(tiny_model_dir / "base"), str(tiny_model_dir / "refiner"), "cpu")

ENQUEUE_WITH_THE_OLD_RELEASE = """
import json, sys
import redis
from dreamcore.job import make_job, make_origin, make_request
from dreamcore.queue import DreamQueue
from dreamcore.settings import load_settings
conn = redis.Redis.from_url(sys.argv[1])
q = DreamQueue(conn, load_settings())
ids = []
for user in (1, 1, 1, 2, 3):
    origin = make_origin(instance="bot1", guild_id=7, channel_id=10, user_id=user)
    job = make_job(make_request(prompt=f"old release, member {user}", seed=user, steps=2, aspect="1:1"), origin)
    q.enqueue(job)
    ids.append(job.job_id)
print(json.dumps(ids))
"""


def _release(changed: str, marker: str, tmp_path, what: str) -> str:
    """The newest of the last 50 commits that changed `changed` whose copy holds `marker`, unpacked."""
    try:
        out = unpack_newest(changed, marker, ["dreamcore"], tmp_path / "previous")
    except NoHistory as err:
        pytest.fail(f"this test needs the project's git history (a full clone): {err}")
    if out is None:
        pytest.fail(f"no commit with {what} in the last 50 changes of {changed}: run .ci/run on a full clone")
    return out


def _release_before_the_fair_sorted_set(tmp_path) -> str:
    """The newest commit whose queue kept waiting jobs in RQ's lists (its _FAIR_PUSH script)."""
    return _release("dreamcore/queue.py", "_FAIR_PUSH", tmp_path, "the list-based queue")


def test_dreams_queued_by_the_previous_release_are_all_served_by_the_new_worker(tiny_env, rconn, pipeline,
                                                                                 tmp_path, redis_url):
    from worker.runner import make_worker

    old = _release_before_the_fair_sorted_set(tmp_path)
    env = dict(tiny_env, PYTHONPATH=old)
    run = subprocess.run([sys.executable, "-c", ENQUEUE_WITH_THE_OLD_RELEASE, redis_url], env=env, cwd=old,
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr[-3000:]
    old_ids = json.loads(run.stdout)
    assert rconn.llen("rq:queue:dream-default") == 5 and fair_order.totals(rconn, queue_names()).jobs == 5
    # ... and a new bot queues one more after the upgrade.
    new = make_job(make_request(prompt="new release", seed=9, steps=2, aspect="1:1"),
                   make_origin(instance="bot1", guild_id=7, channel_id=10, user_id=4))
    DreamQueue(rconn, get_settings()).enqueue(new)
    assert DreamQueue(rconn, get_settings()).position(new.job_id) == 5  # behind the old list

    box = results.Outbox(rconn, "bot1", "test")
    box.ensure_group()
    make_worker(get_settings(), rconn, pipeline, name="upgraded").work(burst=True, logging_level="WARNING")
    for jid in [*old_ids, new.job_id]:
        result, images = results.load(rconn, image_store(), jid)
        assert result is not None and result.status == "done", (jid, result)
        assert Image.open(io.BytesIO(images[0])).size[0] > 0
    assert fair_order.totals(rconn, queue_names()).jobs == 0
    # The old release's fair order held: members 2 and 3 before member 1's second and third dreams.
    order = [e.job_id for e in box.read(count=200, block_ms=100) if e.status in ("done", "failed")]
    assert order.index(old_ids[3]) < order.index(old_ids[1]) and order.index(old_ids[4]) < order.index(old_ids[1])


def _release_before_the_two_level_queue(tmp_path) -> str:
    """The newest commit whose fair queue was one level (members only: one sorted set per queue)."""
    return _release("dreamcore/fairq_lua.py", "redis.call('ZADD', q .. ':o:' .. owner, round, member)", tmp_path,
                    "the one-level fair queue")


def test_dreams_the_one_level_release_queued_are_served_and_posted_after_the_upgrade(tiny_env, rconn, pipeline,
                                                                                    tmp_path, redis_url):
    """The previous release's bots queued five dreams in its one-level fair queue, with no records of their
    own; after the upgrade a new bot queues one more. The new worker moves them into the two-level queue and
    serves every one, fairly (member 1's second dream after members 2 and 3's first); the operator's one-time
    `dreambot adopt-jobs` records the old jobs, so their results are posted, not refused as forgeries."""
    from dreamcore import delivery
    from worker.runner import make_worker

    old = _release_before_the_two_level_queue(tmp_path)
    env = dict(tiny_env, PYTHONPATH=old)
    run = subprocess.run([sys.executable, "-c", ENQUEUE_WITH_THE_OLD_RELEASE, redis_url], env=env, cwd=old,
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr[-3000:]
    old_ids = json.loads(run.stdout)
    assert rconn.zcard("dream:fq:dream-default") == 5 and fair_order.totals(rconn, queue_names()).jobs == 5
    new = make_job(make_request(prompt="new release", seed=9, steps=2, aspect="1:1"),
                   make_origin(instance="bot1", guild_id=7, channel_id=10, user_id=4))
    DreamQueue(rconn, get_settings()).enqueue(new)
    assert DreamQueue(rconn, get_settings()).position(new.job_id) == 5  # behind the old queue, until moved
    # The operator's step of the upgrade, workers stopped (`dreambot adopt-jobs`): the old jobs get records.
    assert delivery.adopt_records(rconn, get_settings(), queue_names()) == {"bot1": 5}
    assert delivery.adopt_records(rconn, get_settings(), queue_names()) == {}  # nothing twice

    box = results.Outbox(rconn, "bot1", "test")
    box.ensure_group()
    make_worker(get_settings(), rconn, pipeline, name="upgraded").work(burst=True, logging_level="WARNING")
    assert rconn.zcard("dream:fq:dream-default") == 0 and fair_order.totals(rconn, queue_names()).jobs == 0
    for jid in [*old_ids, new.job_id]:
        got = delivery.for_delivery(rconn, image_store(), jid, "bot1")
        assert got is not None and got.result.status == "done", (jid, got)
        assert Image.open(io.BytesIO(got.images[0])).size[0] > 0
    order = [e.job_id for e in box.read(count=200, block_ms=100) if e.status in ("done", "failed")]
    assert order.index(old_ids[3]) < order.index(old_ids[1]) and order.index(old_ids[4]) < order.index(old_ids[1])
    # A member's first dream queued after the upgrade does not wait behind member 1's second and third.
    assert order.index(new.job_id) < order.index(old_ids[2])
