"""The buttons under every result: 🎲 Reroll, 🔀 Variations, ⬆️ Upscale, 🖌️ Remix, ℹ️ Info, 🗑 Delete, and the edits.

Each button's custom id carries all it needs (what to do, the job id, the image index), and the rest is
read from Redis (dreamcore/params.py), so a click works on any process of the bot that posted the result,
after any number of restarts, with nothing kept in memory: the classes below are discord.py DynamicItems,
registered once per process with `client.add_dynamic_items`, and matched on the custom id alone.

    dream:r:<job>        Reroll: the same request (and kind) with a new random seed
    dream:v:<job>:<i>    Variations of image i: img2img on the base at DREAMBOT_VARIATION_STRENGTH, new seed
    dream:u:<job>:<i>    Upscale image i 2x: the refiner in img2img at DREAMBOT_UPSCALE_STRENGTH, in tiles
    dream:i:<job>        Info: every parameter, seeds and timings, the chain of edits, ephemeral
    dream:d:<job>        Delete the result message: its requester, or a member with Manage Server
    dream:m:<job>        Remix: a modal with the prompt filled in, dreamed again with the same seed (bot/remix.py)

and, where one image is shown, on image i: s/t Vary (Subtle)/(Strong); z/y Zoom Out 2x/1.5x; q Make Square;
h/l/k/j Pan left/right/up/down; g Vary (Region) (a region picker, then the modal: bot/remix.py).

    dream:f:<job>:<i>    Fix faces on image i: the face pass (worker/faces.py) over it, every face it finds,
                         seeded with the image's own seed; offered where the result's pass redrew none

All of them are one class, ResultButton (ACTIONS says what each code looks like and does). A job id is 16 hex
digits and i one digit (0..9, so "no image 7" gets a clear refusal rather than silence); anything else that
starts with "dream:" is answered by UnknownButton. With several images, Variations and Upscale are one
button per image (V1..V4, U1..U4, as people know them from Midjourney): one click, no
second step, and each button is self-contained, where a select menu would need a choice plus an action
(and shows the last choice again on the next look). Four images make 4 + 4 + 3 buttons in three rows, well
inside Discord's 5 x 5.

Every follow-up (Reroll, Variations, Upscale) goes through Backend.submit, i.e. the same guild limits as
/dream, and is acknowledged within Discord's 3-second window the way /dream is: answered with "Queued..."
when Redis is quick, deferred first when it is not. The answer is a new message of the click's own
interaction, and the relay later edits that interaction's @original with the images, so the result of a
follow-up is a new message under the same bot, carrying buttons of its own.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from dataclasses import dataclass

import discord
import redis

from dreamcore import keys, moderation, params, results, stats
from dreamcore.canvas import CanvasError, plan, variation_size
from dreamcore.i18n import N_, _, ngettext
from dreamcore.images import ImageStoreError, image_key, input_key, params_copy_key, source_key
from dreamcore.job import (
    FACE_STRENGTH,
    DreamJob,
    Edit,
    JobError,
    JobSource,
    make_job,
    make_origin,
    make_request,
    random_seed,
)
from dreamcore.params import MAX_UPSCALED_SIDE, JobParams
from dreamcore.present import info_text, made_from, settings_line
from dreamcore.results import DreamResult
from dreamcore.settings import Settings

from . import members, remix, toolkit
from .backend import UNAVAILABLE, UNCONFIRMED, Backend, Outcome
from .commands import SUBMIT_DEADLINE_S, SUBMIT_TIMEOUT_S, DreamCommands, queued_text
from .toolkit import NO_MENTIONS, STORE_DOWN, answer, answer_privately, is_guild_admin, within_ack

log = logging.getLogger("dreambot.buttons")

# Every result button's custom id starts so (a Discord custom id, not a Redis key).
PREFIX = "dream:"
JOB = r"(?P<job>[0-9a-f]{16})"
INDEX = r"(?P<i>[0-9])"
CHAIN_S = 0.8  # of Info's toolkit.READ_TIMEOUT_S, what walking back a chain of edits may take


def _handler(interaction: discord.Interaction) -> Buttons | None:
    handler = getattr(interaction.client, "buttons", None)
    if handler is None:
        log.error("button clicked on a client without button handlers")
    return handler


async def _answering(interaction: discord.Interaction, work) -> None:
    """Run one click's handler; if it fails, log it and still answer the member (as DreamTree.on_error does
    for commands) rather than leave Discord's "This interaction failed"."""
    try:
        await work
    except Exception:
        log.exception("button failed", extra={"custom_id": (interaction.data or {}).get("custom_id")})
        text = _("Something went wrong on my side with that button. Please try again.")
        try:
            await answer_privately(interaction, text)
        except discord.HTTPException:
            pass


