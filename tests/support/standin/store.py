"""The stand-in's state: applications, guilds, members, synced commands, messages and interactions.

Everything here is plain data guarded by one re-entrant lock (`Store.lock`) plus a condition on it that is
notified on every change, so the test thread can wait for a message or an acknowledgement while the server
thread mutates the store.  The payload builders produce the JSON shapes discord.py 2.7 parses (checked against
discord/types/*.py and the `_from_data`/`__init__` code that reads them: e.g. Member needs `flags` and `roles`,
Attachment needs `proxy_url`, an interaction needs `attachment_size_limit`).
"""

from __future__ import annotations

import base64
import datetime as _dt
import mimetypes
import secrets
import threading
import time
from dataclasses import dataclass, field
from typing import Any

DISCORD_EPOCH_MS = 1420070400000

# Permission bits (https://discord.com/developers/docs/topics/permissions).
CREATE_INSTANT_INVITE = 1 << 0
ADMINISTRATOR = 1 << 3
MANAGE_CHANNELS = 1 << 4
MANAGE_GUILD = 1 << 5
ADD_REACTIONS = 1 << 6
VIEW_CHANNEL = 1 << 10
SEND_MESSAGES = 1 << 11
MANAGE_MESSAGES = 1 << 13
EMBED_LINKS = 1 << 14
ATTACH_FILES = 1 << 15
READ_MESSAGE_HISTORY = 1 << 16
MENTION_EVERYONE = 1 << 17
USE_EXTERNAL_EMOJIS = 1 << 18
CONNECT = 1 << 20
SPEAK = 1 << 21
CHANGE_NICKNAME = 1 << 26
USE_APPLICATION_COMMANDS = 1 << 31
SEND_MESSAGES_IN_THREADS = 1 << 38
ALL_PERMISSIONS = (1 << 53) - 1

EVERYONE_PERMISSIONS = (
    CREATE_INSTANT_INVITE | ADD_REACTIONS | VIEW_CHANNEL | SEND_MESSAGES | EMBED_LINKS | ATTACH_FILES
    | READ_MESSAGE_HISTORY | USE_EXTERNAL_EMOJIS | CONNECT | SPEAK | CHANGE_NICKNAME
    | USE_APPLICATION_COMMANDS | SEND_MESSAGES_IN_THREADS
)
BOT_ROLE_PERMISSIONS = EVERYONE_PERMISSIONS | MANAGE_MESSAGES

# Message flags.
FLAG_SUPPRESS_EMBEDS = 1 << 2
FLAG_EPHEMERAL = 1 << 6
FLAG_LOADING = 1 << 7
FLAG_SUPPRESS_NOTIFICATIONS = 1 << 12

ATTACHMENT_SIZE_LIMIT = 10 * 1024 * 1024  # what Discord gives an unboosted guild


class SnowflakeGen:
    """Real-looking snowflakes: ms since the Discord epoch << 22 | worker << 17 | increment (strictly growing)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._last = 0

    def next(self) -> int:
        with self._lock:
            ms = int(time.time() * 1000) - DISCORD_EPOCH_MS
            value = (ms << 22) | (1 << 17)
            if value <= self._last:
                value = self._last + 1
            self._last = value
            return value


def iso(ts: float | None) -> str | None:
    if ts is None:
        return None
    return _dt.datetime.fromtimestamp(ts, _dt.timezone.utc).isoformat()


def make_bot_token(user_id: int) -> str:
    """A token shaped like Discord's: base64(user id) . 6-char timestamp part . 38-char HMAC part."""
    head = base64.b64encode(str(user_id).encode()).decode().rstrip("=")
    mid = base64.urlsafe_b64encode(secrets.token_bytes(5)).decode().rstrip("=")[:6]
    tail = base64.urlsafe_b64encode(secrets.token_bytes(30)).decode().rstrip("=")[:38]
    return f"{head}.{mid}.{tail}"


def make_interaction_token(interaction_id: int) -> str:
    raw = f"interaction:{interaction_id}:".encode() + secrets.token_bytes(96)
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


# --------------------------------------------------------------------------------------------------- records


