"""/dreamadmin: a server's admins read and change the dream limits of their server (dreamcore.limits).

    /dreamadmin show                 every limit, its value, default or set here, what it may be
    /dreamadmin set key value        change one limit (key autocompletes; "default" goes back to the default)
    /dreamadmin usage user           what a member and the whole server have used
    /dreamadmin reset-user user      forget a member's cooldown, quotas used and active dreams here
    /dreamadmin pause | resume       refuse / accept every dream on this server
    /dreamadmin audit                the last 10 changes: who, when, what

Every answer is ephemeral and pings nobody. `default_permissions` (Manage Server) only hides the command:
a server's admins can hand it to anyone in their integration settings, so EVERY call checks the caller's
own permissions again here. Changes go through LimitStore.set / reset_user, which audit and log them.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any, TypeVar

import discord
import redis
from discord import app_commands
from discord.utils import escape_markdown

from dreamcore import safety
from dreamcore.limits import (
    KNOWN_KEYS,
    GuildLimits,
    LimitError,
    LimitStore,
    human_duration,
    limit_range,
)

# ACK_BUDGET_S: Redis normally answers in a millisecond; past this, defer so Discord's 3 s window holds.
from .commands import ACK_BUDGET_S
from .toolkit import answer_privately, is_guild_admin

log = logging.getLogger("dreambot.admin")

NO_PERMISSION = "You need the Manage Server permission to change dream limits."
NOT_IN_GUILD = "Dream limits belong to a server: use /dreamadmin in the server whose limits you want."
STORE_DOWN = "I can't reach the limits store right now. Please try again in a minute."
STORE_TIMEOUT_S = 10.0
AUDIT_SHOWN = 10
MAX_MESSAGE = 2000
MAX_VALUE_SHOWN = 240

# What the keys that are not a number take (the numbers show their range from GuildLimits).
_SHAPES = {
    "paused": "true / false",
    "channels": "instance:channel ids (e.g. bot1:123,456); none = every channel",
    "exempt_roles": "roles (ids or @mentions), +add / -remove / clear; up to 100",
    "priority_roles": "roles (ids or @mentions), +add / -remove / clear; up to 100",
    "blocked_words": "words or phrases, comma-separated, +add / -remove / clear; up to 500",
    "adult_words": "words or phrases, comma-separated, +add / -remove / clear; up to 500",
    "nsfw_action": "withhold / spoiler / age_restricted",
}

_LIST_KEYS = ("exempt_roles", "priority_roles", "blocked_words", "adult_words")

T = TypeVar("T")


# --- Text ---------------------------------------------------------------------------------------------


def range_text(key: str) -> str:
    """What `key` may be set to: "0–3600" for a number, a short shape for the rest."""
    r = limit_range(key)
    if r is not None:
        return f"{r[0]}–{r[1]}"
    return _SHAPES.get(key, "see the docs")


def describe(key: str) -> str:
    info = GuildLimits.model_fields.get(key)
    return (info.description or "") if info else ""


def _code(text: Any, limit: int = 64) -> str:
    """Inline code that a typed value cannot break out of."""
    s = str(text).replace("`", "'").replace("\n", " ")
    return f"`{_clip(s, limit)}`" if s else "``"


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def render(key: str, value: Any) -> str:
    """A limit's value as an admin reads it (also the JSON forms the audit trail keeps)."""
    if value is None:
        return "none"
    if isinstance(value, bool):
        return "true" if value else "false"
    if key in ("exempt_roles", "priority_roles"):
        text = " ".join(f"<@&{int(r)}>" for r in value) or "none"
    elif key == "channels":
        text = "; ".join(f"{escape_markdown(str(inst))}: " + " ".join(f"<#{int(c)}>" for c in ids)
                         for inst, ids in dict(value).items()) or "every channel"
    elif key in ("blocked_words", "adult_words"):
        text = ", ".join(f"||{escape_markdown(str(w))}||" for w in value) or "none"
    elif isinstance(value, float):
        text = f"{value:g}"
    elif isinstance(value, (list, tuple)):
        text = ", ".join(escape_markdown(str(v)) for v in value) or "none"
    else:
        text = escape_markdown(str(value))
    return _clip(text, MAX_VALUE_SHOWN)


def _fit(lines: list[str], tail: str = "…") -> str:
    """Join lines, dropping whole lines from the end so the message stays under Discord's 2000 chars."""
    out: list[str] = []
    size = 0
    for line in lines:
        if size + len(line) + 1 > MAX_MESSAGE - len(tail) - 1:
            out.append(tail)
            break
        out.append(line)
        size += len(line) + 1
    return "\n".join(out)


