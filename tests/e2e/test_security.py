"""Security end to end: one real bot process (one application, in two guilds) on the Discord stand-in, a real
worker process, the real Redis, the tiny model.

* Tokens: the bot token never reaches Redis, a log, or a message; the interaction token never reaches a log
  or a message, and in Redis lives only where the design puts it (the queued job, the result that edits the
  member's reply), never in a limits key, the outbox, stats or progress.
* Cancel: only the member who asked, or an admin of that guild; a job id from another guild is unknown there;
  crafted ids get a clear refusal; a crafted component interaction changes nothing.
* Mentions: every message the bot posts in a flow whose prompt pings everyone pings no one.
"""

from __future__ import annotations

import json
import re
import time
from types import SimpleNamespace

import pytest
import redis
from rq.job import Job, JobStatus
from rq.serializers import JSONSerializer

from dreamcore import delivery
from dreamcore.job import JobError, make_job, make_origin, make_request, parse_job
from dreamcore.limits.stored import LimitStore
from dreamcore.queue import fair_order
from dreamcore.queue.rq_queues import queue_names
from tests.support.fleet import Fleet, redis_blobs, wait_until
from tests.support.standin import DiscordStandIn

pytestmark = pytest.mark.timeout(300)

QUEUED = re.compile(r"^Queued: job `([0-9a-f]{16})`")
TRACEBACK = "Traceback (most recent call last)"
EPHEMERAL = 64


# --- One stand-in, one bot in two guilds, for the module ------------------------------------------------------


@pytest.fixture(scope="module")
def sec(redis_server, tiny_model_dir, tmp_path_factory):
    if redis_server.proc is None or redis_server.proc.poll() is not None:
        redis_server.start()
    conn = redis.Redis.from_url(redis_server.url)
    conn.flushall()  # a clean slate, so the scan below sees only what this module's flows wrote
    tmp = tmp_path_factory.mktemp("security")
    standin = DiscordStandIn().start()
    fleet = Fleet(standin, redis_server.url, tiny_model_dir, tmp)
    try:
        fleet.setup(1)
        g1, bot = fleet.guild_id, fleet.bots[0]
        g2 = standin.add_guild("other guild")  # the same application is in both
        ch2 = standin.add_channel(g2, "dreams-other")
        people = SimpleNamespace(
            alice=fleet.user_id,
            bob=standin.add_member(g1, "bob"),
            admin1=standin.add_member(g1, "admin-one", manage_guild=True),
            admin2=standin.add_member(g2, "admin-two", manage_guild=True),
            carol=standin.add_member(g2, "carol"),
        )
        fleet.start_bot(bot, DISCORD_GUILD_IDS=f"{g1},{g2}")
        fleet.wait_bots_ready()
        deadline = time.monotonic() + 30
        while not standin.commands(bot.app.id, g2):
            assert time.monotonic() < deadline, "commands never synced to the second guild"
            time.sleep(0.1)
        yield SimpleNamespace(fleet=fleet, standin=standin, bot=bot, g1=g1, g2=g2, ch1=bot.channel_id, ch2=ch2,
                              p=people, r=conn, interactions=[], jobs=[])
    finally:
        fleet.stop()
        standin.stop()
        conn.close()


def slash(e, user: int, name: str, options: dict | None = None, guild: int | None = None, channel: int | None = None):
    guild, channel = guild or e.g1, channel or (e.ch1 if guild in (None, e.g1) else e.ch2)
    inter = e.standin.send_slash(e.bot.app.id, guild, channel, user, name, options or {})
    e.interactions.append(inter)
    return inter


def answer(inter, timeout: float = 5.0) -> tuple[str, bool]:
    """The immediate answer: (content, ephemeral); always in time and never pinging."""
    body = inter.wait_ack(timeout)
    assert not inter.late and inter.ack_latency_s < 3.0
    assert body["type"] == 4, body  # nothing in these flows waits on a slow Redis
    data = body["data"]
    assert_no_ping(data.get("allowed_mentions"), data.get("content", ""))
    return data.get("content", ""), bool(data.get("flags", 0) & EPHEMERAL)


