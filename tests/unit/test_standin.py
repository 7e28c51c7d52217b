"""The Discord stand-in against the real, unmodified discord.py client (in this process, in its own thread).

Covers: login + gateway through `bot.discord_api`, command sync (global and guild), slash -> defer -> followup
with a PNG, the 3 s ack rule, interaction-token expiry, Discord-shaped 429s and 5xx (what discord.py retries),
component clicks, nonce de-duplication, allowed_mentions as sent, and a lost HTTP response.
"""

from __future__ import annotations

import asyncio
import io
import json
import struct
import threading
import time
import urllib.error
import urllib.request
import zlib

import discord
import pytest
from discord import app_commands

from bot.discord_api import DEFAULT_API_BASE, prepare_client, use_api_base
from tests.support.standin import DiscordStandIn
from tests.support.standin.botthread import BotThread

pytestmark = pytest.mark.timeout(60)


def tiny_png(width: int = 2, height: int = 2) -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    raw = b"".join(b"\x00" + b"\xff\x00\x00" * width for _ in range(height))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))


PNG = tiny_png()


class Recorder:
    """Thread-safe list of (name, value) the bot appends to and the test waits on."""

    def __init__(self) -> None:
        self.cond = threading.Condition()
        self.items: list[tuple[str, object]] = []

    def add(self, name: str, value: object = None) -> None:
        with self.cond:
            self.items.append((name, value))
            self.cond.notify_all()

    def wait(self, name: str, timeout: float = 10.0) -> object:
        with self.cond:
            ok = self.cond.wait_for(lambda: any(n == name for n, _ in self.items), timeout=timeout)
            if not ok:
                raise TimeoutError(f"bot never recorded {name!r}; got {[n for n, _ in self.items]}")
            value = next(v for n, v in self.items if n == name)
            self.items.remove((name, value))
            return value


class AgainView(discord.ui.View):
    def __init__(self, rec: Recorder) -> None:
        super().__init__(timeout=None)
        self.rec = rec

    @discord.ui.button(label="Again", custom_id="dream:again")
    async def again(self, interaction: discord.Interaction, button: discord.ui.Button) -> None:
        await interaction.response.defer()  # type 6 for a component
        self.rec.add("view-callback", interaction.data["custom_id"])


def make_client(rec: Recorder, guild_id: int, lateness: dict) -> discord.Client:
    class TestBot(discord.Client):
        def __init__(self) -> None:
            super().__init__(intents=discord.Intents(guilds=True), guild_ready_timeout=0.1)
            self.tree = app_commands.CommandTree(self)

        async def setup_hook(self) -> None:
            await prepare_client(self)
            rec.add("gateway", str(discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY))
            rec.add("global-sync", [c.name for c in await self.tree.sync()])
            guild = discord.Object(id=guild_id)
            self.tree.copy_global_to(guild=guild)
            rec.add("guild-sync", [c.name for c in await self.tree.sync(guild=guild)])

        async def before_identify_hook(self, shard_id: int | None, *, initial: bool = False) -> None:
            """Stock discord.py sleeps 5 s before every non-initial IDENTIFY; not needed against the stand-in."""

        async def on_interaction(self, interaction: discord.Interaction) -> None:
            rec.add(f"on_interaction:{interaction.type.name}", interaction.data)

    client = TestBot()

    @client.tree.command(name="ping", description="Draw a picture")
    @app_commands.describe(prompt="what to draw", count="how many")
    async def ping(interaction: discord.Interaction, prompt: str, count: app_commands.Range[int, 1, 4] = 1,
                   ephemeral: bool = False) -> None:
        rec.add("ping-args", (prompt, count, ephemeral, interaction.user.id,
                              interaction.permissions.manage_guild))
        await interaction.response.defer(thinking=True, ephemeral=ephemeral)
        try:
            msg = await interaction.followup.send(
                f"{prompt} x{count}", file=discord.File(io.BytesIO(PNG), "dream.png"),
                allowed_mentions=discord.AllowedMentions.none(), wait=True)
            rec.add("ping-done", msg.id)
        except discord.HTTPException as exc:
            rec.add("ping-failed", (exc.status, exc.code))

    @client.tree.command(name="slow", description="Answers too late")
    async def slow(interaction: discord.Interaction) -> None:
        await asyncio.sleep(lateness["sleep"])
        try:
            await interaction.response.send_message("finally")
            rec.add("slow-result", "sent")
        except discord.NotFound as exc:
            rec.add("slow-result", (exc.status, exc.code))

    @client.tree.command(name="expire", description="Followup after the token died")
    async def expire(interaction: discord.Interaction) -> None:
        await interaction.response.defer(thinking=True)
        await asyncio.sleep(lateness["expire_sleep"])
        try:
            await interaction.followup.send("too late")
            rec.add("expire-followup", "sent")
        except discord.HTTPException as exc:
            rec.add("expire-followup", (exc.status, exc.code))
        msg = await interaction.channel.send("the result, posted with the bot token instead")
        rec.add("expire-channel", msg.id)

    @client.tree.command(name="buttons", description="Offers a button")
    async def buttons(interaction: discord.Interaction) -> None:
        await interaction.response.send_message("again?", view=AgainView(rec))
        rec.add("buttons-done", (await interaction.original_response()).id)

    dream = app_commands.Group(name="dream", description="Dream things")
    style = app_commands.Group(name="style", description="Styles", parent=dream)

    @style.command(name="draw", description="Draw with a style")
    async def draw(interaction: discord.Interaction, style_name: str, who: discord.Member,
                   where: discord.TextChannel, role: discord.Role, ref: discord.Attachment,
                   scale: float = 1.0) -> None:
        ref_bytes = await ref.read()
        rec.add("draw-args", (style_name, who.id, where.id, role.id, ref.filename, ref_bytes, scale))
        await interaction.response.send_message("working...")
        edited = await interaction.edit_original_response(
            content="done", attachments=[discord.File(io.BytesIO(PNG), "a.png")])
        extra = await interaction.followup.send(
            "two more", files=[discord.File(io.BytesIO(b"1"), "b.txt"), discord.File(io.BytesIO(b"2"), "c.txt")],
            wait=True)
        kept = await extra.edit(attachments=[extra.attachments[1]])
        gone = await interaction.followup.send("temporary", wait=True)
        await gone.delete()
        rec.add("draw-done", (edited.id, kept.id, gone.id))

    @draw.autocomplete("style_name")
    async def draw_style(interaction: discord.Interaction, current: str) -> list[app_commands.Choice[str]]:
        return [app_commands.Choice(name=s, value=s) for s in ("oil", "ink", "pixel") if s.startswith(current)]

    client.tree.add_command(dream)
    return client


