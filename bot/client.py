"""One bot instance: a discord.py client with the dream commands and the result relay.

A plain Client with an app-command tree (discord.py's examples/app_commands layout): no message-content
intent, no prefix commands, nothing privileged.
"""

from __future__ import annotations

import asyncio
import logging

import discord
import redis
from discord import app_commands

from dreamcore.i18n import _, duration
from dreamcore.keys import CHANNEL_GONE_TTL_S, channel_gone_key
from dreamcore.settings import Settings

from . import members, remix, toolkit
from .admin import DreamAdmin
from .backend import Backend
from .buttons import DYNAMIC_ITEMS, Buttons
from .commands import DreamCommands, cancel, dream_command, dreamqueue
from .discord_api import prepare_client, use_api_base
from .help import dreamhelp
from .member_settings import PanelButton, PanelSelect, SettingsCommands
from .progress import Progress
from .relay import Relay
from .toolkit import NO_MENTIONS, Refused, answer_privately
from .translator import CatalogTranslator
from .vote import VoteButton, dreamstats, dreamvote

log = logging.getLogger("dreambot.bot")


# What a client can send wrong: an option of another type than the command takes, options that don't match
# the command's signature (a client with an older copy of it), a command this bot doesn't have. Discord's own
# client never sends these; when something does, it is the sender's fault, not ours.
CLIENT_FAULTS = (app_commands.TransformerError, app_commands.CommandSignatureMismatch,
                 app_commands.CommandNotFound)


class OptionsMismatch(app_commands.CommandSignatureMismatch):
    def __init__(self, command, why: str):
        super().__init__(command)
        self.why = why


def mismatch(command, options: list[dict]) -> str | None:
    """Why `options` (an interaction's, as Discord sent them) don't fit `command`'s own signature, or None.
    discord.py passes some such values through to the callback (an integer where a string option is
    declared), where they would fail as our fault; refused here, they are the sender's."""
    if isinstance(command, app_commands.Group):
        for opt in options:
            sub = command.get_command(str(opt.get("name")))
            if opt.get("type") not in (1, 2) or sub is None:
                return f"{opt.get('name')!r} is not a subcommand of /{command.qualified_name}"
            return mismatch(sub, opt.get("options") or [])
        return f"/{command.qualified_name} needs a subcommand"
    params = {p.display_name: p for p in getattr(command, "parameters", [])}
    for opt in options:
        param = params.get(str(opt.get("name")))
        if param is not None and opt.get("type") != param.type.value:
            return f"option {param.display_name!r} came as type {opt.get('type')!r}, not {param.type.value}"
    return None


class DreamTree(app_commands.CommandTree):
    async def interaction_check(self, interaction: discord.Interaction) -> bool:
        """The member's settings and language for the whole command (bot/members.py). Options of another type
        than the command declares are refused before the command runs (as CommandSignatureMismatch, the
        sender's fault: on_error says so and logs one warning line)."""
        await members.meet(interaction, self.client.backend.conn)
        data = interaction.data or {}
        if interaction.type is discord.InteractionType.application_command and data.get("type", 1) == 1:
            command = self.get_command(str(data.get("name")), guild=discord.Object(interaction.guild_id)
                                       if interaction.guild_id else None) or self.get_command(str(data.get("name")))
            why = mismatch(command, data.get("options") or []) if command is not None else None
            if why is not None:
                raise OptionsMismatch(command, why)
        return True

    async def on_error(self, interaction: discord.Interaction, error: app_commands.AppCommandError) -> None:
        """Every failure a member can hit ends in a message to them. What a client sent wrong is logged as one
        warning line; a traceback is kept for this project's own faults, so they are not buried."""
        where = {"command": getattr(interaction.command, "name", None), "guild_id": interaction.guild_id,
                 "user_id": interaction.user.id if interaction.user else None}
        if isinstance(error, Refused):  # a check's refusal (toolkit.admin_only, DreamAdmin.interaction_check)
            text = _(error.message)
        elif isinstance(error, app_commands.CommandOnCooldown):
            text = _("Please wait {duration} before asking again.").format(duration=duration(error.retry_after))
        elif isinstance(error, app_commands.NoPrivateMessage):
            text = _("That command works in a server only.")
        elif isinstance(error, CLIENT_FAULTS):
            log.warning("malformed interaction refused", extra={**where, "error": type(error).__name__,
                                                                 "why": getattr(error, "why", str(error))[:200]})
            text = _("I couldn't read that command as it was sent (an option of another type, or an older "
                     "version of the command); please try again.")
        else:
            log.error("command failed", exc_info=error, extra=where)
            text = _("Something went wrong on my side; nothing was queued. Please try again.")
        try:
            await answer_privately(interaction, text)
        except discord.HTTPException:
            pass


