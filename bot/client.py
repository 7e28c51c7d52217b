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

from dreamcore.keys import CHANNEL_GONE_TTL_S, channel_gone_key
from dreamcore.settings import Settings

from .admin import register_admin
from .backend import Backend
from .buttons import DYNAMIC_ITEMS, Buttons
from .commands import DreamCommands
from .discord_api import prepare_client, use_api_base
from .help import register_help
from .progress import Progress
from .relay import Relay
from .toolkit import NO_MENTIONS, answer_privately
from .vote import VoteButton, register_vote

log = logging.getLogger("dreambot.bot")


class DreamTree(app_commands.CommandTree):
    async def on_error(self, interaction: discord.Interaction, error: app_commands.AppCommandError) -> None:
        """Every failure a member can hit ends in a message to them."""
        log.error("command failed", exc_info=error, extra={"command": getattr(interaction.command, "name", None)})
        text = "Something went wrong on my side; nothing was queued. Please try again."
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
        self.dream = DreamCommands(self, settings, self.backend)
        self.dream.register(self.tree)
        register_admin(self.tree, self)
        register_help(self.tree, self)
        register_vote(self.tree, self)
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
        self.add_dynamic_items(*DYNAMIC_ITEMS, VoteButton)
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

    async def on_guild_channel_delete(self, channel: discord.abc.GuildChannel) -> None:
        """Workers check this before generating, so a deleted channel's queued dreams cost no GPU time."""
        try:
            await asyncio.to_thread(self.backend.conn.set, channel_gone_key(channel.id), 1, ex=CHANNEL_GONE_TTL_S)
        except redis.RedisError:
            log.warning("could not record a deleted channel", extra={"channel_id": channel.id})

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        await super().close()
