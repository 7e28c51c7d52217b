"""A vote round's two candidates come back one at a time: the first to finish is held in Redis, and both are
posted together, as one message with the vote buttons, when the second lands (bot/vote.py: the commands and
the message's pieces; bot/posting.py: where it posts)."""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

import aiohttp
import discord
import redis

from dreamcore import delivery, keys, metrics, moderation, votes
from dreamcore.i18n import current, speaking
from dreamcore.images import ImageStoreError
from dreamcore.results import DreamResult, OutboxEntry

from . import moderated
from .posting import DIRECT_MESSAGE, Message, Undeliverable
from .vote import vote_files, vote_text, vote_view

if TYPE_CHECKING:
    from .relay import Relay

log = logging.getLogger("dreambot.relay")  # the log lines of a delivery, wherever its code sits


async def handle_vote(relay: Relay, entry: OutboxEntry, in_round: tuple[str, str], result: DreamResult,
                      images: list[bytes]) -> None:
    """A vote round's candidate: hold the first to finish; post both together when the second lands."""
    round_id, side = in_round
    record = await asyncio.to_thread(votes.load_round, relay.conn, round_id)
    other = "b" if side == "a" else "a"
    partner = None
    if record is not None:
        try:
            partner = await asyncio.to_thread(_finished_partner, relay, record[other]["job_id"])
        except (ImageStoreError, redis.RedisError) as err:
            log.warning("vote partner unreadable for now, will retry", extra={"job_id": result.job_id,
                                                                              "error": str(err)})
            return  # left pending
    if record is not None and partner is None:
        # The other candidate is still being made: this one waits in Redis for it.
        await asyncio.to_thread(relay.outbox.mark_delivered, result.job_id, f"vote {round_id}: held")
        await asyncio.to_thread(relay.outbox.ack, entry)
        return
    pair = {side: (result, images), other: partner} if partner else {side: (result, images)}
    done = {k: v for k, v in pair.items() if v[0].status == "done"}
    try:
        mods = {k: await asyncio.to_thread(relay.moderate, r) for k, (r, _images) in done.items()}
    except redis.RedisError:
        return  # left pending
    try:
        if record is not None and len(done) == 2 and not any(m and m.withheld for m in mods.values()):
            where = await _post_vote(relay, record, *done["a"], *done["b"], mods["a"], mods["b"])
            posted = ["a", "b"]
        else:
            # A candidate failed, or the content filter holds back some of its images (a vote between
            # one picture and a gap is no vote): the candidate with the most to show goes out alone.
            side = min(done, key=lambda k: len(mods[k].withheld) if mods[k] else 0) if done else side
            shown = done.get(side, (result, images))
            where = await relay.poster.post(*shown, mods.get(side))
            posted = [side] if side in done else []
    except Undeliverable as err:
        where = f"undeliverable: {err}"
    except (discord.HTTPException, aiohttp.ClientError, asyncio.TimeoutError, OSError) as err:
        log.warning("vote delivery failed, will retry", extra={"job_id": result.job_id, "error": type(err).__name__})
        return  # left pending
    if not where.startswith("undeliverable"):
        for k in posted:
            await relay.count_flags(done[k][0], mods[k])
    for r, _images in pair.values():
        await asyncio.to_thread(relay.outbox.mark_delivered, r.job_id, where)
        await asyncio.to_thread(delivery.forget_record, relay.conn, r.job_id)
    await asyncio.to_thread(relay.outbox.ack, entry)
    relay.delivered += 1
    metrics.delivered(where.split(":")[0])
    log.info("vote round delivered", extra={"round": round_id, "where": where})


def _finished_partner(relay: Relay, job_id: str) -> tuple[DreamResult, list[bytes]] | None:
    """The other candidate of a round when it has finished (its result is there, or it was held for this
    one, maybe long enough for its result to expire); None while it is still being made."""
    if not relay.conn.exists(keys.result_key(job_id)) and not _held(relay.conn, job_id):
        return None
    got = relay.verified(job_id)
    return None if got is None else (got.result, got.images)


def _held(conn: redis.Redis, job_id: str) -> bool:
    where = conn.get(keys.delivered_key(job_id))
    return where is not None and where.decode().startswith("vote ") and where.decode().endswith(": held")


async def _post_vote(relay: Relay, record: dict, a: DreamResult, a_images: list[bytes], b: DreamResult,
                     b_images: list[bytes], a_mod: moderation.Moderated | None = None,
                     b_mod: moderation.Moderated | None = None) -> str:
    # The buttons read in the relay's own language (the source language), as they always have, not in the
    # post's: the chain's language would change what voters see.
    buttons_in = current()

    def message(stop: str) -> Message | None:
        if stop == DIRECT_MESSAGE:
            return None  # a vote is posted where the round's voters are
        text = vote_text(record, a, b)
        for m in (a_mod, b_mod):
            text = moderated.with_note(text, m)
        with speaking(buttons_in):
            view = vote_view(record["round"])
        return Message(text, vote_files(a, a_images, b, b_images, a_mod, b_mod), view)

    return await relay.poster.deliver(a.origin, "v" + record["round"], message)
