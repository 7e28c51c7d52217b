"""/dreamadmin end to end: one real bot process on the Discord stand-in and the real Redis. What is asserted
is what the admin (or the member who is not one) sees, and what ends up in Redis."""

from __future__ import annotations

import asyncio
import json
import os
import re
from types import SimpleNamespace
from unittest.mock import AsyncMock, MagicMock

import discord
import pytest
import redis

from bot.admin import NO_PERMISSION, NOT_IN_GUILD, DreamAdmin
from bot.admin_text import audit_text, key_choices, show_text
from bot.toolkit import Refused, is_guild_admin
from dreamcore.keys import LimitKeys
from dreamcore.limits.limiter import Limiter
from dreamcore.limits.model import KNOWN_KEYS, GuildLimits, default_limits
from dreamcore.limits.stored import LimitStore
from dreamcore.settings import load_settings
from tests.support.fleet import Fleet
from tests.support.standin import DiscordStandIn

pytestmark = pytest.mark.timeout(120)

MANAGE_GUILD = 1 << 5
ADMINISTRATOR = 1 << 3
SUBCOMMANDS = {"show": {}, "set": {"key": "cooldown_s", "value": "1"}, "usage": "user", "reset-user": "user",
               "pause": {}, "resume": {}, "audit": {}}


# --- One bot for the module --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def env(redis_server, tmp_path_factory):
    if redis_server.proc is None or redis_server.proc.poll() is not None:
        redis_server.start()
    tmp = tmp_path_factory.mktemp("admin")
    standin = DiscordStandIn().start()
    # The bot never loads a model: the model dir only has to be a path.
    fleet = Fleet(standin, redis_server.url, tmp / "no-model", tmp)
    try:
        fleet.setup(1)
        fleet.start_bot(fleet.bots[0])
        fleet.wait_bots_ready()
        conn = redis.Redis.from_url(redis_server.url)
        # The store the test reads through sees the defaults the bot process sees.
        with pytest.MonkeyPatch.context() as mp:
            for k in [k for k in os.environ if k.startswith("DREAMBOT_LIMIT_")]:
                mp.delenv(k)
            for k, v in fleet.base_env().items():
                if k.startswith("DREAMBOT_LIMIT_"):
                    mp.setenv(k, v)
            settings = load_settings()
        yield SimpleNamespace(fleet=fleet, standin=standin, bot=fleet.bots[0], guild_id=fleet.guild_id,
                              alice=fleet.user_id, r=conn, store=LimitStore(conn, settings))
        conn.close()
    finally:
        fleet.stop()
        standin.stop()


@pytest.fixture(autouse=True)
def clean_limits(request):
    """Every test starts from this guild's defaults (the bot keeps running; only limit keys go)."""
    if "env" not in request.fixturenames:
        yield
        return
    e = request.getfixturevalue("env")
    for key in e.r.scan_iter(f"dream:limits:{{{e.guild_id}}}:*"):
        e.r.delete(key)
    yield


def admin_cmd(e, user_id: int, sub: str, **options) -> str:
    """Run /dreamadmin <sub> as user_id; return the (ephemeral, mention-free, in-time) answer."""
    inter = e.standin.send_slash(e.bot.app.id, e.guild_id, e.bot.channel_id, user_id, "dreamadmin", options,
                                 subcommand=sub)
    body = inter.wait_ack(5)
    assert body["type"] == 4, body
    data = body["data"]
    assert data["flags"] & 64, f"/dreamadmin {sub} answered in public: {data}"
    assert data.get("allowed_mentions", {}).get("parse") == [], data.get("allowed_mentions")
    assert not data["allowed_mentions"].get("users") and not data["allowed_mentions"].get("roles")
    assert not inter.late and inter.ack_latency_s < 3.0
    assert len(data["content"]) <= 2000
    return data["content"]


