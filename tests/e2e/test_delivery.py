"""Nothing posted that a bot did not ask for, nothing lost in silence: forged results are refused, every step
of publishing can break and the member is still told, a bot back after its results expired still posts, and
what a member typed is posted as literal text."""

from __future__ import annotations

import io
import json
import time

import pytest
from PIL import Image

from dreamcore import delivery, faults, keys, redisconn, results
from dreamcore.images import image_key
from dreamcore.job import make_job, make_origin, make_request
from dreamcore.queue.rq_queues import DreamQueue
from dreamcore.results import DreamResult, ImageInfo
from dreamcore.settings import get_settings, load_settings
from tests.support.fleet import image_messages, image_store, wait_until

pytestmark = pytest.mark.timeout(300)


@pytest.fixture
def fleet(bare_fleet):
    return bare_fleet


def _log_lines(fleet, text: str) -> list[dict]:
    out = []
    for line in fleet.logs().splitlines():
        try:
            rec = json.loads(line)
        except ValueError:
            continue
        if isinstance(rec, dict) and rec.get("msg") == text:
            out.append(rec)
    return out


def test_a_forged_result_is_not_posted_and_a_real_one_goes_only_where_its_bot_recorded(fleet, standin, rconn):
    """What anyone who can write Redis as a worker might try: a result for a job no bot queued, naming a
    channel of another server; a result for a real job naming another channel; a result reading another
    job's image. None is posted where it says; the real job's member is told at the channel they asked in."""
    fleet.setup(1)
    bot = fleet.bots[0]
    other_guild = standin.add_guild("another server")
    other_channel = standin.add_channel(other_guild, "elsewhere")
    fleet.start_bot(bot)
    fleet.wait_bots_ready()
    settings = get_settings()

    # 1. A job no bot ever queued, its result sent with the project's own publish.
    forged = DreamResult(job_id="f0f0f0f0f0f0f0f0", status="failed", error="FORGED: visit my server",
                         origin=make_origin(instance=bot.instance, guild_id=other_guild, channel_id=other_channel,
                                            user_id=fleet.user_id))
    assert results.publish(rconn, forged, 600, settings)

    # 2. A real job (queued by the bot for a member's /dream) whose result names another channel and text.
    inter = fleet.dream(bot, prompt="a real dream", seed=3)
    inter.wait_ack(5)
    real_id = next(m.content for m in standin.messages(bot.channel_id) if m.interaction_id == inter.id).split("`")[1]
    job = delivery.load_record(rconn, real_id)
    assert job is not None and job.origin.channel_id == bot.channel_id
    assert DreamQueue(rconn, settings).remove(real_id)  # no worker: what comes back is the forger's
    elsewhere = job.origin.model_copy(update={"channel_id": other_channel, "guild_id": other_guild,
                                              "interaction_token": None})
    lie = DreamResult(job_id=real_id, status="failed", error="FORGED text", origin=elsewhere,
                      request=make_request(prompt="FORGED prompt", seed=1))
    assert results.publish(rconn, lie, 600, settings)

    # 3. A real job whose result reads another job's image from the store.
    inter3 = fleet.dream(bot, prompt="another real dream", seed=4)
    inter3.wait_ack(5)
    third = next(m.content for m in standin.messages(bot.channel_id) if m.interaction_id == inter3.id).split("`")[1]
    assert DreamQueue(rconn, settings).remove(third)
    image_store().put(image_key("0123456789abcdef", 0, "png"), b"\x89PNG not theirs")
    its_own = delivery.load_record(rconn, third).origin.model_copy(update={"interaction_token": None})
    borrowed = DreamResult(job_id=third, status="done", origin=its_own, images=[ImageInfo(
        filename="dream-x.png", format="png", width=8, height=8, seed=1, size_bytes=16,
        key=image_key("0123456789abcdef", 0, "png"))])
    assert results.publish(rconn, borrowed, 600, settings)

    def notices():
        return [m for m in standin.messages(bot.channel_id, include_deleted=True)
                if m.content and "Couldn't dream this one" in m.content and m.ephemeral]

    wait_until(lambda: len(notices()) >= 2, 30, "the real jobs' members were never told")
    time.sleep(2.0)  # anything else the relay would post shows up by now
    told = notices()
    assert standin.messages(other_channel, include_deleted=True) == [], "posted where the result said"
    # What a result says goes only to its own member, privately, and with no link made of it.
    for m in standin.messages(bot.channel_id, include_deleted=True):
        if "FORGED" in (m.content or ""):
            assert m.ephemeral and m in told and "FORGED text" in m.content and "prompt" not in m.content
    assert not any(a.data == b"\x89PNG not theirs" for m in standin.messages(bot.channel_id) for a in m.attachments)
    assert len(told) == 2 and any("no longer post" in m.content for m in told)
    refused = _log_lines(fleet, "forged result refused: not posted")
    assert [r["job_id"] for r in refused] == ["f0f0f0f0f0f0f0f0"] and refused[0]["level"] == "WARNING"
    assert [r["job_id"] for r in _log_lines(fleet, "forged result refused: it names another origin than the bot "
                                                   "recorded")] == [real_id]
    assert [r["job_id"] for r in _log_lines(fleet, "result refused: its images are not under the job's own "
                                                   "keys")] == [third]


