"""The stand-in's REST API (v10, JSON) for the routes a discord.py bot uses, plus fault injection.

Things discord.py 2.7.1 relies on that this module gets right on purpose:
  * It parses a body as JSON only when ``Content-Type`` is exactly ``application/json``
    (``http.json_or_text``); aiohttp's ``web.json_response`` appends ``; charset=utf-8``, so every JSON answer
    here is built by hand.
  * A 429 is retried only if it carries a ``Via`` header and (bot routes) a JSON body with ``retry_after``;
    otherwise discord.py takes it for a Cloudflare ban and raises at once.  Injected 429s therefore carry
    ``Via: 1.1 google``, ``Retry-After``, ``X-RateLimit-*`` and ``{"message", "retry_after", "global"}``.
  * Bot-token routes (``HTTPClient.request``) retry 500/502/504/524 up to 5 tries (sleeping 1, 3, 5, 7 s) but
    raise ``DiscordServerError`` at once on 503; webhook/interaction routes (``AsyncWebhookAdapter.request``)
    retry every status >= 500, also 5 tries.  Neither retries a dropped connection
    (``aiohttp.ServerDisconnectedError`` is not an ``OSError``) -- ``drop_response`` shows that.
  * Interaction callbacks are POSTed with ``?with_response=1`` and expect an ``InteractionCallback`` body
    ({"interaction": {...}, "resource": {...}}); followups use ``?wait=1`` and expect the message back.
  * Interaction and webhook routes carry no Authorization header: the token in the path is the credential.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import math
import re
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NamedTuple

from aiohttp import web

from .store import (
    ATTACHMENT_SIZE_LIMIT,
    CHANNEL_DM,
    FLAG_EPHEMERAL,
    FLAG_LOADING,
    FLAG_SUPPRESS_EMBEDS,
    FLAG_SUPPRESS_NOTIFICATIONS,
    App,
    Attachment,
    CallbackAttempt,
    Channel,
    Interaction,
    Message,
    Store,
    guess_content_type,
)

if TYPE_CHECKING:
    from .gateway import GatewayHub

log = logging.getLogger("standin.rest")

API_PREFIX = "/api/v10"
NONCE_WINDOW_S = 300.0
INTENT_GUILD_MESSAGES = 1 << 9


class RequestRecord(NamedTuple):
    time: float  # time.time() when the request arrived
    method: str
    path: str  # relative to the API base, e.g. "/channels/123/messages" (no query string)
    status: int  # 0: the stand-in performed the action but dropped the connection instead of answering


class ApiError(Exception):
    def __init__(self, status: int, code: int, message: str, errors: dict | None = None):
        super().__init__(message)
        self.status, self.code, self.message, self.errors = status, code, message, errors


def bucket_hash(template: str) -> str:
    return hashlib.md5(template.encode()).hexdigest()


def json_response(data: Any, status: int = 200, headers: dict | None = None) -> web.Response:
    h = {"Content-Type": "application/json"}  # exactly this: see module docstring
    if headers:
        h.update(headers)
    return web.Response(body=json.dumps(data).encode(), status=status, headers=h)


def ok_ratelimit_headers(template: str) -> dict:
    now = time.time()
    return {
        "X-RateLimit-Limit": "50",
        "X-RateLimit-Remaining": "49",
        "X-RateLimit-Reset": f"{now + 1:.3f}",
        "X-RateLimit-Reset-After": "1.000",
        "X-RateLimit-Bucket": bucket_hash(template),
    }


def error_response(err: ApiError) -> web.Response:
    body: dict[str, Any] = {"message": err.message, "code": err.code}
    if err.errors is not None:
        body["errors"] = err.errors
    return json_response(body, err.status)


# Discord's locales (https://discord.com/developers/docs/reference#locales): the keys a localizations dict takes.
LOCALES = frozenset({"id", "da", "de", "en-GB", "en-US", "es-ES", "es-419", "fr", "hr", "it", "lt", "hu", "nl", "no",
                     "pl", "pt-BR", "ro", "fi", "sv-SE", "vi", "tr", "cs", "el", "bg", "ru", "uk", "hi", "th",
                     "zh-CN", "ja", "zh-TW", "ko"})
# A CHAT_INPUT command's or option's name, in any language: Discord's documented pattern, lowercase where the
# script has case.
NAME_PATTERN = re.compile(r"^[-_'\w\u0900-\u097F\u0E00-\u0E7F]{1,32}$")


def check_localized(field: str, spec: dict, *, names: bool, chat_input: bool) -> None:
    """Discord's checks of a command's, option's or choice's `name_localizations` and
    `description_localizations`: known locale keys, names of 1-32 characters (valid command names, lowercase,
    for a chat-input command or option), descriptions of 1-100."""
    for kind, limit in (("name_localizations", 32 if names else 100), ("description_localizations", 100)):
        found = spec.get(kind)
        if found is None:
            continue
        if not isinstance(found, dict):
            raise form_error(f"{field}.{kind}", "DICT_TYPE_CONVERT", "Only dictionaries may be used in a DictType")
        for loc, value in found.items():
            where = f"{field}.{kind}.{loc}"
            if loc not in LOCALES:
                raise form_error(where, "LOCALE_INVALID", f"Invalid locale {loc!r}")
            if not isinstance(value, str) or not (1 <= len(value) <= limit):
                raise form_error(where, "BASE_TYPE_BAD_LENGTH", f"Must be between 1 and {limit} in length.")
            if kind == "name_localizations" and names and chat_input and (
                    value != value.lower() or not NAME_PATTERN.match(value)):
                raise form_error(where, "APPLICATION_COMMAND_INVALID_NAME", "Command name is invalid")


def check_options(field: str, options: list, *, chat_input: bool) -> None:
    for i, opt in enumerate(options or []):
        where = f"{field}.{i}"
        check_localized(where, opt, names=True, chat_input=chat_input)
        if not (1 <= len(opt.get("description") or "") <= 100):
            raise form_error(f"{where}.description", "BASE_TYPE_BAD_LENGTH", "Must be between 1 and 100 in length.")
        for j, choice in enumerate(opt.get("choices") or []):
            if not (1 <= len(str(choice.get("name") or "")) <= 100):
                raise form_error(f"{where}.choices.{j}.name", "BASE_TYPE_BAD_LENGTH",
                                 "Must be between 1 and 100 in length.")
            check_localized(f"{where}.choices.{j}", choice, names=False, chat_input=False)
        check_options(f"{where}.options", opt.get("options") or [], chat_input=chat_input)


def form_error(field: str, code: str, message: str) -> ApiError:
    return ApiError(400, 50035, "Invalid Form Body", {field: {"_errors": [{"code": code, "message": message}]}})


# ------------------------------------------------------------------------------------------------- faults


@dataclass
class _Fault:
    pattern: re.Pattern
    status: int
    remaining: int
    retry_after: float = 1.0
    is_global: bool = False
    drop: bool = False


class Faults:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._faults: list[_Fault] = []

    def add(self, fault: _Fault) -> None:
        with self._lock:
            self._faults.append(fault)

    def clear(self) -> None:
        with self._lock:
            self._faults.clear()

    def take(self, key: str, *, drop: bool) -> _Fault | None:
        with self._lock:
            for f in self._faults:
                if f.drop == drop and f.remaining > 0 and f.pattern.search(key):
                    f.remaining -= 1
                    return f
        return None

    def pending(self) -> list[tuple[str, int, int]]:
        with self._lock:
            return [(f.pattern.pattern, f.status, f.remaining) for f in self._faults if f.remaining > 0]


def fault_response(f: _Fault, template: str) -> web.Response:
    if f.status == 429:
        now = time.time()
        headers = {
            "Via": "1.1 google",
            "Retry-After": str(max(1, math.ceil(f.retry_after))),
            "X-RateLimit-Limit": "5",
            "X-RateLimit-Remaining": "0",
            "X-RateLimit-Reset": f"{now + f.retry_after:.3f}",
            "X-RateLimit-Reset-After": f"{f.retry_after:.3f}",
            "X-RateLimit-Bucket": bucket_hash(template),
            "X-RateLimit-Scope": "global" if f.is_global else "user",
        }
        if f.is_global:
            headers["X-RateLimit-Global"] = "true"
        body = {"message": "You are being rate limited.", "retry_after": f.retry_after, "global": f.is_global}
        if f.is_global:
            body["code"] = 0
        return json_response(body, 429, headers)
    if f.status == 500:
        return json_response({"message": "500: Internal Server Error", "code": 0}, 500)
    # 502/503/504 come from the edge as HTML, which discord.py keeps as text
    reason = {502: "Bad Gateway", 503: "Service Unavailable", 504: "Gateway Timeout"}.get(f.status, "Error")
    html = f"<html><head><title>{f.status} {reason}</title></head><body><h1>{reason}</h1></body></html>"
    return web.Response(text=html, status=f.status, content_type="text/html")


# ----------------------------------------------------------------------------------------------- requests


class Body(NamedTuple):
    payload: dict | None
    files: dict[int, tuple[str, bytes, str | None]]  # files[n] index -> (filename, bytes, sent content type)


async def read_body(request: web.Request) -> Body:
    ctype = request.headers.get("Content-Type", "")
    if ctype.startswith("multipart/"):
        payload = None
        files: dict[int, tuple[str, bytes, str | None]] = {}
        reader = await request.multipart()
        auto = 0
        async for part in reader:
            name = part.name or ""
            if name == "payload_json":
                payload = json.loads(await part.text())
                continue
            if part.filename is None:
                continue
            data = bytes(await part.read(decode=False))
            m = re.fullmatch(r"files\[(\d+)\]", name)
            index = int(m.group(1)) if m else 1000 + auto
            auto += 1
            files[index] = (part.filename, data, part.headers.get("Content-Type"))
        return Body(payload, files)
    raw = await request.read()
    if not raw:
        return Body(None, {})
    if "json" not in ctype:
        raise ApiError(400, 50109, "The request body contains invalid JSON.")
    try:
        data = json.loads(raw)
    except ValueError as exc:
        raise ApiError(400, 50109, "The request body contains invalid JSON.") from exc
    return Body(data, {})


Handler = Callable[..., Awaitable[web.StreamResponse]]


@dataclass
class Route:
    method: str
    template: str
    regex: re.Pattern
    handler: Handler
    auth: bool


class RestApi:
    def __init__(self, store: Store, hub: GatewayHub, faults: Faults) -> None:
        self.store = store
        self.hub = hub
        self.faults = faults
        self.cdn_requests: list[str] = []  # file names fetched from the "CDN", in order
        self.cdn_faults: list[tuple[re.Pattern, str, float]] = []  # (file name regex, "gone" | "slow", seconds)
        self.log: list[RequestRecord] = []
        self.unknown: list[str] = []
        self.routes: list[Route] = []
        self.base_url = ""  # http://127.0.0.1:PORT, set by the server
        r = self._route
        r("GET", "/gateway", self.get_gateway, auth=False)
        r("GET", "/gateway/bot", self.get_gateway_bot)
        r("GET", "/users/@me", self.get_me)
        r("GET", "/users/{user_id}", self.get_user)
        r("POST", "/users/@me/channels", self.create_dm)
        r("GET", "/applications/@me", self.get_application)
        r("GET", "/oauth2/applications/@me", self.get_application)
        r("GET", "/applications/{app_id}/commands", self.get_commands)
        r("PUT", "/applications/{app_id}/commands", self.put_commands)
        r("POST", "/applications/{app_id}/commands", self.post_command)
        r("DELETE", "/applications/{app_id}/commands/{command_id}", self.delete_command)
        r("GET", "/applications/{app_id}/guilds/{guild_id}/commands", self.get_commands)
        r("PUT", "/applications/{app_id}/guilds/{guild_id}/commands", self.put_commands)
        r("POST", "/applications/{app_id}/guilds/{guild_id}/commands", self.post_command)
        r("DELETE", "/applications/{app_id}/guilds/{guild_id}/commands/{command_id}", self.delete_command)
        r("POST", "/interactions/{interaction_id}/{token}/callback", self.interaction_callback, auth=False)
        r("POST", "/webhooks/{app_id}/{token}", self.webhook_execute, auth=False)
        r("GET", "/webhooks/{app_id}/{token}/messages/{message_id}", self.webhook_get, auth=False)
        r("PATCH", "/webhooks/{app_id}/{token}/messages/{message_id}", self.webhook_edit, auth=False)
        r("DELETE", "/webhooks/{app_id}/{token}/messages/{message_id}", self.webhook_delete, auth=False)
        r("GET", "/channels/{channel_id}", self.get_channel)
        r("GET", "/channels/{channel_id}/messages", self.list_messages)
        r("POST", "/channels/{channel_id}/messages", self.create_message)
        r("GET", "/channels/{channel_id}/messages/{message_id}", self.get_message)
        r("PATCH", "/channels/{channel_id}/messages/{message_id}", self.edit_message)
        r("DELETE", "/channels/{channel_id}/messages/{message_id}", self.delete_message)
        r("POST", "/channels/{channel_id}/typing", self.typing)
        r("GET", "/guilds/{guild_id}", self.get_guild)
        r("GET", "/guilds/{guild_id}/channels", self.get_guild_channels)
        r("GET", "/guilds/{guild_id}/roles", self.get_guild_roles)
        r("GET", "/guilds/{guild_id}/members/{user_id}", self.get_member)

    def _route(self, method: str, template: str, handler: Handler, auth: bool = True) -> None:
        pattern = re.sub(r"\{(\w+)\}", lambda m: f"(?P<{m.group(1)}>[^/]+)", template)
        self.routes.append(Route(method, template, re.compile(f"^{pattern}$"), handler, auth))

    # ---- the single aiohttp entry point ------------------------------------------------------------------

    async def handle(self, request: web.Request) -> web.StreamResponse:
        rel = request.path[len(API_PREFIX):] or "/"
        key = f"{request.method} {rel}"
        arrived = time.time()
        route, params = self._match(request.method, rel)
        template = route.template if route else rel
        fault = self.faults.take(key, drop=False)
        if fault is not None:
            resp = fault_response(fault, template)
            self._record(arrived, request.method, rel, resp.status)
            log.info("injected %s on %s", resp.status, key)
            return resp
        if route is None:
            self.unknown.append(key)
            log.warning("stand-in: unknown route %s", key)
            resp = json_response({"message": "404: Not Found", "code": 0}, 404)
            self._record(arrived, request.method, rel, 404)
            return resp
        try:
            app = self._auth(request) if route.auth else None
            resp = await route.handler(request, app=app, **params)
        except ApiError as err:
            resp = error_response(err)
        except Exception:  # a bug in the stand-in: say so loudly, answer 500 like Discord would
            log.exception("stand-in handler crashed on %s", key)
            resp = json_response({"message": "500: Internal Server Error", "code": 0}, 500)
        if resp.status < 400 and "X-RateLimit-Bucket" not in resp.headers:
            resp.headers.update(ok_ratelimit_headers(template))
        drop = self.faults.take(key, drop=True)
        if drop is not None:
            self._record(arrived, request.method, rel, 0)
            log.info("dropping the response to %s (status would have been %s)", key, resp.status)
            if request.transport is not None:
                request.transport.abort()
            return resp
        self._record(arrived, request.method, rel, resp.status)
        return resp

    def _match(self, method: str, rel: str) -> tuple[Route | None, dict]:
        for route in self.routes:
            if route.method != method:
                continue
            m = route.regex.match(rel)
            if m:
                return route, m.groupdict()
        return None, {}

    def _record(self, at: float, method: str, path: str, status: int) -> None:
        with self.store.lock:
            self.log.append(RequestRecord(at, method, path, status))
        self.store.notify()

    def _auth(self, request: web.Request) -> App:
        header = request.headers.get("Authorization", "")
        if not header.startswith("Bot "):
            raise ApiError(401, 0, "401: Unauthorized")
        with self.store.lock:
            app = self.store.apps_by_token.get(header[4:])
        if app is None:
            raise ApiError(401, 0, "401: Unauthorized")
        return app

    # ---- helpers ---------------------------------------------------------------------------------------

    def _channel(self, channel_id: str):
        ch = self.store.channels.get(_snowflake(channel_id))
        if ch is None:
            raise ApiError(404, 10003, "Unknown Channel")
        return ch

    def _check_app(self, app: App, app_id: str) -> None:
        if _snowflake(app_id) != app.id:
            raise ApiError(403, 20012, "You are not authorized to perform this action on this application")

    def _attachments_for(self, channel_id: int, payload: dict, files: dict,
                         existing: list[Attachment] | None) -> list[Attachment]:
        for _name, data, _ in files.values():
            if len(data) > ATTACHMENT_SIZE_LIMIT:
                raise ApiError(413, 40005, "Request entity too large")
        listed = payload.get("attachments")
        meta_by_index: dict[int, dict] = {}
        keep_ids: set[int] | None = None
        if listed is not None:
            keep_ids = set()
            for entry in listed:
                try:
                    aid = int(entry["id"])
                except (KeyError, TypeError, ValueError) as exc:
                    raise form_error("attachments", "BASE_TYPE_REQUIRED", "This field is required") from exc
                if aid in files:
                    meta_by_index[aid] = entry
                elif existing is not None and any(a.id == aid for a in existing):
                    keep_ids.add(aid)
                else:
                    raise form_error("attachments", "ATTACHMENT_NOT_FOUND", f"Unknown attachment {aid}")
        out: list[Attachment] = []
        if existing is not None:
            out.extend(a for a in existing if keep_ids is None or a.id in keep_ids)
        for index in sorted(files):
            fname, data, sent_ctype = files[index]
            meta = meta_by_index.get(index, {})
            fname = meta.get("filename") or fname
            aid = self.store.snowflakes.next()
            url = f"{self.base_url}/attachments/{channel_id}/{aid}/{fname}"
            out.append(Attachment(aid, fname, data, guess_content_type(fname, sent_ctype), url,
                                  sent_content_type=sent_ctype, description=meta.get("description")))
        return out

    def _validate(self, payload: dict, attachments: list[Attachment], *, creating: bool) -> None:
        content = payload.get("content")
        if content is not None and not isinstance(content, str):
            content = str(content)
        if content is not None and len(content) > 2000:
            raise form_error("content", "BASE_TYPE_MAX_LENGTH", "Must be 2000 or fewer in length.")
        embeds = payload.get("embeds") or []
        if len(embeds) > 10:
            raise form_error("embeds", "BASE_TYPE_MAX_LENGTH", "Must be 10 or fewer in length.")
        if creating and not (content or embeds or attachments or payload.get("components")
                             or payload.get("sticker_ids") or payload.get("poll")):
            raise ApiError(400, 50006, "Cannot send an empty message")
        nonce = payload.get("nonce")
        if nonce is not None and len(str(nonce)) > 25:
            raise form_error("nonce", "BASE_TYPE_MAX_LENGTH", "Must be 25 or fewer in length.")

    def _new_message(self, *, channel_id: int, app: App, payload: dict, attachments: list[Attachment],
                     interaction: Interaction | None = None, msg_type: int = 0, extra_flags: int = 0) -> Message:
        ch = self.store.channels[channel_id]
        flags = (int(payload.get("flags") or 0) & (FLAG_SUPPRESS_EMBEDS | FLAG_SUPPRESS_NOTIFICATIONS
                                                   | (FLAG_EPHEMERAL if interaction else 0))) | extra_flags
        ref = payload.get("message_reference")
        msg = Message(
            id=self.store.snowflakes.next(),
            channel_id=channel_id,
            guild_id=ch.guild_id,
            author_app_id=app.id,
            author_user_id=app.user_id,
            content=str(payload.get("content") or ""),
            embeds=list(payload.get("embeds") or []),
            components=list(payload.get("components") or []),
            flags=flags,
            allowed_mentions=payload.get("allowed_mentions"),
            attachments=attachments,
            interaction_id=interaction.id if interaction else None,
            webhook_id=app.id if interaction else None,
            type=19 if (ref and msg_type == 0) else msg_type,
            tts=bool(payload.get("tts")),
            nonce=payload.get("nonce"),
            message_reference=ref,
        )
        msg.contents.append(msg.content)
        self.store.messages[msg.id] = msg
        return msg

    def _apply_edit(self, msg: Message, payload: dict, files: dict, *, count_edit: bool = True) -> None:
        attachments = self._attachments_for(msg.channel_id, payload, files, msg.attachments)
        self._validate(payload, attachments, creating=False)
        self._apply_fields(msg, payload, attachments)
        if count_edit:
            msg.edits += 1
            msg.edit_times.append(time.time())

    def _apply_fields(self, msg: Message, payload: dict, attachments: list[Attachment]) -> None:
        if "content" in payload:
            msg.content = str(payload["content"] or "")
            msg.contents.append(msg.content)
        if "embeds" in payload:
            msg.embeds = list(payload["embeds"] or [])
        if "components" in payload:
            msg.components = list(payload["components"] or [])
        if "allowed_mentions" in payload:
            msg.allowed_mentions = payload["allowed_mentions"]
        if "flags" in payload and payload["flags"] is not None:
            msg.flags = (msg.flags & ~FLAG_SUPPRESS_EMBEDS) | (int(payload["flags"]) & FLAG_SUPPRESS_EMBEDS)
        msg.attachments = attachments

    async def _broadcast(self, event: str, msg: Message) -> None:
        if msg.ephemeral:
            return
        with self.store.lock:
            if event == "MESSAGE_DELETE":
                data = {"id": str(msg.id), "channel_id": str(msg.channel_id), "guild_id": str(msg.guild_id)}
            else:
                data = self.store.message_payload(msg)
                data["member"] = {k: v for k, v in self.store.member_payload(msg.guild_id, msg.author_user_id)
                                  .items() if k != "user"}
        await self.hub.broadcast(event, data, msg.guild_id, INTENT_GUILD_MESSAGES, content_for=msg.author_app_id)

    # ---- gateway, users, applications ------------------------------------------------------------------

    async def get_gateway(self, request, app):
        return json_response({"url": self.hub.url})

    async def get_gateway_bot(self, request, app):
        return json_response({
            "url": self.hub.url,
            "shards": 1,
            "session_start_limit": {"total": 1000, "remaining": 999, "reset_after": 14_400_000,
                                    "max_concurrency": 1},
        })

    async def get_me(self, request, app):
        with self.store.lock:
            return json_response(self.store.me_payload(app))

    async def get_user(self, request, app, user_id):
        with self.store.lock:
            uid = _snowflake(user_id)
            if uid not in self.store.users:
                raise ApiError(404, 10013, "Unknown User")
            return json_response(self.store.user_payload(uid))

    async def create_dm(self, request, app):
        body = await read_body(request)
        payload = body.payload or {}
        try:
            uid = int(payload.get("recipient_id"))
        except (TypeError, ValueError):
            raise ApiError(400, 50035, "Invalid Form Body") from None
        with self.store.lock:
            if uid not in self.store.users:
                raise ApiError(404, 10013, "Unknown User")
            ch = next((c for c in self.store.channels.values() if c.recipient_id == uid), None)
            if ch is None:
                ch = Channel(id=self.store.snowflakes.next(), guild_id=0, name="", position=0, type=CHANNEL_DM,
                             recipient_id=uid)
                self.store.channels[ch.id] = ch
            return json_response(self.store.channel_payload(ch))

    async def get_application(self, request, app):
        with self.store.lock:
            return json_response(self.store.app_payload(app))

    # ---- application commands ------------------------------------------------------------------------------

    def _scope(self, app: App, app_id: str, guild_id: str | None) -> int | None:
        self._check_app(app, app_id)
        if guild_id is None:
            return None
        gid = _snowflake(guild_id)
        if gid not in self.store.guilds:
            raise ApiError(403, 50001, "Missing Access")
        return gid

    def _command_record(self, app: App, scope: int | None, spec: dict, old: dict | None) -> dict:
        name = spec.get("name")
        ctype = int(spec.get("type") or 1)
        if not isinstance(name, str) or not (1 <= len(name) <= 32):
            raise form_error("name", "BASE_TYPE_BAD_LENGTH", "Must be between 1 and 32 in length.")
        if ctype == 1 and (name != name.lower() or not re.fullmatch(r"[-_'\w]{1,32}", name)):
            raise form_error("name", "APPLICATION_COMMAND_INVALID_NAME", "Command name is invalid")
        desc = spec.get("description", "")
        if ctype == 1 and not (1 <= len(desc or "") <= 100):
            raise form_error("description", "BASE_TYPE_BAD_LENGTH", "Must be between 1 and 100 in length.")
        options = spec.get("options") or []
        if len(options) > 25:
            raise form_error("options", "BASE_TYPE_MAX_LENGTH", "Must be 25 or fewer in length.")
        check_localized("", spec, names=True, chat_input=ctype == 1)
        check_options("options", options, chat_input=ctype == 1)
        names = [o.get("name") for o in options]
        if len(set(names)) != len(names):
            raise form_error("options", "APPLICATION_COMMAND_OPTIONS_NAME_ALREADY_EXISTS",
                             "Option names must be unique")
        rec = {
            "id": old["id"] if old else str(self.store.snowflakes.next()),
            "application_id": str(app.id),
            "version": str(self.store.snowflakes.next()),
            "type": ctype,
            "name": name,
            "description": desc or "",
            "options": options,
            "default_member_permissions": spec.get("default_member_permissions"),
            "nsfw": bool(spec.get("nsfw", False)),
            "name_localizations": spec.get("name_localizations"),
            "description_localizations": spec.get("description_localizations"),
            "contexts": spec.get("contexts"),
            "integration_types": spec.get("integration_types", [0]),
        }
        if scope is None:
            rec["dm_permission"] = spec.get("dm_permission", True)
        else:
            rec["guild_id"] = str(scope)
        return rec

    async def get_commands(self, request, app, app_id, guild_id=None):
        with self.store.lock:
            scope = self._scope(app, app_id, guild_id)
            return json_response(list(app.commands_by_scope.get(scope, {}).values()))

    async def put_commands(self, request, app, app_id, guild_id=None):
        body = await read_body(request)
        specs = body.payload
        if not isinstance(specs, list):
            raise form_error("_", "BASE_TYPE_ARRAY", "Must be an array.")
        if len(specs) > 100:
            raise form_error("_", "BASE_TYPE_MAX_LENGTH", "Must be 100 or fewer in length.")
        with self.store.lock:
            scope = self._scope(app, app_id, guild_id)
            current = app.commands_by_scope.get(scope, {})
            new: dict[str, dict] = {}
            for spec in specs:
                rec = self._command_record(app, scope, spec, current.get(spec.get("name")))
                if rec["name"] in new:
                    raise form_error("_", "APPLICATION_COMMANDS_DUPLICATE_NAME",
                                     f"Application command names must be unique ({rec['name']})")
                new[rec["name"]] = rec
            app.commands_by_scope[scope] = new
            out = list(new.values())
        self.store.notify()
        return json_response(out)

    async def post_command(self, request, app, app_id, guild_id=None):
        body = await read_body(request)
        with self.store.lock:
            scope = self._scope(app, app_id, guild_id)
            current = app.commands_by_scope.setdefault(scope, {})
            old = current.get((body.payload or {}).get("name"))
            rec = self._command_record(app, scope, body.payload or {}, old)
            current[rec["name"]] = rec
        self.store.notify()
        return json_response(rec, 200 if old else 201)

    async def delete_command(self, request, app, app_id, command_id, guild_id=None):
        with self.store.lock:
            scope = self._scope(app, app_id, guild_id)
            current = app.commands_by_scope.get(scope, {})
            for name, rec in list(current.items()):
                if rec["id"] == command_id:
                    del current[name]
                    return web.Response(status=204)
        raise ApiError(404, 10063, "Unknown application command")

    # ---- interactions -----------------------------------------------------------------------------------

    async def interaction_callback(self, request, app, interaction_id, token):
        arrived = time.monotonic()
        body = await read_body(request)
        payload = body.payload or {}
        with_response = request.query.get("with_response") in ("1", "true", "True")
        with self.store.lock:
            inter = self.store.interactions.get(_snowflake(interaction_id))
            if inter is None or inter.token != token:
                raise ApiError(404, 10062, "Unknown interaction")
            try:
                msg, event = self._accept_callback(inter, arrived, payload, body.files)
            except ApiError as err:
                inter.callbacks.append(CallbackAttempt(arrived, err.status, payload))
                self.store.notify()
                raise
            inter.callbacks.append(CallbackAttempt(arrived, 200 if with_response else 204, payload))
            result = self._callback_result(inter, msg) if with_response else None
        self.store.notify()
        if msg is not None and event:
            await self._broadcast(event, msg)
        return json_response(result) if with_response else web.Response(status=204)

    def _accept_callback(self, inter: Interaction, arrived: float, payload: dict,
                         files: dict) -> tuple[Message | None, str | None]:
        """Check one callback against Discord's rules and apply it; raises ApiError when Discord would refuse."""
        if inter.acked:
            raise ApiError(400, 40060, "Interaction has already been acknowledged.")
        latency = arrived - (inter.dispatched_at or arrived)
        if latency > inter.ack_deadline_s:
            inter.late = True
            inter.ack_latency_s = latency
            raise ApiError(404, 10062, "Unknown interaction")
        rtype = payload.get("type")
        allowed = {1: {1}, 2: {4, 5, 9}, 3: {4, 5, 6, 7, 9}, 4: {8}, 5: {4, 5, 6, 7}}.get(inter.type, set())
        if rtype not in allowed:
            raise form_error("type", "INTERACTION_RESPONSE_TYPE_INVALID",
                             f"Response type {rtype} is not valid for interaction type {inter.type}")
        data = payload.get("data") or {}
        msg: Message | None = None
        event: str | None = None
        if rtype == 4:
            attachments = self._attachments_for(inter.channel_id, data, files, None)
            self._validate(data, attachments, creating=True)
            msg = self._new_message(channel_id=inter.channel_id, app=self.store.apps[inter.app_id], payload=data,
                                    attachments=attachments, interaction=inter,
                                    msg_type=20 if inter.type == 2 else 0)
        elif rtype == 5:
            # A deferred response creates the "<bot> is thinking..." message (flag LOADING); the first followup
            # or an edit of @original fills it in.
            msg = self._new_message(channel_id=inter.channel_id, app=self.store.apps[inter.app_id], payload={},
                                    attachments=[], interaction=inter, msg_type=20 if inter.type == 2 else 0)
            msg.flags = FLAG_LOADING | (int(data.get("flags") or 0) & FLAG_EPHEMERAL)
        elif rtype == 7:
            msg = self.store.messages.get(inter.message_id) if inter.message_id else None
            if msg is None:
                raise ApiError(404, 10008, "Unknown Message")
            self._apply_edit(msg, data, files)
            event = "MESSAGE_UPDATE"
        elif rtype == 8:
            inter.autocomplete_choices = list(data.get("choices") or [])
        elif rtype == 9:
            inter.modal = data
        if rtype in (4, 5):
            inter.original_message_id = msg.id
            event = "MESSAGE_CREATE"
        elif rtype in (6, 7):
            inter.original_message_id = inter.message_id  # @original is now the component's message
        inter.acked = True
        inter.ack_latency_s = latency
        inter.response_type = rtype
        inter.response = payload
        return msg, event

    def _callback_result(self, inter: Interaction, msg: Message | None) -> dict:
        """The InteractionCallback body returned for ?with_response=1 (discord.py always asks for it)."""
        meta: dict[str, Any] = {
            "id": str(inter.id),
            "type": inter.type,
            "response_message_loading": inter.response_type == 5,
            "response_message_ephemeral": bool(msg.flags & FLAG_EPHEMERAL) if msg else False,
        }
        if inter.original_message_id is not None:
            meta["response_message_id"] = str(inter.original_message_id)
        result: dict[str, Any] = {"interaction": meta, "resource": {"type": inter.response_type}}
        if msg is not None:
            result["resource"]["message"] = self.store.message_payload(msg)
        return result

    def _webhook_interaction(self, app_id: str, token: str) -> Interaction:
        aid = _snowflake(app_id)
        if aid not in self.store.apps:
            raise ApiError(404, 10015, "Unknown Webhook")
        inter = self.store.interactions_by_token.get(token)
        if inter is None or inter.app_id != aid:
            raise ApiError(401, 50027, "Invalid Webhook Token")
        if inter.token_expired:
            raise ApiError(401, 50027, "Invalid Webhook Token")
        if not inter.acked:
            raise ApiError(404, 10015, "Unknown Webhook")
        return inter

    def _webhook_message(self, inter: Interaction, message_id: str) -> Message:
        mid = inter.original_message_id if message_id == "@original" else _snowflake(message_id)
        if mid is None or (mid != inter.original_message_id and mid not in inter.followup_ids):
            raise ApiError(404, 10008, "Unknown Message")
        msg = self.store.messages.get(mid)
        if msg is None or msg.deleted:
            raise ApiError(404, 10008, "Unknown Message")
        return msg

    async def webhook_execute(self, request, app, app_id, token):
        body = await read_body(request)
        payload = body.payload or {}
        wait = request.query.get("wait") in ("1", "true", "True")
        with self.store.lock:
            inter = self._webhook_interaction(app_id, token)
            orig = self.store.messages.get(inter.original_message_id) if inter.original_message_id else None
            if orig is not None and orig.loading and not orig.deleted:
                # The first followup after a deferred (type 5) response fills the "thinking" message; its
                # ephemerality is the defer's, whatever flags the followup carries.
                attachments = self._attachments_for(orig.channel_id, payload, body.files, None)
                self._validate(payload, attachments, creating=True)
                keep_ephemeral = orig.flags & FLAG_EPHEMERAL
                self._apply_fields(orig, payload, attachments)
                orig.allowed_mentions = payload.get("allowed_mentions")
                orig.flags = (orig.flags & ~(FLAG_LOADING | FLAG_EPHEMERAL)) | keep_ephemeral
                msg, event = orig, "MESSAGE_UPDATE"
            else:
                attachments = self._attachments_for(inter.channel_id, payload, body.files, None)
                self._validate(payload, attachments, creating=True)
                msg = self._new_message(channel_id=inter.channel_id, app=self.store.apps[inter.app_id],
                                        payload=payload, attachments=attachments, interaction=inter)
                inter.followup_ids.append(msg.id)
                event = "MESSAGE_CREATE"
            out = self.store.message_payload(msg)
        self.store.notify()
        await self._broadcast(event, msg)
        return json_response(out) if wait else web.Response(status=204)

    async def webhook_get(self, request, app, app_id, token, message_id):
        with self.store.lock:
            inter = self._webhook_interaction(app_id, token)
            return json_response(self.store.message_payload(self._webhook_message(inter, message_id)))

    async def webhook_edit(self, request, app, app_id, token, message_id):
        body = await read_body(request)
        with self.store.lock:
            inter = self._webhook_interaction(app_id, token)
            msg = self._webhook_message(inter, message_id)
            was_loading = msg.loading
            self._apply_edit(msg, body.payload or {}, body.files, count_edit=not was_loading)
            msg.flags &= ~FLAG_LOADING
            out = self.store.message_payload(msg)
        self.store.notify()
        await self._broadcast("MESSAGE_UPDATE", msg)
        return json_response(out)

    async def webhook_delete(self, request, app, app_id, token, message_id):
        with self.store.lock:
            inter = self._webhook_interaction(app_id, token)
            msg = self._webhook_message(inter, message_id)
            msg.deleted, msg.deleted_at = True, time.time()
        self.store.notify()
        await self._broadcast("MESSAGE_DELETE", msg)
        return web.Response(status=204)

    # ---- channels and messages -----------------------------------------------------------------------------

    async def get_channel(self, request, app, channel_id):
        with self.store.lock:
            return json_response(self.store.channel_payload(self._channel(channel_id)))

    async def list_messages(self, request, app, channel_id):
        limit = max(1, min(100, int(request.query.get("limit", "50"))))
        with self.store.lock:
            ch = self._channel(channel_id)
            msgs = [m for m in self.store.live_messages(ch.id) if not m.ephemeral]
            msgs.sort(key=lambda m: m.id, reverse=True)
            return json_response([self.store.message_payload(m) for m in msgs[:limit]])

    async def create_message(self, request, app, channel_id):
        body = await read_body(request)
        payload = body.payload or {}
        with self.store.lock:
            ch = self._channel(channel_id)
            nonce = payload.get("nonce")
            if nonce is not None and payload.get("enforce_nonce"):
                now = time.time()
                for m in self.store.messages.values():
                    if (m.nonce is not None and str(m.nonce) == str(nonce) and m.author_app_id == app.id
                            and m.interaction_id is None and now - m.created_at < NONCE_WINDOW_S
                            and not m.deleted):
                        return json_response(self.store.message_payload(m))
            attachments = self._attachments_for(ch.id, payload, body.files, None)
            self._validate(payload, attachments, creating=True)
            msg = self._new_message(channel_id=ch.id, app=app, payload=payload, attachments=attachments)
            out = self.store.message_payload(msg)
        self.store.notify()
        if ch.type != CHANNEL_DM:  # a DM goes to its member, not to the guild's bots
            await self._broadcast("MESSAGE_CREATE", msg)
        return json_response(out)

    def _channel_message(self, channel_id: str, message_id: str) -> Message:
        ch = self._channel(channel_id)
        msg = self.store.messages.get(_snowflake(message_id))
        if msg is None or msg.channel_id != ch.id or msg.deleted or msg.ephemeral:
            raise ApiError(404, 10008, "Unknown Message")
        return msg

    async def get_message(self, request, app, channel_id, message_id):
        with self.store.lock:
            return json_response(self.store.message_payload(self._channel_message(channel_id, message_id)))

    async def edit_message(self, request, app, channel_id, message_id):
        body = await read_body(request)
        with self.store.lock:
            msg = self._channel_message(channel_id, message_id)
            if msg.author_app_id != app.id:
                raise ApiError(403, 50005, "Cannot edit a message authored by another user")
            self._apply_edit(msg, body.payload or {}, body.files)
            out = self.store.message_payload(msg)
        self.store.notify()
        await self._broadcast("MESSAGE_UPDATE", msg)
        return json_response(out)

    async def delete_message(self, request, app, channel_id, message_id):
        with self.store.lock:
            msg = self._channel_message(channel_id, message_id)
            msg.deleted, msg.deleted_at = True, time.time()
        self.store.notify()
        await self._broadcast("MESSAGE_DELETE", msg)
        return web.Response(status=204)

    async def typing(self, request, app, channel_id):
        with self.store.lock:
            self._channel(channel_id)
        return web.Response(status=204)

    # ---- guilds ----------------------------------------------------------------------------------------------

    def _guild(self, guild_id: str):
        g = self.store.guilds.get(_snowflake(guild_id))
        if g is None:
            raise ApiError(404, 10004, "Unknown Guild")
        return g

    async def get_guild(self, request, app, guild_id):
        with self.store.lock:
            g = self._guild(guild_id)
            full = self.store.guild_payload(g)
            keep = {k: v for k, v in full.items() if k not in (
                "joined_at", "large", "unavailable", "member_count", "voice_states", "members", "channels",
                "threads", "presences", "stage_instances", "guild_scheduled_events", "soundboard_sounds")}
            return json_response(keep)

    async def get_guild_channels(self, request, app, guild_id):
        with self.store.lock:
            g = self._guild(guild_id)
            return json_response([self.store.channel_payload(c) for c in g.channels.values()])

    async def get_guild_roles(self, request, app, guild_id):
        with self.store.lock:
            g = self._guild(guild_id)
            return json_response([self.store.role_payload(r) for r in g.roles.values()])

    async def get_member(self, request, app, guild_id, user_id):
        with self.store.lock:
            g = self._guild(guild_id)
            uid = _snowflake(user_id)
            if uid not in g.members:
                raise ApiError(404, 10007, "Unknown Member")
            return json_response(self.store.member_payload(g.id, uid))

    # ---- the "CDN" -----------------------------------------------------------------------------------------

    async def attachment(self, request: web.Request) -> web.StreamResponse:
        aid = _snowflake(request.match_info["attachment_id"])
        name = request.match_info["filename"]
        with self.store.lock:
            self.cdn_requests.append(name)
            fault = next((f for f in self.cdn_faults if f[0].search(name)), None)
        if fault is not None:
            _, kind, seconds = fault
            if kind == "gone":  # what an expired or deleted attachment link answers
                return web.Response(status=404, text="This content is no longer available.")
            await asyncio.sleep(seconds)
        with self.store.lock:
            loose = self.store.loose_attachments.get(aid)
            if loose is not None:
                return web.Response(body=loose.data, headers={"Content-Type": loose.content_type})
            for m in self.store.messages.values():
                for a in m.attachments:
                    if a.id == aid:
                        return web.Response(body=a.data, headers={"Content-Type": a.content_type})
        return web.Response(status=404, text="Not Found")


def _snowflake(value: str) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        raise ApiError(400, 50035, "Invalid Form Body",
                       {"id": {"_errors": [{"code": "NUMBER_TYPE_COERCE",
                                            "message": f"Value \"{value}\" is not snowflake."}]}}) from None