def assert_no_ping(mentions: dict | None, content: str) -> None:
    if not content:
        return  # an empty "thinking" message mentions nobody whatever it says
    assert mentions is not None, f"sent without allowed_mentions (Discord would parse them): {content[:120]!r}"
    assert mentions.get("parse") == [], mentions
    assert not mentions.get("users") and not mentions.get("roles") and not mentions.get("replied_user"), mentions


def dream(e, user: int, guild: int | None = None, **options) -> tuple[object, str]:
    inter = slash(e, user, "dream", options, guild=guild)
    content, ephemeral = answer(inter)
    m = QUEUED.match(content)
    assert m and not ephemeral, content
    e.jobs.append(m.group(1))
    return inter, m.group(1)


def rq_status(e, job_id: str) -> JobStatus:
    return Job.fetch(job_id, connection=e.r, serializer=JSONSerializer).get_status()


def log_problems(text: str) -> list[str]:
    """A record at ERROR or above, a record with a traceback, or a non-JSON line with Traceback / ERROR."""
    bad = []
    for line in text.splitlines():
        try:
            rec = json.loads(line)
        except ValueError:
            if "Traceback" in line or "ERROR" in line:
                bad.append(line)
            continue
        if isinstance(rec, dict) and (rec.get("level") in ("ERROR", "CRITICAL") or "exc" in rec
                                      or (rec.get("level") != "DEBUG" and TRACEBACK in line)):
            bad.append(line[:1500])
    return bad


# --- Cancel ----------------------------------------------------------------------------------------------------


def test_only_the_member_or_an_admin_of_that_guild_can_cancel(sec):
    e, p = sec, sec.p
    _, job = dream(e, p.alice, prompt="a lighthouse nobody else may cancel", seed=1)
    store = LimitStore(e.r)
    assert store.usage(e.g1, p.alice)["user_active"] == 1

    # Another member of the same guild: refused, the job waits on.
    text, eph = answer(slash(e, p.bob, "cancel", {"job": job}))
    assert eph and text.startswith("Only the member who asked for this dream, or a server admin"), text
    assert rq_status(e, job) == JobStatus.QUEUED

    # An admin, and a member, of ANOTHER guild the same bot serves: the id is unknown there (no probing).
    for who in (p.admin2, p.carol):
        text, eph = answer(slash(e, who, "cancel", {"job": job}, guild=e.g2))
        assert eph and text == f"I know no dream `{job}` in this server.", text
    assert rq_status(e, job) == JobStatus.QUEUED
    # /dreamqueue in the other guild does not show it either.
    text, eph = answer(slash(e, p.admin2, "dreamqueue", guild=e.g2))
    assert eph and job not in text

    # An admin of the job's own guild can.
    text, eph = answer(slash(e, p.admin1, "cancel", {"job": job}))
    assert eph and text == f"Dream `{job}` cancelled; its images went back to the quota.", text
    assert rq_status(e, job) == JobStatus.CANCELED
    assert store.usage(e.g1, p.alice)["user_active"] == 0
    # The member hears who cancelled it, as an ephemeral followup that pings nobody.
    msg = e.standin.wait_for_message(
        lambda m: m.channel_id == e.ch1 and f"cancelled by <@{p.admin1}>" in m.content, timeout=15)
    assert msg.ephemeral and msg.author_app_id == e.bot.app.id
    assert_no_ping(msg.allowed_mentions, msg.content)
    # Ended jobs stay ended.
    text, _ = answer(slash(e, p.alice, "cancel", {"job": job}))
    assert "already ended" in text

    # The member themself can.
    _, own = dream(e, p.alice, prompt="a lighthouse I change my mind about", seed=2)
    text, eph = answer(slash(e, p.alice, "cancel", {"job": own}))
    assert eph and text == f"Dream `{own}` cancelled; its images went back to the quota.", text
    assert rq_status(e, own) == JobStatus.CANCELED


