"""The /dream slash command: validate, answer inside Discord's 3-second window, queue.

Validation is pure Python and runs before the answer. The Redis work gets ACK_BUDGET_S to finish (toolkit.within_ack) so the
member sees one message ("queued, position N"); if Redis is slower than that, the interaction is
deferred first, so the 3-second window holds even when Redis hangs.
"""

from __future__ import annotations

import asyncio
import logging
import time

import discord
import redis
from discord import app_commands
from discord.app_commands import locale_str

from dreamcore import metrics, preferences, ranges, stats
from dreamcore.i18n import N_, _, duration, ngettext
from dreamcore.job import (
    ASPECT_LABELS,
    FACE_LABELS,
    MAX_PROMPT_CHARS,
    PICTURE_STRENGTH,
    JobError,
    make_job,
    make_origin,
    make_request,
)
from dreamcore.modes import MODE_LABELS
from dreamcore.present import made_from, mode_note, settings_line, shown
from dreamcore.settings import Settings
from dreamcore.styles import load_styles

from . import members, toolkit
from .backend import UNCONFIRMED, Backend, Outcome
from .pictures import PictureIntake
from .toolkit import NO_MENTIONS, STORE_DOWN, answer, answer_privately, choices, is_guild_admin, within_ack
from .translator import text as described

log = logging.getLogger("dreambot.bot")
# A submit queues nothing past SUBMIT_DEADLINE_S (what it took is given back and the member hears "can't
# queue"); the answer waits SUBMIT_TIMEOUT_S for it, enough for the calls already under way past the deadline
# (each Redis call gives up after redisconn.BOT_READ_TIMEOUT_S, a replica wait after REDIS_WAIT_MS).
SUBMIT_DEADLINE_S = 8.0
SUBMIT_TIMEOUT_S = 20.0


def place_text(position: int, eta_s: float | None = None) -> str:
    """Where a waiting dream stands: "next in line" or "position 3 in the queue", with its ETA when known."""
    if position == 0:
        return (_("next in line") if eta_s is None
                else _("next in line, ready in about {eta}").format(eta=duration(eta_s)))
    if eta_s is None:
        return _("position {position} in the queue").format(position=position + 1)
    return _("position {position} in the queue, ready in about {eta}").format(position=position + 1,
                                                                               eta=duration(eta_s))


def queued_line(job_id: str, position: int, eta_s: float | None = None, vote: bool = False) -> str:
    """A waiting dream's status line: what it is, and where it stands."""
    head = _("Queued a vote round (two candidates to compare):") if vote else _("Queued:")
    return _("{head} job `{job_id}`, {where}.").format(head=head, job_id=job_id, where=place_text(position, eta_s))


def queued_text(job_id: str, position: int, prompt: str, settings: str, eta_s: float | None = None,
                vote: bool = False) -> str:
    return f"{queued_line(job_id, position, eta_s, vote)}\n**{shown(prompt, 900)}**\n-# {settings}"


async def complete_style(interaction: discord.Interaction, current: str) -> list[app_commands.Choice[str]]:
    """Style presets matching what the member typed, by name or by words of their template (/dream's and
    /settings show's `style`)."""
    typed = current.strip().lower()
    found = []
    for key, st in load_styles().items():
        hay = f"{key} {st.label} {st.prompt}".lower()
        if not typed or typed in hay:
            found.append((not st.label.lower().startswith(typed), st.label, key))
    return [app_commands.Choice(name=label, value=key) for _rank, label, key in sorted(found)[:25]]


@app_commands.choices(aspect=choices(ASPECT_LABELS), faces=choices(FACE_LABELS), mode=choices(MODE_LABELS))
@app_commands.autocomplete(style=complete_style)
async def dream(
    interaction: discord.Interaction,
    prompt: app_commands.Range[str, 1, MAX_PROMPT_CHARS],
    negative: app_commands.Range[str, 0, MAX_PROMPT_CHARS] | None = None,
    style: str | None = None,
    aspect: str | None = None,
    seed: app_commands.Range[int, ranges.SEED.lo, ranges.SEED.hi] | None = None,
    count: app_commands.Range[int, ranges.IMAGES.lo, ranges.IMAGES.hi] | None = None,
    steps: app_commands.Range[int, ranges.STEPS.lo, ranges.STEPS.hi] | None = None,
    guidance: app_commands.Range[float, ranges.GUIDANCE.lo, ranges.GUIDANCE.hi] | None = None,
    split: app_commands.Range[float, ranges.SPLIT.lo, ranges.SPLIT.hi] | None = None,
    image: discord.Attachment | None = None,
    change: app_commands.Range[float, ranges.STRENGTH.lo, ranges.STRENGTH.hi] | None = None,
    faces: str | None = None,
    mode: str | None = None,
):
    work = interaction.client.dream
    s = work.settings
    await work.handle_dream(
        interaction, prompt=prompt, negative_prompt=negative, style=style, aspect=aspect, seed=seed,
        count=count, steps=steps,
        guidance=guidance if guidance is not None else s.default_guidance,
        split=split if split is not None else s.default_split, faces=faces, mode=mode, picture=image,
        change=change,
    )