@dataclass(frozen=True)
class Action:
    """One kind of result button: what its custom_id says (`dream:<code>:<job>[:<image>]`), how it looks, and
    which Buttons handler it calls."""

    code: str
    label: str  # "{n}" is the image's number, for the per-image buttons; marked with N_, translated when shown
    emoji: str
    per_image: bool
    style: discord.ButtonStyle = discord.ButtonStyle.secondary


ACTIONS = {a.code: a for a in (
    Action("r", N_("Reroll"), "🎲", per_image=False),
    Action("v", N_("V{n}"), "🔀", per_image=True),
    Action("u", N_("U{n}"), "⬆️", per_image=True),
    Action("i", N_("Info"), "ℹ️", per_image=False),
    Action("d", N_("Delete"), "🗑️", per_image=False, style=discord.ButtonStyle.danger),
    # Where one image is shown (a one-image result: a dream of one, an upscale, an edit), as Midjourney
    # places them: two strengths of variation, and the edits (dreamcore.canvas, worker/inpaint.py).
    Action("m", N_("Remix"), "🖌️", per_image=False),
    Action("g", N_("Vary (Region)"), "🎯", per_image=True),
    Action("s", N_("Vary (Subtle)"), "🔀", per_image=True),
    Action("t", N_("Vary (Strong)"), "🔀", per_image=True),
    Action("z", N_("Zoom Out 2x"), "🔭", per_image=True),
    Action("y", N_("Zoom Out 1.5x"), "🔭", per_image=True),
    Action("q", N_("Make Square"), "🔲", per_image=True),
    Action("h", "", "⬅️", per_image=True),
    Action("l", "", "➡️", per_image=True),
    Action("k", "", "⬆️", per_image=True),
    Action("j", "", "⬇️", per_image=True),
    Action("f", N_("Fix faces"), "🙂", per_image=True),
)}
# What each edit button asks for (a dreamcore.job.Edit), by its code.
EDITS = {"z": Edit(op="zoom", zoom=2.0), "y": Edit(op="zoom", zoom=1.5), "q": Edit(op="square"),
         "h": Edit(op="pan", direction="left"), "l": Edit(op="pan", direction="right"),
         "k": Edit(op="pan", direction="up"), "j": Edit(op="pan", direction="down")}
_WHOLE = "".join(a.code for a in ACTIONS.values() if not a.per_image)
_PER_IMAGE = "".join(a.code for a in ACTIONS.values() if a.per_image)


class ResultButton(discord.ui.DynamicItem[discord.ui.Button],
                   template=rf"{PREFIX}(?:(?P<whole>[{_WHOLE}])|(?P<each>[{_PER_IMAGE}])):{JOB}(?(each):{INDEX})"):
    """Every button under a result, one class: the template takes an index exactly for the per-image actions,
    so a crafted id that gives one where none belongs (or none where one does) is UnknownButton's."""

    def __init__(self, code: str, job_id: str, index: int | None = None, label: str | None = None,
                 row: int | None = None):
        action = ACTIONS[code]
        suffix = f":{index}" if action.per_image else ""
        # No _("") for the Pans' empty label: gettext's "" is the catalog's header.
        text = label or (_(action.label).format(n=(index or 0) + 1) if action.label else None)
        super().__init__(discord.ui.Button(
            label=text or None, emoji=action.emoji, style=action.style,
            custom_id=f"{PREFIX}{code}:{job_id}{suffix}", row=row))
        self.code, self.job_id, self.index = code, job_id, index

    @classmethod
    async def from_custom_id(cls, interaction, item, match: re.Match[str], /):
        await members.meet(interaction, interaction.client.backend.conn)
        code = match["whole"] or match["each"]
        return cls(code, match["job"], int(match["i"]) if match["i"] is not None else None)

    async def callback(self, interaction: discord.Interaction) -> None:
        if (h := _handler(interaction)) is None:
            return
        if self.code in EDITS or self.code in "stf":
            work = h.follow_up(interaction, self.job_id, self.code, self.index)
        elif self.code == "m":
            work = remix.open_remix(h, interaction, self.job_id)
        elif self.code == "g":
            work = remix.pick_region(h, interaction, self.job_id, self.index)
        else:
            work = {"r": lambda: h.follow_up(interaction, self.job_id, "reroll"),
                    "v": lambda: h.follow_up(interaction, self.job_id, "variation", self.index),
                    "u": lambda: h.follow_up(interaction, self.job_id, "upscale", self.index),
                    "i": lambda: h.info(interaction, self.job_id),
                    "d": lambda: h.delete(interaction, self.job_id)}[self.code]()
        await _answering(interaction, work)