CRAFTED_IDS = [
    "../../etc/passwd", "..\\..\\windows", "/", "rq:job:{job}", "dream:result:{job}", "{job}/../x", "*", "?",
    "' OR '1'='1", "1; DROP TABLE jobs; --", "\" OR \"\"=\"", "{job}' --", "%2e%2e%2f", "null", "None", "0",
    "0" * 16, "f" * 64, "{job}0", "{JOB}", "\u200b{job}", "{job}\u200b", "ｆｆｆｆ", "٣٣٣٣", "{job}\u0301",
    "@everyone", "<@&1>", "<@{alice}>", "\u202e{job}", "\x00", "\n", "x" * 64, "é" * 64, "🎨" * 32,
]


def _keys(r) -> set[bytes]:
    """Every key, less what an idle RQ worker of this module writes on its own clock (its maintenance lock
    and its heartbeat), which may come and go while the crafted ids are tried."""
    return {k for k in r.scan_iter() if not k.startswith((b"rq:clean_registries:", b"rq:worker:", b"rq:workers"))}


def test_crafted_job_ids_get_a_clear_refusal(sec):
    e, p = sec, sec.p
    _, job = dream(e, p.alice, prompt="a lighthouse behind crafted ids", seed=3)
    # The relay forgets an earlier (cancelled) job's record just after posting its notice: wait for that, or
    # the scan below would see the record go and blame the crafted ids.
    wait_until(lambda: not any(e.r.exists(delivery.record_key(j)) for j in e.jobs if j != job), 30,
             "the relay never forgot the earlier jobs' records")
    before = _keys(e.r)
    asked = 0
    for raw in CRAFTED_IDS:
        crafted = raw.format(job=job, JOB=job.upper(), alice=p.alice)
        for who, guild in ((p.admin1, e.g1), (p.alice, e.g1), (p.admin2, e.g2)):
            try:
                inter = slash(e, who, "cancel", {"job": crafted}, guild=guild)
            except ValueError:
                assert len(crafted) > 64 or not crafted.strip(), crafted  # Discord's client refuses it
                continue
            text, eph = answer(inter)
            asked += 1
            assert eph and text.startswith("I know no dream `") and text.endswith("` in this server."), \
                (crafted, text)
            assert len(text) < 120
    assert asked >= 3 * (len(CRAFTED_IDS) - 3)
    # Nothing changed: the job waits on, no key was created or removed.
    assert rq_status(e, job) == JobStatus.QUEUED
    after = _keys(e.r)
    assert after == before, f"created {sorted(after - before)}, removed {sorted(before - after)}"
    # Discord's own limit: the option takes at most 64 characters.
    with pytest.raises(ValueError):
        slash(e, p.admin1, "cancel", {"job": job * 5})
    answer(slash(e, p.alice, "cancel", {"job": job}))  # tidy up
    problems = log_problems(e.bot.log.read_text(errors="replace"))
    assert not problems, "\n".join(problems[:5])


def test_a_crafted_component_from_another_guild_changes_nothing(sec):
    """A component interaction with a custom_id that is none of the bot's (as a modified client could send for
    a message it can see) must not act on a job, from this guild or another: discord.py finds no handler and
    nothing happens. (The bot's own result buttons, crafted, are tested with the worker below.)"""
    e, p = sec, sec.p
    inter, job = dream(e, p.alice, prompt="a lighthouse with no buttons", seed=4)
    message = e.standin.message(inter.original_message_id)
    with e.standin.store.lock:
        payload = e.standin.store.message_payload(message)
    crafted = []
    for guild, channel, who in ((e.g2, e.ch2, p.admin2), (e.g1, e.ch1, p.bob)):
        for custom_id in (f"cancel:{job}", f"delete:{job}", job, "x" * 100):
            # The stand-in's send_component insists the message carries the component; this is the crafted
            # interaction a modified client would produce, sent the same way.
            crafted.append(e.standin._send_interaction(
                e.bot.app.id, 3, guild, channel, who, {"custom_id": custom_id, "component_type": 2},
                locale="en-US", message=payload, message_id=message.id))
    time.sleep(1.0)
    assert all(not i.callbacks for i in crafted)
    assert rq_status(e, job) == JobStatus.QUEUED
    answer(slash(e, p.alice, "cancel", {"job": job}))  # tidy up
    problems = log_problems(e.bot.log.read_text(errors="replace"))
    assert not problems, "\n".join(problems[:5])


# --- Tokens in error messages (no process needed) ----------------------------------------------------------------


