"""`DiscordStandIn`: a local Discord (REST + gateway, API v10, JSON) for tests, on 127.0.0.1 and a free port.

The server runs in a background thread with its own event loop, so the test thread (and bot subprocesses
pointed at ``api_base`` via DISCORD_API_BASE) can talk to it while the control API below is called
synchronously from anywhere except the stand-in's own loop.  Every control method is thread-safe.

    standin = DiscordStandIn(token_lifetime_s=900, ack_deadline_s=3.0).start()
    app = standin.add_application("dreambot")           # app.id, app.token, app.user_id
    gid = standin.add_guild("test guild")
    cid = standin.add_channel(gid, "general")
    uid = standin.add_member(gid, "alice", manage_guild=True)
    ...run a bot with DISCORD_API_BASE=standin.api_base DISCORD_TOKEN=app.token ...
    standin.wait_for_gateway(app.id)
    inter = standin.send_slash(app.id, gid, cid, uid, "dream", {"prompt": "a cat"})
    body = inter.wait_ack(5)                              # {"type": 5, ...}
    msg = standin.wait_for_message(lambda m: m.interaction_id == inter.id and not m.loading, timeout=30)
    standin.stop()

See gateway.py and rest.py for what discord.py needs from each side.
"""

from __future__ import annotations

import asyncio
import re
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from aiohttp import web

from .gateway import OP_INVALID_SESSION, OP_RECONNECT, GatewayHub
from .rest import API_PREFIX, LOCALES, Faults, RequestRecord, RestApi, _Fault
from .store import (
    BOT_ROLE_PERMISSIONS,
    EVERYONE_PERMISSIONS,
    App,
    Attachment,
    Channel,
    Guild,
    Interaction,
    Member,
    Message,
    Role,
    Store,
    User,
    guess_content_type,
    make_bot_token,
    make_interaction_token,
)

__all__ = ["DiscordStandIn", "App", "Interaction", "Message", "Attachment", "RequestRecord"]

# Application command option types.
SUB_COMMAND, SUB_COMMAND_GROUP, STRING, INTEGER, BOOLEAN = 1, 2, 3, 4, 5
USER, CHANNEL, ROLE, MENTIONABLE, NUMBER, ATTACHMENT = 6, 7, 8, 9, 10, 11
MAX_SAFE_INTEGER = 2**53


def close_loop(loop: asyncio.AbstractEventLoop) -> None:
    """What asyncio.run does on the way out: cancel what is left, let it finish, then close. (A coroutine
    left pending on a closed loop is finalised later by the GC, which can land anywhere in the main thread.)"""
    pending = [t for t in asyncio.all_tasks(loop) if not t.done()]
    for task in pending:
        task.cancel()
    if pending:
        loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
    loop.run_until_complete(loop.shutdown_asyncgens())
    loop.close()