def dream_command(settings: Settings) -> app_commands.Command:
    """/dream. Its options' descriptions name the operator's defaults, so each client makes it from its own
    settings; every other command is declared once, at the top level of its module."""
    command = app_commands.command(name="dream", description="Dream up images with SDXL (base + refiner)")(dream)
    texts = dict(
        prompt="What to dream: describe the picture",
        negative="What to keep out of the picture",
        style="A style preset wrapped around your prompt",
        aspect="Picture shape (SDXL's native sizes, about one megapixel)",
        seed=described("Seed, {lo} to {hi}: the same seed and settings make the same picture (random if left out)",
                       **ranges.SEED.shown()),
        count=described("How many pictures, {lo} to {hi}", **ranges.IMAGES.shown()),
        steps=described("Denoising steps, {lo} to {hi} (default {default})", **ranges.STEPS.shown(),
                        default=settings.default_steps),
        guidance=described("How closely to follow the prompt, {lo} to {hi} (default {default})",
                           **ranges.GUIDANCE.shown(), default=f"{settings.default_guidance:g}"),
        split=described("Share of steps on the base, {lo} to {hi}; the refiner does the rest (default {default}; "
                        "1 = no refiner)", **ranges.SPLIT.shown(), default=f"{settings.default_split:g}"),
        image="A picture of yours to start from (PNG, JPEG, WebP or GIF); the prompt says what to make of it",
        change=described("With a picture: how much to change it, {lo} (a touch) to {hi} (all of it); default "
                         "{default}", **ranges.STRENGTH.shown(), default=f"{PICTURE_STRENGTH:g}"),
        faces="Redraw faces close up after the refiner: the small ones (auto), all, or none; default: the server's",
        mode="Quality (base + refiner), Turbo (4 steps, a tenth of the GPU) or Relax (unlimited, when idle)",
    )
    # Each a locale_str, so the translator is asked for it at sync: discord.py makes them of the texts it is
    # given as it builds a command, and these come after.
    return app_commands.describe(**{k: v if isinstance(v, locale_str) else locale_str(v)
                                    for k, v in texts.items()})(command)


@app_commands.command(name="dreamqueue", description="Your dreams waiting or being made, with position and ETA")
async def dreamqueue(interaction: discord.Interaction):
    backend = interaction.client.backend
    try:
        jobs = await toolkit.in_time(backend.my_jobs, interaction.guild_id, interaction.user.id)
    except (asyncio.TimeoutError, redis.RedisError):
        await answer_privately(interaction, _(STORE_DOWN))
        return
    if not jobs:
        text = _("You have no dreams waiting or being made.")
    else:
        lines = []
        for j in jobs:
            if j.state == "running":
                lines.append(ngettext("`{job_id}`: being made now ({n} image)",
                                      "`{job_id}`: being made now ({n} images)", j.images or 1).format(
                    job_id=j.job_id, n=j.images or 1))
            else:
                lines.append(f"`{j.job_id}`: {place_text(j.position or 0, j.eta_s)}")
        text = _("Your dreams:") + "\n" + "\n".join(lines[:20])
    await answer_privately(interaction, text)


@app_commands.command(name="cancel", description="Cancel one of your dreams (admins: anyone's in this server)")
@app_commands.describe(job="The job id shown when the dream was queued")
async def cancel(interaction: discord.Interaction, job: app_commands.Range[str, 1, 64]):
    backend = interaction.client.backend
    try:
        outcome = await toolkit.in_time(backend.cancel, job, interaction.user.id, interaction.guild_id,
                                      is_guild_admin(interaction))
        text = outcome.message
    except (asyncio.TimeoutError, redis.RedisError):
        text = _(STORE_DOWN)
    await answer_privately(interaction, text)