@dataclass
class App:
    id: int
    name: str
    token: str
    user_id: int  # a modern application's bot user shares the application's id
    flags: int = 0
    privileged_intents: bool = True
    # (guild_id or None) -> {name: command dict as returned by the API}
    commands_by_scope: dict[int | None, dict[str, dict]] = field(default_factory=dict)


@dataclass
class Role:
    id: int
    guild_id: int
    name: str
    permissions: int
    position: int = 0
    managed: bool = False


@dataclass
class Channel:
    id: int
    guild_id: int  # 0 for a direct-message channel
    name: str
    position: int
    type: int = 0  # GUILD_TEXT; 1 is DM
    nsfw: bool = False  # Discord's age-restricted flag
    recipient_id: int | None = None  # a DM channel's member


@dataclass
class User:
    id: int
    username: str
    bot: bool = False


@dataclass
class Member:
    user_id: int
    guild_id: int
    roles: list[int]
    manage_guild: bool = False
    joined_at: float = field(default_factory=time.time)


@dataclass
class Guild:
    id: int
    name: str
    owner_id: int
    roles: dict[int, Role] = field(default_factory=dict)
    channels: dict[int, Channel] = field(default_factory=dict)
    members: dict[int, Member] = field(default_factory=dict)
    preferred_locale: str = "en-US"  # the server's language (Community settings): interactions' guild_locale


CHANNEL_DM = 1
ATTACHMENT_IS_SPOILER = 1 << 3


class Attachment(tuple):
    """A stored attachment. Unpacks and compares as ``(filename, bytes, content_type)``; also has ``.id``,
    ``.filename``, ``.data``, ``.content_type``, ``.size``, ``.url``, ``.sent_content_type`` (what the client put
    on the multipart part; discord.py always sends application/octet-stream, Discord derives the real type
    from the file name, and so does the stand-in)."""

    def __new__(cls, id: int, filename: str, data: bytes, content_type: str, url: str,
                sent_content_type: str | None = None, description: str | None = None):
        self = super().__new__(cls, (filename, data, content_type))
        self.id = id
        self.filename = filename
        self.data = data
        self.content_type = content_type
        self.url = url
        self.sent_content_type = sent_content_type
        self.description = description
        return self

    @property
    def size(self) -> int:
        return len(self.data)

    @property
    def spoiler(self) -> bool:
        """Discord shows an attachment behind a spoiler cover when its name starts SPOILER_ and says so
        in the attachment's flags (IS_SPOILER)."""
        return self.filename.startswith("SPOILER_")

    def to_payload(self) -> dict:
        out = {
            "id": str(self.id),
            "filename": self.filename,
            "flags": ATTACHMENT_IS_SPOILER if self.spoiler else 0,
            "size": self.size,
            "url": self.url,
            "proxy_url": self.url,
            "content_type": self.content_type,
        }
        if self.description is not None:
            out["description"] = self.description
        size = image_size(self.data)
        if size is not None:  # Discord reports an image's width and height (read from the file itself)
            out["width"], out["height"] = size
        return out


def image_size(data: bytes) -> tuple[int, int] | None:
    """Width and height from an image file's header (no pixel decoded), or None when it isn't one."""
    import io
    import warnings

    from PIL import Image

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            old, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, None
            try:
                return Image.open(io.BytesIO(data)).size
            finally:
                Image.MAX_IMAGE_PIXELS = old
    except Exception:
        return None


def guess_content_type(filename: str, sent: str | None) -> str:
    guessed, _ = mimetypes.guess_type(filename)
    if guessed:
        return guessed
    return sent or "application/octet-stream"