def test_a_bad_interaction_token_is_never_echoed_in_an_error():
    token = "aW50ZXJhY3Rpb246" + "Q" * 700  # too long for the schema
    weird = "aW50ZXJhY3Rpb246c2VjcmV0X3Rva2VuX3RhaWw!"  # a character the schema refuses
    for bad in (token, weird):
        with pytest.raises(JobError) as info:
            make_origin(instance="bot1", guild_id=1, channel_id=2, user_id=3, interaction_token=bad)
        assert "interaction_token" in str(info.value)
        assert bad[:16] not in str(info.value) and bad[-12:] not in str(info.value), str(info.value)
        # The same token inside a job payload a worker reads: the reason it publishes names the field only.
        job = make_job(make_request(prompt="x", seed=1),
                       make_origin(instance="bot1", guild_id=1, channel_id=2, user_id=3)).to_dict()
        job["origin"]["interaction_token"] = bad
        with pytest.raises(JobError) as info:
            parse_job(job)
        assert "origin.interaction_token" in str(info.value)
        assert bad[:16] not in str(info.value) and bad[-12:] not in str(info.value), str(info.value)


# --- With a worker: tokens and mentions through a whole round trip ---------------------------------------------


def _pieces(token: str) -> list[str]:
    """The token and both its ends, so a clipped or half-redacted copy counts too."""
    return [token, token[:40], token[-24:]]


CRAFTED_BUTTON_IDS = [
    "dream:d:" + "f" * 16, "dream:i:" + "0" * 16, "dream:v:{job}:9", "dream:d:{JOB}", "dream:d:{job}:0", "dream:",
    "dream:" + "x" * 94, "dream:r:../../etc/passwd", "dream:i:' OR 1=1 --", "dream:\u200bd:{job}", "dream:u:{job}:-1",
    "dream:r:{job}{job}",
]


@pytest.mark.parametrize("custom_id", [
    *CRAFTED_BUTTON_IDS,
    "dream:r:{job}\n",  # a trailing newline once matched no handler: the click went unanswered
    "dream:\n",
])
def test_every_crafted_dream_button_id_has_exactly_one_handler(custom_id):
    """discord.py runs each DynamicItem whose template fullmatches the id: a crafted "dream:" id must find one
    (the refusal), never none (the click fails silently) and never two (two answers)."""
    buttons = pytest.importorskip("bot.buttons")
    custom_id = custom_id.format(job="0123456789abcdef", JOB="0123456789ABCDEF")
    matches = [cls for cls in buttons.DYNAMIC_ITEMS if cls.__discord_ui_compiled_template__.fullmatch(custom_id)]
    assert len(matches) == 1, (custom_id, matches)


def _finished(e, inter, job: str) -> object:
    """The member's reply once the relay has replaced it with the images (not a progress preview)."""
    def done():
        mid = inter.original_message_id
        msg = e.standin.message(mid) if mid else None
        if msg is not None and any(a.filename.startswith(f"dream-{job}-") for a in msg.attachments):
            return msg
        return None
    return wait_until(done, 120, f"no images for interaction {inter.id}")