@pytest.fixture(scope="module")
def pipeline(tiny_model_dir):
    from worker.pipeline import DreamPipeline

    return DreamPipeline.load(str(tiny_model_dir / "base"), str(tiny_model_dir / "refiner"), "cpu")


@pytest.mark.parametrize("point", ["publish-after-images", "publish-after-params", "publish-after-result"])
@pytest.mark.parametrize("outcome", ["done", "failed"])
def test_each_publish_step_broken_leaves_the_member_told_once(tiny_env, rconn, pipeline, monkeypatch, point,
                                                              outcome):
    """The connection breaks between two steps of publishing (after the images are stored, after the
    buttons' record is, after the done marker and the result went out together but before their reply
    came back): the worker rides it out, and exactly one result reaches the bot, whole."""
    from worker.runner import make_worker

    monkeypatch.setenv("DREAMBOT_TEST_FAULTS", point)
    faults._fired.clear()
    box = results.Outbox(rconn, "bot1", "test")
    box.ensure_group()
    request = make_request(prompt="a broken connection", seed=8, steps=2, aspect="12:5")
    job = make_job(request, make_origin(instance="bot1", guild_id=1, channel_id=2, user_id=3))
    DreamQueue(rconn, get_settings()).enqueue(job)
    if outcome == "failed":  # a failure notice goes the same way: a cancel seen before the GPU
        rconn.set(keys.cancel_key(job.job_id), "3")
    make_worker(get_settings(), rconn, pipeline, name="breaks").work(burst=True, logging_level="WARNING")
    # Results only: a progress nudge (its own stream, lossy) comes too when a loaded machine takes over 2 s
    # on the steps.
    entries = [e for e in box.read(count=50, block_ms=100) if e.job_id == job.job_id and e.stream == box.key]
    assert len(entries) == 1, entries
    got = delivery.for_delivery(rconn, image_store(), job.job_id, "bot1")
    assert got.result.status == outcome
    if outcome == "done":
        assert faults._fired == {point}
        assert Image.open(io.BytesIO(got.images[0])).size == (1536, 640)
    else:  # a notice has no images: only the last point lies on its way
        assert faults._fired == ({point} if point == "publish-after-result" else set())
        assert got.result.error == "cancelled by you"


def test_a_bot_down_past_the_result_ttl_still_posts_or_tells(fleet, standin, rconn):
    """Two dreams finish while their bot is down longer than DREAMBOT_RESULT_TTL: one's images are still in
    the store (kept 30 days), and it is posted, rebuilt from the bot's record and the store's; the other's
    are gone too, and its member is told so plainly."""
    fleet.setup(1)
    bot = fleet.bots[0]
    fleet.start_bot(bot)
    fleet.wait_bots_ready()
    kept, lost = (fleet.dream(bot, aspect="12:5", seed=seed, steps=2) for seed in (21, 22))
    for inter in (kept, lost):
        inter.wait_ack(5)
    ids = [next(m.content for m in standin.messages(bot.channel_id) if m.interaction_id == i.id).split("`")[1]
           for i in (kept, lost)]
    bot.proc.kill()
    bot.proc.wait(10)
    fleet.start_worker()
    wait_until(lambda: all(rconn.exists(keys.done_key(j)) for j in ids), 180, "the worker never finished")
    for job_id in ids:  # the result TTL passes
        rconn.delete(keys.result_key(job_id), keys.done_key(job_id))
    store = image_store()
    store.delete([image_key(ids[1], 0, "png"), f"{ids[1]}/params.json"])

    fleet.start_bot(bot)
    posted = wait_until(lambda: image_messages(standin, bot.channel_id), 60, "the kept result was never posted")
    (msg,) = posted
    (att,) = msg.attachments
    assert att.filename.startswith(f"dream-{ids[0]}-0-21.") and Image.open(io.BytesIO(att.data)).size == (1536, 640)
    assert "seed 21" in msg.content
    notice = wait_until(lambda: [m for m in standin.messages(bot.channel_id) if "no longer kept" in (m.content or "")],
                        30, "the member of the lost result was never told")
    assert f"<@{fleet.user_id}>" in notice[0].content or notice[0].interaction_id == lost.id
    wait_until(lambda: not rconn.exists(delivery.record_key(ids[0]), delivery.record_key(ids[1])), 10,
               "the records of delivered jobs were kept")


