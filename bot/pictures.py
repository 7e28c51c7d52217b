"""A member's picture with /dream: from the attachment Discord resolved to a picture job on the queue.

In order: the server's rule (`images_in`); what Discord reports about the file (name, type, bytes, pixels),
before anything is downloaded; the bytes, read now from the attachment's own link (Discord's CDN links
expire within about a day, and the worker never sees them), only from Discord's CDN or the configured API
base's host (never an address a member typed); the safe decode (dreamcore.image_in), in a thread; the
re-encoded picture stored under the job (dreamcore.images.input_key); then the same submit as any dream:
limits, backpressure, the fair queue. A refusal at any step is a message to the member, with nothing queued
and nothing left in the store.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from urllib.parse import urlsplit

import aiohttp
import discord
import redis

from dreamcore import image_in, preferences
from dreamcore.i18n import _
from dreamcore.images import ImageStoreError, input_key
from dreamcore.job import PICTURE_STRENGTH, DreamJob, DreamRequest, JobSource, make_job, new_job_id
from dreamcore.preferences import Preferences
from dreamcore.present import code
from dreamcore.settings import Settings

from . import toolkit
from .backend import UNAVAILABLE, Backend, Outcome

log = logging.getLogger("dreambot.bot")

CDN_HOSTS = ("cdn.discordapp.com", "media.discordapp.net")


@dataclass
class Taken:
    """What came of a picture: the outcome of its submit, and when queued the job and what was done to it."""

    outcome: Outcome
    job: DreamJob | None = None
    notes: list[str] = field(default_factory=list)


def refused(text: str) -> Taken:
    return Taken(Outcome(False, text, kind="picture"))


def policy_refusal(images_in: str, channel_nsfw: bool) -> str | None:
    """The server's rule for members' pictures (GuildLimits.images_in), or None when this one may come in."""
    if images_in == "off":
        return _("This server doesn't take pictures with /dream: send the prompt alone.")
    if images_in == "age_restricted" and not channel_nsfw:
        return _("This server takes pictures with /dream only in age-restricted channels.")
    return None


class PictureIntake:
    def __init__(self, settings: Settings, backend: Backend):
        self.settings = settings
        self.backend = backend
        hosts = {urlsplit(settings.discord_api_base).hostname, *CDN_HOSTS}
        self.hosts = {h for h in hosts if h}

    async def take(self, attachment: discord.Attachment, request: DreamRequest, origin, strength: float | None,
                   aspect_given: bool, left_out: frozenset[str], roles: list[int], submit_within_s: float,
                   prefs: Preferences | None = None) -> Taken:
        """The picture into a queued job, or the member's refusal. `left_out`: the options the member left out,
        which take their defaults (`prefs`), else the server's (dreamcore.preferences.apply); the picture's own
        shape is its aspect, whatever their default. `submit_within_s`: the submit's deadline, counted from when
        the picture is stored (the download has a timeout of its own)."""
        s = self.settings
        # 1. The server's rule.
        try:
            limits = await toolkit.command(self.backend.store.get, origin.guild_id)
        except redis.RedisError:
            return Taken(Outcome(False, _(UNAVAILABLE), kind="unavailable"))
        why = policy_refusal(limits.images_in, origin.channel_nsfw)
        if why:
            return refused(why)
        # 2. What Discord says about the file, before a byte of it is fetched.
        try:
            image_in.check_declared(attachment.filename, attachment.content_type, attachment.size,
                                    attachment.width, attachment.height, s.input_max_bytes, s.input_max_pixels)
        except image_in.PictureError as err:
            return refused(str(err))
        # 3. The bytes, from Discord's own link.
        host = urlsplit(attachment.url).hostname
        if host not in self.hosts:
            log.warning("attachment link outside Discord refused", extra={"host": host})
            return refused(_("That attachment's link doesn't lead to Discord, so I won't fetch it."))
        name = code(attachment.filename, 80)
        try:
            data = await asyncio.wait_for(attachment.read(), s.input_download_timeout_s)
        except asyncio.TimeoutError:
            return refused(_("{name} took longer than {seconds} s to come from Discord; try again.").format(
                name=name, seconds=image_in.plain(s.input_download_timeout_s)))
        except discord.NotFound:
            return refused(_("Discord no longer has {name} (its link answered 404); send it again.").format(name=name))
        except (discord.HTTPException, aiohttp.ClientError, OSError) as err:
            status = getattr(err, "status", None)
            if status:
                return refused(_("{name} couldn't be fetched from Discord (HTTP {status}); try again.").format(
                    name=name, status=status))
            return refused(_("{name} couldn't be fetched from Discord (the connection failed); try again.").format(
                name=name))
        if len(data) > s.input_max_bytes:
            return refused(_("{name} is {size}; pictures may be up to {max_size}.").format(
                name=name, size=image_in.megabytes(len(data)), max_size=image_in.megabytes(s.input_max_bytes)))
        # 4. The safe decode, off the event loop.
        try:
            pic = await toolkit.picture(image_in.prepare, data, attachment.filename, s.input_max_pixels,
                                      request.aspect if aspect_given else None)
        except image_in.PictureError as err:
            return refused(str(err))
        # 5. Stored under the job, then queued like any dream (a picture job is never a vote round).
        job_id = new_job_id()
        source = JobSource(job_id=job_id, index=0, format="png",
                           strength=PICTURE_STRENGTH if strength is None else strength)
        job = make_job(request.model_copy(update={"aspect": pic.aspect}), origin, job_id=job_id, kind="picture",
                       source=source)
        job, notes = preferences.apply(job, limits, prefs or Preferences(), left_out - {"aspect"})
        key = input_key(job_id)
        try:
            await toolkit.command(self.backend.images.put, key, pic.png)
        except ImageStoreError as err:
            log.warning("picture not stored", extra={"job_id": job_id, "error": str(err)[:200]})
            return Taken(Outcome(False, _(UNAVAILABLE), kind="unavailable"))
        outcome = await toolkit.submit(self.backend.submit, job, roles, deadline=time.monotonic() + submit_within_s)
        outcome.notes = notes
        if not outcome.ok and outcome.kind != "unconfirmed":  # "unconfirmed" may still run: it needs the picture
            try:
                await toolkit.command(self.backend.images.delete, [key])
            except ImageStoreError:
                pass  # swept with the images it would have made, after the retention
        log.info("picture taken", extra={"job_id": job_id, "bytes": len(data), "original": list(pic.original),
                                         "aspect": pic.aspect, "queued": outcome.ok})
        return Taken(outcome, job if outcome.ok else None, pic.notes)
