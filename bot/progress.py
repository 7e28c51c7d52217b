"""Live status on the member's reply: queue position and ETA while waiting, then a progress bar and a
latent preview while the worker denoises. Every edit is throttled to one per message per EDIT_EVERY_S, and
nothing here ever waits on the GPU: the worker only drops its latest state into Redis.
"""

from __future__ import annotations

import asyncio
import io
import logging
import time
from dataclasses import dataclass

import discord
import redis

from dreamcore import ledger, results, safety, stats
from dreamcore.limit_messages import human_duration
from dreamcore.present import shown

from .safety import post_is_age_restricted
from .toolkit import NO_MENTIONS

log = logging.getLogger("dreambot.progress")
EDIT_EVERY_S = 2.0
QUEUE_POLL_S = 5.0


def bar(done: int, total: int, width: int = 12) -> str:
    filled = round(width * done / max(1, total))
    return "▰" * filled + "▱" * (width - filled)


def part_text(fields: dict) -> str:
    """The step text's ", part 2 of 2" for a dream its worker makes in parts (a GPU that fits fewer images
    in one call than it asks for); empty otherwise, or for fields it can't read."""
    try:
        part, parts = int(fields.get("part") or 1), int(fields.get("parts") or 1)
    except (TypeError, ValueError):
        return ""
    return f", part {part} of {parts}" if parts > 1 else ""


@dataclass
class Waiting:
    interaction: discord.Interaction
    header: str  # the prompt and settings lines under the status line
    position: int | None
    since: float


class Progress:
    def __init__(self, client: discord.Client, backend):
        self.client = client
        self.backend = backend
        self.waiting: dict[str, Waiting] = {}
        self.last_edit: dict[str, float] = {}
        self.edits = 0

    # --- while waiting in the queue -----------------------------------------------------------------
    def track(self, job_id: str, interaction: discord.Interaction, header: str, position: int | None) -> None:
        self.waiting[job_id] = Waiting(interaction, header, position, time.monotonic())

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
            if now - w.since > 14 * 60:  # the interaction token is about to die: stop editing it
                self.forget(job_id)
        views = await asyncio.to_thread(self._positions, list(self.waiting))
        for job_id, (pos, eta) in views.items():
            w = self.waiting.get(job_id)
            if w is None or pos == w.position or not self._may_edit(job_id):
                continue
            w.position = pos
            where = "next in line" if pos == 0 else f"position {pos + 1} in the queue"
            if eta is not None:
                where += f", ready in about {human_duration(eta)}"
            await w.interaction.edit_original_response(content=f"Queued: job `{job_id}`, {where}.\n{w.header}",
                                                       allowed_mentions=NO_MENTIONS)
            self.edits += 1

    def _positions(self, job_ids: list[str]) -> dict[str, tuple[int, float | None]]:
        return stats.eta_for(self.backend.queue, job_ids)

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
        if not fields or await asyncio.to_thread(conn.exists, results.done_key(job_id)):
            return  # finished meanwhile: the result edit is on its way
        # The bot's own record of the job: where it came from, and the interaction token to edit its reply
        # with (the job a worker runs carries none; a job of another instance has no record of ours).
        job = await asyncio.to_thread(ledger.load, conn, job_id)
        if job is None or job.origin.instance != relay.settings.instance or not relay.token_alive_for(job.origin):
            return
        done, total = int(fields["done"]), int(fields["total"])
        stage = "refining" if fields.get("stage") == "refiner" else "dreaming"
        text = (f"{stage.capitalize()}: job `{job_id}` {bar(done, total)} {100 * done // max(1, total)}% "
                f"(step {fields['step']}/{fields['stage_total']} on the {fields.get('stage')}{part_text(fields)})\n"
                f"**{shown(job.request.prompt, 900)}**")
        files = []
        if preview:
            # The preview is judged like the finished images (its own score, and its source's for a
            # variation or upscale): what a guild holds back is not shown half-denoised either.
            limits = await asyncio.to_thread(self.backend.store.get, job.origin.guild_id)
            score = float(fields["nsfw_score"]) if fields.get("nsfw_score") else None
            source = job.source.nsfw_score if job.source is not None else None
            verdict = safety.verdict(safety.effective_score(score, source), limits.nsfw_threshold,
                                     limits.nsfw_action, post_is_age_restricted(self.client, job.origin))
            if verdict == "withhold":
                text += "\n-# 🛡️ Preview hidden by this server's content filter."
            else:
                files = [discord.File(io.BytesIO(preview), filename="preview.jpg", spoiler=verdict == "spoiler")]
        await relay.interaction_webhook(job.origin).edit_message(
            "@original", content=text, attachments=files, allowed_mentions=NO_MENTIONS)
        self.edits += 1