def snapshot(r: redis.Redis, guild_id: int) -> dict:
    out = {}
    for key in sorted(r.scan_iter(f"dream:limits:{{{guild_id}}}:*")):
        kind = r.type(key)
        if kind == b"hash":
            out[key] = r.hgetall(key)
        elif kind == b"list":
            out[key] = r.lrange(key, 0, -1)
        elif kind == b"zset":
            out[key] = r.zrange(key, 0, -1, withscores=True)
        else:
            out[key] = r.get(key)
    return out


def seed_usage(e, user_id: int, job_id: str, images: int = 2) -> None:
    d = Limiter(e.r, e.store).acquire(e.guild_id, user_id, job_id, images, 4)
    assert d.ok, d


# --- Registration ---------------------------------------------------------------------------------------


def test_dreamadmin_is_synced_as_a_guild_only_manage_server_group(env):
    cmds = {c["name"]: c for c in env.standin.commands(env.bot.app.id, env.guild_id)}
    cmd = cmds["dreamadmin"]
    assert int(cmd["default_member_permissions"]) == MANAGE_GUILD
    assert {o["name"] for o in cmd["options"]} == set(SUBCOMMANDS)
    set_opts = {o["name"]: o for o in next(o for o in cmd["options"] if o["name"] == "set")["options"]}
    assert set_opts["key"].get("autocomplete") is True


# --- Members without Manage Server ------------------------------------------------------------------------


def test_every_subcommand_refuses_a_member_without_manage_server(env):
    e = env
    # Something to lose: a limit the admins set, an audit entry, a member's usage and cooldown.
    e.store.set(e.guild_id, "cooldown_s", "45", actor_id=1)
    seed_usage(e, e.alice, "seed-refused")
    before = snapshot(e.r, e.guild_id)
    assert before

    for sub, opts in SUBCOMMANDS.items():
        options = {"user": e.alice} if opts == "user" else opts
        text = admin_cmd(e, e.alice, sub, **options)
        assert text == NO_PERMISSION, (sub, text)
    # The key autocomplete tells nothing either.
    inter = e.standin.send_autocomplete(e.bot.app.id, e.guild_id, e.bot.channel_id, e.alice, "dreamadmin",
                                        {"key": "cool"}, focused="key", subcommand="set")
    assert inter.wait_ack(5)["type"] == 8 and inter.autocomplete_choices == []

    assert snapshot(e.r, e.guild_id) == before
    limits = e.store.get(e.guild_id)
    assert limits.cooldown_s == 45 and not limits.paused
    assert len(e.store.audit(e.guild_id)) == 1


def test_a_role_with_manage_server_is_enough(env):
    e = env
    role = e.standin.add_role(e.guild_id, "mods", permissions=MANAGE_GUILD)
    mod = e.standin.add_member(e.guild_id, "mod", roles=[role])
    text = admin_cmd(e, mod, "set", key="max_steps", value="40")
    assert "max_steps" in text and "40" in text
    assert e.store.get(e.guild_id).max_steps == 40


# --- Admins ---------------------------------------------------------------------------------------------------