@pytest.fixture(scope="module")
def world():
    standin = DiscordStandIn(token_lifetime_s=900, ack_deadline_s=3.0).start()
    app = standin.add_application("dreambot-test")
    gid = standin.add_guild("Test Guild")
    cid = standin.add_channel(gid, "general")
    alice = standin.add_member(gid, "alice", manage_guild=True)
    bob = standin.add_member(gid, "bob")
    rec = Recorder()
    lateness = {"sleep": 0.0, "expire_sleep": 0.0}
    use_api_base(standin.api_base)
    runner = BotThread(lambda: make_client(rec, gid, lateness), app.token)
    try:
        client = runner.start()
        yield {"standin": standin, "app": app, "gid": gid, "cid": cid, "alice": alice, "bob": bob,
               "rec": rec, "runner": runner, "client": client, "lateness": lateness}
    finally:
        runner.stop()
        use_api_base(DEFAULT_API_BASE)
        standin.stop()
        assert standin.unknown_routes() == [], standin.unknown_routes()


def test_login_gateway_and_command_sync(world):
    st, app, rec = world["standin"], world["app"], world["rec"]
    assert rec.wait("gateway") == st.gateway_url
    assert rec.wait("global-sync") == ["ping", "slow", "expire", "buttons", "dream"]
    assert rec.wait("guild-sync") == ["ping", "slow", "expire", "buttons", "dream"]
    assert world["client"].user.id == app.user_id
    assert [g.id for g in world["client"].guilds] == [world["gid"]]
    sessions = st.gateway_sessions(app.id)
    assert len(sessions) == 1 and sessions[0]["connected"] and sessions[0]["compression"] == "zlib-stream"
    ping = {c["name"]: c for c in st.commands(app.id)}["ping"]
    opts = {o["name"]: o for o in ping["options"]}
    assert (opts["prompt"]["type"], opts["prompt"].get("required")) == (3, True)
    assert (opts["count"]["type"], opts["count"]["min_value"], opts["count"]["max_value"]) == (4, 1, 4)
    assert opts["ephemeral"]["type"] == 5
    guild_cmds = st.commands(app.id, world["gid"])
    assert {c["name"] for c in guild_cmds} == {"ping", "slow", "expire", "buttons", "dream"}
    assert all(c["guild_id"] == str(world["gid"]) for c in guild_cmds)
    # The bot's own REST calls all carried the bot token (an unauthenticated one would be a 401 here).
    assert all(r.status == 200 for r in st.requests(r"^GET /(users/@me|oauth2/applications/@me|gateway/bot)$"))