@dataclass
class Message:
    id: int
    channel_id: int
    guild_id: int
    author_app_id: int | None
    author_user_id: int
    content: str = ""
    embeds: list[dict] = field(default_factory=list)
    components: list[dict] = field(default_factory=list)
    flags: int = 0
    allowed_mentions: dict | None = None  # exactly as sent (None: the request had no allowed_mentions)
    attachments: list[Attachment] = field(default_factory=list)
    interaction_id: int | None = None
    webhook_id: int | None = None
    type: int = 0
    tts: bool = False
    nonce: str | int | None = None
    message_reference: dict | None = None
    edits: int = 0
    edit_times: list[float] = field(default_factory=list)
    contents: list[str] = field(default_factory=list)  # every content it has shown, in order (the member's view)
    created_at: float = field(default_factory=time.time)
    deleted: bool = False
    deleted_at: float | None = None

    @property
    def ephemeral(self) -> bool:
        return bool(self.flags & FLAG_EPHEMERAL)

    @property
    def loading(self) -> bool:
        return bool(self.flags & FLAG_LOADING)

    @property
    def edit_history(self) -> list[float]:
        return list(self.edit_times)

    def custom_ids(self) -> list[str]:
        found: list[str] = []

        def walk(items: list[dict]) -> None:
            for c in items or []:
                if "custom_id" in c:
                    found.append(c["custom_id"])
                walk(c.get("components") or [])
                if isinstance(c.get("accessory"), dict):
                    walk([c["accessory"]])

        walk(self.components)
        return found


@dataclass
class CallbackAttempt:
    at: float  # monotonic
    status: int
    body: dict


class Interaction:
    """One interaction the stand-in dispatched. Read it from the test thread; the server thread fills it."""

    def __init__(self, store: Store, id: int, token: str, app_id: int, type: int, guild_id: int,
                 channel_id: int, user_id: int, payload: dict, message_id: int | None = None):
        self._store = store
        self.id = id
        self.token = token
        self.app_id = app_id
        self.type = type
        self.guild_id = guild_id
        self.channel_id = channel_id
        self.user_id = user_id
        self.payload = payload  # the INTERACTION_CREATE `d` exactly as sent
        self.message_id = message_id  # the component's message (type 3)
        # Snapshots of the stand-in's settings when the interaction was created; writable per interaction.
        self.ack_deadline_s: float = store.ack_deadline_s
        self.token_lifetime_s: float = store.token_lifetime_s
        self.dispatched_at: float | None = None  # monotonic, when the frame went out on the gateway
        self.acked = False
        self.late = False
        self.ack_latency_s: float | None = None
        self.response_type: int | None = None
        self.response: dict | None = None  # the accepted callback body
        self.callbacks: list[CallbackAttempt] = []
        self.original_message_id: int | None = None
        self.followup_ids: list[int] = []
        self.autocomplete_choices: list[dict] | None = None
        self.modal: dict | None = None

    def __repr__(self) -> str:
        return (f"<Interaction id={self.id} type={self.type} acked={self.acked} late={self.late} "
                f"response_type={self.response_type}>")

    @property
    def timed_out(self) -> bool:
        """True once the ack deadline has passed without an accepted callback."""
        if self.acked or self.dispatched_at is None:
            return False
        return time.monotonic() - self.dispatched_at > self.ack_deadline_s

    @property
    def token_expired(self) -> bool:
        if self.dispatched_at is None:
            return False
        return time.monotonic() - self.dispatched_at > self.token_lifetime_s

    def wait_ack(self, timeout: float = 5.0) -> dict:
        """Block until the bot POSTs its first callback (accepted or refused as late) and return its body
        (``{"type": 4|5|6|7|8|9, "data": {...}}``; for multipart the parsed payload_json)."""
        with self._store.cond:
            ok = self._store.cond.wait_for(lambda: bool(self.callbacks), timeout=timeout)
            if not ok:
                raise TimeoutError(f"interaction {self.id}: no callback within {timeout}s")
            return self.callbacks[0].body


# ---------------------------------------------------------------------------------------------------- store


