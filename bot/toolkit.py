"""Small pieces every command module shares: where its blocking calls run, no pings, the 3-second ack, a private
answer, who counts as a server admin (and the check that refuses anyone else), what a member reads when a
store is unreachable.

Where the blocking calls run. Redis and the image store are synchronous clients, so a call runs on a thread;
which threads decides what can hold up what.

asyncio.to_thread shares the event loop's one default executor among everything: a few slow reads (a command
that reads much, a store that hangs) would take its threads and the next /dream would wait for one, past
Discord's 3-second window. So commands get executors of their own, bounded:

    submit    /dream and the buttons that queue: limits, backpressure, the enqueue
    command   every other command's and button's reads and writes (/dreamqueue, /cancel, /dreamadmin,
              /dreamstats, /dreamhelp, Info, Delete, votes)
    picture   decoding a member's picture (dreamcore.image_in): up to a gigabyte at its peak for the largest
              picture allowed, so two at a time, and never on a thread a command is waiting for

and the result relay and the live status keep the default executor, so a flood of results never takes a thread
a member is waiting on either. Each pool's size bounds how many calls of its kind run at once; more wait their
turn in it (each Redis call gives up after redisconn.BOT_READ_TIMEOUT_S, so a turn is short).
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import discord
from discord import app_commands

from dreamcore import redisconn
from dreamcore.i18n import N_

T = TypeVar("T")

# --- Where the blocking calls run (see above) ----------------------------------------------------------------

# How long a command's or a button's reads and writes may hold up its answer: as long as one Redis call may
# take before it gives up; past it, the member hears that the store is unreachable.
READ_TIMEOUT_S = redisconn.BOT_READ_TIMEOUT_S

SUBMIT_THREADS = 16
COMMAND_THREADS = 8

_submit = ThreadPoolExecutor(max_workers=SUBMIT_THREADS, thread_name_prefix="submit")
_command = ThreadPoolExecutor(max_workers=COMMAND_THREADS, thread_name_prefix="command")
PICTURE_THREADS = 2
_picture = ThreadPoolExecutor(max_workers=PICTURE_THREADS, thread_name_prefix="picture")


async def _run(pool: ThreadPoolExecutor, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    # In a copy of the caller's context, as asyncio.to_thread runs it: a message made on the thread is in the
    # language of the command that asked (dreamcore.i18n).
    call = functools.partial(contextvars.copy_context().run, fn, *args, **kwargs)
    return await asyncio.get_running_loop().run_in_executor(pool, call)


async def submit(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """A call that queues a dream."""
    return await _run(_submit, fn, *args, **kwargs)


async def command(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """Any other call a command or a button makes."""
    return await _run(_command, fn, *args, **kwargs)


async def in_time(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """A command's or a button's call that must answer within READ_TIMEOUT_S (asyncio.TimeoutError past it)."""
    return await asyncio.wait_for(command(fn, *args, **kwargs), READ_TIMEOUT_S)


async def picture(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """Decoding a member's picture."""
    return await _run(_picture, fn, *args, **kwargs)


# --- Answers ------------------------------------------------------------------------------------------------

# Discord's rule: an interaction's token (its reply's edits, its follow-ups) lives this long.
INTERACTION_TOKEN_S = 15 * 60

# Redis normally answers in a millisecond; past this, a command defers so Discord's 3-second window holds.
ACK_BUDGET_S = 1.0

# Every message the bot sends pings nobody: a prompt or a name typed by a member never turns into a mention.
NO_MENTIONS = discord.AllowedMentions.none()

# What a command or a button answers when Redis or the image store doesn't (within READ_TIMEOUT_S). A
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
