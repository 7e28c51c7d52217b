"""Posting results back: this instance reads its outbox and posts each result once, as itself.

Each result is verified (dreamcore.delivery), its quota settled, its images moderated, then posted where its
member sees it (bot/posting.py: the interaction, a direct message, the channel; one retry policy) or paired
with its vote round's other candidate (bot/vote_rounds.py). A delivery marker in Redis then makes it done for
good; a post that keeps failing is retried up to MAX_ATTEMPTS times before the member is told.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket

import aiohttp
import discord
import redis

from dreamcore import cost, delivery, faults, keys, metrics, moderation, params, votes
from dreamcore.images import ImageStore, ImageStoreError
from dreamcore.job import JobError, make_job
from dreamcore.limits.limiter import Limiter
from dreamcore.limits.stored import LimitStore
from dreamcore.results import DreamResult, Outbox, OutboxEntry
from dreamcore.settings import Settings

from . import moderated, vote_rounds
from .posting import Poster, Undeliverable
from .toolkit import INTERACTION_TOKEN_S

log = logging.getLogger("dreambot.relay")
MAX_ATTEMPTS = 8  # passes over one result (each with posting.RETRY_DELAYS_S inside) before the member is told


class Relay:
    def __init__(self, client: discord.Client, settings: Settings, conn: redis.Redis, store: ImageStore,
                 token_lifetime_s: float = INTERACTION_TOKEN_S):
        self.client = client
        self.settings = settings
        self.conn = conn
        self.store = store
        self.poster = Poster(client, settings, token_lifetime_s)
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
            await vote_rounds.handle_vote(self, entry, in_round, result, images)
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
            where = await self.poster.post(result, images, mod)
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
            await self.poster.tell_undelivered(result)
        faults.hit("bot-after-post")
        await self.count_flags(result, mod)
        try:
            await asyncio.to_thread(self.outbox.mark_delivered, job_id, where)
            await asyncio.to_thread(self.outbox.ack, entry)
            await asyncio.to_thread(delivery.forget_record, self.conn, job_id)
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
        by_dm = result.origin.private and not self.poster.token_alive(result)
        return moderated.moderate(result, limits, not by_dm and moderated.post_is_age_restricted(self.client,
                                                                                                 result.origin))

    async def count_flags(self, result: DreamResult, mod: moderation.Moderated | None) -> None:
        if mod is None or result.origin is None:
            return
        counts = moderated.count(result.origin.guild_id, mod)
        if counts:
            log.info("images flagged", extra={"job_id": result.job_id, "guild_id": result.origin.guild_id, **counts})
            try:
                await asyncio.to_thread(moderation.record, self.conn, result.origin.guild_id, counts)
            except redis.RedisError:
                pass  # a count for /dreamadmin usage; the metrics have it too

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


def _count_attempt(conn: redis.Redis, job_id: str) -> int:
    """One more delivery attempt of a job's result; the count goes a day after the last attempt."""
    with conn.pipeline(transaction=False) as pipe:
        pipe.incr(keys.attempts(job_id))
        pipe.expire(keys.attempts(job_id), keys.ATTEMPTS_TTL_S)
        return int(pipe.execute()[0])