def test_a_prompt_with_a_masked_link_is_posted_as_literal_text(fleet, standin):
    fleet.setup(1)
    bot = fleet.bots[0]
    fleet.start_bot(bot)
    fleet.wait_bots_ready()
    fleet.start_worker()
    prompt = "[free nitro](https://evil.example/claim) # Header ||spoiler|| @everyone"
    inter = fleet.dream(bot, prompt=prompt, aspect="12:5", seed=9, steps=2)
    queued = inter.wait_ack(5)["data"]["content"]
    (msg,) = wait_until(lambda: image_messages(standin, bot.channel_id), 120, "no image came back")
    literal = r"\[free nitro\]\(https\://evil.example/claim\) \# Header \|\|spoiler\|\| \@everyone"
    for text in (queued, msg.content):
        assert literal in text, text
        assert "](http" not in text and "https://" not in text
    assert msg.allowed_mentions == {"parse": []}


def test_results_carry_no_interaction_token_and_workers_get_none(rconn):
    """The token stays in the bot's own record: the job a worker reads has none, so nothing a worker writes
    can carry one either."""
    origin = make_origin(instance="bot1", guild_id=1, channel_id=2, user_id=3, application_id=4,
                         interaction_id=5, interaction_token="aW50ZXJhY3Rpb246c2VjcmV0")
    job = make_job(make_request(prompt="x", seed=1), origin)
    q = DreamQueue(rconn, load_settings())
    q.enqueue(job)
    rq_job = q.fetch(job.job_id)
    assert rq_job.args[0]["origin"]["interaction_token"] is None
    assert delivery.load_record(rconn, job.job_id).origin.interaction_token == "aW50ZXJhY3Rpb246c2VjcmV0"


@pytest.mark.parametrize("lost_reply", [1, 2])
def test_a_reply_lost_at_any_call_of_publishing_leaves_one_whole_result(rconn, lost_reply):
    """Publishing as the worker does (retried while Redis errors), with the connection breaking right after
    the first or second of its calls to Redis was carried out, before its reply came back: the retry finds
    the job published, and exactly one whole result and one stream entry reach the bot. (When the done
    marker went out in a call of its own before the result, the retry found the marker and no result, and
    the member never heard.)"""
    import redis as redis_py

    from worker.publish import patiently

    job = make_job(make_request(prompt="lost reply", seed=1), make_origin(instance="bot1", guild_id=1,
                                                                         channel_id=2, user_id=3))
    DreamQueue(rconn, get_settings()).enqueue(job)
    result = DreamResult(job_id=job.job_id, status="failed", error="made to be lost", origin=job.origin,
                         request=job.request)
    settings = load_settings(redis_wait_replicas=1, redis_wait_ms=10)  # a second call: the replica wait
    calls = {"n": 0}
    real_exec, real_pipe = redis_py.Redis.execute_command, redis_py.client.Pipeline.execute

    def count(out):
        calls["n"] += 1
        if calls["n"] == lost_reply:
            raise redis_py.ConnectionError("the reply never came")
        return out

    def publish():
        try:
            return results.publish(rconn, result, 600, settings)
        except redisconn.NotReplicated:  # no replica here: what the worker does with it
            return True

    redis_py.Redis.execute_command = lambda self, *a, **kw: count(real_exec(self, *a, **kw))
    redis_py.client.Pipeline.execute = lambda self, *a, **kw: count(real_pipe(self, *a, **kw))
    try:
        patiently(publish, (redis_py.RedisError,), 30, job.job_id, "publish")
    finally:
        redis_py.Redis.execute_command, redis_py.client.Pipeline.execute = real_exec, real_pipe
    assert calls["n"] > lost_reply  # it broke, and was tried again
    entries = [f for _, f in rconn.xrange(keys.outbox_key("bot1")) if f[b"job_id"].decode() == job.job_id]
    assert len(entries) == 1
    got = delivery.for_delivery(rconn, image_store(), job.job_id, "bot1")
    assert got.result.status == "failed" and got.result.error == "made to be lost"