class DiscordStandIn:
    def __init__(self, token_lifetime_s: float = 900, ack_deadline_s: float = 3.0, *,
                 heartbeat_interval_ms: int = 41250, host: str = "127.0.0.1", port: int = 0) -> None:
        self.store = Store(ack_deadline_s=ack_deadline_s, token_lifetime_s=token_lifetime_s)
        self.hub = GatewayHub(self.store, heartbeat_interval_ms=heartbeat_interval_ms)
        self.faults = Faults()
        self.rest = RestApi(self.store, self.hub, self.faults)
        self._host = host
        self._port = port
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._runner: web.AppRunner | None = None
        self._started = threading.Event()
        self._start_error: BaseException | None = None

    # ---- lifecycle -----------------------------------------------------------------------------------------

    def start(self) -> DiscordStandIn:
        if self._thread is not None:
            return self
        self._thread = threading.Thread(target=self._run, name="discord-standin", daemon=True)
        self._thread.start()
        if not self._started.wait(15):
            raise RuntimeError("the Discord stand-in did not start within 15 s")
        if self._start_error is not None:
            raise RuntimeError("the Discord stand-in failed to start") from self._start_error
        return self

    def stop(self) -> None:
        if self._loop is None or self._thread is None:
            return
        fut = asyncio.run_coroutine_threadsafe(self._shutdown(), self._loop)
        try:
            fut.result(15)
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(15)
            self._thread = None

    def __enter__(self) -> DiscordStandIn:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _run(self) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        asyncio.set_event_loop(loop)
        try:
            loop.run_until_complete(self._startup())
        except BaseException as exc:  # noqa: BLE001 - handed to start()
            self._start_error = exc
            self._started.set()
            return
        self._started.set()
        try:
            loop.run_forever()
        finally:
            close_loop(loop)

    async def _startup(self) -> None:
        # Room for big PNG attachments: aiohttp refuses bodies over 1 MiB by default.
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_route("GET", "/gateway", self.hub.handle)
        app.router.add_route("GET", "/gateway/resume", self.hub.handle)
        app.router.add_route("GET", "/attachments/{channel_id}/{attachment_id}/{filename}", self.rest.attachment)
        app.router.add_route("*", API_PREFIX + "/{tail:.*}", self.rest.handle)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self._host, self._port)
        await site.start()
        sock = site._server.sockets[0]  # type: ignore[union-attr]
        self._port = sock.getsockname()[1]
        self.rest.base_url = f"http://{self._host}:{self._port}"
        self.store.cdn_base = self.rest.base_url
        self.hub.url = f"ws://{self._host}:{self._port}/gateway"
        self.hub.resume_url = f"ws://{self._host}:{self._port}/gateway/resume"

    async def _shutdown(self) -> None:
        for s in list(self.hub.sessions.values()):
            if s.conn is not None:
                await s.conn.ws.close(code=1001, message=b"stand-in stopping")
        if self._runner is not None:
            await self._runner.cleanup()

    def _call(self, coro) -> Any:
        if self._loop is None:
            raise RuntimeError("start() the stand-in first")
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is self._loop:
            raise RuntimeError("control API called from the stand-in's own loop")
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(30)

    # ---- addresses ----------------------------------------------------------------------------------------

    @property
    def port(self) -> int:
        return self._port

    @property
    def base_url(self) -> str:
        return f"http://{self._host}:{self._port}"

    @property
    def api_base(self) -> str:
        return f"http://{self._host}:{self._port}{API_PREFIX}"

    @property
    def gateway_url(self) -> str:
        return self.hub.url

    @property
    def token_lifetime_s(self) -> float:
        return self.store.token_lifetime_s

    @token_lifetime_s.setter
    def token_lifetime_s(self, value: float) -> None:
        self.store.token_lifetime_s = value  # for interactions created from now on (each keeps a copy)

    @property
    def ack_deadline_s(self) -> float:
        return self.store.ack_deadline_s

    @ack_deadline_s.setter
    def ack_deadline_s(self, value: float) -> None:
        self.store.ack_deadline_s = value  # for interactions created from now on (each keeps a copy)

    # ---- world building -------------------------------------------------------------------------------

    def add_application(self, name: str, *, privileged_intents: bool = True, flags: int = 0) -> App:
        """A bot application. Its bot user shares the application's id (as on Discord since 2020) and it is
        a member of every guild, with a managed role named after it."""
        st = self.store
        with st.lock:
            app_id = st.snowflakes.next()
            app = App(id=app_id, name=name, token=make_bot_token(app_id), user_id=app_id, flags=flags,
                      privileged_intents=privileged_intents)
            st.apps[app.id] = app
            st.apps_by_token[app.token] = app
            st.users[app.user_id] = User(id=app.user_id, username=name, bot=True)
            for guild in st.guilds.values():
                self._join_bot(guild, app)
        return app

    def _join_bot(self, guild: Guild, app: App) -> None:
        role = Role(id=self.store.snowflakes.next(), guild_id=guild.id, name=app.name,
                    permissions=BOT_ROLE_PERMISSIONS, position=1, managed=True)
        guild.roles[role.id] = role
        guild.members[app.user_id] = Member(user_id=app.user_id, guild_id=guild.id, roles=[role.id])

    def add_guild(self, name: str, locale: str = "en-US") -> int:
        """A server whose language (its `preferred_locale`, every interaction's `guild_locale`) is `locale`."""
        if locale not in LOCALES:
            raise ValueError(f"{locale!r} is not a Discord locale")
        st = self.store
        with st.lock:
            gid = st.snowflakes.next()
            owner = User(id=st.snowflakes.next(), username=f"{name.lower().replace(' ', '-')}-owner")
            st.users[owner.id] = owner
            guild = Guild(id=gid, name=name, owner_id=owner.id, preferred_locale=locale)
            guild.roles[gid] = Role(id=gid, guild_id=gid, name="@everyone", permissions=EVERYONE_PERMISSIONS)
            guild.members[owner.id] = Member(user_id=owner.id, guild_id=gid, roles=[])
            st.guilds[gid] = guild
            for app in st.apps.values():
                self._join_bot(guild, app)
        # Connected bots learn about it the way they would on Discord.
        if self._loop is not None:
            for app in list(st.apps.values()):
                with st.lock:
                    payload = st.guild_payload(guild, for_app=app)
                self._call(self.hub.dispatch(app.id, "GUILD_CREATE", payload, guild_id=gid))
        return gid

    def add_channel(self, guild_id: int, name: str, nsfw: bool = False) -> int:
        """A text channel; `nsfw`: Discord's age-restricted flag, in every payload that carries the channel."""
        st = self.store
        with st.lock:
            guild = st.guilds[guild_id]
            ch = Channel(id=st.snowflakes.next(), guild_id=guild_id, name=name, position=len(guild.channels),
                         nsfw=nsfw)
            guild.channels[ch.id] = ch
            st.channels[ch.id] = ch
            payload = st.channel_payload(ch)
        if self._loop is not None:
            for app in list(st.apps.values()):
                self._call(self.hub.dispatch(app.id, "CHANNEL_CREATE", payload, guild_id=guild_id))
        return ch.id

    def set_channel_nsfw(self, channel_id: int, nsfw: bool) -> None:
        """An admin ticks (or unticks) "Age-Restricted Channel": every bot gets CHANNEL_UPDATE."""
        st = self.store
        with st.lock:
            ch = st.channels[channel_id]
            ch.nsfw = nsfw
            payload = st.channel_payload(ch)
        if self._loop is not None:
            for app in list(st.apps.values()):
                self._call(self.hub.dispatch(app.id, "CHANNEL_UPDATE", payload, guild_id=ch.guild_id))

    def direct_messages(self, user_id: int) -> list[Message]:
        """What bots sent this member in direct messages, oldest first."""
        with self.store.lock:
            dm = {c.id for c in self.store.channels.values() if c.recipient_id == user_id}
            return [m for m in self.store.messages.values() if m.channel_id in dm and not m.deleted]

    def add_role(self, guild_id: int, name: str, permissions: int = 0) -> int:
        st = self.store
        with st.lock:
            guild = st.guilds[guild_id]
            role = Role(id=st.snowflakes.next(), guild_id=guild_id, name=name, permissions=permissions,
                        position=len(guild.roles))
            guild.roles[role.id] = role
            return role.id

    def add_member(self, guild_id: int, username: str, manage_guild: bool = False,
                   roles: Iterable[int | str] = ()) -> int:
        """A human member. `roles` are role ids or names (an unknown name creates a permission-less role);
        `manage_guild` adds MANAGE_GUILD to the member's computed permissions."""
        st = self.store
        with st.lock:
            guild = st.guilds[guild_id]
            role_ids = []
            for r in roles:
                if isinstance(r, int):
                    if r not in guild.roles:
                        raise KeyError(f"no role {r} in guild {guild_id}")
                    role_ids.append(r)
                else:
                    found = next((x.id for x in guild.roles.values() if x.name == r), None)
                    role_ids.append(found if found is not None else self.add_role(guild_id, r))
            user = User(id=st.snowflakes.next(), username=username)
            st.users[user.id] = user
            guild.members[user.id] = Member(user_id=user.id, guild_id=guild_id, roles=role_ids,
                                            manage_guild=manage_guild)
            return user.id

    # ---- reading what the bot did -----------------------------------------------------------------------

    def commands(self, app_id: int, guild_id: int | None = None) -> list[dict]:
        """The commands `app_id` synced globally (guild_id None) or to one guild, as the API returns them."""
        with self.store.lock:
            return [dict(c) for c in self.store.apps[app_id].commands_by_scope.get(guild_id, {}).values()]

    def messages(self, channel_id: int, include_deleted: bool = False) -> list[Message]:
        """Every message in the channel in creation order, ephemeral interaction responses included."""
        with self.store.lock:
            return [m for m in self.store.messages.values()
                    if m.channel_id == channel_id and (include_deleted or not m.deleted)]

    def message(self, message_id: int) -> Message:
        with self.store.lock:
            return self.store.messages[message_id]

    def wait_for_message(self, predicate: Callable[[Message], bool], timeout: float = 5.0) -> Message:
        """The first stored message (deleted ones excluded) for which predicate(msg) is true; the predicate is
        re-evaluated after every change, so it also sees edits (e.g. a deferred message being filled in)."""
        def find() -> Message | None:
            for m in list(self.store.messages.values()):
                if not m.deleted and predicate(m):
                    return m
            return None

        with self.store.cond:
            found = None

            def check() -> bool:
                nonlocal found
                found = find()
                return found is not None

            if not self.store.cond.wait_for(check, timeout=timeout):
                raise TimeoutError(f"no matching message within {timeout}s")
            return found  # type: ignore[return-value]

    def interactions(self, app_id: int | None = None) -> list[Interaction]:
        with self.store.lock:
            return [i for i in self.store.interactions.values() if app_id is None or i.app_id == app_id]

    def requests(self, pattern: str | None = None) -> list[RequestRecord]:
        """(time, method, path, status) per request; `pattern` is a regex searched in "METHOD /path", the path
        relative to the API base without query, e.g. r"^POST /webhooks/". status 0: response dropped."""
        rx = re.compile(pattern) if pattern else None
        with self.store.lock:
            return [r for r in self.rest.log if rx is None or rx.search(f"{r.method} {r.path}")]

    def unknown_routes(self) -> list[str]:
        """"METHOD /path" of every request that matched no route (answered 404 and logged)."""
        with self.store.lock:
            return list(self.rest.unknown)

    # ---- faults ----------------------------------------------------------------------------------------

    def inject(self, route_pattern: str, status: int, count: int = 1, retry_after: float = 1.0,
               is_global: bool = False) -> None:
        """The next `count` requests whose "METHOD /path" matches the regex get `status` instead of being
        handled (nothing is performed). 429s are Discord-shaped (JSON body, X-RateLimit-*, Retry-After, Via)."""
        if status not in (429, 500, 502, 503, 504):
            raise ValueError("inject supports 429, 500, 502, 503, 504")
        self.faults.add(_Fault(re.compile(route_pattern), status, count, retry_after, is_global))

    def drop_response(self, route_pattern: str, count: int = 1) -> None:
        """The next `count` matching requests are performed, then the connection is closed without an answer."""
        self.faults.add(_Fault(re.compile(route_pattern), 0, count, drop=True))

    def cdn_fault(self, filename_pattern: str, kind: str, seconds: float = 0.0) -> None:
        """Attachment downloads whose file name matches the regex: "gone" answers 404 as an expired CDN link
        does; "slow" answers after `seconds`."""
        if kind not in ("gone", "slow"):
            raise ValueError("cdn_fault kinds: gone, slow")
        with self.store.lock:
            self.rest.cdn_faults.append((re.compile(filename_pattern), kind, seconds))

    def cdn_requests(self) -> list[str]:
        """The file names of every attachment download so far, in order."""
        with self.store.lock:
            return list(self.rest.cdn_requests)

    def clear_faults(self) -> None:
        self.faults.clear()
        with self.store.lock:
            self.rest.cdn_faults.clear()

    def pending_faults(self) -> list[tuple[str, int, int]]:
        return self.faults.pending()

    # ---- gateway control -------------------------------------------------------------------------------

    def wait_for_gateway(self, app_id: int, timeout: float = 10.0) -> None:
        """Block until `app_id` has an identified session with a live websocket."""
        def ready() -> bool:
            return any(s.app_id == app_id and s.conn is not None and not s.invalidated
                       for s in list(self.hub.sessions.values()))

        with self.store.cond:
            if not self.store.cond.wait_for(ready, timeout=timeout):
                raise TimeoutError(f"application {app_id} did not connect to the gateway within {timeout}s")

    def gateway_sessions(self, app_id: int | None = None) -> list[dict]:
        return [{"session_id": s.session_id, "app_id": s.app_id, "connected": s.conn is not None,
                 "path": s.conn.path if s.conn else None, "seq": s.seq, "resumes": s.resumes,
                 "invalidated": s.invalidated, "shard": s.shard, "intents": s.intents,
                 "compression": s.conn.encoder.kind if s.conn else None}
                for s in list(self.hub.sessions.values()) if app_id is None or s.app_id == app_id]

    def disconnect_gateway(self, app_id: int, code: int = 4000) -> int:
        """Close the app's websockets with `code` (4000: resumable); returns how many were closed."""
        return self._call(self.hub.close_sessions(app_id, code))

    def request_reconnect(self, app_id: int) -> int:
        """Send op 7 RECONNECT; discord.py closes and RESUMEs on resume_gateway_url."""
        return self._call(self.hub.send_op(app_id, OP_RECONNECT))

    def invalidate_session(self, app_id: int, resumable: bool = False) -> int:
        """Send op 9 INVALID_SESSION; with resumable False the session is dropped and discord.py re-IDENTIFYs
        (a new session_id); with True it closes and RESUMEs."""
        return self._call(self.hub.send_op(app_id, OP_INVALID_SESSION, resumable))

    # ---- interactions ----------------------------------------------------------------------------------

    def send_slash(self, app_id: int, guild_id: int, channel_id: int, user_id: int, name: str,
                   options: Mapping[str, Any] | None = None, subcommand: str | None = None, *,
                   locale: str = "en-US") -> Interaction:
        """A member runs /name [subcommand] with `options`, typed per the command the app synced (guild first,
        then global). Values: str/int/bool/float; USER, CHANNEL, ROLE, MENTIONABLE take ids; ATTACHMENT takes
        (filename, bytes[, content_type]). Raises LookupError/ValueError where Discord's client would not let
        the user send it (unknown command, missing required option, wrong type, out of range, not a choice)."""
        with self.store.lock:
            cmd = self._command_for(app_id, guild_id, name)
            opts, resolved = self._build_options(cmd, dict(options or {}), subcommand, guild_id, channel_id,
                                                 user_id, focused=None)
            data: dict[str, Any] = {"id": cmd["id"], "name": cmd["name"], "type": cmd.get("type", 1),
                                    "options": opts}
            if "guild_id" in cmd:
                data["guild_id"] = cmd["guild_id"]
            if resolved:
                data["resolved"] = resolved
        return self._send_interaction(app_id, 2, guild_id, channel_id, user_id, data, locale=locale)

    def send_raw_command(self, app_id: int, guild_id: int, channel_id: int, user_id: int, data: dict, *,
                         locale: str = "en-US") -> Interaction:
        """An APPLICATION_COMMAND interaction whose `data` is sent exactly as given, with none of send_slash's
        checks: what a bot receives when the command Discord has registered differs from the bot's own code
        (a deploy between a sync and the next, two instances of one application on different releases), or
        from a crafted client. `data` needs at least a name; an id is made up when it has none."""
        data = {"id": str(self.store.snowflakes.next()), "type": 1, **data}
        return self._send_interaction(app_id, 2, guild_id, channel_id, user_id, data, locale=locale)

    def send_autocomplete(self, app_id: int, guild_id: int, channel_id: int, user_id: int, name: str,
                          options: Mapping[str, Any], focused: str, subcommand: str | None = None, *,
                          locale: str = "en-US") -> Interaction:
        """The member is typing option `focused` (its partial value given in `options`); the bot should answer
        with a type 8 callback (choices end up in `Interaction.autocomplete_choices`)."""
        with self.store.lock:
            cmd = self._command_for(app_id, guild_id, name)
            opts, resolved = self._build_options(cmd, dict(options), subcommand, guild_id, channel_id, user_id,
                                                 focused=focused)
            data: dict[str, Any] = {"id": cmd["id"], "name": cmd["name"], "type": cmd.get("type", 1),
                                    "options": opts}
            if "guild_id" in cmd:
                data["guild_id"] = cmd["guild_id"]
        return self._send_interaction(app_id, 4, guild_id, channel_id, user_id, data, locale=locale)

    def send_component(self, app_id: int, guild_id: int, channel_id: int, user_id: int, message_id: int,
                       custom_id: str, *, component_type: int = 2, values: list[str] | None = None,
                       locale: str = "en-US") -> Interaction:
        """A member clicks the button (component_type 2) or picks `values` in the select with `custom_id` on
        `message_id`, which must be a message of `app_id` that carries that component."""
        with self.store.lock:
            msg = self.store.messages.get(message_id)
            if msg is None or msg.deleted or msg.channel_id != channel_id:
                raise LookupError(f"no message {message_id} in channel {channel_id}")
            if msg.author_app_id != app_id:
                raise ValueError(f"message {message_id} was not sent by application {app_id}")
            if custom_id not in msg.custom_ids():
                raise ValueError(f"message {message_id} has no component {custom_id!r} ({msg.custom_ids()})")
            data: dict[str, Any] = {"custom_id": custom_id, "component_type": component_type}
            if component_type != 2:
                data["values"] = list(values or [])
            message_payload = self.store.message_payload(msg)
        return self._send_interaction(app_id, 3, guild_id, channel_id, user_id, data, locale=locale,
                                      message=message_payload, message_id=message_id)

    def send_modal_submit(self, opened_by: Interaction, values: Mapping[str, str], *,
                          locale: str = "en-US") -> Interaction:
        """The member fills in and submits the modal the bot answered `opened_by` with (response type 9):
        `values` by text input custom_id. As Discord's client does, a required input left empty or a value
        past an input's max_length is refused here (ValueError), never sent. Inputs not in `values` keep the
        value the bot filled in."""
        with self.store.lock:
            modal = opened_by.modal
            if modal is None:
                raise ValueError(f"interaction {opened_by.id} was not answered with a modal")
            unknown = set(values) - {i["custom_id"] for i in _modal_inputs(modal)}
            if unknown:
                raise ValueError(f"the modal has no input {sorted(unknown)}")
            rows = []
            for spec in _modal_inputs(modal):
                value = values.get(spec["custom_id"], spec.get("value") or "")
                if spec.get("required", True) and not value:
                    raise ValueError(f"input {spec['custom_id']!r} is required")
                if len(value) > spec.get("max_length", 4000) or len(value) < spec.get("min_length", 0):
                    raise ValueError(f"input {spec['custom_id']!r}: length outside "
                                     f"[{spec.get('min_length', 0)}, {spec.get('max_length', 4000)}]")
                rows.append({"type": 1, "components": [{"type": 4, "custom_id": spec["custom_id"], "value": value}]})
            data = {"custom_id": modal["custom_id"], "components": rows}
            message = None
            if opened_by.message_id is not None and opened_by.message_id in self.store.messages:
                message = self.store.message_payload(self.store.messages[opened_by.message_id])
        return self._send_interaction(opened_by.app_id, 5, opened_by.guild_id, opened_by.channel_id,
                                      opened_by.user_id, data, locale=locale, message=message,
                                      message_id=opened_by.message_id)

    def _command_for(self, app_id: int, guild_id: int, name: str) -> dict:
        cmd = self.store.find_command(app_id, guild_id, name)
        if cmd is None:
            raise LookupError(f"application {app_id} has not synced a command named {name!r} "
                              f"(globally or to guild {guild_id})")
        return cmd

    def _send_interaction(self, app_id: int, itype: int, guild_id: int, channel_id: int, user_id: int,
                          data: dict, *, locale: str, message: dict | None = None,
                          message_id: int | None = None) -> Interaction:
        if locale not in LOCALES:
            raise ValueError(f"{locale!r} is not a Discord locale")
        st = self.store
        with st.lock:
            guild = st.guilds[guild_id]
            if user_id not in guild.members:
                raise LookupError(f"user {user_id} is not a member of guild {guild_id}")
            ch = st.channels[channel_id]
            if ch.guild_id != guild_id:
                raise LookupError(f"channel {channel_id} is not in guild {guild_id}")
            app = st.apps[app_id]
            iid = st.snowflakes.next()
            token = make_interaction_token(iid)
            payload: dict[str, Any] = {
                "id": str(iid),
                "application_id": str(app_id),
                "type": itype,
                "data": data,
                "guild_id": str(guild_id),
                "guild": {"id": str(guild_id), "locale": guild.preferred_locale, "features": []},
                "channel_id": str(channel_id),
                "channel": st.channel_payload(ch, with_permissions_for=user_id),
                "member": st.member_payload(guild_id, user_id, with_permissions=True),
                "token": token,
                "version": 1,
                "app_permissions": str(st.member_permissions(guild_id, app.user_id)),
                "locale": locale,
                "guild_locale": guild.preferred_locale,
                "entitlements": [],
                "entitlement_sku_ids": [],
                "authorizing_integration_owners": {"0": str(guild_id)},
                "context": 0,
                "attachment_size_limit": 10 * 1024 * 1024,
            }
            if message is not None:
                payload["message"] = message
            inter = Interaction(st, iid, token, app_id, itype, guild_id, channel_id, user_id, payload,
                                message_id=message_id)
            st.interactions[iid] = inter
            st.interactions_by_token[token] = inter

        def sent() -> None:
            inter.dispatched_at = time.monotonic()

        delivered = self._call(self.hub.dispatch(app_id, "INTERACTION_CREATE", payload, guild_id=guild_id,
                                                 on_sent=sent))
        if not delivered:
            raise RuntimeError(f"application {app_id} has no gateway session to receive the interaction "
                               f"(call wait_for_gateway first)")
        return inter

    # ---- option typing ---------------------------------------------------------------------------------

    def _build_options(self, cmd: dict, values: dict, subcommand: str | None, guild_id: int, channel_id: int,
                       user_id: int, focused: str | None) -> tuple[list[dict], dict]:
        specs = cmd.get("options") or []
        path = subcommand.split() if subcommand else []
        wrappers: list[tuple[int, str]] = []
        for part in path:
            spec = next((o for o in specs if o.get("name") == part and o.get("type") in (SUB_COMMAND,
                                                                                        SUB_COMMAND_GROUP)), None)
            if spec is None:
                raise LookupError(f"/{cmd['name']} has no subcommand {part!r}")
            wrappers.append((spec["type"], part))
            specs = spec.get("options") or []
        if any(o.get("type") in (SUB_COMMAND, SUB_COMMAND_GROUP) for o in specs):
            raise ValueError(f"/{cmd['name']} {subcommand or ''} needs a subcommand")
        resolved: dict[str, dict] = {}
        opts: list[dict] = []
        by_name = {o["name"]: o for o in specs}
        for key in values:
            if key not in by_name:
                raise ValueError(f"/{cmd['name']} has no option {key!r} (has {sorted(by_name)})")
        for spec in specs:
            oname = spec["name"]
            if oname not in values:
                if spec.get("required") and focused is None:
                    raise ValueError(f"option {oname!r} of /{cmd['name']} is required")
                continue
            if focused == oname:
                opts.append({"name": oname, "type": spec["type"], "value": str(values[oname]), "focused": True})
                continue
            value = self._typed_value(spec, values[oname], guild_id, channel_id, user_id, resolved)
            opts.append({"name": oname, "type": spec["type"], "value": value})
        for wtype, wname in reversed(wrappers):
            opts = [{"name": wname, "type": wtype, "options": opts}]
        return opts, resolved

    def _typed_value(self, spec: dict, value: Any, guild_id: int, channel_id: int, user_id: int,
                     resolved: dict) -> Any:
        st = self.store
        t, oname = spec["type"], spec["name"]
        guild = st.guilds[guild_id]

        def bad(why: str) -> ValueError:
            return ValueError(f"option {oname!r}: {why} (got {value!r})")

        if t == STRING:
            if not isinstance(value, str):
                raise bad("expected a string")
            if not (spec.get("min_length", 0) <= len(value) <= spec.get("max_length", 6000)):
                raise bad(f"length must be within [{spec.get('min_length', 0)}, {spec.get('max_length', 6000)}]")
        elif t == INTEGER:
            if isinstance(value, bool) or not isinstance(value, int) or abs(value) > MAX_SAFE_INTEGER:
                raise bad("expected an integer")
        elif t == NUMBER:
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise bad("expected a number")
            value = float(value)
        elif t == BOOLEAN:
            if not isinstance(value, bool):
                raise bad("expected a bool")
        elif t in (USER, MENTIONABLE) and int(value) in st.users:
            uid = int(value)
            resolved.setdefault("users", {})[str(uid)] = st.user_payload(uid)
            if uid in guild.members:
                member = st.member_payload(guild_id, uid, with_permissions=True)
                member.pop("user")
                resolved.setdefault("members", {})[str(uid)] = member
            return str(uid)
        elif t in (ROLE, MENTIONABLE):
            rid = int(value)
            if rid not in guild.roles:
                raise bad("no such role in the guild")
            resolved.setdefault("roles", {})[str(rid)] = st.role_payload(guild.roles[rid])
            return str(rid)
        elif t == USER:
            raise bad("no such user")
        elif t == CHANNEL:
            cid = int(value)
            if cid not in guild.channels:
                raise bad("no such channel in the guild")
            resolved.setdefault("channels", {})[str(cid)] = st.channel_payload(guild.channels[cid],
                                                                                with_permissions_for=user_id)
            return str(cid)
        elif t == ATTACHMENT:
            if not (isinstance(value, tuple) and len(value) in (2, 3)):
                raise bad("expected (filename, bytes[, content_type])")
            fname, blob = value[0], value[1]
            aid = st.snowflakes.next()
            att = Attachment(aid, fname, bytes(blob), value[2] if len(value) == 3 else guess_content_type(fname, None),
                             f"{self.base_url}/attachments/{channel_id}/{aid}/{fname}")
            st.loose_attachments[aid] = att
            resolved.setdefault("attachments", {})[str(aid)] = att.to_payload() | {"ephemeral": True}
            return str(aid)
        else:
            raise bad(f"unsupported option type {t}")
        if t in (INTEGER, NUMBER):
            lo, hi = spec.get("min_value"), spec.get("max_value")
            if (lo is not None and value < lo) or (hi is not None and value > hi):
                raise bad(f"must be within [{lo}, {hi}]")
        choices = spec.get("choices")
        if choices and value not in [c["value"] for c in choices]:
            raise bad(f"must be one of {[c['value'] for c in choices]}")
        return value


def _modal_inputs(modal: dict) -> list[dict]:
    """A modal's text inputs, whether laid out in action rows (type 1) or in labels (type 18)."""
    out = []
    for top in modal.get("components") or []:
        inner = top.get("components") or ([top["component"]] if "component" in top else [])
        out.extend(c for c in inner if c.get("type") == 4)
    return out