def test_slash_defer_then_followup_with_png(world):
    st, app, rec = world["standin"], world["app"], world["rec"]
    inter = st.send_slash(app.id, world["gid"], world["cid"], world["alice"], "ping",
                          {"prompt": "a red square", "count": 2})
    assert inter.wait_ack(5)["type"] == 5
    assert inter.acked and not inter.late and inter.ack_latency_s < 3.0
    assert rec.wait("ping-args") == ("a red square", 2, False, world["alice"], True)
    msg_id = rec.wait("ping-done")
    msg = st.message(msg_id)
    assert msg.id == inter.original_message_id  # the first followup after a defer fills the thinking message
    assert msg.author_app_id == app.id and msg.interaction_id == inter.id
    assert msg.content == "a red square x2" and not msg.loading and not msg.ephemeral
    assert msg.attachments == [("dream.png", PNG, "image/png")]
    assert msg.allowed_mentions == discord.AllowedMentions.none().to_dict()
    with pytest.raises(ValueError):
        st.send_slash(app.id, world["gid"], world["cid"], world["alice"], "ping", {"prompt": "x", "count": 9})


def test_ephemeral_defer_is_stored_with_the_flag(world):
    st, app, rec = world["standin"], world["app"], world["rec"]
    inter = st.send_slash(app.id, world["gid"], world["cid"], world["bob"], "ping",
                          {"prompt": "secret", "ephemeral": True})
    assert rec.wait("ping-args")[2:] == (True, world["bob"], False)
    msg = st.message(rec.wait("ping-done"))
    assert msg.ephemeral and msg.flags & 64 and msg.interaction_id == inter.id


def test_second_callback_is_refused_with_40060(world):
    st, app, rec = world["standin"], world["app"], world["rec"]
    inter = st.send_slash(app.id, world["gid"], world["cid"], world["alice"], "ping", {"prompt": "twice"})
    inter.wait_ack(5)
    rec.wait("ping-done")
    req = urllib.request.Request(f"{st.api_base}/interactions/{inter.id}/{inter.token}/callback",
                                 data=json.dumps({"type": 5}).encode(), method="POST",
                                 headers={"Content-Type": "application/json"})
    with pytest.raises(urllib.error.HTTPError) as info:
        urllib.request.urlopen(req, timeout=5)
    assert info.value.code == 400
    assert json.loads(info.value.read())["code"] == 40060


def test_late_ack_is_refused(world):
    st, app, rec = world["standin"], world["app"], world["rec"]
    st.ack_deadline_s = 0.3
    world["lateness"]["sleep"] = 0.5
    try:
        inter = st.send_slash(app.id, world["gid"], world["cid"], world["alice"], "slow", {})
        assert rec.wait("slow-result") == (404, 10062)
    finally:
        st.ack_deadline_s = 3.0
    assert inter.late and not inter.acked and inter.ack_latency_s >= 0.3 and inter.timed_out
    assert inter.wait_ack(1)["type"] == 4  # the refused body is still visible
    assert not [m for m in st.messages(world["cid"]) if m.interaction_id == inter.id]


def test_token_expiry_refuses_followup_but_bot_token_still_works(world):
    st, app, rec = world["standin"], world["app"], world["rec"]
    st.token_lifetime_s = 0.5
    world["lateness"]["expire_sleep"] = 0.8
    try:
        inter = st.send_slash(app.id, world["gid"], world["cid"], world["alice"], "expire", {})
        assert rec.wait("expire-followup") == (401, 50027)
        msg = st.message(rec.wait("expire-channel"))
    finally:
        st.token_lifetime_s = 900
    assert msg.author_app_id == app.id and msg.interaction_id is None
    assert st.message(inter.original_message_id).loading  # still "thinking": nothing ever filled it


def test_429_on_followup_is_waited_out_once(world):
    st, app, rec = world["standin"], world["app"], world["rec"]
    pattern = rf"^POST /webhooks/{app.id}/"
    n0 = len(st.requests(pattern))
    st.inject(pattern, 429, count=1, retry_after=1.0)
    before = len(st.messages(world["cid"]))
    inter = st.send_slash(app.id, world["gid"], world["cid"], world["alice"], "ping", {"prompt": "limited"})
    msg = st.message(rec.wait("ping-done"))
    tries = st.requests(pattern)[n0:]
    assert [r.status for r in tries] == [429, 200]
    assert tries[1].time - tries[0].time >= 1.0
    mine = [m for m in st.messages(world["cid"]) if m.interaction_id == inter.id]
    assert mine == [msg] and len(st.messages(world["cid"])) == before + 1


