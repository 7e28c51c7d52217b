"""Posting a result where its member sees it: one fallback chain for a finished result, a failure and a vote.

Where it posts: while the interaction token lives (15 minutes), the result replaces the member's own
"queued" reply (an edit, so doing it twice shows the same message once); after that, a new channel message
sent with the bot token and a nonce that Discord enforces, so a retry after a lost response is not a
second message. A delivery marker in Redis (bot.relay) then makes the result done for good.

A private result (the member's /settings) edits their reply, which was ephemeral; after 15 minutes it goes to
them by direct message, never to the channel. In which language: the member's (recorded with the job) for
their own reply and for what goes to them alone, the server's for what the bot posts to the channel.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

import aiohttp
import discord

from dreamcore import metrics, moderation
from dreamcore.i18n import _, speaking
from dreamcore.present import result_text
from dreamcore.results import DreamResult
from dreamcore.settings import Settings

from . import moderated
from .buttons import result_view
from .toolkit import INTERACTION_TOKEN_S, NO_MENTIONS

log = logging.getLogger("dreambot.relay")  # the log lines of a delivery, wherever its code sits
TOKEN_MARGIN_S = 30  # a post under way when the token dies is a lost post: the channel takes it a bit before
RETRY_DELAYS_S = (1, 2, 4, 8, 16)
T = TypeVar("T")
# What Discord answers on an interaction webhook whose token is dead (401 "Invalid Webhook Token") or
# whose message is gone: the post moves to the channel instead.
TOKEN_GONE = (401, 403, 404)

# The stops of the chain, in order; each is also the `where` of a post made there.
INTERACTION, DIRECT_MESSAGE, CHANNEL = "interaction", "direct message", "channel"


class Undeliverable(Exception):
    """Discord will never take this post (channel gone, no permission): stop trying."""


@dataclass
class Message:
    """What one stop of the chain posts. The chain adds the rest: the member's mention in the channel, the
    nonce, the 2000-character cut where Discord would refuse more."""

    content: str
    files: list[discord.File] | None = None
    view: discord.ui.View | None = None
    ephemeral: bool = False  # at the interaction: the public "queued" reply goes, this is for the member alone
    mention: bool = True  # in the channel: False where the text names the member itself
    where: str | None = None  # the post's label, where not its stop's name
    refused: str | None = None  # logged when Discord refuses this stop and the post moves on

    def attached(self) -> dict:
        return {k: v for k, v in (("files", self.files), ("view", self.view)) if v is not None}


def in_channel(origin) -> str | None:
    """The language of what the bot posts to a channel on its own: the server's, else its member's."""
    return origin.guild_locale or origin.locale


def nonce_for(job_id: str) -> str:
    return f"dream{job_id}"[:25]


class Poster:
    def __init__(self, client: discord.Client, settings: Settings, token_lifetime_s: float = INTERACTION_TOKEN_S):
        self.client = client
        self.settings = settings
        self.token_lifetime_s = token_lifetime_s

    async def deliver(self, origin, key: str, message: Callable[[str], Message | None]) -> str:
        """`message` down the chain, under the one retry policy; `key` names the post (its nonce, its logs)."""
        return await _retrying(lambda: self._chain(origin, key, message))

    async def _chain(self, origin, key: str, message: Callable[[str], Message | None]) -> str:
        """One try down the chain: the interaction while its token lives, a direct message for a private
        result, the channel. `message(stop)` is what goes there (None: not there), asked in that stop's
        language; where Discord answers that a stop is gone for good, the next one takes the post."""
        if self.token_alive_for(origin):
            with speaking(origin.locale):
                msg = message(INTERACTION)
            if msg is not None:
                hook = self.interaction_webhook(origin)
                try:
                    if msg.ephemeral:
                        try:
                            await hook.delete_message("@original")
                        except discord.NotFound:
                            pass  # already gone (a retry, or the member deleted it)
                        await hook.send(msg.content, ephemeral=True, allowed_mentions=NO_MENTIONS)
                        return "interaction-ephemeral"
                    await hook.edit_message("@original", content=msg.content, attachments=msg.files, view=msg.view,
                                            allowed_mentions=NO_MENTIONS)
                    return msg.where or INTERACTION
                except discord.HTTPException as err:
                    if err.status not in TOKEN_GONE:
                        raise
                    # Token expired (Discord answers 401), or the member deleted the reply.
                    if msg.refused:
                        log.info(msg.refused, extra={"job_id": key, "status": err.status})
        if origin.private:
            with speaking(origin.locale):
                msg = message(DIRECT_MESSAGE)
            if msg is not None:
                try:
                    await self._direct_message(origin.user_id, content=msg.content[:2000], **msg.attached())
                    return msg.where or DIRECT_MESSAGE
                except discord.Forbidden:
                    if msg.refused:
                        log.info(msg.refused, extra={"job_id": key})
        with speaking(in_channel(origin)):
            msg = message(CHANNEL)
        channel = self.client.get_partial_messageable(origin.channel_id, guild_id=origin.guild_id)
        mention = f"<@{origin.user_id}> " if msg.mention and origin.user_id else ""
        try:
            await channel.send(content=(mention + msg.content)[:2000], **msg.attached(),
                               allowed_mentions=NO_MENTIONS, nonce=nonce_for(key))
        except (discord.NotFound, discord.Forbidden) as err:
            raise Undeliverable(f"channel {origin.channel_id}: {err.text or err.status}") from None
        return msg.where or CHANNEL

    def interaction_webhook(self, origin) -> discord.Webhook:
        """The interaction's own webhook, built as discord.py builds `Interaction.followup` (an application
        webhook: only those may send ephemeral messages), from what the job recorded."""
        data = {"id": origin.application_id, "type": 3, "token": origin.interaction_token}
        return discord.Webhook.from_state(data=data, state=self.client._connection)

    def token_alive_for(self, o) -> bool:
        return bool(o and o.interaction_token and o.application_id
                    and time.time() < o.created_at + self.token_lifetime_s - TOKEN_MARGIN_S)

    def token_alive(self, result: DreamResult) -> bool:
        return self.token_alive_for(result.origin)

    async def post(self, result: DreamResult, images: list[bytes], mod: moderation.Moderated | None = None) -> str:
        async def attempt() -> str:
            where = await self._post_once(result, images, mod)
            await self._tell_privately(result, mod)
            return where

        return await _retrying(attempt)

    async def _post_once(self, result: DreamResult, images: list[bytes], mod: moderation.Moderated | None) -> str:
        origin = result.origin
        if origin is None:
            raise Undeliverable("no origin recorded")
        if result.status != "done":
            # Ephemeral at the interaction: the reason is for the member. A failure shows no image, so the
            # channel hears it where a private one can't go by direct message, as for anyone.
            return await self._chain(origin, result.job_id, lambda stop: Message(result_text(result), ephemeral=True))

        def message(stop: str) -> Message:
            if stop == CHANNEL and origin.private:
                # The member takes no direct messages from this server's members: the channel learns only
                # that a private dream of theirs is ready: no prompt, no image.
                note = _("<@{user_id}> your private dream `{job_id}` is ready, but I can't send you direct "
                         "messages: allow them from this server's members, or turn private results off in "
                         "/settings.").format(user_id=origin.user_id, job_id=result.job_id)
                return Message(note, mention=False, where="private: no direct messages")
            text = moderated.with_note(result_text(result), mod, result.job_id)
            files = moderated.files(result, images, mod)
            if stop == DIRECT_MESSAGE:
                # Without the buttons: they act in a server.
                return Message(text, files, refused="private result: the member takes no direct messages")
            # Reroll, Variations, Upscale, Info, Delete; none that would start from a withheld image.
            view = result_view(result, shown=mod.shown if mod is not None else None)
            return Message(text, files, view, refused="interaction reply gone, posting to channel")

        return await self._chain(origin, result.job_id, message)

    async def _direct_message(self, user_id: int, **message) -> None:
        user = self.client.get_user(user_id) or await self.client.fetch_user(user_id)
        await user.send(allowed_mentions=NO_MENTIONS, **message)

    async def _tell_privately(self, result: DreamResult, mod: moderation.Moderated | None) -> None:
        """The member learns which images were held back and why: an ephemeral follow-up while the
        interaction token lives, else a direct message; if Discord takes neither, the public note stands."""
        origin = result.origin
        with speaking(origin.locale):
            note = mod.private_note(result.job_id) if mod is not None else None
        if not note:
            return
        try:
            if self.token_alive(result):
                await self.interaction_webhook(origin).send(note, ephemeral=True, allowed_mentions=NO_MENTIONS)
                return
            await self._direct_message(origin.user_id, content=note)
        except (discord.HTTPException, aiohttp.ClientError, asyncio.TimeoutError) as err:
            log.info("could not tell the member privately about held-back images",
                     extra={"job_id": result.job_id, "error": type(err).__name__})

    async def tell_undelivered(self, result: DreamResult) -> None:
        """Posting keeps failing: a short text-only notice, so the member is not left waiting in silence."""
        origin = result.origin
        if origin is None:
            return
        with speaking(in_channel(origin)):
            note = _("<@{user_id}> your dream `{job_id}` is done, but Discord kept refusing the upload. It is kept "
                     "for {minutes} min; ask an admin if it doesn't show up.").format(
                user_id=origin.user_id, job_id=result.job_id, minutes=self.settings.result_ttl_s // 60)
        try:
            await self.client.get_partial_messageable(origin.channel_id).send(
                note, allowed_mentions=NO_MENTIONS, nonce=nonce_for("n" + result.job_id))
        except (discord.HTTPException, aiohttp.ClientError, asyncio.TimeoutError):
            log.error("could not tell member about undelivered result", extra={"job_id": result.job_id})


async def _retrying(attempt: Callable[[], Awaitable[T]]) -> T:
    """The one retry policy of a post: `attempt()` again after 1, 2, 4, 8 and 16 s while Discord is out of
    reach (a 5xx that outlasted discord.py's own retries of it, a dropped connection, a timeout), then the
    error goes up and the outbox redelivers the result later (bot.relay.MAX_ATTEMPTS). Every attempt carries
    the same nonce, so a post that did land before its answer was lost is not made twice."""
    for delay in (*RETRY_DELAYS_S, None):
        try:
            return await attempt()
        except (discord.DiscordServerError, aiohttp.ClientError, asyncio.TimeoutError):
            if delay is None:
                raise
        metrics.delivery_retry()
        await asyncio.sleep(delay)
    raise AssertionError("unreachable")