def show_text(limits: GuildLimits, overrides: dict[str, Any]) -> str:
    head = "**Dream limits on this server**"
    if limits.paused:
        head += " (dreams are **paused**: /dreamadmin resume)"
    lines = [head]
    for key in KNOWN_KEYS:
        where = "set here" if key in overrides else "default"
        lines.append(f"{_code(key)} = **{render(key, getattr(limits, key))}** · {where} · {range_text(key)}")
    lines.append("-# Change one with /dreamadmin set; the value `default` goes back to the default.")
    return _fit(lines)


def flags_text(flags: dict[str, dict[str, int]], limits: GuildLimits) -> list[str]:
    """The content filter's lines of /dreamadmin usage: flagged images today and this week, by outcome."""
    def line(counts: dict[str, int]) -> str:
        parts = [f"{counts.get(k, 0)} {label}" for k, label in
                 (("withheld", "withheld"), ("spoilered", "spoilered"),
                  ("shown_age_restricted", "shown in age-restricted channels"))]
        return f"{sum(counts.values())} flagged: " + ", ".join(parts)
    policy = f"threshold {limits.nsfw_threshold:g}, {limits.nsfw_action.replace('_', ' ')}"
    return [f"**Content filter** ({policy})",
            f"today (UTC): {line(flags.get('today', {}))}",
            f"last 7 days: {line(flags.get('week', {}))}"]


def usage_text(user: discord.abc.User, usage: dict[str, Any], limits: GuildLimits, exempt: bool,
               flags: dict[str, dict[str, int]] | None = None) -> str:
    cd = float(usage.get("cooldown_remaining_s") or 0.0)
    if limits.cooldown_s <= 0:
        cooldown = "none on this server"
    elif cd > 0:
        cooldown = f"{human_duration(cd)} left (cooldown {human_duration(limits.cooldown_s)})"
    else:
        cooldown = f"ready (cooldown {human_duration(limits.cooldown_s)})"
    lines = [
        f"**Usage of <@{user.id}> on this server**" + (" (exempt: a role of theirs skips cooldown, quotas "
                                                        "and caps)" if exempt else ""),
        f"images this hour: {usage['user_images_hour']} / {limits.user_images_hour}",
        f"images in the last 24 h: {usage['user_images_day']} / {limits.user_images_day}",
        f"dreams queued or running: {usage['user_active']} / {limits.user_max_active}",
        f"cooldown: {cooldown}",
        "**The whole server**",
        f"images this hour: {usage['guild_images_hour']} / {limits.guild_images_hour}",
        f"images in the last 24 h: {usage['guild_images_day']} / {limits.guild_images_day}",
        f"dreams queued or running: {usage['guild_active']} / {limits.guild_max_queued}",
    ]
    if flags is not None:
        lines += flags_text(flags, limits)
    return _fit(lines)


def audit_line(entry: dict[str, Any]) -> str:
    try:
        when = f"<t:{int(float(entry.get('ts', 0)))}:R>"
    except (TypeError, ValueError):
        when = "at an unknown time"
    actor = entry.get("actor_id")
    who = f"<@{int(actor)}>" if isinstance(actor, int) or str(actor).isdigit() else "someone"
    key = str(entry.get("key", "?"))
    if key == "reset_user":
        target = entry.get("old")
        whom = f"<@{int(target)}>" if str(target).isdigit() else "a member"
        return f"{when} {who} reset the usage and cooldown of {whom}"
    old, new = render(key, entry.get("old")), render(key, entry.get("new"))
    clip = MAX_VALUE_SHOWN // 3
    line = f"{when} {who} {_code(key)}: {_clip(old, clip)} → {_clip(new, clip)}"
    if entry.get("reset_to_default"):
        line += " (back to the default)"
    return line


def audit_text(entries: list[dict[str, Any]]) -> str:
    if not entries:
        return "No limit has been changed on this server yet."
    return _fit([f"**The last {len(entries)} changes to this server's dream limits**",
                 *(audit_line(e) for e in entries)])


