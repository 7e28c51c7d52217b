"""Discord misbehaving on the way back: a bot restart before delivery, a global 429, a deleted channel."""

from __future__ import annotations

import signal
import time

import pytest

from dreamcore import keys, results
from tests.support.fleet import image_messages, image_store, wait_until

pytestmark = pytest.mark.timeout(240)


def test_bot_restart_between_generation_and_delivery(fleet, rconn):
    bot = fleet.bots[0]
    fleet.start_bot(bot)
    fleet.wait_bots_ready()
    fleet.dream(bot, aspect="12:5", seed=21).wait_ack(5)
    bot.proc.send_signal(signal.SIGTERM)
    bot.proc.wait(30)
    fleet.start_worker()
    wait_until(lambda: rconn.xlen(keys.outbox_key(bot.instance)), 90, "worker never published")
    assert not image_messages(fleet.standin, bot.channel_id)  # nobody to post it yet
    fleet.start_bot(bot)
    msg = wait_until(lambda: image_messages(fleet.standin, bot.channel_id), 60, "restarted bot never delivered")[0]
    assert "seed 21" in msg.content
    time.sleep(1.0)
    assert len(image_messages(fleet.standin, bot.channel_id)) == 1


def test_global_429_on_the_channel_route_waits_and_posts_once(fleet):
    fleet.standin.token_lifetime_s = 1.0  # force the channel-message path
    bot = fleet.bots[0]
    fleet.start_bot(bot)
    fleet.wait_bots_ready()
    fleet.standin.inject(r"POST /channels/\d+/messages", 429, count=1, retry_after=1.2, is_global=True)
    fleet.dream(bot, aspect="12:5").wait_ack(5)
    time.sleep(1.2)
    fleet.start_worker()
    wait_until(lambda: image_messages(fleet.standin, bot.channel_id), 90, "never delivered")
    posts = fleet.standin.requests(r"POST /channels/\d+/messages")
    assert [r.status for r in posts][:1] == [429] and posts[-1].status == 200
    assert posts[-1].time - posts[0].time >= 1.2
    time.sleep(1.0)
    assert len(image_messages(fleet.standin, bot.channel_id)) == 1


def test_deleted_channel_is_not_retried_forever(fleet, rconn):
    fleet.standin.token_lifetime_s = 1.0
    bot = fleet.bots[0]
    fleet.start_bot(bot)
    fleet.wait_bots_ready()
    fleet.dream(bot, aspect="12:5").wait_ack(5)
    job_id = next(m.content for m in fleet.standin.messages(bot.channel_id)).split("`")[1]
    with fleet.standin.store.lock:  # the channel disappears while the job waits
        fleet.standin.store.channels.pop(bot.channel_id)
    time.sleep(1.2)
    fleet.start_worker()
    where = wait_until(lambda: rconn.get(keys.delivered_key(job_id)), 90, "delivery never settled")
    assert where.startswith(b"undeliverable")
    time.sleep(2.0)
    assert len(fleet.standin.requests(r"POST /channels/\d+/messages")) == 1  # asked once, then stopped
    assert results.load(rconn, image_store(), job_id) is not None  # the images stay in Redis until their TTL


def test_worker_skips_jobs_for_a_deleted_channel(fleet, rconn):
    bot = fleet.bots[0]
    fleet.start_bot(bot)
    fleet.wait_bots_ready()
    fleet.dream(bot, aspect="12:5").wait_ack(5)
    job_id = next(m.content for m in fleet.standin.messages(bot.channel_id)).split("`")[1]
    rconn.set(keys.channel_gone_key(bot.channel_id), 1)  # what on_guild_channel_delete records
    fleet.start_worker()
    wait_until(lambda: results.load(rconn, image_store(), job_id), 90, "job never settled")
    result, images = results.load(rconn, image_store(), job_id)
    assert result.status == "failed" and "deleted" in result.error and images == []
