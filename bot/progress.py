"""Live status on the member's reply: queue position and ETA while waiting, then a progress bar and a
latent preview while the worker denoises. Every edit is throttled to one per message per EDIT_EVERY_S, and
nothing here ever waits on the GPU: the worker only drops its latest state into Redis.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import logging
import time
from dataclasses import dataclass

import discord
import redis

from dreamcore import delivery, keys, moderation, results, stats
from dreamcore.i18n import _, current, speaking
from dreamcore.present import shown

from .commands import queued_line
from .moderated import post_is_age_restricted
from .toolkit import INTERACTION_TOKEN_S, NO_MENTIONS

log = logging.getLogger("dreambot.progress")
EDIT_EVERY_S = 2.0
QUEUE_POLL_S = 5.0


def _speaking(language: str | None):
    """In the member's language where it is known (dreamcore.i18n); else in the language of the moment."""
    return speaking(language) if language else contextlib.nullcontext()


def bar(done: int, total: int, width: int = 12) -> str:
    filled = round(width * done / max(1, total))
    return "▰" * filled + "▱" * (width - filled)


MAX_STEPS_SHOWN = 100_000  # more than any job runs (100 steps x 4 parts x 25 upscale tiles)


def _count(fields: dict, name: str) -> int:
    """A step count a worker wrote, as a whole number in 0..MAX_STEPS_SHOWN (ValueError when it is none)."""
    return max(0, min(MAX_STEPS_SHOWN, int(str(fields.get(name, "")).strip())))


def progress_text(job_id: str, fields: dict, prompt: str) -> str:
    """The live status line from a worker's progress fields, every one parsed and bounded here: a worker's
    text never reaches the member (ValueError for fields that can't be read)."""
    done, total = _count(fields, "done"), max(1, _count(fields, "total"))
    done = min(done, total)
    step, stage_total = _count(fields, "step"), _count(fields, "stage_total")
    stage = fields.get("stage") if fields.get("stage") in ("refiner", "faces") else "base"
    status = {
        "base": _("Dreaming: job `{job_id}` {bar} {percent}% (step {step}/{steps} on the base{part})"),
        "refiner": _("Refining: job `{job_id}` {bar} {percent}% (step {step}/{steps} on the refiner{part})"),
        "faces": _("Fixing faces: job `{job_id}` {bar} {percent}% (step {step}/{steps} face by face on the "
                   "refiner{part})"),
    }[stage]
    return status.format(job_id=job_id, bar=bar(done, total), percent=100 * done // total, step=step,
                         steps=stage_total, part=part_text(fields)) + f"\n**{shown(prompt, 900)}**"


def part_text(fields: dict) -> str:
    """The step text's ", part 2 of 2" for a dream its worker makes in parts (a GPU that fits fewer images
    in one call than it asks for); empty otherwise, or for fields it can't read."""
    try:
        part, parts = int(fields.get("part") or 1), int(fields.get("parts") or 1)
    except (TypeError, ValueError):
        return ""
    if not 1 <= part <= parts <= 16:
        return ""
    return _(", part {part} of {parts}").format(part=part, parts=parts) if parts > 1 else ""


@dataclass
class Waiting:
    interaction: discord.Interaction
    header: str  # the prompt and settings lines under the status line
    position: int | None
    since: float
    speed_key: str | None = None  # the measured speed its own part is timed by (dreamcore.stats.speed_key)
    language: str | None = None  # the member's (dreamcore.i18n), the command's when it was queued


