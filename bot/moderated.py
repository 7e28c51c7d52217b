"""The bot's half of output safety: where a post goes (is the channel age-restricted?), and the files and
notes a moderated post carries. The verdicts themselves are dreamcore.moderation's; the scores come from the
worker's classifier (worker/classifier.py)."""

from __future__ import annotations

import io

import discord

from dreamcore import metrics, moderation
from dreamcore.limits.model import GuildLimits
from dreamcore.results import DreamResult


def channel_is_nsfw(channel) -> bool:
    """Discord's age-restricted flag for a channel (a thread has its parent's); False when unknown."""
    is_nsfw = getattr(channel, "is_nsfw", None)
    try:
        return bool(is_nsfw()) if callable(is_nsfw) else False
    except AttributeError:  # a thread whose parent is not cached
        return False


def post_is_age_restricted(client: discord.Client, origin) -> bool:
    """Both what the bot saw when the dream came in and what its cache says now must say age-restricted:
    a channel an admin un-marked meanwhile gets the stricter treatment."""
    if not origin.channel_nsfw:
        return False
    channel = client.get_channel(origin.channel_id)
    return channel is None or channel_is_nsfw(channel)


def moderate(result: DreamResult, limits: GuildLimits, age_restricted: bool) -> moderation.Moderated:
    source = result.source.nsfw_score if result.source is not None else None
    return moderation.moderate([i.nsfw_score for i in result.images], source, limits.nsfw_threshold,
                           limits.nsfw_action, age_restricted)


def files(result: DreamResult, images: list[bytes], mod: moderation.Moderated | None, prefix: str = "") -> list[discord.File]:
    """The attachments of a post: withheld images left out, spoilered ones behind Discord's spoiler cover
    (discord.py names them SPOILER_..., which is how Discord marks an attachment a spoiler)."""
    out = []
    for i, (info, data) in enumerate(zip(result.images, images, strict=True)):
        verdict = mod.verdicts[i] if mod is not None else "show"
        if verdict == "withhold":
            continue
        out.append(discord.File(io.BytesIO(data), filename=prefix + info.filename, spoiler=verdict == "spoiler"))
    return out


def with_note(text: str, mod: moderation.Moderated | None, job_id: str | None = None, limit: int = 2000) -> str:
    note = mod.public_note(job_id) if mod is not None else None
    if not note:
        return text[:limit]
    return text[: max(0, limit - len(note) - 1)] + "\n" + note


def count(guild_id: int | None, mod: moderation.Moderated) -> dict[str, int]:
    counts = mod.counts()
    for name, n in counts.items():
        metrics.image_flagged(guild_id, name, n)
    return counts