def key_choices(current: str) -> list[app_commands.Choice[str]]:
    """Autocomplete for `key`: each label says what the limit does and what it may be (max 100 chars)."""
    needle = (current or "").strip().lower()
    ranked = []
    for i, key in enumerate(KNOWN_KEYS):
        desc = describe(key)
        # Names that start with what was typed first, then names that contain it, then descriptions.
        rank = 0 if key.startswith(needle) else 1 if needle in key else 2 if needle in desc.lower() else None
        if rank is None:
            continue
        label = f"{key} ({range_text(key)}): {desc}" if limit_range(key) else f"{key}: {desc}"
        ranked.append((rank, i, app_commands.Choice(name=_clip(label, 100), value=key)))
    return [c for _, _, c in sorted(ranked, key=lambda t: t[:2])][:25]


# --- The commands -----------------------------------------------------------------------------------------


class AdminCommands:
    def __init__(self, client: Any):
        self.client = client
        self._own_store: LimitStore | None = None

    @property
    def store(self) -> LimitStore:
        """The backend's LimitStore when it has one; until then one of our own on the backend's Redis."""
        store = getattr(self.client.backend, "store", None)
        if store is not None:
            return store
        if self._own_store is None:
            self._own_store = LimitStore(self.client.backend.conn, self.client.settings)
        return self._own_store

    # plumbing

    async def reply(self, interaction: discord.Interaction, text: str) -> None:
        await answer_privately(interaction, _clip(text, MAX_MESSAGE))  # past 2000 characters Discord refuses it

    async def allowed(self, interaction: discord.Interaction, command: str) -> bool:
        """The server-side check every subcommand runs first; refuses with an ephemeral message."""
        if interaction.guild_id is None:
            await self.reply(interaction, NOT_IN_GUILD)
            return False
        if not is_guild_admin(interaction):
            log.info("dreamadmin refused: no Manage Server permission", extra={
                "guild_id": interaction.guild_id, "actor_id": interaction.user.id, "command": command})
            await self.reply(interaction, NO_PERMISSION)
            return False
        return True

    async def redis(self, interaction: discord.Interaction, fn: Callable[..., T], *args: Any) -> T:
        """Run a synchronous store call off the event loop; if Redis is slow, defer so Discord's 3 s hold."""
        task = asyncio.ensure_future(asyncio.to_thread(fn, *args))
        try:
            return await asyncio.wait_for(asyncio.shield(task), ACK_BUDGET_S)
        except asyncio.TimeoutError:
            if not interaction.response.is_done():
                await interaction.response.defer(ephemeral=True, thinking=True)
            return await asyncio.wait_for(task, STORE_TIMEOUT_S)

    async def run(self, interaction: discord.Interaction, command: str, body) -> None:
        if not await self.allowed(interaction, command):
            return
        try:
            text = await body()
        except (redis.RedisError, asyncio.TimeoutError) as err:
            log.warning("dreamadmin: limits store unreachable", extra={
                "guild_id": interaction.guild_id, "actor_id": interaction.user.id, "command": command,
                "error": type(err).__name__})
            text = STORE_DOWN
        await self.reply(interaction, text)

    def changed(self, interaction: discord.Interaction, command: str, key: str, **extra: Any) -> None:
        log.info("dream limit changed by command", extra={
            "guild_id": interaction.guild_id, "actor_id": interaction.user.id, "key": key,
            "command": command, **extra})

    # subcommands

    async def show(self, interaction: discord.Interaction) -> None:
        async def body() -> str:
            gid = interaction.guild_id

            def read() -> tuple[GuildLimits, dict[str, Any]]:
                return self.store.get(gid), self.store.overrides(gid)

            limits, overrides = await self.redis(interaction, read)
            return show_text(limits, overrides)

        await self.run(interaction, "show", body)

    async def set(self, interaction: discord.Interaction, key: str, value: str) -> None:
        async def body() -> str:
            name = key.strip()
            if name not in KNOWN_KEYS:
                return (f"Unknown limit {_code(name)}. Known limits: "
                        + ", ".join(_code(k) for k in KNOWN_KEYS) + ".")
            try:
                old, updated = await self.redis(interaction, self._set, interaction.guild_id, name, value,
                                                interaction.user.id)
            except LimitError as err:
                # Numbers, paused and channels: the error already says what is allowed.
                shape = f" (allowed: {range_text(name)})" if name in _LIST_KEYS else ""
                return f"Can't set {_code(name)}: {err}{shape}."
            new = getattr(updated, name)
            self.changed(interaction, "set", name)
            if value.strip().lower() == "default":
                return f"{_code(name)} follows the default again: **{render(name, new)}** (was {render(name, old)})."
            return f"{_code(name)} is now **{render(name, new)}** (was {render(name, old)})."

        await self.run(interaction, "set", body)

    def _set(self, guild_id: int, key: str, value: str, actor_id: int) -> tuple[Any, GuildLimits]:
        old = getattr(self.store.get(guild_id), key)  # for the reply only; the audit has the exact old value
        return old, self.store.set(guild_id, key, value, actor_id)

    async def set_paused(self, interaction: discord.Interaction, paused: bool) -> None:
        command = "pause" if paused else "resume"

        async def body() -> str:
            _, updated = await self.redis(interaction, self._set, interaction.guild_id, "paused",
                                          "true" if paused else "false", interaction.user.id)
            self.changed(interaction, command, "paused")
            if updated.paused:
                return "Dreams are **paused** on this server: every /dream is refused until /dreamadmin resume."
            return "Dreams are **on** again on this server."

        await self.run(interaction, command, body)

    async def usage(self, interaction: discord.Interaction, user: discord.User | discord.Member) -> None:
        async def body() -> str:
            gid = interaction.guild_id

            def read() -> tuple[dict[str, Any], GuildLimits, dict]:
                return self.store.usage(gid, user.id), self.store.get(gid), safety.flag_counts(self.store.r, gid)

            usage, limits, flags = await self.redis(interaction, read)
            roles = {r.id for r in getattr(user, "roles", ())}
            return usage_text(user, usage, limits, exempt=bool(roles & set(limits.exempt_roles)), flags=flags)

        await self.run(interaction, "usage", body)

    async def reset_user(self, interaction: discord.Interaction, user: discord.User | discord.Member) -> None:
        async def body() -> str:
            await self.redis(interaction, self.store.reset_user, interaction.guild_id, user.id,
                             interaction.user.id)
            self.changed(interaction, "reset-user", "reset_user", user_id=user.id)
            return (f"Reset <@{user.id}> on this server: cooldown, images used this hour and today, and "
                    "active dreams are forgotten (the server's totals keep their images).")

        await self.run(interaction, "reset-user", body)

    async def audit(self, interaction: discord.Interaction) -> None:
        async def body() -> str:
            entries = await self.redis(interaction, self.store.audit, interaction.guild_id, AUDIT_SHOWN)
            return audit_text(entries)

        await self.run(interaction, "audit", body)

    async def autocomplete_key(self, interaction: discord.Interaction, current: str) -> list[app_commands.Choice[str]]:
        if interaction.guild_id is None or not is_guild_admin(interaction):
            return []
        return key_choices(current)


