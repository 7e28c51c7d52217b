"""/dreamadmin: a server's admins read and change the dream limits of their server (dreamcore.limits).

    /dreamadmin show                 every limit, its value, default or set here, what it may be
    /dreamadmin set key value        change one limit (key autocompletes; "default" goes back to the default)
    /dreamadmin usage user           what a member and the whole server have used
    /dreamadmin reset-user user      forget a member's cooldown, quotas used and active dreams here
    /dreamadmin pause | resume       refuse / accept every dream on this server
    /dreamadmin audit                the last 10 changes: who, when, what

Every answer is ephemeral and pings nobody. `default_permissions` (Manage Server) only hides the command:
a server's admins can hand it to anyone in their integration settings, so EVERY call checks the caller's
own permissions again, in DreamAdmin.interaction_check (discord.py runs it before each subcommand). Changes
go through LimitStore.set / reset_user, which audit and log them.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import discord
import redis
from discord import app_commands

from dreamcore import moderation
from dreamcore.i18n import N_, _
from dreamcore.limits.model import KNOWN_KEYS, GuildLimits, LimitError
from dreamcore.limits.stored import LimitStore

from . import toolkit
from .admin_text import (
    LIST_KEYS,
    MAX_MESSAGE,
    audit_text,
    clip,
    code,
    key_choices,
    range_text,
    render,
    show_text,
    usage_text,
)
from .toolkit import STORE_DOWN, Refused, answer_privately, is_guild_admin, within_ack

log = logging.getLogger("dreambot.admin")

NO_PERMISSION = N_("You need the Manage Server permission to change dream limits.")
NOT_IN_GUILD = N_("Dream limits belong to a server: use /dreamadmin in the server whose limits you want.")
STORE_TIMEOUT_S = 10.0
AUDIT_SHOWN = 10

T = TypeVar("T")


class DreamAdmin(app_commands.Group):
    """The /dreamadmin group, built the way discord.py's examples build groups: each subcommand a method.
    Every one runs `_run`, which answers privately."""

    def __init__(self):
        super().__init__(name="dreamadmin", description="See and change this server's dream limits (Manage Server)",
                         default_permissions=discord.Permissions(manage_guild=True), guild_only=True)

    async def interaction_check(self, interaction: discord.Interaction) -> bool:
        """In a server, by its admins only; anyone else is refused (tree.on_error says why) before any
        subcommand reads a thing."""
        if interaction.guild_id is None:
            raise Refused(NOT_IN_GUILD)
        if not is_guild_admin(interaction):
            log.info("dreamadmin refused: no Manage Server permission", extra={
                "guild_id": interaction.guild_id, "actor_id": interaction.user.id,
                "command": interaction.command.name if interaction.command else None})
            raise Refused(NO_PERMISSION)
        return True

    # --- plumbing ------------------------------------------------------------------------------------------

    async def _reply(self, interaction: discord.Interaction, text: str) -> None:
        await answer_privately(interaction, clip(text, MAX_MESSAGE))  # past 2000 characters Discord refuses it

    async def _redis(self, interaction: discord.Interaction, fn: Callable[..., T], *args: Any) -> T:
        """`fn(store, *args)` on the client's LimitStore, off the event loop; if Redis is slow, defer so
        Discord's 3 s hold."""
        work = toolkit.command(fn, interaction.client.backend.store, *args)
        result, _deferred = await within_ack(interaction, work, STORE_TIMEOUT_S, ephemeral=True)
        return result

    async def _run(self, interaction: discord.Interaction, command: str, body: Callable[[], Awaitable[str]]) -> None:
        try:
            text = await body()
        except (redis.RedisError, asyncio.TimeoutError) as err:
            log.warning("dreamadmin: limits store unreachable", extra={
                "guild_id": interaction.guild_id, "actor_id": interaction.user.id, "command": command,
                "error": type(err).__name__})
            text = _(STORE_DOWN)
        await self._reply(interaction, text)

    def _changed(self, interaction: discord.Interaction, command: str, key: str, **extra: Any) -> None:
        log.info("dream limit changed by command", extra={
            "guild_id": interaction.guild_id, "actor_id": interaction.user.id, "key": key,
            "command": command, **extra})

    @staticmethod
    def _set_key(store: LimitStore, guild_id: int, key: str, value: str, actor_id: int) -> tuple[Any, GuildLimits]:
        old = getattr(store.get(guild_id), key)  # for the reply only; the audit has the exact old value
        return old, store.set(guild_id, key, value, actor_id)

    # --- the subcommands -----------------------------------------------------------------------------------

    @app_commands.command(name="show", description="Every dream limit on this server, default or set here")
    async def show(self, interaction: discord.Interaction) -> None:
        async def body() -> str:
            gid = interaction.guild_id

            def read(store: LimitStore) -> tuple[GuildLimits, dict[str, Any]]:
                return store.get(gid), store.overrides(gid)

            limits, overrides = await self._redis(interaction, read)
            return show_text(limits, overrides)

        await self._run(interaction, "show", body)

    @app_commands.command(name="set", description="Change one dream limit on this server")
    @app_commands.describe(key="Which limit", value="The new value ('default' goes back to the default)")
    async def set_limit(self, interaction: discord.Interaction, key: app_commands.Range[str, 1, 64],
                        value: app_commands.Range[str, 1, 1500]) -> None:
        async def body() -> str:
            name = key.strip()
            if name not in KNOWN_KEYS:
                return _("Unknown limit {key}. Known limits: {keys}.").format(
                    key=code(name), keys=", ".join(code(k) for k in KNOWN_KEYS))
            try:
                old, updated = await self._redis(interaction, self._set_key, interaction.guild_id, name, value,
                                                 interaction.user.id)
            except LimitError as err:
                # Numbers, paused and channels: the error already says what is allowed.
                if name in LIST_KEYS:
                    return _("Can't set {key}: {error} (allowed: {allowed}).").format(
                        key=code(name), error=err, allowed=range_text(name))
                return _("Can't set {key}: {error}.").format(key=code(name), error=err)
            new = getattr(updated, name)
            self._changed(interaction, "set", name)
            shown = {"key": code(name), "new": render(name, new), "old": render(name, old)}
            if value.strip().lower() == "default":
                return _("{key} follows the default again: **{new}** (was {old}).").format(**shown)
            return _("{key} is now **{new}** (was {old}).").format(**shown)

        await self._run(interaction, "set", body)

    @set_limit.autocomplete("key")
    @app_commands.check(is_guild_admin)  # discord.py answers anyone else with no choices
    async def _autocomplete_key(self, interaction: discord.Interaction,
                                current: str) -> list[app_commands.Choice[str]]:
        return key_choices(current)

    @app_commands.command(name="usage", description="What a member and this server have used")
    @app_commands.describe(user="The member")
    async def usage(self, interaction: discord.Interaction, user: discord.User) -> None:
        async def body() -> str:
            gid = interaction.guild_id

            def read(store: LimitStore) -> tuple[dict[str, Any], GuildLimits, dict]:
                return store.usage(gid, user.id), store.get(gid), moderation.flag_counts(store.r, gid)

            usage, limits, flags = await self._redis(interaction, read)
            roles = {r.id for r in getattr(user, "roles", ())}
            return usage_text(user, usage, limits, exempt=bool(roles & set(limits.exempt_roles)), flags=flags)

        await self._run(interaction, "usage", body)

    @app_commands.command(name="reset-user", description="Forget a member's cooldown, quotas used and active dreams")
    @app_commands.describe(user="The member")
    async def reset_user(self, interaction: discord.Interaction, user: discord.User) -> None:
        async def body() -> str:
            await self._redis(interaction, LimitStore.reset_user, interaction.guild_id, user.id, interaction.user.id)
            self._changed(interaction, "reset-user", "reset_user", user_id=user.id)
            return _("Reset {member} on this server: cooldown, images used this hour and today, and active "
                     "dreams are forgotten (the server's totals keep their images).").format(member=f"<@{user.id}>")

        await self._run(interaction, "reset-user", body)

    @app_commands.command(name="pause", description="Refuse every dream on this server until /dreamadmin resume")
    async def pause(self, interaction: discord.Interaction) -> None:
        await self._set_paused(interaction, True)

    @app_commands.command(name="resume", description="Take dreams on this server again")
    async def resume(self, interaction: discord.Interaction) -> None:
        await self._set_paused(interaction, False)

    async def _set_paused(self, interaction: discord.Interaction, paused: bool) -> None:
        command = "pause" if paused else "resume"

        async def body() -> str:
            _old, updated = await self._redis(interaction, self._set_key, interaction.guild_id, "paused",
                                              "true" if paused else "false", interaction.user.id)
            self._changed(interaction, command, "paused")
            if updated.paused:
                return _("Dreams are **paused** on this server: every /dream is refused until /dreamadmin resume.")
            return _("Dreams are **on** again on this server.")

        await self._run(interaction, command, body)

    @app_commands.command(name="audit", description=f"The last {AUDIT_SHOWN} changes to this server's dream limits")
    async def audit(self, interaction: discord.Interaction) -> None:
        async def body() -> str:
            entries = await self._redis(interaction, LimitStore.audit, interaction.guild_id, AUDIT_SHOWN)
            return audit_text(entries)

        await self._run(interaction, "audit", body)