@pytest.mark.parametrize("status", [500, 503])
def test_webhook_5xx_is_retried_by_discord_py(world, status):
    st, app, rec = world["standin"], world["app"], world["rec"]
    pattern = rf"^POST /webhooks/{app.id}/"
    st.inject(pattern, status, count=1)
    inter = st.send_slash(app.id, world["gid"], world["cid"], world["alice"], "ping", {"prompt": f"{status}"})
    msg = st.message(rec.wait("ping-done"))
    assert [r.status for r in st.requests(pattern)[-2:]] == [status, 200]
    assert [m.id for m in st.messages(world["cid"]) if m.interaction_id == inter.id] == [msg.id]


def test_bot_route_5xx_500_is_retried_503_is_not(world):
    st, runner, cid = world["standin"], world["runner"], world["cid"]
    channel = world["client"].get_channel(cid)
    st.inject(rf"^POST /channels/{cid}/messages$", 500, count=1)
    msg = runner.call(channel.send("after a 500"))
    assert [r.status for r in st.requests(rf"^POST /channels/{cid}/messages$")[-2:]] == [500, 200]
    assert st.message(msg.id).content == "after a 500"
    st.inject(rf"^POST /channels/{cid}/messages$", 503, count=1)
    with pytest.raises(discord.DiscordServerError):
        runner.call(channel.send("after a 503"))
    assert not [m for m in st.messages(cid) if m.content == "after a 503"]
    # A global 429 on a bot route is waited out (retry_after from the JSON body) and retried once.
    n0 = len(st.requests(rf"^POST /channels/{cid}/messages$"))
    st.inject(rf"^POST /channels/{cid}/messages$", 429, count=1, retry_after=0.3, is_global=True)
    runner.call(channel.send("after a global 429"))
    tries = st.requests(rf"^POST /channels/{cid}/messages$")[n0:]
    assert [r.status for r in tries] == [429, 200] and tries[1].time - tries[0].time >= 0.3


def test_component_click_reaches_on_interaction(world):
    st, app, rec = world["standin"], world["app"], world["rec"]
    st.send_slash(app.id, world["gid"], world["cid"], world["alice"], "buttons", {})
    msg_id = rec.wait("buttons-done")
    assert st.message(msg_id).custom_ids() == ["dream:again"]
    click = st.send_component(app.id, world["gid"], world["cid"], world["bob"], msg_id, "dream:again")
    assert click.wait_ack(5)["type"] == 6
    data = rec.wait("on_interaction:component")
    assert data["custom_id"] == "dream:again" and data["component_type"] == 2
    assert rec.wait("view-callback") == "dream:again"


def test_nonce_deduplicates_even_after_a_lost_response(world):
    st, runner, cid = world["standin"], world["runner"], world["cid"]
    channel = world["client"].get_channel(cid)
    first = runner.call(channel.send("once", nonce="dream-42"))
    again = runner.call(channel.send("once", nonce="dream-42"))
    assert first.id == again.id
    assert len([m for m in st.messages(cid) if m.nonce == "dream-42"]) == 1
    # A lost response: the message is created but discord.py never hears back and does not retry.
    st.drop_response(rf"^POST /channels/{cid}/messages$", count=1)
    with pytest.raises(Exception) as info:
        runner.call(channel.send("lost", nonce="dream-43"))
    assert "Disconnected" in type(info.value).__name__
    assert st.requests(rf"^POST /channels/{cid}/messages$")[-1].status == 0
    retry = runner.call(channel.send("lost", nonce="dream-43"))  # the caller's retry, same nonce
    assert [m.id for m in st.messages(cid) if m.nonce == "dream-43"] == [retry.id]


def test_allowed_mentions_are_recorded_as_sent(world):
    st, runner, cid = world["standin"], world["runner"], world["cid"]
    channel = world["client"].get_channel(cid)
    am = discord.AllowedMentions(everyone=False, users=[discord.Object(id=world["alice"])], roles=False)
    msg = runner.call(channel.send(f"<@{world['alice']}> done", allowed_mentions=am))
    stored = st.message(msg.id)
    assert stored.allowed_mentions == am.to_dict()
    assert stored.allowed_mentions["users"] == [str(world["alice"])] or stored.allowed_mentions["users"] == [
        world["alice"]]
    plain = runner.call(channel.send("no mentions given"))
    assert st.message(plain.id).allowed_mentions is None


