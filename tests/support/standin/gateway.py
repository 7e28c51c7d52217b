"""The stand-in's gateway: a JSON websocket speaking Discord gateway v10 to the unmodified discord.py client.

What discord.py 2.7.1 does and this answers:
  * It connects to ``DiscordWebSocket.DEFAULT_GATEWAY`` with ``?v=10&encoding=json&compress=zlib-stream``
    (``zstd-stream`` instead when ``zstandard`` or the 3.14 ``compression.zstd`` module is importable).
    With transport compression every server frame is a *binary* frame; for zlib-stream all frames of one
    connection come from one shared ``zlib.compressobj`` and each ends with a Z_SYNC_FLUSH (``00 00 ff ff``),
    which is how the client knows a message is complete.  Text frames are always accepted by the client too
    (it only decompresses ``bytes``), so an unknown compression falls back to plain text frames.
  * HELLO -> the client heartbeats at once and then every ``heartbeat_interval`` ms; we ACK (op 11).
  * IDENTIFY -> READY (seq 1: user, application {id, flags}, guilds as unavailable stubs, session_id,
    resume_gateway_url) then one GUILD_CREATE per guild.  discord.py fires on_ready ``guild_ready_timeout``
    seconds (2 s default) after the last GUILD_CREATE.
  * RESUME with a known session -> the missed dispatches are replayed and RESUMED is sent; an unknown session
    -> INVALID_SESSION(false), after which discord.py re-IDENTIFYs (on the gateway URL it last connected to,
    which may be the resume URL: IDENTIFY and RESUME are accepted on both paths, as on Discord).
  * REQUEST_GUILD_MEMBERS (op 8) -> one GUILD_MEMBERS_CHUNK with every member.
Dispatches to a disconnected but resumable session are buffered and replayed on RESUME, as Discord does.
"""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
import time
import zlib
from collections import deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from aiohttp import WSMsgType, web

if TYPE_CHECKING:
    from .store import App, Store

log = logging.getLogger("standin.gateway")

OP_DISPATCH, OP_HEARTBEAT, OP_IDENTIFY, OP_PRESENCE, OP_VOICE = 0, 1, 2, 3, 4
OP_RESUME, OP_RECONNECT, OP_REQUEST_MEMBERS, OP_INVALID_SESSION, OP_HELLO, OP_HEARTBEAT_ACK = 6, 7, 8, 9, 10, 11

INTENT_GUILD_MEMBERS = 1 << 1
INTENT_GUILD_PRESENCES = 1 << 8
INTENT_GUILD_MESSAGES = 1 << 9
INTENT_MESSAGE_CONTENT = 1 << 15
PRIVILEGED_INTENTS = INTENT_GUILD_MEMBERS | INTENT_GUILD_PRESENCES | INTENT_MESSAGE_CONTENT

RESUME_WINDOW_S = 120.0


class _Encoder:
    """Frames for one connection, per its ``compress`` query parameter."""

    def __init__(self, compress: str | None) -> None:
        self.kind = "text"
        self._zlib = None
        self._zstd = None
        if compress == "zlib-stream":
            self.kind = "zlib-stream"
            self._zlib = zlib.compressobj()
        elif compress == "zstd-stream":
            try:
                import zstandard  # type: ignore

                self._zstd = ("zstandard", zstandard.ZstdCompressor().compressobj(), zstandard)
                self.kind = "zstd-stream"
            except ImportError:
                try:
                    from compression import zstd  # type: ignore

                    self._zstd = ("stdlib", zstd.ZstdCompressor(), zstd)
                    self.kind = "zstd-stream"
                except ImportError:
                    log.warning("client asked for zstd-stream, not available here: sending text frames")

    def encode(self, text: str) -> bytes | str:
        raw = text.encode()
        if self._zlib is not None:
            return self._zlib.compress(raw) + self._zlib.flush(zlib.Z_SYNC_FLUSH)
        if self._zstd is not None:
            src, obj, mod = self._zstd
            if src == "zstandard":
                return obj.compress(raw) + obj.flush(mod.COMPRESSOBJ_FLUSH_BLOCK)
            return obj.compress(raw, mode=obj.FLUSH_BLOCK)
        return text


@dataclass
class Connection:
    ws: web.WebSocketResponse
    encoder: _Encoder
    path: str
    send_lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    opened_at: float = field(default_factory=time.monotonic)

    async def send(self, payload: dict) -> None:
        frame = json.dumps(payload, separators=(",", ":"))
        async with self.send_lock:
            data = self.encoder.encode(frame)
            if isinstance(data, bytes):
                await self.ws.send_bytes(data)
            else:
                await self.ws.send_str(data)


