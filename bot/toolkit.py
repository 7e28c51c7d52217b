"""Small pieces every command module shares: no pings, a private answer, who counts as a server admin."""

from __future__ import annotations

import discord

# Every message the bot sends pings nobody: a prompt or a name typed by a member never turns into a mention.
NO_MENTIONS = discord.AllowedMentions.none()


async def answer_privately(interaction: discord.Interaction, text: str) -> None:
    """An ephemeral answer: the interaction's response if it has none yet, else a follow-up."""
    if interaction.response.is_done():
        await interaction.followup.send(text, ephemeral=True, allowed_mentions=NO_MENTIONS)
    else:
        await interaction.response.send_message(text, ephemeral=True, allowed_mentions=NO_MENTIONS)


def is_guild_admin(interaction: discord.Interaction) -> bool:
    """Manage Server or Administrator in the server the interaction came from (never in a DM). Checked on
    every call: `default_permissions` only hides a command, and a server can hand it to anyone."""
    perms = interaction.permissions
    return bool(interaction.guild_id and (perms.manage_guild or perms.administrator))
