"""Small pieces every command module shares: no pings, the 3-second ack, a private answer, who counts as a
server admin (and the check that refuses anyone else), what a member reads when a store is unreachable."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TypeVar

import discord
from discord import app_commands

from dreamcore.i18n import N_

T = TypeVar("T")

# Discord's rule: an interaction's token (its reply's edits, its follow-ups) lives this long.
INTERACTION_TOKEN_S = 15 * 60

# Redis normally answers in a millisecond; past this, a command defers so Discord's 3-second window holds.
ACK_BUDGET_S = 1.0

# Every message the bot sends pings nobody: a prompt or a name typed by a member never turns into a mention.
NO_MENTIONS = discord.AllowedMentions.none()

# What a command or a button answers when Redis or the image store doesn't (within calls.READ_TIMEOUT_S). A
# refused dream says more: backend.UNAVAILABLE promises that nothing was queued.
STORE_DOWN = N_("I can't reach my storage right now. Please try again in a minute.")


async def answer_privately(interaction: discord.Interaction, text: str) -> None:
    """An ephemeral answer: the interaction's response if it has none yet, else a follow-up."""
    if interaction.response.is_done():
        await interaction.followup.send(text, ephemeral=True, allowed_mentions=NO_MENTIONS)
    else:
        await interaction.response.send_message(text, ephemeral=True, allowed_mentions=NO_MENTIONS)


def choices(labels: dict[str, str]) -> list[discord.app_commands.Choice[str]]:
    """An option's choices from a table of value -> English label (each label is translated at sync)."""
    return [discord.app_commands.Choice(name=label, value=value) for value, label in labels.items()]


def is_guild_admin(interaction: discord.Interaction) -> bool:
    """Manage Server or Administrator in the server the interaction came from (never in a DM). Checked on
    every call: `default_permissions` only hides a command, and a server can hand it to anyone."""
    perms = interaction.permissions
    return bool(interaction.guild_id and (perms.manage_guild or perms.administrator))


class Refused(app_commands.CheckFailure):
    """A check's refusal, with what the member reads (a msgid): the tree's on_error says it, privately."""

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message


def admin_only(refusal: str):
    """discord.py's check (app_commands.check) for a command only a server's admins may run; anyone else
    reads `refusal`."""
    def predicate(interaction: discord.Interaction) -> bool:
        if not is_guild_admin(interaction):
            raise Refused(refusal)
        return True

    return app_commands.check(predicate)


async def within_ack(interaction: discord.Interaction, work: Awaitable[T], timeout_s: float, *,
                     ephemeral: bool = False, on_ack: Callable[[], None] | None = None) -> tuple[T, bool]:
    """(what `work` returns, whether the interaction was deferred here). The work gets ACK_BUDGET_S to finish
    before the answer; past that the interaction is deferred ("thinking...", private when `ephemeral`) so
    Discord's 3-second window holds, and the work gets `timeout_s` more, past which asyncio.TimeoutError
    goes up. `on_ack` is called when the defer went out. The first wait never cancels the work (it is
    shielded); a thread behind it runs to its end even when the second wait gives up."""
    task = asyncio.ensure_future(work)
    try:
        return await asyncio.wait_for(asyncio.shield(task), ACK_BUDGET_S), False
    except asyncio.TimeoutError:
        deferred = False
        if not interaction.response.is_done():
            await interaction.response.defer(ephemeral=ephemeral, thinking=True)
            deferred = True
            if on_ack is not None:
                on_ack()
        return await asyncio.wait_for(task, timeout_s), deferred


async def answer(interaction: discord.Interaction, text: str, *, public: bool, deferred: bool,
                 on_ack: Callable[[], None] | None = None) -> None:
    """The answer to an interaction whose work may have been deferred (within_ack): a reply of its own
    (private unless `public`; `on_ack` called once it is out), or the public "thinking..." reply edited into
    it, or, for a private answer, that reply deleted and the answer sent privately in its place."""
    if not deferred:
        await interaction.response.send_message(text, ephemeral=not public, allowed_mentions=NO_MENTIONS)
        if on_ack is not None:
            on_ack()
    elif public:
        await interaction.edit_original_response(content=text, allowed_mentions=NO_MENTIONS)
    else:
        await interaction.delete_original_response()
        await interaction.followup.send(text, ephemeral=True, allowed_mentions=NO_MENTIONS)
