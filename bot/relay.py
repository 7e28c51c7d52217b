"""Posting results back: this instance reads its outbox and posts each result once, as itself.

Where it posts: while the interaction token lives (15 minutes), the result replaces the member's own
"queued" reply (an edit, so doing it twice shows the same message once); after that, a new channel message
sent with the bot token and a nonce that Discord enforces, so a retry after a lost response is not a
second message. A delivery marker in Redis then makes the result done for good.

A private result (the member's /settings) edits their reply, which was ephemeral; after 15 minutes it goes to
them by direct message, never to the channel. In which language: the member's (recorded with the job) for
their own reply and for what goes to them alone, the server's for what the bot posts to the channel.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

import aiohttp
import discord
import redis

from dreamcore import cost, delivery, faults, keys, ledger, metrics, moderation, params, votes
from dreamcore.i18n import _, speaking
from dreamcore.images import ImageStore, ImageStoreError
from dreamcore.job import JobError, make_job
from dreamcore.limit_store import LimitStore
from dreamcore.limiter import Limiter
from dreamcore.present import result_text
from dreamcore.results import DreamResult, Outbox, OutboxEntry
from dreamcore.settings import Settings

from . import moderated
from .buttons import result_view
from .toolkit import INTERACTION_TOKEN_S, NO_MENTIONS
from .vote import vote_files, vote_text, vote_view

log = logging.getLogger("dreambot.relay")
TOKEN_MARGIN_S = 30  # a post under way when the token dies is a lost post: the channel takes it a bit before
RETRY_DELAYS_S = (1, 2, 4, 8, 16)
T = TypeVar("T")
MAX_ATTEMPTS = 8
# What Discord answers on an interaction webhook whose token is dead (401 "Invalid Webhook Token") or
# whose message is gone: the post moves to the channel instead.
TOKEN_GONE = (401, 403, 404)  # passes over one result (each with RETRY_DELAYS_S inside) before the member is told


class Undeliverable(Exception):
    """Discord will never take this post (channel gone, no permission): stop trying."""


def in_channel(origin) -> str | None:
    """The language of what the bot posts to a channel on its own: the server's, else its member's."""
    return origin.guild_locale or origin.locale


def nonce_for(job_id: str) -> str:
    return f"dream{job_id}"[:25]


class Relay:
    def __init__(self, client: discord.Client, settings: Settings, conn: redis.Redis, store: ImageStore,
                 token_lifetime_s: float = INTERACTION_TOKEN_S):
        self.client = client
        self.settings = settings
        self.conn = conn
        self.store = store
        self.token_lifetime_s = token_lifetime_s
        consumer = f"{settings.instance}-{socket.gethostname()}-{os.getpid()}"
        self.outbox = Outbox(conn, settings.instance, consumer)
        self.limits = LimitStore(conn, settings)
        self.limiter = Limiter(conn, self.limits)
        self.delivered = 0
        self.progress = None  # set by the client: live status edits

    async def run(self) -> None:
        backoff = 0.5
        first, idle_ms = True, self.outbox.claim_idle_ms
        while not self.client.is_closed():
            try:
                await asyncio.to_thread(self.outbox.ensure_group)
                # One process per instance: what is pending at start was left by our previous life.
                self.outbox.claim_idle_ms = 0 if first else idle_ms
                entries = await asyncio.to_thread(self.outbox.read, 1000)
                if first:
                    # Published but never delivered, whatever became of their stream entries.
                    swept = await asyncio.to_thread(self.outbox.sweep, self.settings.failure_ttl_s)
                    if swept:
                        log.info("undelivered results found at start", extra={"results": len(swept)})
                    entries = [*entries, *swept]
                    # Vote rounds from before the win-rate counters go into them, once per deployment.
                    if counted := await asyncio.to_thread(votes.count_old_rounds, self.conn):
                        log.info("older vote rounds counted into the win rates", extra={"rounds": counted})
                    first = False  # only once all of the start's work went through: else it runs again
                backoff = 0.5
            except redis.RedisError as err:
                log.warning("outbox unreachable, retrying", extra={"error": type(err).__name__, "in_s": backoff})
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 15)
                continue
            for entry in entries:
                try:
                    await self.handle(entry)
                except Exception:
                    # A bug on one result must not stop every later delivery: log it, leave the entry
                    # pending (the outbox hands it out again after its idle time) and go on.
                    log.exception("delivery crashed", extra={"job_id": entry.job_id})
                    await self._give_up_after_repeats(entry)

    async def handle(self, entry: OutboxEntry) -> None:
        job_id = entry.job_id
        if entry.status == "progress":
            await asyncio.to_thread(self.outbox.ack, entry)  # lossy: only the latest state matters
            if self.progress is not None:
                try:
                    await self.progress.on_worker_progress(job_id, self)
                except (discord.HTTPException, aiohttp.ClientError, asyncio.TimeoutError, redis.RedisError) as err:
                    log.debug("progress edit skipped", extra={"job_id": job_id, "error": type(err).__name__})
                except Exception:  # a courtesy: never a delivery attempt of the job's result, whatever it was
                    log.exception("progress edit failed", extra={"job_id": job_id})
            return
        if self.progress is not None:
            self.progress.forget(job_id)
        try:
            if await asyncio.to_thread(self.outbox.delivered, job_id):
                await asyncio.to_thread(self.outbox.ack, entry)
                return
            got = await asyncio.to_thread(self.verified, job_id)
        except (redis.RedisError, ImageStoreError) as err:
            log.warning("result unreadable for now, will retry", extra={"job_id": job_id, "error": str(err)})
            return  # stays pending; claimed again later
        if got is None:
            await asyncio.to_thread(self.outbox.ack, entry)
            return
        result, images = got.result, got.images
        try:
            in_round = await asyncio.to_thread(votes.round_of, self.conn, job_id)
            # The quota is settled here, by the bot that took it, from its own record: a worker holds no limits.
            await asyncio.to_thread(self.settle_quota, result)
        except redis.RedisError:
            return  # stays pending; claimed again later
        if in_round is not None:
            await self.handle_vote(entry, in_round, result, images)
            return
        if result.status == "done" and result.images:
            # Before the post: every message that carries the buttons has the record they read.
            try:
                await asyncio.to_thread(params.save, self.conn, params.from_result(result),
                                        self.settings.params_ttl_s)
            except redis.RedisError:
                return  # stays pending; claimed again later
        try:
            mod = await asyncio.to_thread(self.moderate, result)
        except redis.RedisError:
            return  # stays pending; claimed again later
        try:
            where = await self.post(result, images, mod)
        except Undeliverable as err:
            where = f"undeliverable: {err}"
            log.warning("result undeliverable", extra={"job_id": job_id, "reason": str(err)})
        except (discord.HTTPException, aiohttp.ClientError, asyncio.TimeoutError, OSError) as err:
            attempts = await asyncio.to_thread(_count_attempt, self.conn, job_id)
            log.warning("delivery failed, will retry", extra={"job_id": job_id, "attempt": attempts,
                                                              "error": type(err).__name__})
            if attempts < MAX_ATTEMPTS:
                metrics.delivery_retry()
                return  # left pending: the outbox hands it out again after its idle time
            where = "gave up"
            await self._tell_undelivered(result)
        faults.hit("bot-after-post")
        await self._count_flags(result, mod)
        try:
            await asyncio.to_thread(self.outbox.mark_delivered, job_id, where)
            await asyncio.to_thread(self.outbox.ack, entry)
            await asyncio.to_thread(ledger.forget, self.conn, job_id)
        except redis.RedisError:
            log.warning("could not record delivery; a retry will find the post already made",
                        extra={"job_id": job_id})
        self.delivered += 1
        metrics.delivered(where)
        log.info("result delivered", extra={"job_id": job_id, "where": where, "status": result.status,
                                            "rebuilt": got.rebuilt})

    def verified(self, job_id: str) -> delivery.Delivery | None:
        """The result as this instance may post it (dreamcore.delivery); None, logged, for a forgery."""
        try:
            got = delivery.for_delivery(self.conn, self.store, job_id, self.settings.instance)
        except delivery.Forgery as err:
            log.warning("forged result refused: not posted", extra={"job_id": job_id, "reason": str(err),
                                                                    "instance": self.settings.instance})
            metrics.delivered("forged")
            return None
        if got.rebuilt:
            log.info("result had expired; rebuilt from the job's record and the image store",
                     extra={"job_id": job_id, "status": got.result.status})
        return got

    def settle_quota(self, result: DreamResult) -> None:
        """The job ended: its member's active slot comes back, and its cost too when it made nothing; what it
        made is charged at what it cost (dreamcore.cost.made: the faces its face pass really redrew)."""
        o = result.origin
        done = result.status == "done"
        self.limiter.release(o.guild_id, o.user_id, result.job_id, refund=not done,
                             settle=self.cost_of(result) if done else None)

    def cost_of(self, result: DreamResult) -> float | None:
        """A finished result's measured cost; None where its record can't say (nothing is settled then)."""
        if result.request is None or not result.images:
            return None
        try:
            job = make_job(result.request, result.origin, job_id=result.job_id, kind=result.kind,
                           source=result.source)
        except JobError:
            return None
        first = result.images[0]
        return cost.made(job, self.settings.upscale_tile, self.settings.upscale_overlap, (first.width, first.height),
                         result.timings)

    def moderate(self, result: DreamResult) -> moderation.Moderated | None:
        """The guild's verdict on each image of a finished result (reads the guild's policy: Redis)."""
        if result.status != "done" or result.origin is None or not result.images:
            return None
        limits = self.limits.get(result.origin.guild_id)
        # A direct message is no age-restricted channel, whatever channel the dream came from.
        by_dm = result.origin.private and not self.token_alive(result)
        return moderated.moderate(result, limits, not by_dm and moderated.post_is_age_restricted(self.client,
                                                                                                 result.origin))

    async def _count_flags(self, result: DreamResult, mod: moderation.Moderated | None) -> None:
        if mod is None or result.origin is None:
            return
        counts = moderated.count(result.origin.guild_id, mod)
        if counts:
            log.info("images flagged", extra={"job_id": result.job_id, "guild_id": result.origin.guild_id, **counts})
            try:
                await asyncio.to_thread(moderation.record, self.conn, result.origin.guild_id, counts)
            except redis.RedisError:
                pass  # a count for /dreamadmin usage; the metrics have it too

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
                await self._interaction_webhook(result).send(note, ephemeral=True, allowed_mentions=NO_MENTIONS)
                return
            await self._direct_message(origin.user_id, content=note)
        except (discord.HTTPException, aiohttp.ClientError, asyncio.TimeoutError) as err:
            log.info("could not tell the member privately about held-back images",
                     extra={"job_id": result.job_id, "error": type(err).__name__})

    async def _give_up_after_repeats(self, entry: OutboxEntry) -> None:
        """A result whose delivery keeps crashing is dropped from the outbox after MAX_ATTEMPTS tries
        (it stays in Redis until its TTL), instead of being retried forever."""
        try:
            attempts = await asyncio.to_thread(_count_attempt, self.conn, entry.job_id)
            if attempts >= MAX_ATTEMPTS:
                await asyncio.to_thread(self.outbox.mark_delivered, entry.job_id, "gave up: delivery crashed")
                metrics.delivered("gave_up")
                await asyncio.to_thread(self.outbox.ack, entry)
        except redis.RedisError:
            pass

    async def handle_vote(self, entry: OutboxEntry, in_round: tuple[str, str], result: DreamResult,
                          images: list[bytes]) -> None:
        """A vote round's candidate: hold the first to finish; post both together when the second lands."""
        round_id, side = in_round
        record = await asyncio.to_thread(votes.load_round, self.conn, round_id)
        other = "b" if side == "a" else "a"
        partner = None
        if record is not None:
            try:
                partner = await asyncio.to_thread(self._finished_partner, record[other]["job_id"])
            except (ImageStoreError, redis.RedisError) as err:
                log.warning("vote partner unreadable for now, will retry", extra={"job_id": result.job_id,
                                                                                  "error": str(err)})
                return  # left pending
        if record is not None and partner is None:
            # The other candidate is still being made: this one waits in Redis for it.
            await asyncio.to_thread(self.outbox.mark_delivered, result.job_id, f"vote {round_id}: held")
            await asyncio.to_thread(self.outbox.ack, entry)
            return
        pair = {side: (result, images), other: partner} if partner else {side: (result, images)}
        done = {k: v for k, v in pair.items() if v[0].status == "done"}
        try:
            mods = {k: await asyncio.to_thread(self.moderate, r) for k, (r, _images) in done.items()}
        except redis.RedisError:
            return  # left pending
        try:
            if record is not None and len(done) == 2 and not any(m and m.withheld for m in mods.values()):
                where = await self._post_vote(record, *done["a"], *done["b"], mods["a"], mods["b"])
                posted = ["a", "b"]
            else:
                # A candidate failed, or the content filter holds back some of its images (a vote between
                # one picture and a gap is no vote): the candidate with the most to show goes out alone.
                side = min(done, key=lambda k: len(mods[k].withheld) if mods[k] else 0) if done else side
                shown = done.get(side, (result, images))
                where = await self.post(*shown, mods.get(side))
                posted = [side] if side in done else []
        except Undeliverable as err:
            where = f"undeliverable: {err}"
        except (discord.HTTPException, aiohttp.ClientError, asyncio.TimeoutError, OSError) as err:
            log.warning("vote delivery failed, will retry", extra={"job_id": result.job_id, "error": type(err).__name__})
            return  # left pending
        if not where.startswith("undeliverable"):
            for k in posted:
                await self._count_flags(done[k][0], mods[k])
        for r, _images in pair.values():
            await asyncio.to_thread(self.outbox.mark_delivered, r.job_id, where)
            await asyncio.to_thread(ledger.forget, self.conn, r.job_id)
        await asyncio.to_thread(self.outbox.ack, entry)
        self.delivered += 1
        metrics.delivered(where.split(":")[0])
        log.info("vote round delivered", extra={"round": round_id, "where": where})

    def _finished_partner(self, job_id: str) -> tuple[DreamResult, list[bytes]] | None:
        """The other candidate of a round when it has finished (its result is there, or it was held for this
        one, maybe long enough for its result to expire); None while it is still being made."""
        if not self.conn.exists(keys.result_key(job_id)) and not self._held(job_id):
            return None
        got = self.verified(job_id)
        return None if got is None else (got.result, got.images)

    def _held(self, job_id: str) -> bool:
        where = self.conn.get(keys.delivered_key(job_id))
        return where is not None and where.decode().startswith("vote ") and where.decode().endswith(": held")

    async def _post_vote(self, record: dict, a: DreamResult, a_images: list[bytes], b: DreamResult,
                         b_images: list[bytes], a_mod: moderation.Moderated | None = None,
                         b_mod: moderation.Moderated | None = None) -> str:
        def words(locale: str | None) -> str:
            with speaking(locale):
                text = vote_text(record, a, b)
                for m in (a_mod, b_mod):
                    text = moderated.with_note(text, m)
                return text

        async def attempt() -> str:
            if self.token_alive(a):
                text = words(a.origin.locale)
                try:
                    await self._interaction_webhook(a).edit_message(
                        "@original", content=text, attachments=vote_files(a, a_images, b, b_images, a_mod, b_mod),
                        view=vote_view(record["round"]), allowed_mentions=NO_MENTIONS)
                    return "interaction"
                except discord.HTTPException as err:
                    if err.status not in TOKEN_GONE:
                        raise
            text = words(in_channel(a.origin))
            channel = self.client.get_partial_messageable(a.origin.channel_id, guild_id=a.origin.guild_id)
            try:
                await channel.send(content=f"<@{a.origin.user_id}> {text}"[:2000],
                                   files=vote_files(a, a_images, b, b_images, a_mod, b_mod),
                                   view=vote_view(record["round"]),
                                   allowed_mentions=NO_MENTIONS, nonce=nonce_for("v" + record["round"]))
            except (discord.NotFound, discord.Forbidden) as err:
                raise Undeliverable(f"channel {a.origin.channel_id}: {err.text or err.status}") from None
            return "channel"

        return await _retrying(attempt)

    def interaction_webhook(self, origin) -> discord.Webhook:
        """The interaction's own webhook, built as discord.py builds `Interaction.followup` (an application
        webhook: only those may send ephemeral messages), from what the job recorded."""
        data = {"id": origin.application_id, "type": 3, "token": origin.interaction_token}
        return discord.Webhook.from_state(data=data, state=self.client._connection)

    def _interaction_webhook(self, result: DreamResult) -> discord.Webhook:
        return self.interaction_webhook(result.origin)

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
            return await self._post_failure(result)

        def message(locale: str | None) -> tuple[str, list[discord.File], discord.ui.View]:
            with speaking(locale):
                text = moderated.with_note(result_text(result), mod, result.job_id)
                # Reroll, Variations, Upscale, Info, Delete; none that would start from a withheld image.
                return text, moderated.files(result, images, mod), result_view(
                    result, shown=mod.shown if mod is not None else None)

        if self.token_alive(result):
            text, files, view = message(origin.locale)
            hook = self._interaction_webhook(result)
            try:
                await hook.edit_message("@original", content=text, attachments=files, view=view,
                                        allowed_mentions=NO_MENTIONS)
                return "interaction"
            except discord.HTTPException as err:
                if err.status not in TOKEN_GONE:
                    raise
                # Token expired (Discord answers 401), or the member deleted the reply: use the channel.
                log.info("interaction reply gone, posting to channel", extra={"job_id": result.job_id,
                                                                             "status": err.status})
        if origin.private:
            return await self._send_privately(result, images, mod)
        text, files, view = message(in_channel(origin))
        channel = self.client.get_partial_messageable(origin.channel_id, guild_id=origin.guild_id)
        mention = f"<@{origin.user_id}> " if origin.user_id else ""
        try:
            await channel.send(content=(mention + text)[:2000], files=files, view=view,
                               allowed_mentions=NO_MENTIONS, nonce=nonce_for(result.job_id))
        except (discord.NotFound, discord.Forbidden) as err:
            raise Undeliverable(f"channel {origin.channel_id}: {err.text or err.status}") from None
        return "channel"

    async def _direct_message(self, user_id: int, **message) -> None:
        user = self.client.get_user(user_id) or await self.client.fetch_user(user_id)
        await user.send(allowed_mentions=NO_MENTIONS, **message)

    async def _send_privately(self, result: DreamResult, images: list[bytes], mod: moderation.Moderated | None) -> str:
        """A private result whose interaction has expired: to the member by direct message, without the
        buttons (they act in a server). Where Discord refuses (the member takes no direct messages from this
        server's members), the channel learns only that a private dream of theirs is ready: no prompt, no
        image."""
        origin = result.origin
        with speaking(origin.locale):
            text = moderated.with_note(result_text(result), mod, result.job_id)
            files = moderated.files(result, images, mod)
        try:
            await self._direct_message(origin.user_id, content=text[:2000], files=files)
            return "direct message"
        except discord.Forbidden:
            log.info("private result: the member takes no direct messages", extra={"job_id": result.job_id})
        with speaking(in_channel(origin)):
            note = _("<@{user_id}> your private dream `{job_id}` is ready, but I can't send you direct messages: "
                     "allow them from this server's members, or turn private results off in /settings.").format(
                user_id=origin.user_id, job_id=result.job_id)
        channel = self.client.get_partial_messageable(origin.channel_id, guild_id=origin.guild_id)
        try:
            await channel.send(content=note, allowed_mentions=NO_MENTIONS, nonce=nonce_for(result.job_id))
        except (discord.NotFound, discord.Forbidden) as err:
            raise Undeliverable(f"channel {origin.channel_id}: {err.text or err.status}") from None
        return "private: no direct messages"

    async def _post_failure(self, result: DreamResult) -> str:
        origin = result.origin
        if self.token_alive(result):
            with speaking(origin.locale):
                text = result_text(result)
            hook = self._interaction_webhook(result)
            # Ephemeral where possible: the public "queued" reply goes, the reason is for the member.
            try:
                try:
                    await hook.delete_message("@original")
                except discord.NotFound:
                    pass  # already gone (a retry, or the member deleted it)
                await hook.send(text, ephemeral=True, allowed_mentions=NO_MENTIONS)
                return "interaction-ephemeral"
            except discord.HTTPException as err:
                if err.status not in TOKEN_GONE:
                    raise
        if origin.private:
            with speaking(origin.locale):
                text = result_text(result)
            try:
                await self._direct_message(origin.user_id, content=text[:2000])
                return "direct message"
            except discord.Forbidden:
                pass  # the channel hears it, as for anyone: a failure shows no image
        with speaking(in_channel(origin)):
            text = result_text(result)
        channel = self.client.get_partial_messageable(origin.channel_id, guild_id=origin.guild_id)
        try:
            await channel.send(content=f"<@{origin.user_id}> {text}"[:2000], allowed_mentions=NO_MENTIONS,
                               nonce=nonce_for(result.job_id))
        except (discord.NotFound, discord.Forbidden) as err:
            raise Undeliverable(f"channel {origin.channel_id}: {err.text or err.status}") from None
        return "channel"

    async def _tell_undelivered(self, result: DreamResult) -> None:
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
    error goes up and the outbox redelivers the result later (MAX_ATTEMPTS). Every attempt carries the same
    nonce, so a post that did land before its answer was lost is not made twice."""
    for delay in (*RETRY_DELAYS_S, None):
        try:
            return await attempt()
        except (discord.DiscordServerError, aiohttp.ClientError, asyncio.TimeoutError):
            if delay is None:
                raise
        metrics.delivery_retry()
        await asyncio.sleep(delay)
    raise AssertionError("unreachable")


def _count_attempt(conn: redis.Redis, job_id: str) -> int:
    """One more delivery attempt of a job's result; the count goes a day after the last attempt."""
    with conn.pipeline(transaction=False) as pipe:
        pipe.incr(keys.attempts(job_id))
        pipe.expire(keys.attempts(job_id), keys.ATTEMPTS_TTL_S)
        return int(pipe.execute()[0])