class DreamClient(discord.Client):
    def __init__(self, settings: Settings, conn: redis.Redis | None = None):
        # Before login: login itself already calls GET /users/@me on the API base.
        use_api_base(settings.discord_api_base)
        super().__init__(intents=discord.Intents.none() | discord.Intents(guilds=True),
                         allowed_mentions=NO_MENTIONS)
        self.settings = settings
        self.tree = DreamTree(self)
        self.backend = Backend(settings, conn)
        self.dream = DreamCommands(settings, self.backend)
        # Every slash command, in the order Discord lists them: discord.py's @app_commands.command functions and
        # app_commands.Group subclasses, each reaching this client as interaction.client.
        for command in (dream_command(settings), dreamqueue, cancel, DreamAdmin(), dreamhelp, dreamvote, dreamstats,
                        SettingsCommands()):
            self.tree.add_command(command)
        self.relay = Relay(self, settings, self.backend.conn, self.backend.images)
        self.progress = Progress(self, self.backend)
        self.relay.progress = self.progress
        self.dream.progress = self.progress
        self.buttons = Buttons(self, settings, self.backend, self.dream)  # reached by clicks as client.buttons
        self._tasks: list[asyncio.Task] = []

    async def setup_hook(self) -> None:
        await prepare_client(self, self.settings.discord_api_base)
        # The result buttons are matched on their custom id alone: any process of this bot, started any time
        # after the result was posted, answers them (bot/buttons.py).
        self.add_dynamic_items(*DYNAMIC_ITEMS, VoteButton, remix.RegionSelect, PanelSelect, PanelButton)
        # Every command, option and choice in each member's language (bot/translator.py), sent with the sync.
        await self.tree.set_translator(CatalogTranslator())
        guilds = self.settings.guild_id_list
        if guilds:
            # Guild commands show up at once: the choice while setting a server up.
            for gid in guilds:
                g = discord.Object(id=gid)
                self.tree.copy_global_to(guild=g)
                await self.tree.sync(guild=g)
        else:
            await self.tree.sync()
        log.info("commands synced", extra={"scope": "guilds" if guilds else "global", "guilds": len(guilds)})
        self._tasks = [asyncio.create_task(self.relay.run(), name="relay"),
                       asyncio.create_task(self.progress.run(), name="progress")]

    async def on_ready(self) -> None:
        log.info("connected", extra={"user_id": self.user.id if self.user else None,
                                     "instance": self.settings.instance, "guilds": len(self.guilds)})

    async def on_interaction(self, interaction: discord.Interaction) -> None:
        """Remix and Vary (Region) modals are answered by their custom id (bot/remix.py), on any process."""
        if interaction.type == discord.InteractionType.modal_submit:
            await members.meet(interaction, self.backend.conn)
            try:
                await remix.on_modal_submit(self.buttons, interaction)
            except Exception:
                log.exception("modal submit failed")
                try:
                    await answer_privately(interaction, _("Something went wrong on my side with that. Please try again."))
                except discord.HTTPException:
                    pass

    async def on_guild_channel_delete(self, channel: discord.abc.GuildChannel) -> None:
        """Workers check this before generating, so a deleted channel's queued dreams cost no GPU time."""
        try:
            await toolkit.command(self.backend.conn.set, channel_gone_key(channel.id), 1, ex=CHANNEL_GONE_TTL_S)
        except redis.RedisError:
            log.warning("could not record a deleted channel", extra={"channel_id": channel.id})

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        await super().close()


def command_tree() -> app_commands.CommandTree:
    """The commands as every instance registers them, for the catalogs (dreambot/catalogs.py): from a client
    that never connects, with the operator's defaults."""
    return DreamClient(Settings()).tree