class Store:
    def __init__(self, ack_deadline_s: float, token_lifetime_s: float) -> None:
        self.lock = threading.RLock()
        self.cond = threading.Condition(self.lock)
        self.snowflakes = SnowflakeGen()
        self.ack_deadline_s = ack_deadline_s
        self.token_lifetime_s = token_lifetime_s
        self.apps: dict[int, App] = {}
        self.apps_by_token: dict[str, App] = {}
        self.users: dict[int, User] = {}
        self.guilds: dict[int, Guild] = {}
        self.channels: dict[int, Channel] = {}
        self.messages: dict[int, Message] = {}
        self.interactions: dict[int, Interaction] = {}
        self.interactions_by_token: dict[str, Interaction] = {}
        self.loose_attachments: dict[int, Attachment] = {}  # slash-command ATTACHMENT option uploads
        self.cdn_base = ""  # set by the server once it knows its port

    def notify(self) -> None:
        with self.cond:
            self.cond.notify_all()

    # ---- builders of JSON payloads ------------------------------------------------------------------

    def user_payload(self, user_id: int) -> dict:
        u = self.users[user_id]
        out: dict[str, Any] = {
            "id": str(u.id),
            "username": u.username,
            "global_name": None if u.bot else u.username.capitalize(),
            "discriminator": "0",
            "avatar": None,
            "public_flags": 0,
            "flags": 0,
            "banner": None,
            "accent_color": None,
            "avatar_decoration_data": None,
        }
        if u.bot:
            out["bot"] = True
        return out

    def me_payload(self, app: App) -> dict:
        out = self.user_payload(app.user_id)
        out.update({"verified": True, "mfa_enabled": False, "locale": "en-US", "email": None, "bot": True})
        return out

    def app_payload(self, app: App) -> dict:
        owner = self.user_payload(app.user_id) | {"username": f"{app.name.lower()}-owner", "bot": False}
        owner["id"] = str(app.user_id + 1)
        return {
            "id": str(app.id),
            "name": app.name,
            "icon": None,
            "description": "",
            "summary": "",
            "type": None,
            "bot_public": True,
            "bot_require_code_grant": False,
            "verify_key": secrets.token_hex(32),
            "flags": app.flags,
            "owner": owner,
            "team": None,
            "hook": True,
            "bot": self.user_payload(app.user_id),
            "redirect_uris": [],
            "interactions_endpoint_url": None,  # None: interactions come over the gateway
            "approximate_guild_count": len(self.guilds),
            "tags": [],
        }

    def role_payload(self, role: Role) -> dict:
        return {
            "id": str(role.id),
            "name": role.name,
            "color": 0,
            "colors": {"primary_color": 0, "secondary_color": None, "tertiary_color": None},
            "hoist": False,
            "icon": None,
            "unicode_emoji": None,
            "position": role.position,
            "permissions": str(role.permissions),
            "managed": role.managed,
            "mentionable": False,
            "flags": 0,
        }

    def channel_payload(self, ch: Channel, *, with_permissions_for: int | None = None) -> dict:
        if ch.type == CHANNEL_DM:
            return {"id": str(ch.id), "type": CHANNEL_DM, "last_message_id": None, "flags": 0,
                    "recipients": [self.user_payload(ch.recipient_id)]}
        out: dict[str, Any] = {
            "id": str(ch.id),
            "type": ch.type,
            "guild_id": str(ch.guild_id),
            "name": ch.name,
            "position": ch.position,
            "permission_overwrites": [],
            "parent_id": None,
            "topic": None,
            "nsfw": ch.nsfw,
            "last_message_id": None,
            "rate_limit_per_user": 0,
            "flags": 0,
        }
        if with_permissions_for is not None:
            out["permissions"] = str(self.member_permissions(ch.guild_id, with_permissions_for))
        return out

    def member_permissions(self, guild_id: int, user_id: int) -> int:
        guild = self.guilds[guild_id]
        if guild.owner_id == user_id:
            return ALL_PERMISSIONS
        member = guild.members[user_id]
        perms = guild.roles[guild_id].permissions  # @everyone shares the guild's id
        for rid in member.roles:
            perms |= guild.roles[rid].permissions
        if member.manage_guild:
            perms |= MANAGE_GUILD
        if perms & ADMINISTRATOR:
            return ALL_PERMISSIONS
        return perms

    def member_payload(self, guild_id: int, user_id: int, *, with_permissions: bool = False) -> dict:
        m = self.guilds[guild_id].members[user_id]
        out: dict[str, Any] = {
            "user": self.user_payload(user_id),
            "roles": [str(r) for r in m.roles],
            "nick": None,
            "avatar": None,
            "banner": None,
            "joined_at": iso(m.joined_at),
            "premium_since": None,
            "deaf": False,
            "mute": False,
            "pending": False,
            "flags": 0,
            "communication_disabled_until": None,
        }
        if with_permissions:
            out["permissions"] = str(self.member_permissions(guild_id, user_id))
        return out

    def guild_payload(self, guild: Guild, *, for_app: App | None = None) -> dict:
        members = [self.member_payload(guild.id, for_app.user_id)] if for_app else []
        return {
            "id": str(guild.id),
            "name": guild.name,
            "icon": None,
            "splash": None,
            "discovery_splash": None,
            "banner": None,
            "description": None,
            "owner_id": str(guild.owner_id),
            "afk_channel_id": None,
            "afk_timeout": 300,
            "verification_level": 0,
            "default_message_notifications": 1,
            "explicit_content_filter": 0,
            "mfa_level": 0,
            "nsfw_level": 0,
            "premium_tier": 0,
            "premium_subscription_count": 0,
            "preferred_locale": guild.preferred_locale,
            "features": [],
            "system_channel_id": None,
            "system_channel_flags": 0,
            "rules_channel_id": None,
            "public_updates_channel_id": None,
            "max_members": 500000,
            "vanity_url_code": None,
            "roles": [self.role_payload(r) for r in guild.roles.values()],
            "emojis": [],
            "stickers": [],
            "application_id": None,
            # GUILD_CREATE-only fields
            "joined_at": iso(guild.members[for_app.user_id].joined_at) if for_app else None,
            "large": False,
            "unavailable": False,
            "member_count": len(guild.members),
            "voice_states": [],
            "members": members,
            "channels": [self.channel_payload(c) | {"guild_id": str(guild.id)} for c in guild.channels.values()],
            "threads": [],
            "presences": [],
            "stage_instances": [],
            "guild_scheduled_events": [],
            "soundboard_sounds": [],
        }

    def message_payload(self, msg: Message) -> dict:
        out: dict[str, Any] = {
            "id": str(msg.id),
            "channel_id": str(msg.channel_id),
            **({"guild_id": str(msg.guild_id)} if msg.guild_id else {}),
            "author": self.user_payload(msg.author_user_id),
            "content": msg.content,
            "timestamp": iso(msg.created_at),
            "edited_timestamp": iso(msg.edit_times[-1]) if msg.edit_times else None,
            "tts": msg.tts,
            "mention_everyone": False,
            "mentions": [],
            "mention_roles": [],
            "attachments": [a.to_payload() for a in msg.attachments],
            "embeds": msg.embeds,
            "components": msg.components,
            "pinned": False,
            "type": msg.type,
            "flags": msg.flags,
        }
        if msg.nonce is not None:
            out["nonce"] = msg.nonce
        if msg.message_reference is not None:
            out["message_reference"] = msg.message_reference
        if msg.webhook_id is not None:
            out["webhook_id"] = str(msg.webhook_id)
        if msg.author_app_id is not None and msg.interaction_id is not None:
            out["application_id"] = str(msg.author_app_id)
        if msg.interaction_id is not None:
            inter = self.interactions.get(msg.interaction_id)
            if inter is not None:
                meta: dict[str, Any] = {
                    "id": str(inter.id),
                    "type": inter.type,
                    "user": self.user_payload(inter.user_id),
                    "authorizing_integration_owners": {"0": str(inter.guild_id)},
                }
                if inter.original_message_id is not None and inter.original_message_id != msg.id:
                    meta["original_response_message_id"] = str(inter.original_message_id)
                if inter.message_id is not None:
                    meta["interacted_message_id"] = str(inter.message_id)
                if inter.type == 2:
                    meta["name"] = inter.payload["data"]["name"]
                out["interaction_metadata"] = meta
        return out

    # ---- lookups -----------------------------------------------------------------------------------

    def find_command(self, app_id: int, guild_id: int | None, name: str) -> dict | None:
        app = self.apps[app_id]
        if guild_id is not None:
            cmd = app.commands_by_scope.get(guild_id, {}).get(name)
            if cmd is not None:
                return cmd
        return app.commands_by_scope.get(None, {}).get(name)

    def live_messages(self, channel_id: int) -> list[Message]:
        return [m for m in self.messages.values() if m.channel_id == channel_id and not m.deleted]