def test_what_a_worker_writes_reaches_a_post_only_as_literal_text(rconn):
    """A worker chooses the timing names, the note, its own name and the file names of a result: the bot
    shows only the stage times it knows, the rest escaped, and names the files itself."""
    from dreamcore.present import info_text, result_text

    job = make_job(make_request(prompt="fine", seed=5), make_origin(instance="bot1", guild_id=1, channel_id=2,
                                                                    user_id=3))
    DreamQueue(rconn, get_settings()).enqueue(job)
    key = image_key(job.job_id, 0, "png")
    image_store().put(key, b"\x89PNG the real image")
    lure = "[Claim free Nitro](https://evil.example/login)"
    result = DreamResult(job_id=job.job_id, status="done", origin=job.without_token().origin, request=job.request,
                         images=[ImageInfo(filename=f"{lure}.png", format="png", width=8, height=8, seed=5,
                                           size_bytes=1, key=key)],
                         timings={f"{lure}_s": 1.0, "base_s": 2.0, "total_s": 3.0}, prompt_note=f"# {lure}",
                         worker=lure)
    assert results.publish(rconn, result, 600, get_settings())
    got = delivery.for_delivery(rconn, image_store(), job.job_id, "bot1")
    assert got.result.images[0].filename == f"dream-{job.job_id}-0-5.png"
    assert set(got.result.timings) == {"base_s", "total_s"}
    from dreamcore.params import from_result

    for text in (result_text(got.result), info_text(from_result(got.result))):
        assert "](http" not in text and "https://" not in text and "Nitro" not in text.replace("\\[Claim free Nitro\\]", "")
        assert "base 2.00s" in text


def test_progress_fields_a_worker_wrote_are_parsed_and_bounded():
    from bot.progress import progress_text

    text = progress_text("0123456789abcdef", {"done": "10000000000", "total": "999999999999", "step": "-5",
                                              "stage_total": "7", "stage": "[x](https://e)"}, "a cat")
    assert len(text) < 300 and "https://e" not in text and "step 0/7 on the base" in text
    faces = progress_text("0123456789abcdef", {"done": "3", "total": "16", "step": "3", "stage_total": "16",
                                               "stage": "faces"}, "a cat")
    assert faces.startswith("Fixing faces: job `0123456789abcdef`") and "step 3/16 face by face on the refiner" in faces
    with pytest.raises(ValueError):
        progress_text("0123456789abcdef", {"done": "lots", "total": "1"}, "a cat")


def test_a_result_not_yet_replicated_is_published_again_until_a_replica_has_it(rconn, monkeypatch):
    """A failover between the publish and its replication loses the write with the old primary. Had the
    worker gone on (RQ records the job as finished), nothing would ever run it again: it publishes again
    until a WAIT says a replica has it, and on a primary that never got it, that publishes it afresh."""
    from types import SimpleNamespace

    from worker import publish as pub

    job = make_job(make_request(prompt="failover", seed=1), make_origin(instance="bot1", guild_id=1, channel_id=2,
                                                                       user_id=3))
    result = DreamResult(job_id=job.job_id, status="failed", error="told after a failover", origin=job.origin,
                         request=job.request)
    real = results.publish
    calls = []

    def failover_once(conn, res, ttl_s, settings):
        calls.append(res.job_id)
        if len(calls) == 1:
            real(conn, res, ttl_s, settings)
            # The primary dies before any replica has it; the promoted replica never saw the write.
            conn.delete(keys.done_key(res.job_id), keys.result_key(res.job_id), keys.outbox_key("bot1"))
            raise redisconn.NotReplicated("the write reached 0 of 1 replicas within 10 ms")
        return real(conn, res, ttl_s, settings)

    monkeypatch.setattr(pub.results, "publish", failover_once)
    rt = SimpleNamespace(conn=rconn, settings=get_settings())
    assert pub.publish_patiently(rt, result, []) is True
    assert len(calls) == 2
    entries = [f for _, f in rconn.xrange(keys.outbox_key("bot1")) if f[b"job_id"].decode() == job.job_id]
    assert len(entries) == 1 and results.load_meta(rconn, job.job_id).error == "told after a failover"
