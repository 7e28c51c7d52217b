"""Crashes at the worst moments: a worker killed after publishing, a bot killed after posting.
Either way the member sees the images exactly once."""

from __future__ import annotations

import time

import pytest
from rq.job import Job
from rq.serializers import JSONSerializer

from tests.support.fleet import image_messages, wait_until

pytestmark = pytest.mark.timeout(240)


def test_worker_killed_after_generating_does_not_post_twice(fleet, rconn):
    bot = fleet.bots[0]
    fleet.start_bot(bot)
    fleet.wait_bots_ready()
    doomed = fleet.start_worker("doomed", DREAMBOT_TEST_FAULTS="worker-after-publish")
    inter = fleet.dream(bot, aspect="12:5", seed=5)
    inter.wait_ack(5)
    job_id = next(m.content for m in fleet.standin.messages(bot.channel_id)).split("`")[1]
    doomed.wait(120)
    assert doomed.returncode == -9  # SIGKILL, right after the result went out

    wait_until(lambda: image_messages(fleet.standin, bot.channel_id), 60, "no images after the crash")
    # The job is still STARTED in RQ: another worker must find it abandoned, retry it, and not redo it.
    fleet.start_worker("rescuer")
    wait_until(lambda: Job.fetch(job_id, connection=rconn, serializer=JSONSerializer).get_status() == "finished",
          90, "abandoned job never finished")
    assert "already published" in fleet.logs()
    time.sleep(1.0)
    assert len(image_messages(fleet.standin, bot.channel_id)) == 1


def test_bot_killed_after_posting_does_not_post_twice(fleet, rconn):
    bot = fleet.bots[0]
    fleet.start_bot(bot, DREAMBOT_TEST_FAULTS="bot-after-post")
    fleet.wait_bots_ready()
    fleet.start_worker()
    inter = fleet.dream(bot, aspect="12:5", seed=6)
    inter.wait_ack(5)
    bot.proc.wait(120)
    assert bot.proc.returncode == -9  # died after the post, before recording it
    assert len(image_messages(fleet.standin, bot.channel_id)) == 1

    fleet.start_bot(bot)  # restarted without the fault: it finds the entry pending and delivers again
    wait_until(lambda: rconn.exists(f"dream:delivered:{inter_job(fleet, bot)}"), 60, "restarted bot never recorded it")
    msgs = image_messages(fleet.standin, bot.channel_id)
    assert len(msgs) == 1, "the redelivery must edit the same reply, not post a second message"


def inter_job(fleet, bot) -> str:
    for m in image_messages(fleet.standin, bot.channel_id):
        return m.attachments[0][0].split("-")[1]
    raise AssertionError("no image message")
