"""Who is asking: a member's saved settings (dreamcore.preferences) and the language their answers are in,
looked up once at the start of every interaction (a command, a click, a modal) and kept for its task.

Every way in calls `meet` first (bot/client.py's tree check, each dynamic item's from_custom_id, the modal
handler), so any message made after it, on the loop or on a thread the bot hands work to (bot/toolkit.py), is
in the member's language.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging

import discord
import redis

from dreamcore import i18n, preferences
from dreamcore.preferences import Loaded

from . import toolkit
from .moderated import channel_is_nsfw

log = logging.getLogger("dreambot.bot")

# One GET: Redis answers in a millisecond, and past this the member is answered in their client's language
# with the operator's defaults rather than late.
SETTINGS_WAIT_S = 0.5

_loaded: contextvars.ContextVar[Loaded | None] = contextvars.ContextVar("dreambot_member", default=None)


async def meet(interaction: discord.Interaction, conn: redis.Redis) -> Loaded:
    """Read the member's settings and speak their language (their override, else their client's) for the
    rest of this interaction's task."""
    try:
        loaded = await asyncio.wait_for(toolkit.command(preferences.load, conn, interaction.user.id), SETTINGS_WAIT_S)
    except (asyncio.TimeoutError, redis.RedisError) as err:
        log.warning("member settings unread: defaults used", extra={"user_id": interaction.user.id,
                                                                   "error": type(err).__name__})
        loaded = Loaded()
    _loaded.set(loaded)
    i18n.use(loaded.prefs.language or _client_locale(interaction))
    return loaded


def current() -> Loaded:
    """The settings `meet` read for the interaction being answered (none: the defaults)."""
    return _loaded.get() or Loaded()


def remember(prefs: preferences.Preferences, interaction: discord.Interaction) -> None:
    """After a change: the rest of this interaction uses the new settings and language."""
    _loaded.set(Loaded(prefs=prefs))
    i18n.use(prefs.language or _client_locale(interaction))


def origin_fields(interaction: discord.Interaction, instance: str) -> dict:
    """Where a job asked for by `interaction` comes from (dreamcore.job.Origin's fields, for make_origin), with
    what the bot alone keeps of its member: their language, the server's, and whether they want the result to
    themselves."""
    return {"instance": instance, "guild_id": interaction.guild_id, "channel_id": interaction.channel_id,
            "user_id": interaction.user.id, "application_id": interaction.application_id,
            "interaction_id": interaction.id, "interaction_token": interaction.token,
            "channel_nsfw": channel_is_nsfw(interaction.channel),
            "locale": i18n.current(), "guild_locale": server_locale(interaction), "private": current().prefs.private}


def server_locale(interaction: discord.Interaction) -> str | None:
    """The server's language (Discord's `guild_locale`, its community setting), resolved; None in a DM."""
    value = getattr(interaction, "guild_locale", None)
    return i18n.resolve(value.value) if value is not None else None


def _client_locale(interaction: discord.Interaction) -> str | None:
    value = getattr(interaction, "locale", None)
    return value.value if value is not None else None
