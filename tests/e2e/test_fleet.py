"""The product end to end: ten bot processes on the local Discord stand-in, worker processes, real Redis,
the tiny model. What is asserted is what a member would see in the channel."""

from __future__ import annotations

import fnmatch
import io
import time

import pytest
import redis
from PIL import Image

from dreamcore import keys, results
from dreamcore.queue import fair_order
from tests.support.fleet import image_messages, redis_blobs

pytestmark = pytest.mark.timeout(300)


@pytest.fixture
def fleet(bare_fleet):
    return bare_fleet


def _wait_images(standin, channel_id, n=1, timeout=120.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        msgs = image_messages(standin, channel_id)
        if len(msgs) >= n:
            return msgs
        time.sleep(0.1)
    raise TimeoutError(f"no images in channel {channel_id}")


def test_ten_bots_one_worker_every_image_in_its_own_channel(fleet, standin, rconn):
    fleet.setup(10)
    for bot in fleet.bots:
        fleet.start_bot(bot)
    fleet.wait_bots_ready()
    fleet.start_worker()

    interactions = [fleet.dream(bot, aspect="12:5", seed=100 + bot.index) for bot in fleet.bots]
    acks = []
    for inter in interactions:
        body = inter.wait_ack(5)
        assert body["type"] in (4, 5)
        assert not inter.late
        acks.append(inter.ack_latency_s * 1000)
    print(f"\nacks: slowest {max(acks):.1f} ms, median {sorted(acks)[len(acks) // 2]:.1f} ms")
    assert max(acks) < 3000

    delivered = 0
    for bot in fleet.bots:
        msgs = _wait_images(standin, bot.channel_id)
        assert len(msgs) == 1, f"{bot.instance} posted {len(msgs)} image messages"
        msg = msgs[0]
        assert msg.author_app_id == bot.app.id  # under the identity of the bot that took the command
        assert f"seed {100 + bot.index}" in msg.content and f"bot {bot.index}" in msg.content
        name, data, ctype = msg.attachments[0]
        img = Image.open(io.BytesIO(data))
        img.load()
        assert img.size == (1536, 640) and ctype == "image/png"
        delivered += 1
    time.sleep(1.0)  # anything posted twice would show up now
    dupes = sum(len(image_messages(standin, b.channel_id)) - 1 for b in fleet.bots)
    print(f"images delivered {delivered}/10, duplicates {dupes}")
    assert delivered == 10 and dupes == 0

    # Every key the product wrote expires, or is kept on purpose by a documented owner (dreamcore.keys);
    # RQ's own keys follow RQ's lifetimes.
    for key in rconn.scan_iter("dream:*"):
        name = key.decode()
        if not any(fnmatch.fnmatchcase(name, p) for p in keys.KEPT):
            assert rconn.ttl(key) > 0, f"{name} has no TTL and no owner in dreamcore.keys.KEPT"

    # Tokens never reach Redis or the logs.
    tokens = [b.app.token for b in fleet.bots] + [i.token for i in interactions]
    bot_tokens = [b.app.token.encode() for b in fleet.bots]
    for key in rconn.scan_iter("*"):
        for blob in redis_blobs(rconn, key):
            assert not any(t in blob for t in bot_tokens), f"bot token found in redis key {key!r}"
    logs = fleet.logs()
    assert "interaction acknowledged" in logs
    for t in tokens:
        assert t not in logs


def test_mentions_never_ping(fleet, standin):
    fleet.setup(1)
    bot = fleet.bots[0]
    fleet.start_bot(bot)
    fleet.wait_bots_ready()
    fleet.start_worker()
    inter = fleet.dream(bot, prompt="@everyone look <@&123> and <@456>", aspect="12:5")
    inter.wait_ack(5)
    msg = _wait_images(standin, bot.channel_id)[0]
    assert "@everyone" in msg.content
    assert msg.allowed_mentions == {"parse": []}
    for m in standin.messages(bot.channel_id, include_deleted=True):
        assert m.allowed_mentions in ({"parse": []}, None) or m.allowed_mentions.get("parse") == []


def test_bad_options_get_an_ephemeral_answer(fleet, standin):
    fleet.setup(1)
    bot = fleet.bots[0]
    fleet.start_bot(bot)
    fleet.wait_bots_ready()
    # Discord's client enforces ranges; a crafted request can still carry a prompt that cleans to nothing.
    inter = fleet.dream(bot, prompt="\u200b\u200b\u200b")
    body = inter.wait_ack(5)
    assert body["type"] == 4 and body["data"]["flags"] & 64
    assert "prompt" in body["data"]["content"]


def test_result_after_token_expiry_is_posted_once_to_the_channel(fleet, standin):
    standin.token_lifetime_s = 2.0
    fleet.setup(1)
    bot = fleet.bots[0]
    fleet.start_bot(bot)
    fleet.wait_bots_ready()
    inter = fleet.dream(bot, aspect="12:5", seed=9)
    inter.wait_ack(5)
    time.sleep(2.5)  # the job waits in the queue past the token's life
    fleet.start_worker()
    msg = _wait_images(standin, bot.channel_id)[0]
    assert msg.interaction_id is None and msg.author_app_id == bot.app.id
    assert f"<@{fleet.user_id}>" in msg.content and msg.allowed_mentions == {"parse": []}
    time.sleep(1.0)
    assert len(image_messages(standin, bot.channel_id)) == 1


def test_429_and_5xx_on_the_post_path_deliver_once_after_the_wait(fleet, standin):
    fleet.setup(1)
    bot = fleet.bots[0]
    fleet.start_bot(bot)
    fleet.wait_bots_ready()
    standin.inject(r"PATCH /webhooks/.*/messages/@original", 429, count=1, retry_after=1.5)
    standin.inject(r"PATCH /webhooks/.*/messages/@original", 502, count=3)
    inter = fleet.dream(bot, aspect="12:5")
    inter.wait_ack(5)
    fleet.start_worker()
    msg = _wait_images(standin, bot.channel_id, timeout=180)[0]
    edits = standin.requests(r"PATCH /webhooks/.*/messages/@original")
    statuses = [r.status for r in edits]
    assert statuses.count(429) == 1 and statuses.count(502) == 3 and statuses[-1] == 200
    t429 = next(r.time for r in edits if r.status == 429)
    t_ok = edits[-1].time
    assert t_ok - t429 >= 1.5
    time.sleep(1.0)
    assert len(image_messages(standin, bot.channel_id)) == 1 and msg.author_app_id == bot.app.id


def test_redis_down_still_answers_inside_the_window(fleet, standin, redis_server):
    fleet.setup(1)
    bot = fleet.bots[0]
    fleet.start_bot(bot)
    fleet.wait_bots_ready()
    redis_server.kill()
    try:
        inter = fleet.dream(bot)
        body = inter.wait_ack(5)
        assert not inter.late and inter.ack_latency_s < 3
        deadline = time.monotonic() + 15
        text = ""
        while time.monotonic() < deadline and "can't queue" not in text:
            msgs = standin.messages(bot.channel_id, include_deleted=False)
            text = " ".join(m.content or "" for m in msgs) + str(body.get("data", {}).get("content", ""))
            time.sleep(0.2)
        assert "can't queue" in text
    finally:
        redis_server.start()
    assert redis.Redis.from_url(redis_server.url).ping()


def test_results_survive_a_bot_down_through_a_flood_of_progress(fleet, standin, rconn):
    """Progress nudges have their own capped stream (10 entries here); results have one that is never
    trimmed. The bot is down while three dreams finish and a thousand progress nudges go by, one result's
    stream entry is even lost by hand (what a failover can do): back up, the bot posts every result exactly
    once, the lost one found by its start-up sweep."""
    env = {"DREAMBOT_PROGRESS_STREAM_LEN": "10"}
    fleet.setup(1)
    bot = fleet.bots[0]
    fleet.start_bot(bot, **env)
    fleet.wait_bots_ready()
    inters = [fleet.dream(bot, aspect="12:5", seed=300 + i, steps=2) for i in range(3)]
    for inter in inters:
        inter.wait_ack(5)
    bot.proc.kill()
    bot.proc.wait(10)
    jobs = fair_order.waiting_ids(rconn, "dream-default")
    assert len(jobs) == 3
    fleet.start_worker(**env)

    def published():
        return all(rconn.exists(keys.done_key(j)) for j in jobs)

    deadline = time.monotonic() + 180
    while not published():
        assert time.monotonic() < deadline, "the worker never finished"
        time.sleep(0.2)
    for n in range(1000):  # other jobs' progress, while the bot is away
        results.publish_progress(rconn, bot.instance, f"{n:016x}", {"step": n}, None, stream_len=10)
    assert rconn.xlen(keys.progress_stream_key(bot.instance)) < 200  # capped (approximately, as Redis trims)
    assert rconn.xlen(keys.outbox_key(bot.instance)) == 3  # results: all still there
    lost = jobs[1]
    for entry_id, fields in rconn.xrange(keys.outbox_key(bot.instance)):
        if fields[b"job_id"].decode() == lost:
            rconn.xdel(keys.outbox_key(bot.instance), entry_id)
    time.sleep(5.5)  # the sweep leaves the newest few seconds to their stream entries

    fleet.start_bot(bot, **env)
    deadline = time.monotonic() + 60
    while len(image_messages(standin, bot.channel_id)) < 3:
        assert time.monotonic() < deadline, fleet.logs()[-3000:]
        time.sleep(0.2)
    time.sleep(2.0)  # a second post of anything would show up now
    posted = image_messages(standin, bot.channel_id)
    assert sorted(m.attachments[0][0].split("-")[1] for m in posted) == sorted(jobs)
    assert rconn.xlen(keys.outbox_key(bot.instance)) == 0  # handled entries leave the stream
    assert rconn.zcard(keys.published_key(bot.instance)) == 0
    assert "undelivered results found at start" in bot.log.read_text()