def build_group(client: Any) -> app_commands.Group:
    admin = AdminCommands(client)
    group = app_commands.Group(
        name="dreamadmin", description="See and change this server's dream limits (Manage Server)",
        default_permissions=discord.Permissions(manage_guild=True), guild_only=True,
    )

    @group.command(name="show", description="Every dream limit on this server, default or set here")
    async def show(interaction: discord.Interaction):
        await admin.show(interaction)

    @group.command(name="set", description="Change one dream limit on this server")
    @app_commands.describe(key="Which limit", value="The new value ('default' goes back to the default)")
    async def set_(interaction: discord.Interaction, key: app_commands.Range[str, 1, 64],
                   value: app_commands.Range[str, 1, 1500]):
        await admin.set(interaction, key, value)

    @set_.autocomplete("key")
    async def set_key(interaction: discord.Interaction, current: str):
        return await admin.autocomplete_key(interaction, current)

    @group.command(name="usage", description="What a member and this server have used")
    @app_commands.describe(user="The member")
    async def usage(interaction: discord.Interaction, user: discord.User):
        await admin.usage(interaction, user)

    @group.command(name="reset-user", description="Forget a member's cooldown, quotas used and active dreams")
    @app_commands.describe(user="The member")
    async def reset_user(interaction: discord.Interaction, user: discord.User):
        await admin.reset_user(interaction, user)

    @group.command(name="pause", description="Refuse every dream on this server until /dreamadmin resume")
    async def pause(interaction: discord.Interaction):
        await admin.set_paused(interaction, True)

    @group.command(name="resume", description="Take dreams on this server again")
    async def resume(interaction: discord.Interaction):
        await admin.set_paused(interaction, False)

    @group.command(name="audit", description=f"The last {AUDIT_SHOWN} changes to this server's dream limits")
    async def audit(interaction: discord.Interaction):
        await admin.audit(interaction)

    group.extras["admin"] = admin
    return group


def register_admin(tree: app_commands.CommandTree, client: Any) -> None:
    """Add /dreamadmin to the client's command tree (call once, from DreamClient.__init__)."""
    tree.add_command(build_group(client))