class TestWithWorker:
    """One worker and one flow for these tests (class scope: the cancel tests above need jobs to stay queued,
    and one round trip serves all three checks)."""

    @pytest.fixture(scope="class")
    def flow(self, sec):
        """A member's dream whose prompt pings everyone, through the worker to the images; a second one that
        fails on the worker (too many tokens for the text encoders); a refusal on the bot; and the ephemeral
        answers of /dreamqueue and /cancel, all carrying the same pings."""
        e, p = sec, sec.p
        worker = e.fleet.start_worker()
        role = e.standin.add_role(e.g1, "pingable")
        pings = f"@everyone @here <@&{role}> <@{p.bob}> <@!{p.bob}> <#{e.ch1}>"
        before = {m.id for m in e.standin.messages(e.ch1, include_deleted=True)}
        ok_inter, ok_job = dream(e, p.alice, prompt=f"{pings} a lighthouse that keeps its secrets", negative=pings,
                                 aspect="12:5", seed=5)
        bad_inter, bad_job = dream(e, p.alice, prompt=f"{pings} " + "lighthouse " * 120, aspect="12:5", seed=6)
        refusals = [answer(slash(e, p.alice, "dream", options)) for options in (
            {"prompt": "\u200b\u200d\u2060", "negative": pings},  # cleans to nothing
            {"prompt": pings, "count": 4, "steps": 100})]  # past the server's max_steps
        assert all(eph for _, eph in refusals) and "prompt" in refusals[0][0], refusals
        answer(slash(e, p.alice, "dreamqueue"))
        answer(slash(e, p.alice, "cancel", {"job": "@everyone"}))
        answer(slash(e, p.bob, "cancel", {"job": ok_job}))
        result = _finished(e, ok_inter, ok_job)
        failure = e.standin.wait_for_message(
            lambda m: m.channel_id == e.ch1 and m.id not in before and m.content.startswith("Couldn't dream this one"),
            timeout=120)
        yield SimpleNamespace(role=role, before=before, ok_inter=ok_inter, ok_job=ok_job, bad_job=bad_job,
                              result=result, failure=failure)
        worker.kill()  # its jobs are done; no need to wait for a drain
        worker.wait(10)

    def test_tokens_reach_no_log_no_message_and_only_their_place_in_redis(self, sec, flow):
        e = sec
        assert flow.failure.ephemeral and "tokens" in flow.failure.content, flow.failure.content
        bot_token = e.bot.app.token
        interaction_tokens = [i.token for i in e.interactions]
        assert len(set(interaction_tokens)) == len(interaction_tokens) >= 6

        # The relay forgets a delivered job's record just after its post (which `flow` waited for): give it that.
        wait_until(lambda: not e.r.exists(delivery.record_key(flow.ok_job)), 10, "the delivered job's record stays")
        # Redis: every key and value of every type (RQ's compressed job data decompressed).
        # Only the bot's own record of each job (dreamcore.delivery), which no worker can read: neither the job a
        # worker takes nor the result it writes carries one.
        allowed_homes = {f"dream:job:{job}" for job in e.jobs}
        homes: dict[str, set[str]] = {}
        for key in e.r.scan_iter("*"):
            for blob in redis_blobs(e.r, key):
                assert bot_token.encode() not in blob and bot_token[-24:].encode() not in blob, \
                    f"bot token in redis key {key!r}"
                for t in interaction_tokens:
                    if any(piece.encode() in blob for piece in _pieces(t)):
                        homes.setdefault(t, set()).add(key.decode())
        for keys in homes.values():
            assert keys <= allowed_homes, f"an interaction token outside the job and its result: {sorted(keys)}"
        # The bot keeps it while the job runs (the result edits the reply through it) and forgets it once the
        # result is delivered: the delivered dream's token is in no key at all now.
        assert flow.ok_inter.token not in homes

        # Logs of both processes (DEBUG: discord.py dumps every payload and webhook URL).
        logs = e.fleet.logs()
        assert '"level": "DEBUG"' in logs and "interaction acknowledged" in logs and "job failed" in logs
        for t in [bot_token, *interaction_tokens]:
            for piece in _pieces(t):
                assert piece not in logs, "a token (or part of one) in the logs"

        # Every message the members were shown, ephemeral and deleted ones included, and every callback body.
        shown = [m.content + json.dumps(m.embeds) + json.dumps(m.components) for ch in (e.ch1, e.ch2)
                 for m in e.standin.messages(ch, include_deleted=True)]
        shown += [json.dumps(c.body) for i in e.interactions for c in i.callbacks]
        for text in shown:
            for t in [bot_token, *interaction_tokens]:
                assert not any(piece in text for piece in _pieces(t)), f"a token in a message: {text[:200]}"

    def test_mentions_in_a_prompt_ping_nobody(self, sec, flow):
        e = sec
        # The prompt shows as typed, escaped so nothing in it renders as a mention (and nothing would ping).
        assert "\\@everyone" in flow.result.content and f"\\<\\@&{flow.role}\\>" in flow.result.content
        posted = [m for m in e.standin.messages(e.ch1, include_deleted=True) if m.id not in flow.before]
        assert len(posted) >= 7 and any(m.ephemeral for m in posted) and any(not m.ephemeral for m in posted)
        assert flow.failure in posted and flow.failure.ephemeral
        for m in posted:
            assert m.author_app_id == e.bot.app.id
            assert_no_ping(m.allowed_mentions, m.content)
        assert flow.result.allowed_mentions == {"parse": []}

    def test_result_buttons_refuse_crafted_ids_other_guilds_and_other_members(self, sec, flow):
        pytest.importorskip("bot.buttons")
        e, p = sec, sec.p
        job, result = flow.ok_job, flow.result
        ids = result.custom_ids()
        assert f"dream:d:{job}" in ids and f"dream:i:{job}" in ids, ids
        # Messages of the same bot the attackers may click on: carol's queued dream in the other guild, and
        # bob's in alice's guild.
        carol_inter, _ = dream(e, p.carol, guild=e.g2, prompt="a lighthouse elsewhere", seed=10)
        bob_inter, _ = dream(e, p.bob, prompt="a lighthouse of bob's", seed=11)
        waiting_before = fair_order.totals(e.r, queue_names()).jobs

        def click(who, guild, channel, inter_of_message, custom_id):
            """A modified client's click: the custom_id of its choice on a message it can see. The message as
            the bot receives it carries that button (discord.py ignores a click on a button the message does
            not have), so this is the bot's own check being tested, not discord.py's."""
            message = e.standin.message(inter_of_message.original_message_id)
            with e.standin.store.lock:
                payload = e.standin.store.message_payload(message)
            payload["components"] = [{"type": 1, "components": [
                {"type": 2, "style": 2, "label": "x", "custom_id": custom_id}]}]
            crafted = e.standin._send_interaction(
                e.bot.app.id, 3, guild, channel, who, {"custom_id": custom_id, "component_type": 2},
                locale="en-US", message=payload, message_id=message.id)
            e.interactions.append(crafted)
            return answer(crafted)

        # Every button of alice's result, clicked from the other guild: refused, nothing queued or read out.
        for who in (p.admin2, p.carol):
            for custom_id in ids:
                text, eph = click(who, e.g2, e.ch2, carol_inter, custom_id)
                assert eph and "another server" in text, (custom_id, text)
                assert "keeps its secrets" not in text  # Info tells nothing either
        # Ids no result has: a clear refusal.
        for raw in CRAFTED_BUTTON_IDS:
            custom_id = raw.format(job=job, JOB=job.upper())
            for who, guild, channel, on in ((p.admin2, e.g2, e.ch2, carol_inter), (p.bob, e.g1, e.ch1, bob_inter)):
                text, eph = click(who, guild, channel, on, custom_id)
                assert eph and text and len(text) < 300 and "Queued" not in text, (custom_id, text)
        # In the job's own guild, Delete crafted onto another message: refused, even for an admin.
        for who in (p.bob, p.admin1):
            text, eph = click(who, e.g1, e.ch1, bob_inter, f"dream:d:{job}")
            assert eph and "doesn't belong to this message" in text, text
        # The real button, by a member who is not the one who asked: refused.
        real = e.standin.send_component(e.bot.app.id, e.g1, e.ch1, p.bob, result.id, f"dream:d:{job}")
        e.interactions.append(real)
        text, eph = answer(real)
        assert eph and text.startswith("Only the member who asked for it, or a server admin"), text
        assert not e.standin.message(result.id).deleted
        waiting_after = fair_order.totals(e.r, queue_names()).jobs
        assert waiting_after <= waiting_before, "a crafted click queued a job"

        # An admin of the job's guild can delete it: the message goes, and its images with it.
        real = e.standin.send_component(e.bot.app.id, e.g1, e.ch1, p.admin1, result.id, f"dream:d:{job}")
        real.wait_ack(5)
        wait_until(lambda: e.standin.message(result.id).deleted, 10, "the admin's Delete did not delete")
        # The message goes first (so a refused delete keeps the images), then the result and its images.
        wait_until(lambda: not e.r.exists(f"dream:result:{job}"), 10, "the deleted result stayed in Redis")
        problems = log_problems(e.bot.log.read_text(errors="replace"))
        assert not problems, "\n".join(problems[:5])