@dataclass
class Session:
    session_id: str
    app_id: int
    shard: tuple[int, int]
    intents: int
    seq: int = 0
    conn: Connection | None = None
    buffer: deque = field(default_factory=lambda: deque(maxlen=2000))  # (seq, payload)
    disconnected_at: float | None = None
    invalidated: bool = False
    identified_at: float = field(default_factory=time.monotonic)
    resumes: int = 0

    def resumable(self) -> bool:
        if self.invalidated:
            return False
        if self.conn is not None:
            return True
        return self.disconnected_at is not None and time.monotonic() - self.disconnected_at < RESUME_WINDOW_S

    def handles_guild(self, guild_id: int) -> bool:
        shard_id, count = self.shard
        return (guild_id >> 22) % count == shard_id


class GatewayHub:
    def __init__(self, store: Store, heartbeat_interval_ms: int = 41250) -> None:
        self.store = store
        self.heartbeat_interval_ms = heartbeat_interval_ms
        self.sessions: dict[str, Session] = {}
        self.url = ""  # ws://127.0.0.1:PORT/gateway, set by the server
        self.resume_url = ""
        self.events: list[tuple[float, str, str, Any]] = []  # (time, direction, what, detail) for debugging
        self.identify_count = 0

    # ---- public helpers used by the REST side and the control API (server loop only) -----------------

    def app_sessions(self, app_id: int) -> list[Session]:
        return [s for s in self.sessions.values() if s.app_id == app_id and s.resumable()]

    async def dispatch(self, app_id: int, event: str, data: dict, guild_id: int | None = None,
                       on_sent=None) -> int:
        """Send (or buffer for a resumable session) one dispatch to every live session of `app_id` whose shard
        owns `guild_id`. Returns how many sessions got it (sent or buffered)."""
        delivered = 0
        for s in self.app_sessions(app_id):
            if guild_id is not None and not s.handles_guild(guild_id):
                continue
            await self._dispatch_to(s, event, data)
            delivered += 1
        if on_sent is not None and delivered:
            on_sent()
        return delivered

    async def broadcast(self, event: str, data: dict, guild_id: int, intent: int, *,
                        content_for: int | None = None) -> None:
        """Send to every app with `intent`; without MESSAGE_CONTENT the content fields are blanked (except for
        the app in `content_for`, the author)."""
        for s in list(self.sessions.values()):
            if not s.resumable() or not (s.intents & intent) or not s.handles_guild(guild_id):
                continue
            d = data
            if "content" in data and not (s.intents & INTENT_MESSAGE_CONTENT) and s.app_id != content_for:
                d = dict(data, content="", embeds=[], attachments=[], components=[])
            await self._dispatch_to(s, event, d)

    async def close_sessions(self, app_id: int, code: int = 4000) -> int:
        n = 0
        for s in self.app_sessions(app_id):
            if s.conn is not None:
                await s.conn.ws.close(code=code, message=b"stand-in closed the connection")
                n += 1
        return n

    async def send_op(self, app_id: int, op: int, d: Any = None) -> int:
        n = 0
        for s in self.app_sessions(app_id):
            if s.conn is not None:
                await s.conn.send({"op": op, "d": d, "s": None, "t": None})
                n += 1
            if op == OP_INVALID_SESSION and not d:
                s.invalidated = True
        return n

    # ---- internals -------------------------------------------------------------------------------------

    async def _dispatch_to(self, s: Session, event: str, data: dict) -> None:
        s.seq += 1
        payload = {"op": OP_DISPATCH, "t": event, "s": s.seq, "d": data}
        s.buffer.append((s.seq, payload))
        if s.conn is not None:
            try:
                await s.conn.send(payload)
            except (ConnectionResetError, RuntimeError) as exc:  # closing socket: kept in the buffer
                log.info("dispatch %s to %s failed (%s); buffered for RESUME", event, s.session_id, exc)

    async def handle(self, request: web.Request) -> web.StreamResponse:
        ws = web.WebSocketResponse(autoping=True, max_msg_size=0)
        await ws.prepare(request)
        conn = Connection(ws=ws, encoder=_Encoder(request.query.get("compress")), path=request.path)
        self.events.append((time.time(), "open", request.path_qs, conn.encoder.kind))
        session: Session | None = None
        await conn.send({"op": OP_HELLO, "d": {"heartbeat_interval": self.heartbeat_interval_ms},
                         "s": None, "t": None})
        try:
            async for msg in ws:
                if msg.type == WSMsgType.TEXT:
                    payload = json.loads(msg.data)
                elif msg.type == WSMsgType.BINARY:
                    payload = json.loads(msg.data.decode())
                else:
                    break
                op = payload.get("op")
                d = payload.get("d")
                if op == OP_HEARTBEAT:
                    await conn.send({"op": OP_HEARTBEAT_ACK, "d": None, "s": None, "t": None})
                elif op == OP_IDENTIFY:
                    if session is not None:
                        await ws.close(code=4005, message=b"Already authenticated.")
                        break
                    session = await self._identify(conn, d or {})
                    if session is None:
                        break
                elif op == OP_RESUME:
                    session = await self._resume(conn, d or {})
                elif op == OP_REQUEST_MEMBERS:
                    if session is None:
                        await ws.close(code=4003, message=b"Not authenticated.")
                        break
                    await self._members_chunk(session, d or {})
                elif op in (OP_PRESENCE, OP_VOICE):
                    if session is None:
                        await ws.close(code=4003, message=b"Not authenticated.")
                        break
                else:
                    await ws.close(code=4001, message=b"Unknown opcode.")
                    break
        finally:
            self.events.append((time.time(), "close", request.path_qs, ws.close_code))
            if session is not None and session.conn is conn:
                session.conn = None
                session.disconnected_at = time.monotonic()
        return ws

    async def _identify(self, conn: Connection, d: dict) -> Session | None:
        token = str(d.get("token", ""))
        if token.startswith("Bot "):
            token = token[4:]
        with self.store.lock:
            app: App | None = self.store.apps_by_token.get(token)
        if app is None:
            await conn.ws.close(code=4004, message=b"Authentication failed.")
            return None
        intents = d.get("intents")
        if intents is None:
            await conn.ws.close(code=4013, message=b"Invalid intent(s).")
            return None
        if (intents & PRIVILEGED_INTENTS) and not app.privileged_intents:
            await conn.ws.close(code=4014, message=b"Disallowed intent(s).")
            return None
        shard = tuple(d.get("shard") or (0, 1))
        if len(shard) != 2 or not (0 <= shard[0] < shard[1]):
            await conn.ws.close(code=4010, message=b"Invalid shard.")
            return None
        self.identify_count += 1
        session = Session(session_id=secrets.token_hex(16), app_id=app.id, shard=(shard[0], shard[1]),
                          intents=intents, conn=conn)
        self.sessions[session.session_id] = session
        with self.store.lock:
            guilds = [g for g in self.store.guilds.values() if session.handles_guild(g.id)]
            ready = {
                "v": 10,
                "user": self.store.me_payload(app),
                "guilds": [{"id": str(g.id), "unavailable": True} for g in guilds],
                "session_id": session.session_id,
                "resume_gateway_url": self.resume_url,
                "session_type": "normal",
                "application": {"id": str(app.id), "flags": app.flags},
                "private_channels": [],
                "relationships": [],
                "presences": [],
                "guild_join_requests": [],
                "user_settings": {},
                "geo_ordered_rtc_regions": ["local"],
            }
            if d.get("shard") is not None:
                ready["shard"] = list(shard)
            guild_payloads = [self.store.guild_payload(g, for_app=app) for g in guilds]
        self.events.append((time.time(), "identify", str(app.id), session.session_id))
        await self._dispatch_to(session, "READY", ready)
        for gp in guild_payloads:
            await self._dispatch_to(session, "GUILD_CREATE", gp)
        self.store.notify()
        return session

    async def _resume(self, conn: Connection, d: dict) -> Session | None:
        sid = d.get("session_id")
        token = str(d.get("token", ""))
        seq = d.get("seq") or 0
        session = self.sessions.get(sid) if isinstance(sid, str) else None
        with self.store.lock:
            app = self.store.apps_by_token.get(token[4:] if token.startswith("Bot ") else token)
        if session is None or app is None or app.id != session.app_id or not session.resumable():
            self.events.append((time.time(), "resume-refused", str(sid), seq))
            await conn.send({"op": OP_INVALID_SESSION, "d": False, "s": None, "t": None})
            return None
        if session.conn is not None and session.conn is not conn:
            old = session.conn
            session.conn = None
            await old.ws.close(code=4000, message=b"Session resumed elsewhere.")
        session.conn = conn
        session.disconnected_at = None
        session.resumes += 1
        missed = [p for s, p in session.buffer if s > seq]
        self.events.append((time.time(), "resume", sid, len(missed)))
        for p in missed:
            await conn.send(p)
        await self._dispatch_to(session, "RESUMED", {})
        self.store.notify()
        return session

    async def _members_chunk(self, session: Session, d: dict) -> None:
        guild_ids = d.get("guild_id")
        if not isinstance(guild_ids, list):
            guild_ids = [guild_ids]
        for gid in guild_ids:
            with self.store.lock:
                guild = self.store.guilds.get(int(gid))
                if guild is None:
                    continue
                user_ids = d.get("user_ids")
                members = [self.store.member_payload(guild.id, uid) for uid in guild.members
                           if not user_ids or str(uid) in {str(x) for x in user_ids}]
            chunk = {"guild_id": str(gid), "members": members, "chunk_index": 0, "chunk_count": 1}
            if d.get("nonce") is not None:
                chunk["nonce"] = d["nonce"]
            await self._dispatch_to(session, "GUILD_MEMBERS_CHUNK", chunk)
