"""Workers die, Redis restarts, GPUs misbehave: every member still gets their images once or a clear message."""

from __future__ import annotations

import signal
import time

import pytest
import redis
from rq.job import Job
from rq.serializers import JSONSerializer

from dreamcore import faults, results
from dreamcore.job import make_job, make_origin, make_request
from dreamcore.localredis import LocalRedis
from dreamcore.queue import fair_order
from dreamcore.queue.rq_queues import DreamQueue
from dreamcore.settings import get_settings
from tests.support.fleet import Fleet, image_messages, image_store, wait_until
from tests.support.standin import DiscordStandIn

pytestmark = pytest.mark.timeout(300)


def _job_id_of(fleet, bot) -> str:
    text = wait_until(lambda: next((m.content for m in fleet.standin.messages(bot.channel_id)
                               if (m.content or "").startswith("Queued")), None), 10, "no queued reply")
    return text.split("`")[1]


def test_worker_killed_mid_job_is_retaken_and_delivered_once(fleet, rconn):
    bot = fleet.bots[0]
    fleet.start_bot(bot)
    fleet.wait_bots_ready()
    doomed = fleet.start_worker("doomed", DREAMBOT_TEST_FAULTS="worker-mid-job")
    fleet.dream(bot, aspect="12:5", seed=11).wait_ack(5)
    job_id = _job_id_of(fleet, bot)
    doomed.wait(120)
    assert doomed.returncode == -signal.SIGKILL
    died = time.monotonic()
    fleet.start_worker("rescuer")
    wait_until(lambda: image_messages(fleet.standin, bot.channel_id), 90, "job never retaken")
    took = time.monotonic() - died
    print(f"\nabandoned job delivered {took:.1f}s after its worker was SIGKILLed (lease 5 s)")
    assert took < 90  # lease 5 s + maintenance + a fresh worker loading its models on a busy machine
    # The post can come before RQ's bookkeeping: the worker settles a job once its images are out.
    wait_until(lambda: Job.fetch(job_id, connection=rconn, serializer=JSONSerializer).get_status() == "finished",
               30, "the retaken job was never marked finished")
    time.sleep(1.0)
    assert len(image_messages(fleet.standin, bot.channel_id)) == 1


def test_job_that_keeps_killing_workers_is_dead_lettered_and_member_told(fleet, rconn):
    bot = fleet.bots[0]
    fleet.start_bot(bot, DREAMBOT_JOB_RETRIES="1")  # the enqueuer decides how often a job is tried
    fleet.wait_bots_ready()
    inter = fleet.dream(bot, aspect="12:5")
    inter.wait_ack(5)
    job_id = _job_id_of(fleet, bot)
    for name in ("first", "second"):  # DREAMBOT_JOB_RETRIES=1: two deaths and it is given up
        w = fleet.start_worker(name, DREAMBOT_TEST_FAULTS="worker-mid-job", DREAMBOT_JOB_RETRIES="1")
        w.wait(120)
        assert w.returncode == -signal.SIGKILL
    fleet.start_worker("janitor", DREAMBOT_JOB_RETRIES="1")
    told = wait_until(lambda: next((m for m in fleet.standin.messages(bot.channel_id)
                               if "stopped responding" in (m.content or "")), None), 90, "member never told")
    assert told.ephemeral and told.interaction_id == inter.id
    assert "2 times" in told.content
    assert job_id in DreamQueue(rconn, get_settings()).queues["default"].failed_job_registry.get_job_ids()
    assert not image_messages(fleet.standin, bot.channel_id)


def test_sigterm_drains_the_job_in_hand_and_takes_no_new_one(fleet, rconn):
    bot = fleet.bots[0]
    fleet.start_bot(bot)
    fleet.wait_bots_ready()
    fleet.dream(bot, aspect="12:5", steps=20, count=2).wait_ack(5)
    first = _job_id_of(fleet, bot)
    fleet.dream(bot, aspect="12:5", prompt="the second dream").wait_ack(5)
    worker = fleet.start_worker("draining")
    q = DreamQueue(rconn, get_settings())
    wait_until(lambda: q.fetch(first).get_status() == "started", 120, "job never started")
    worker.send_signal(signal.SIGTERM)
    assert worker.wait(120) == 0
    msgs = image_messages(fleet.standin, bot.channel_id)
    assert len(msgs) == 1 and len(msgs[0].attachments) == 2  # the job in hand was finished and posted
    assert q.fetch(first).get_status() == "finished"
    assert q.waiting() == 1  # the next one was left for another worker


@pytest.fixture(scope="module")
def pipeline(tiny_model_dir):
    from worker.pipeline import DreamPipeline

    return DreamPipeline.load(str(tiny_model_dir / "base"), str(tiny_model_dir / "refiner"), "cpu")


def test_oom_and_nan_fail_only_their_job(tiny_env, rconn, pipeline, monkeypatch):
    from worker.runner import make_worker

    monkeypatch.setenv("DREAMBOT_TEST_FAULTS", "worker-oom,worker-nan")
    faults._fired.clear()
    box = results.Outbox(rconn, "bot1", "t")
    box.ensure_group()
    q = DreamQueue(rconn, get_settings())
    origin = make_origin(instance="bot1", guild_id=1, channel_id=2, user_id=3)
    jobs = [make_job(make_request(prompt=f"dream {i}", aspect="12:5", steps=3, seed=i, faces="off"), origin) for i in range(3)]
    for job in jobs:
        q.enqueue(job)
    make_worker(get_settings(), rconn, pipeline, name="faulty").work(burst=True, logging_level="WARNING")
    faults._fired.clear()
    got = {e.job_id: results.load(rconn, image_store(), e.job_id)[0] for e in box.read(block_ms=100, count=10)}
    oom, nan, ok = (got[j.job_id] for j in jobs)
    assert oom.status == "failed" and "ran out of memory" in oom.error
    assert nan.status == "failed" and "blank (NaN) image" in nan.error
    assert ok.status == "done"


def test_redis_restart_loses_no_queued_job_and_everyone_reconnects(tiny_model_dir, tmp_path):
    own = LocalRedis(appendonly=True).start()
    standin = DiscordStandIn().start()
    fleet = Fleet(standin, own.url, tiny_model_dir, tmp_path)
    fleet.setup(1)
    bot = fleet.bots[0]
    try:
        fleet.start_bot(bot)
        fleet.wait_bots_ready()
        fleet.dream(bot, aspect="12:5", seed=1).wait_ack(5)
        queued = _job_id_of(fleet, bot)
        own.kill()  # SIGKILL: only what the append-only file already holds survives
        down = fleet.dream(bot, aspect="12:5", prompt="while redis is down")
        down.wait_ack(5)
        assert not down.late
        own.start()
        conn = redis.Redis.from_url(own.url)
        assert fair_order.waiting_ids(conn, "dream-default")[:1] == [queued]
        worker = fleet.start_worker("after-restart")
        wait_until(lambda: image_messages(standin, bot.channel_id), 90, "queued job lost in the restart")
        own.kill()
        time.sleep(2)
        own.start()
        fleet.dream(bot, aspect="12:5", seed=2).wait_ack(5)  # bot and worker both came back
        wait_until(lambda: len(image_messages(standin, bot.channel_id)) == 2, 120, "no delivery after 2nd restart")
        assert worker.poll() is None
        texts = " ".join(m.content or "" for m in standin.messages(bot.channel_id, include_deleted=True))
        assert "can't queue dreams right now" in texts or "can't queue" in str(down.response)
    finally:
        fleet.stop()
        standin.stop()
        own.close()