class DreamCommands:
    """What /dream does, from its options to the member's answer; the buttons that queue share its pieces
    (bot/buttons.py). The client keeps one, reached as interaction.client.dream."""

    def __init__(self, settings: Settings, backend: Backend):
        self.settings = settings
        self.backend = backend
        self.ack_latencies: list[float] = []
        self.progress = None  # set by the client: keeps the queued reply's position current
        self.pictures = PictureIntake(settings, backend)

    async def handle_dream(self, interaction: discord.Interaction, picture: discord.Attachment | None = None,
                           change: float | None = None, **options) -> None:
        started = time.perf_counter()
        served = self.settings.channel_id_list
        if served and interaction.channel_id not in served:
            where = ", ".join(f"<#{c}>" for c in served)
            await self._reply(interaction, _("I dream only in {channels}.").format(channels=where), ephemeral=True,
                              started=started)
            return
        if change is not None and picture is None:
            await self._reply(interaction, _("`change` says how much to change a picture of yours: add one with "
                                             "`image`, or leave `change` out."), ephemeral=True, started=started)
            return
        # What the member left out takes their own default, else the server's, else the operator's
        # (dreamcore.preferences.apply, with the server's limits, in the submit); until then, the operator's.
        left_out = frozenset(k for k in preferences.DEFAULTABLE if options.get(k) is None)
        if options.get("steps") is None:
            options["steps"] = self.settings.default_steps
        prefs = members.current().prefs
        try:
            request = make_request(max_upload_bytes=self.settings.max_upload_bytes, **options)
            origin = make_origin(**members.origin_fields(interaction, self.settings.instance))
            job = make_job(request, origin) if picture is None else None
        except JobError as err:
            await self._reply(interaction, _("That request can't be dreamed: {reason}").format(reason=err),
                              ephemeral=True, started=started)
            return

        roles = [r.id for r in getattr(interaction.user, "roles", [])]
        picture_notes: list[str] = []
        try:
            if picture is None:
                work = toolkit.submit(self.backend.submit_here, job, roles, time.monotonic() + SUBMIT_DEADLINE_S,
                                    left_out, prefs)
                outcome, deferred = await within_ack(interaction, work, SUBMIT_TIMEOUT_S, ephemeral=prefs.private,
                                                     on_ack=lambda: self._note_ack(started))
                job = outcome.job or job
            else:
                work = self.pictures.take(picture, request, origin, change, options.get("aspect") is not None,
                                          left_out, roles, SUBMIT_DEADLINE_S, prefs)
                taken, deferred = await within_ack(
                    interaction, work, SUBMIT_TIMEOUT_S + self.settings.input_download_timeout_s,
                    ephemeral=prefs.private, on_ack=lambda: self._note_ack(started))
                outcome, job, picture_notes = taken.outcome, taken.job or job, taken.notes
        except asyncio.TimeoutError:  # the submit still runs past its deadline: it may have queued the dream
            outcome, deferred = Outcome(False, _(UNCONFIRMED), kind="unconfirmed"), interaction.response.is_done()
            metrics.refused("unconfirmed")

        private = outcome.ok and job.origin.private
        if outcome.ok:
            request = job.request
            text = queued_text(job.job_id, outcome.position or 0, request.prompt, settings_line(request),
                               outcome.eta_s, vote=outcome.vote)
            if not private:  # a private result never goes to the channel: no channel permission matters
                text += self._permission_note(interaction)
            made = made_from(job.kind, job.source)
            if made:
                first, _nl, rest = text.partition("\n")
                text = f"{first}\n{made}\n{rest}"
            if picture_notes:
                text += "\n-# " + _("Your picture: {notes}.").format(notes="; ".join(picture_notes))
            for note in outcome.notes:
                text += f"\n-# {note}"
            if mode_note(request):
                text += f"\n-# {mode_note(request)}"
        else:
            text = outcome.message
        if outcome.ok and self.progress is not None:
            header = text.split("\n", 1)[1] if "\n" in text else ""
            self.progress.track(job.job_id, interaction, header, outcome.position, stats.speed_key(job))
        await answer(interaction, text, public=outcome.ok and not private, deferred=deferred,
                     on_ack=lambda: self._note_ack(started))

    @staticmethod
    def _permission_note(interaction: discord.Interaction) -> str:
        """Inside 15 minutes the images edit the member's reply, which needs no channel permission; after
        that they go out as a channel message, which does. Say so now rather than fail silently later."""
        if interaction.guild_id is None:
            return ""
        p = interaction.app_permissions
        missing = [_(name) for name, ok in ((N_("View Channel"), p.view_channel),
                                            (N_("Send Messages"), p.send_messages),
                                            (N_("Attach Files"), p.attach_files)) if not ok]
        if not missing:
            return ""
        return "\n-# " + _("I lack {permissions} here: if this takes over 15 minutes, I won't be able to post the "
                           "images in this channel.").format(permissions=", ".join(missing))

    async def _reply(self, interaction: discord.Interaction, text: str, *, ephemeral: bool, started: float) -> None:
        await interaction.response.send_message(text, ephemeral=ephemeral, allowed_mentions=NO_MENTIONS)
        self._note_ack(started)

    def _note_ack(self, started: float) -> None:
        ms = (time.perf_counter() - started) * 1000
        self.ack_latencies.append(ms)
        metrics.observe_ack(ms / 1000)
        log.info("interaction acknowledged", extra={"ack_ms": round(ms, 2)})