def test_admin_show_set_pause_resume_usage_reset_and_audit(env):
    e = env
    boss = e.standin.add_member(e.guild_id, "boss", manage_guild=True)
    defaults = default_limits(e.store.settings)

    text = admin_cmd(e, boss, "show")
    for key in KNOWN_KEYS:
        assert f"`{key}`" in text, key
    assert "set here" not in text and "0–3600" in text  # cooldown_s's range

    # set: persisted, reported old -> new, marked "set here"
    text = admin_cmd(e, boss, "set", key="cooldown_s", value="30")
    assert "`cooldown_s`" in text and "**30**" in text and f"was {defaults.cooldown_s}" in text
    assert e.store.get(e.guild_id).cooldown_s == 30
    assert e.store.overrides(e.guild_id) == {"cooldown_s": 30}
    line = next(x for x in admin_cmd(e, boss, "show").splitlines() if x.startswith("`cooldown_s`"))
    assert "**30**" in line and "set here" in line

    # out of range and unknown keys: refused with the key and its range (or the known keys); nothing changes
    before = snapshot(e.r, e.guild_id)
    text = admin_cmd(e, boss, "set", key="cooldown_s", value="99999")
    assert "cooldown_s" in text and "0" in text and "3600" in text and "99999" in text
    text = admin_cmd(e, boss, "set", key="nope", value="1")
    assert "`nope`" in text and "Unknown" in text and all(f"`{k}`" in text for k in KNOWN_KEYS)
    text = admin_cmd(e, boss, "set", key="max_steps", value="lots")
    assert "max_steps" in text and "1" in text and "100" in text
    text = admin_cmd(e, boss, "set", key="paused", value="maybe")
    assert "paused" in text and "true" in text
    assert snapshot(e.r, e.guild_id) == before

    # "default" goes back to the default
    admin_cmd(e, boss, "set", key="max_images", value="2")
    text = admin_cmd(e, boss, "set", key="max_images", value="default")
    assert "default" in text and e.store.overrides(e.guild_id) == {"cooldown_s": 30}

    # pause / resume go through the store (audited)
    assert "paused" in admin_cmd(e, boss, "pause")
    assert e.store.get(e.guild_id).paused is True
    assert "again" in admin_cmd(e, boss, "resume")
    assert e.store.get(e.guild_id).paused is False

    # usage: the member's and the server's
    seed_usage(e, e.alice, "seed-usage-1", images=3)
    text = admin_cmd(e, boss, "usage", user=e.alice)
    assert f"<@{e.alice}>" in text
    assert f"standard images this hour: 3 / {defaults.user_images_hour}" in text
    assert f"dreams queued or running: 1 / {defaults.user_max_active}" in text
    assert "left (cooldown 30 s)" in text
    assert "**The whole server**" in text

    # reset-user: the member's usage and cooldown are gone, the server's images stay
    text = admin_cmd(e, boss, "reset-user", user=e.alice)
    assert f"<@{e.alice}>" in text
    u = e.store.usage(e.guild_id, e.alice)
    assert (u["user_images_hour"], u["user_active"], u["cooldown_remaining_s"]) == (0, 0, 0.0)
    assert u["guild_images_hour"] == 3
    assert not e.r.exists(LimitKeys.cooldown(e.guild_id, e.alice))

    # audit: newest first, who (no ping), when (Discord timestamp), key, old -> new
    text = admin_cmd(e, boss, "audit")
    lines = text.splitlines()
    assert len(lines) > 1, text
    assert re.fullmatch(rf"<t:\d+:R> <@{boss}> reset the usage and cooldown of <@{e.alice}>", lines[1]), lines[1]
    assert f"<@{boss}> `paused`: false → true" in text and f"<@{boss}> `paused`: true → false" in text
    assert f"<@{boss}> `cooldown_s`: {defaults.cooldown_s} → 30" in text
    assert "(back to the default)" in text
    assert len(lines) == 1 + 6  # cooldown_s, max_images twice, pause, resume, reset-user; nothing refused
    entries = e.store.audit(e.guild_id)
    assert all(x["actor_id"] == boss for x in entries)

    # the bot logged each change with the actor
    logs = e.bot.log.read_text(errors="replace")
    changed = [json.loads(x) for x in logs.splitlines()
               if x.startswith("{") and '"dream limit changed by command"' in x]
    assert {(c["key"], c["actor_id"], c["guild_id"]) for c in changed} >= {
        ("cooldown_s", boss, e.guild_id), ("paused", boss, e.guild_id), ("reset_user", boss, e.guild_id)}


def test_key_autocomplete_labels_say_what_and_range(env):
    e = env
    boss = e.standin.add_member(e.guild_id, "auto", manage_guild=True)
    inter = e.standin.send_autocomplete(e.bot.app.id, e.guild_id, e.bot.channel_id, boss, "dreamadmin",
                                        {"key": "cool"}, focused="key", subcommand="set")
    assert inter.wait_ack(5)["type"] == 8
    choices = inter.autocomplete_choices
    assert choices[0]["value"] == "cooldown_s"  # then exempt_roles, whose description says "cooldown"
    assert "0–3600" in choices[0]["name"] and "seconds" in choices[0]["name"]
    assert [c.value for c in key_choices("")] == list(KNOWN_KEYS)
    assert [c.value for c in key_choices("user_")] == [k for k in KNOWN_KEYS if k.startswith("user_")]
    assert all(len(c.name) <= 100 for c in key_choices(""))