# Every "dream:" id ResultButton does not take (discord.py runs each class whose template matches, so this
# one must exclude its ids): a crafted or damaged id still gets an answer, not "interaction failed".
# DOTALL and \Z: an id with a newline in it (which `$` and `.` would let through) is answered too.
_KNOWN = rf"(?:[{_WHOLE}]:[0-9a-f]{{16}}|[{_PER_IMAGE}]:[0-9a-f]{{16}}:[0-9])"


class UnknownButton(discord.ui.DynamicItem[discord.ui.Button], template=rf"(?s){PREFIX}(?!{_KNOWN}\Z).{{0,94}}"):
    def __init__(self, custom_id: str):
        super().__init__(discord.ui.Button(label="?", custom_id=custom_id))

    @classmethod
    async def from_custom_id(cls, interaction, item, match: re.Match[str], /):
        await members.meet(interaction, interaction.client.backend.conn)
        return cls(match.group(0))

    async def callback(self, interaction: discord.Interaction) -> None:
        log.info("unknown button", extra={"custom_id": self.custom_id[:100], "user_id": interaction.user.id})
        await interaction.response.send_message(_("That button isn't one I know; try /dream."), ephemeral=True,
                                                allowed_mentions=NO_MENTIONS)


DYNAMIC_ITEMS = (ResultButton, UnknownButton)


def result_view(result: DreamResult, shown: list[int] | None = None) -> discord.ui.View | None:
    """The buttons for a finished result (None for a failure). `shown`: the images the post carries (the
    content filter may hold some back, dreamcore.moderation); no Variations or Upscale starts from another.

    timeout=None matters: discord.py stores a sent view, and when a stored view times out or stops it
    unregisters the templates of its dynamic items, which would silence every button of every result in
    this process from then on.
    """
    if result.status != "done" or not result.images:
        return None
    job, n = result.job_id, len(result.images)
    shown_set = set(range(n) if shown is None else shown)
    can_upscale = [max(i.width, i.height) * 2 <= MAX_UPSCALED_SIDE for i in result.images]
    # Fix faces where its face pass redrew none: it was off, found only large faces or none, or never ran.
    fix_faces = not result.timings.get("faces_redrawn")
    view = discord.ui.View(timeout=None)
    if n == 1:
        view.add_item(ResultButton("r", job, row=0))
        if 0 in shown_set:
            view.add_item(ResultButton("s", job, 0, row=0))
            view.add_item(ResultButton("t", job, 0, row=0))
            if can_upscale[0]:
                view.add_item(ResultButton("u", job, 0, label=_("Upscale"), row=0))
            image = result.images[0]
            for code in ("z", "y") + (("q",) if image.width != image.height else ()) + ("g",):
                view.add_item(ResultButton(code, job, 0, row=1))
            for code in "hlkj":
                view.add_item(ResultButton(code, job, 0, row=2))
            if fix_faces:
                view.add_item(ResultButton("f", job, 0, row=2))
        for code in "mid":
            view.add_item(ResultButton(code, job, row=3))
        return view
    for i in range(n):
        if i in shown_set:
            view.add_item(ResultButton("v", job, i, row=0))
    for i in range(n):
        if can_upscale[i] and i in shown_set:
            view.add_item(ResultButton("u", job, i, row=1))
    for code in "rmid":
        view.add_item(ResultButton(code, job, row=2))
    if fix_faces:
        for i in sorted(shown_set):
            view.add_item(ResultButton("f", job, i, label=_("F{n}").format(n=i + 1), row=3))
    return view


@dataclass
class Refusal:
    message: str