class Progress:
    def __init__(self, client: discord.Client, backend):
        self.client = client
        self.backend = backend
        self.waiting: dict[str, Waiting] = {}
        self.last_edit: dict[str, float] = {}
        self.edits = 0

    # --- while waiting in the queue -----------------------------------------------------------------
    def track(self, job_id: str, interaction: discord.Interaction, header: str, position: int | None,
              speed_key: str | None = None) -> None:
        # Called by the command that queued it: its language is the member's, which the edits keep.
        self.waiting[job_id] = Waiting(interaction, header, position, time.monotonic(), speed_key, current())

    def forget(self, job_id: str) -> None:
        self.waiting.pop(job_id, None)

    async def run(self) -> None:
        while not self.client.is_closed():
            await asyncio.sleep(QUEUE_POLL_S)
            if not self.waiting:
                continue
            try:
                await self._update_positions()
            except (redis.RedisError, discord.HTTPException) as err:
                log.debug("queue position update skipped", extra={"error": type(err).__name__})
            except Exception:
                log.exception("queue position update failed")

    async def _update_positions(self) -> None:
        now = time.monotonic()
        for job_id, w in list(self.waiting.items()):
            if now - w.since > INTERACTION_TOKEN_S - 60:  # the token is about to die: stop editing with it
                self.forget(job_id)
        views = await asyncio.to_thread(self._positions, list(self.waiting))
        for job_id, (pos, eta) in views.items():
            w = self.waiting.get(job_id)
            if w is None or pos == w.position or not self._may_edit(job_id):
                continue
            w.position = pos
            with _speaking(w.language):
                text = queued_line(job_id, pos, eta)
            await w.interaction.edit_original_response(content=f"{text}\n{w.header}", allowed_mentions=NO_MENTIONS)
            self.edits += 1

    def _positions(self, job_ids: list[str]) -> dict[str, tuple[int, float | None]]:
        kinds = {jid: w.speed_key for jid in job_ids if (w := self.waiting.get(jid)) is not None and w.speed_key}
        return stats.eta_for(self.backend.queue, job_ids, kinds)

    def _may_edit(self, job_id: str) -> bool:
        now = time.monotonic()
        if now - self.last_edit.get(job_id, 0.0) < EDIT_EVERY_S:
            return False
        self.last_edit[job_id] = now
        return True

    # --- while the worker denoises ----------------------------------------------------------------
    async def on_worker_progress(self, job_id: str, relay) -> None:
        self.forget(job_id)
        if not self._may_edit(job_id):
            return
        conn = self.backend.conn
        fields, preview = await asyncio.to_thread(results.load_progress, conn, job_id)
        if not fields or await asyncio.to_thread(conn.exists, keys.done_key(job_id)):
            return  # finished meanwhile: the result edit is on its way
        # The bot's own record of the job: where it came from, and the interaction token to edit its reply
        # with (the job a worker runs carries none; a job of another instance has no record of ours).
        job = await asyncio.to_thread(delivery.load_record, conn, job_id)
        if (job is None or job.origin.instance != relay.settings.instance
                or not relay.poster.token_alive_for(job.origin)):
            return
        try:
            with _speaking(job.origin.locale):  # an edit of the member's reply: in their language
                text = progress_text(job_id, fields, job.request.prompt)
            score = float(fields["nsfw_score"]) if fields.get("nsfw_score") else None
        except ValueError:
            log.info("progress fields unreadable; no edit", extra={"job_id": job_id})
            return
        files = []
        if preview:
            # The preview is judged like the finished images (its own score, and its source's for a
            # variation or upscale): what a guild holds back is not shown half-denoised either.
            limits = await asyncio.to_thread(self.backend.store.get, job.origin.guild_id)
            source = job.source.nsfw_score if job.source is not None else None
            verdict = moderation.verdict(moderation.effective_score(score, source), limits.nsfw_threshold,
                                     limits.nsfw_action, post_is_age_restricted(self.client, job.origin))
            if verdict == "withhold":
                with _speaking(job.origin.locale):
                    text += "\n" + _("-# 🛡️ Preview hidden by this server's content filter.")
            else:
                files = [discord.File(io.BytesIO(preview), filename="preview.jpg", spoiler=verdict == "spoiler")]
        await relay.poster.interaction_webhook(job.origin).edit_message(
            "@original", content=text, attachments=files, allowed_mentions=NO_MENTIONS)
        self.edits += 1