def test_gateway_resume_replays_missed_dispatches(world):
    st, app, rec = world["standin"], world["app"], world["rec"]
    assert st.disconnect_gateway(app.id, code=4000) == 1
    inter = st.send_slash(app.id, world["gid"], world["cid"], world["alice"], "ping", {"prompt": "resumed"})
    assert inter.wait_ack(10)["type"] == 5
    rec.wait("ping-done")
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and not st.gateway_sessions(app.id)[0]["resumes"]:
        time.sleep(0.05)
    sess = st.gateway_sessions(app.id)
    assert len(sess) == 1 and sess[0]["resumes"] == 1 and sess[0]["path"] == "/gateway/resume"


def test_bad_token_is_401(world):
    st = world["standin"]
    req = urllib.request.Request(f"{st.api_base}/users/@me", headers={"Authorization": "Bot nope"})
    with pytest.raises(urllib.error.HTTPError) as info:
        urllib.request.urlopen(req, timeout=5)
    assert info.value.code == 401 and info.value.headers["Content-Type"] == "application/json"


def test_subcommand_group_autocomplete_resolved_options_and_edits(world):
    st, app, rec, gid, cid = world["standin"], world["app"], world["rec"], world["gid"], world["cid"]
    role = st.add_role(gid, "artists")
    ac = st.send_autocomplete(app.id, gid, cid, world["alice"], "dream", {"style_name": "o"}, focused="style_name",
                              subcommand="style draw")
    assert ac.wait_ack(5)["type"] == 8
    assert ac.autocomplete_choices == [{"name": "oil", "value": "oil"}]
    inter = st.send_slash(app.id, gid, cid, world["alice"], "dream",
                          {"style_name": "oil", "who": world["bob"], "where": cid, "role": role,
                           "ref": ("ref.png", PNG), "scale": 2}, subcommand="style draw")
    assert inter.wait_ack(5)["type"] == 4
    assert rec.wait("draw-args") == ("oil", world["bob"], cid, role, "ref.png", PNG, 2.0)
    edited_id, kept_id, gone_id = rec.wait("draw-done")
    original = st.message(edited_id)
    assert original.id == inter.original_message_id and original.content == "done" and original.edits == 1
    assert original.attachments == [("a.png", PNG, "image/png")] and len(original.edit_history) == 1
    kept = st.message(kept_id)
    assert kept.attachments == [("c.txt", b"2", "text/plain")] and kept.edits == 1
    assert st.message(gone_id).deleted and gone_id not in [m.id for m in st.messages(cid)]
    assert inter.followup_ids == [kept_id, gone_id]
    with pytest.raises(ValueError):
        st.send_slash(app.id, gid, cid, world["alice"], "dream", {"style_name": "oil"}, subcommand="style draw")
    with pytest.raises(LookupError):
        st.send_slash(app.id, gid, cid, world["alice"], "nope", {})


def test_invalid_session_and_reconnect_opcodes(world):
    st, app, rec = world["standin"], world["app"], world["rec"]
    old = {s["session_id"] for s in st.gateway_sessions(app.id)}
    assert st.invalidate_session(app.id, resumable=False) == 1
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and {s["session_id"] for s in st.gateway_sessions(app.id)} == old:
        time.sleep(0.05)
    st.wait_for_gateway(app.id, timeout=10)
    live = [s for s in st.gateway_sessions(app.id) if s["connected"]]
    # A fresh IDENTIFY. discord.py sends it to the gateway it last connected to (Client.connect copies
    # ws.gateway into its params only when resuming), which after the resume test is resume_gateway_url.
    assert len(live) == 1 and live[0]["session_id"] not in old and live[0]["resumes"] == 0
    assert all(s["invalidated"] for s in st.gateway_sessions(app.id) if s["session_id"] in old)
    assert st.request_reconnect(app.id) == 1
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and not st.gateway_sessions(app.id)[-1]["resumes"]:
        time.sleep(0.05)
    assert st.gateway_sessions(app.id)[-1]["resumes"] == 1
    inter = st.send_slash(app.id, world["gid"], world["cid"], world["alice"], "ping", {"prompt": "still here"})
    assert inter.wait_ack(5)["type"] == 5
    rec.wait("ping-done")