# --- The limit an admin sets is the limit /dream enforces ---------------------------------------------------


def test_user_max_active_set_by_command_is_enforced_on_dream(env):
    e = env
    boss = e.standin.add_member(e.guild_id, "enforcer", manage_guild=True)
    admin_cmd(e, boss, "set", key="cooldown_s", value="0")
    admin_cmd(e, boss, "set", key="user_max_active", value="1")
    member = e.standin.add_member(e.guild_id, "dreamer")
    first = e.standin.send_slash(e.bot.app.id, e.guild_id, e.bot.channel_id, member, "dream",
                                 {"prompt": "a lighthouse"})
    body = first.wait_ack(5)
    assert body["type"] in (4, 5) and not (body.get("data", {}).get("flags", 0) & 64), body
    # No worker runs, so the first dream is still queued when the second comes.
    second = e.standin.send_slash(e.bot.app.id, e.guild_id, e.bot.channel_id, member, "dream",
                                  {"prompt": "another lighthouse"})
    body = second.wait_ack(5)
    assert body["type"] == 4 and body["data"].get("flags", 0) & 64, body
    assert "limit 1" in body["data"]["content"], body["data"]["content"]


# --- Without Discord -------------------------------------------------------------------------------------


def _fake_interaction(guild_id, perms: discord.Permissions, store=None, command=None):
    response = MagicMock()
    response.is_done.return_value = False
    response.send_message = AsyncMock()
    return SimpleNamespace(guild_id=guild_id, permissions=perms, user=SimpleNamespace(id=7), response=response,
                           client=SimpleNamespace(backend=SimpleNamespace(store=store)), command=command)


def test_outside_a_guild_every_subcommand_is_refused():
    store = MagicMock()
    admin = DreamAdmin()
    assert sorted(c.name for c in admin.commands) == ["audit", "pause", "reset-user", "resume", "set", "show",
                                                      "usage"]
    # discord.py runs the group's interaction_check before each subcommand bound to it (Command._check_can_run);
    # a refusal is the tree's on_error's to say, privately.
    for command in admin.commands:
        assert command.parent is admin
        inter = _fake_interaction(None, discord.Permissions.all(), store, command)
        with pytest.raises(Refused) as refused:
            asyncio.run(admin.interaction_check(inter))
        assert refused.value.message == NOT_IN_GUILD
        inter = _fake_interaction(1, discord.Permissions(manage_messages=True), store, command)
        with pytest.raises(Refused) as refused:
            asyncio.run(admin.interaction_check(inter))
        assert refused.value.message == NO_PERMISSION
        assert asyncio.run(admin.interaction_check(_fake_interaction(1, discord.Permissions(manage_guild=True))))
    assert not store.mock_calls
    assert not inter.response.send_message.await_count


def test_permission_rule():
    assert is_guild_admin(_fake_interaction(1, discord.Permissions(manage_guild=True)))
    assert is_guild_admin(_fake_interaction(1, discord.Permissions(administrator=True)))
    assert not is_guild_admin(_fake_interaction(1, discord.Permissions(manage_messages=True, ban_members=True)))
    assert not is_guild_admin(_fake_interaction(None, discord.Permissions.all()))  # never in a DM


def test_long_values_stay_inside_one_message():
    huge = GuildLimits(blocked_words=[f"word{i:03d}" + "x" * 50 for i in range(500)],
                       exempt_roles=list(range(10**17, 10**17 + 100)), priority_roles=list(range(1, 101)))
    assert len(show_text(huge, {"blocked_words": 1})) <= 2000
    entries = [{"ts": 1.7e9, "actor_id": 5, "key": "blocked_words", "old": [], "new": huge.blocked_words}] * 10
    assert len(audit_text(entries)) <= 2000
    assert audit_text([]).startswith("No limit")