class Buttons:
    """What each button does; one per bot process, reached from the click through `client.buttons`."""

    def __init__(self, client: discord.Client, settings: Settings, backend: Backend, commands: DreamCommands):
        self.client = client
        self.settings = settings
        self.backend = backend
        self.commands = commands

    @property
    def conn(self) -> redis.Redis:
        return self.backend.conn

    # --- the record behind a button ---------------------------------------------------------------------

    def _record(self, job_id: str, guild_id: int | None) -> JobParams | Refusal:
        p = params.load(self.conn, job_id, self.backend.images)
        if p is None:
            days = self.settings.image_retention_days
            # English says "days" for any number (a retention of 1 too); the plural is the other languages'.
            return Refusal(ngettext(
                "I don't know that result any more (I keep them {days} days), or it isn't one of mine.",
                "I don't know that result any more (I keep them {days} days), or it isn't one of mine.",
                days).format(days=days))
        if p.guild_id != guild_id:
            return Refusal(_("That result belongs to another server."))
        return p

    def _too_old(self, what: str) -> Refusal:
        """`what`: the follow-up that can't start, a text marked with N_ (translated here)."""
        days = self.settings.image_retention_days  # at least 1 (dreamcore.settings)
        return Refusal(ngettext(
            "That image is no longer kept, so {what} can't start from it (images are kept {days} day); "
            "try 🎲 Reroll.",
            "That image is no longer kept, so {what} can't start from it (images are kept {days} days); "
            "try 🎲 Reroll.",
            days).format(what=_(what), days=days))

    def _has(self, job_id: str, index: int, fmt: str) -> bool:
        return results.has_image(self.backend.images, job_id, index, fmt)

    # --- Reroll, Variations, Upscale --------------------------------------------------------------------

    def prepare(self, job_id: str, action: str, index: int | None, origin_fields: dict,
                extra: dict | None = None) -> tuple[DreamJob, tuple[int, int] | None] | Refusal:
        """The follow-up job for a click and its output size (None: the request's), or why not. `extra`: what a
        modal asked for (a Remix's prompt and negative; a region's cells). Runs in a thread: it reads Redis."""
        extra = extra or {}
        p = self._record(job_id, origin_fields.get("guild_id"))
        if isinstance(p, Refusal):
            return p
        if index is not None and not 0 <= index < len(p.images):
            return Refusal(_("That result has no image {n}.").format(n=index + 1))
        old = p.request
        seed = random_seed()
        while seed == old.seed:
            seed = random_seed()
        count = old.count
        if action == "remix":  # the same seed and settings, what the member wrote instead
            seed = old.seed
        if action in ("reroll", "remix"):
            kind, source = p.kind, p.source
            if source is not None and not self.backend.images.exists(source_key(kind, source)):
                if kind == "picture":
                    return Refusal(_("The picture that dream started from is no longer kept; send it again with "
                                     "/dream."))
                return self._too_old({"variation": N_("another variation"), "upscale": N_("another upscale"),
                                      "faces": N_("Fix faces")}.get(kind, N_("another edit")))
            # Sized as the result it repeats (an upscale's, an edit's canvas, a variation's own shape, the
            # image whose faces were fixed).
            same = kind in ("upscale", "edit", "variation", "faces") and p.images
            size = (p.images[0].width, p.images[0].height) if same else None
        elif action in ("variation", "s", "t"):
            fmt = p.images[index].format
            if not self._has(job_id, index, fmt):
                return self._too_old(N_("Variations"))
            strength = {"variation": self.settings.variation_strength, "s": self.settings.vary_subtle_strength,
                        "t": self.settings.vary_strong_strength}[action]
            kind, source = "variation", JobSource(job_id=job_id, index=index, format=fmt, strength=strength,
                                                  nsfw_score=p.source_score(index))
            size = variation_size(old.size, p.images[index].width, p.images[index].height)
        elif action == "f":
            image = p.images[index]
            if not self._has(job_id, index, image.format):
                return self._too_old(N_("Fix faces"))
            # The image's own seed: the faces come out as /dream faces:on would have drawn them.
            seed, count = image.seed, 1
            kind, source = "faces", JobSource(job_id=job_id, index=index, format=image.format,
                                              strength=FACE_STRENGTH, nsfw_score=p.source_score(index))
            size = (image.width, image.height)
            extra = {**extra, "faces": "on"}
        elif action in EDITS or action == "region":
            image = p.images[index]
            what = EDITS[action] if action in EDITS else Edit(op="region", cells=extra["cells"])
            try:
                size = plan(what, image.width, image.height).size
            except CanvasError as err:
                return Refusal(_("That can't be done: {reason}.").format(reason=err))
            if not self._has(job_id, index, image.format):
                return self._too_old((ACTIONS[action].label or N_("a Pan")) if action in EDITS
                                     else N_("Vary (Region)"))
            kind, source, count = "edit", JobSource(job_id=job_id, index=index, format=image.format, strength=1.0,
                                                    nsfw_score=p.source_score(index), edit=what), 1
        else:
            if not p.can_upscale(index):
                return Refusal(_("That image is {width}x{height} already; upscales stop at {max_side} pixels a "
                                 "side.").format(width=p.images[index].width, height=p.images[index].height,
                                                 max_side=MAX_UPSCALED_SIDE))
            fmt = p.images[index].format
            if not self._has(job_id, index, fmt):
                return self._too_old(N_("Upscale"))
            kind, source, count = "upscale", JobSource(job_id=job_id, index=index, format=fmt,
                                                       strength=self.settings.upscale_strength,
                                                       nsfw_score=p.source_score(index)), 1
            size = (p.images[index].width * 2, p.images[index].height * 2)
        try:
            fields = old.model_dump() | {"seed": seed, "count": count,
                                         "max_upload_bytes": self.settings.max_upload_bytes}
            fields |= {k: extra[k] for k in ("prompt", "negative_prompt", "faces") if k in extra}
            request = make_request(**fields)
            job = make_job(request, make_origin(**origin_fields), kind=kind, source=source)
        except JobError as err:
            return Refusal(_("That can't be dreamed again: {reason}").format(reason=err))
        return job, size

    def _prepare_and_submit(self, job_id: str, action: str, index: int | None, origin_fields: dict,
                            roles: list[int], deadline: float, extra: dict | None = None,
                            ) -> tuple[DreamJob | None, tuple[int, int] | None, Outcome]:
        prepared = self.prepare(job_id, action, index, origin_fields, extra)
        if isinstance(prepared, Refusal):
            return None, None, Outcome(False, prepared.message, kind="button")
        job, size = prepared
        return job, size, self.backend.submit(job, roles, size=size, deadline=deadline)

    async def follow_up(self, interaction: discord.Interaction, job_id: str, action: str,
                        index: int | None = None, extra: dict | None = None) -> None:
        started = time.perf_counter()
        origin_fields = members.origin_fields(interaction, self.settings.instance)
        private = origin_fields["private"]  # the clicking member's own /settings, whoever made the result
        roles = [r.id for r in getattr(interaction.user, "roles", [])]
        note_ack = lambda: self.commands._note_ack(started)  # noqa: E731
        try:
            # Past the budget, a "thinking..." message of this click: its @original is what the result replaces.
            (job, size, outcome), deferred = await within_ack(
                interaction, toolkit.submit(self._prepare_and_submit, job_id, action, index, origin_fields, roles,
                                         time.monotonic() + SUBMIT_DEADLINE_S, extra),
                SUBMIT_TIMEOUT_S, ephemeral=private, on_ack=note_ack)
        except asyncio.TimeoutError:  # the submit still runs: it may have queued the dream
            job, size, outcome = None, None, Outcome(False, _(UNCONFIRMED), kind="unconfirmed")
            deferred = interaction.response.is_done()
        except (redis.RedisError, ImageStoreError):
            job, size, outcome = None, None, Outcome(False, _(UNAVAILABLE), kind="unavailable")
            deferred = interaction.response.is_done()

        if outcome.ok and job is not None:
            req = job.request
            text = queued_text(job.job_id, outcome.position or 0, req.prompt, settings_line(req, size),
                               outcome.eta_s)
            if action == "reroll":
                made = _("🎲 Reroll of `{job_id}`").format(job_id=job_id)
            elif action == "remix":
                made = _("🖌️ Remix of `{job_id}` (same seed)").format(job_id=job_id)
            else:
                made = made_from(job.kind, job.source)
            if made:
                first, __, rest = text.partition("\n")
                text = f"{first}\n{made}\n{rest}"
            if not private:
                text += self.commands._permission_note(interaction)
            if self.commands.progress is not None:
                self.commands.progress.track(job.job_id, interaction, text.split("\n", 1)[1], outcome.position,
                                             stats.speed_key(job))
            log.info("follow-up queued", extra={"job_id": job.job_id, "from_job": job_id, "action": action,
                                                "user_id": interaction.user.id})
        else:
            text = outcome.message
        await answer(interaction, text, public=outcome.ok and not private, deferred=deferred, on_ack=note_ack)

    # --- Info ---------------------------------------------------------------------------------------------

    async def info(self, interaction: discord.Interaction, job_id: str) -> None:
        try:
            p, chain = await toolkit.in_time(self._record_and_chain, job_id, interaction.guild_id)
        except (asyncio.TimeoutError, redis.RedisError, ImageStoreError):
            p, chain = Refusal(_(STORE_DOWN)), []
        text = p.message if isinstance(p, Refusal) else info_text(p, self.settings.image_retention_days * 86400,
                                                                  chain=chain)
        await interaction.response.send_message(text, ephemeral=True, allowed_mentions=NO_MENTIONS)

    def _record_and_chain(self, job_id: str, guild_id: int | None) -> tuple[JobParams | Refusal, list[JobParams]]:
        """A result's record and the records of what it was made from, nearest first (a chain of edits), as
        far as they are kept and as many as CHAIN_S allows: Info answers inside Discord's window regardless."""
        p = self._record(job_id, guild_id)
        if isinstance(p, Refusal):
            return p, []
        chain: list[JobParams] = []
        seen, at, until = {p.job_id}, p, time.monotonic() + CHAIN_S
        while at.source is not None and at.source.job_id not in seen and len(chain) < 8 and time.monotonic() < until:
            seen.add(at.source.job_id)
            at = params.load(self.conn, at.source.job_id, self.backend.images)
            if at is None:
                break
            chain.append(at)
        return p, chain

    # --- Delete -------------------------------------------------------------------------------------------

    async def delete(self, interaction: discord.Interaction, job_id: str) -> None:
        try:
            p = await toolkit.in_time(params.load, self.conn, job_id, self.backend.images)
        except (asyncio.TimeoutError, redis.RedisError, ImageStoreError):
            await answer_privately(interaction, _(STORE_DOWN))
            return
        is_admin = is_guild_admin(interaction)
        refusal = None
        if p is not None and p.guild_id != interaction.guild_id:
            refusal = _("That result belongs to another server.")
        elif not _message_shows(interaction.message, job_id):
            # Only the job's own message carries its id; anything else is a crafted click.
            refusal = _("That button doesn't belong to this message.")
        elif p is None and not is_admin:
            refusal = _("I no longer know who asked for this one; a server admin (Manage Server) can delete it.")
        elif p is not None and p.user_id != interaction.user.id and not is_admin:
            refusal = _("Only the member who asked for it, or a server admin (Manage Server), can delete this.")
        if refusal:
            await interaction.response.send_message(refusal, ephemeral=True, allowed_mentions=NO_MENTIONS)
            return
        # A deferred update: @original is now the message the button is on, and deleting it through the
        # click's own webhook needs no channel permission.
        await interaction.response.defer()
        try:
            await interaction.delete_original_response()
        except discord.NotFound:
            pass  # already gone (deleted by hand, or a second click)
        except discord.HTTPException as err:
            log.warning("delete failed", extra={"job_id": job_id, "status": err.status})
            await interaction.followup.send(
                _("Discord wouldn't let me delete it ({status}).").format(status=err.status), ephemeral=True,
                allowed_mentions=NO_MENTIONS)
            return
        try:
            # The images go with the message: nobody can make variations of a deleted picture.
            await toolkit.command(self.conn.delete, keys.result_key(job_id), keys.params_key(job_id))
            stored = [image_key(job_id, i, im.format) for i, im in enumerate(p.images)] if p else []
            if p is not None and p.kind == "picture" and p.source is not None and p.source.job_id == job_id:
                stored.append(input_key(job_id))  # the member's own photo goes with what was made of it
            await toolkit.command(self.backend.images.delete, [*stored, params_copy_key(job_id)])
        except (redis.RedisError, ImageStoreError) as err:  # they expire on their own
            log.warning("deleted result's images left to expire", extra={"job_id": job_id, "error": str(err)})
        log.info("result deleted", extra={"job_id": job_id, "by": interaction.user.id, "admin": is_admin})


def _message_shows(message: discord.Message | None, job_id: str) -> bool:
    """The message is job_id's own post: it carries the job's images (behind a spoiler or not), or, when the
    content filter held all of them back, the note that names the job (dreamcore.moderation)."""
    if message is None:
        return False
    if any(a.filename.removeprefix("SPOILER_").startswith(f"dream-{job_id}-") for a in message.attachments):
        return True
    return moderation.withheld_marker(job_id) in (message.content or "")
