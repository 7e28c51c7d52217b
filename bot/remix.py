"""Remix 🖌️ and Vary (Region) 🎯: the follow-ups that ask the member something first.

Remix opens a Discord modal with the result's prompt and negative prompt filled in; what the member submits
is dreamed again with the same seed and settings (an edit, a variation or a picture job from the same
source). Vary (Region) first shows a region picker, a select menu of the nine cells of a 3x3 grid and the
four halves (several at once), then the same modal, for what should be there; the region is inpainted
(worker/inpaint.py) and everything outside it kept.

Nothing is held in memory between the steps: the picker's custom id names the job and the image, the
modal's the job, the image and the cells chosen, and a modal's submit is read by its custom id
(`on_modal_submit`, from the client's on_interaction), so a bot restarted between the click and the
submit still answers it.
"""

from __future__ import annotations

import asyncio
import logging
import re

import discord
import redis

from dreamcore.canvas import region_cells
from dreamcore.i18n import N_, _
from dreamcore.images import ImageStoreError
from dreamcore.job import MAX_PROMPT_CHARS

from . import members, toolkit
from .toolkit import NO_MENTIONS, STORE_DOWN, answer_privately

log = logging.getLogger("dreambot.buttons")

MODAL = re.compile(r"dreammodal:(?:m:(?P<job>[0-9a-f]{16})|g:(?P<gjob>[0-9a-f]{16}):(?P<i>[0-9]):(?P<cells>[0-9a-f]{1,9}))")
REGION_CHOICES = [  # (value, label): the labels are translated when the picker is shown
    ("c00", N_("↖️ top left")), ("c01", N_("⬆️ top")), ("c02", N_("↗️ top right")),
    ("c10", N_("⬅️ left")), ("c11", N_("⏺️ centre")), ("c12", N_("➡️ right")),
    ("c20", N_("↙️ bottom left")), ("c21", N_("⬇️ bottom")), ("c22", N_("↘️ bottom right")),
    ("left", N_("◧ left half")), ("right", N_("◨ right half")), ("top", N_("⬒ top half")),
    ("bottom", N_("⬓ bottom half")),
]


class PromptModal(discord.ui.Modal):
    """The prompt and negative prompt, filled in with the result's. Its submit is read by custom id
    (on_modal_submit); the instance only lays the modal out. `title` and `prompt_label` come translated."""

    def __init__(self, custom_id: str, title: str, prompt: str, negative: str, prompt_label: str):
        super().__init__(title=title, custom_id=custom_id, timeout=900)
        self.add_item(discord.ui.TextInput(label=prompt_label, custom_id="prompt", default=prompt[:MAX_PROMPT_CHARS],
                                           style=discord.TextStyle.paragraph, max_length=MAX_PROMPT_CHARS))
        self.add_item(discord.ui.TextInput(label=_("What to keep out (optional)"), custom_id="negative",
                                           default=negative[:MAX_PROMPT_CHARS] or None, required=False,
                                           style=discord.TextStyle.paragraph, max_length=MAX_PROMPT_CHARS))


class RegionSelect(discord.ui.DynamicItem[discord.ui.Select],
                   template=r"dreamsel:g:(?P<job>[0-9a-f]{16}):(?P<i>[0-9])"):
    """The region picker of Vary (Region), on a private message; picking opens the modal."""

    def __init__(self, job_id: str, index: int):
        super().__init__(discord.ui.Select(
            custom_id=f"dreamsel:g:{job_id}:{index}", placeholder=_("Pick the parts to redraw (several at once)"),
            min_values=1, max_values=len(REGION_CHOICES),
            options=[discord.SelectOption(label=_(label), value=value) for value, label in REGION_CHOICES]))
        self.job_id, self.index = job_id, index

    @classmethod
    async def from_custom_id(cls, interaction, item, match: re.Match[str], /):
        await members.meet(interaction, interaction.client.backend.conn)
        return cls(match["job"], int(match["i"]))

    async def callback(self, interaction: discord.Interaction) -> None:
        try:
            await self._picked(interaction)
        except Exception:
            log.exception("region picker failed", extra={"job_id": self.job_id})
            try:
                await answer_privately(interaction,
                                       _("Something went wrong on my side with that. Please try again."))
            except discord.HTTPException:
                pass

    async def _picked(self, interaction: discord.Interaction) -> None:
        h = getattr(interaction.client, "buttons", None)
        values = list((interaction.data or {}).get("values") or [])
        try:
            cells = region_cells(values)
        except ValueError:
            await _say(interaction, _("That isn't a part of the picture I know; pick again."))
            return
        p = await _record(h, interaction, self.job_id)
        if p is None:
            return
        await interaction.response.send_modal(PromptModal(
            f"dreammodal:g:{self.job_id}:{self.index}:{cells:x}", _("Vary (Region)"), p.request.prompt,
            p.request.negative_prompt, _("What should be there")))


async def _say(interaction: discord.Interaction, text: str) -> None:
    await interaction.response.send_message(text, ephemeral=True, allowed_mentions=NO_MENTIONS)


async def _record(h, interaction: discord.Interaction, job_id: str):
    """The result's record, or None once the member has been told why not."""
    from .buttons import Refusal

    try:
        p = await toolkit.in_time(h._record, job_id, interaction.guild_id)  # a modal must be the first answer: no deferring
    except (asyncio.TimeoutError, redis.RedisError, ImageStoreError):
        p = Refusal(_(STORE_DOWN))
    if isinstance(p, Refusal):
        await _say(interaction, p.message)
        return None
    return p


async def open_remix(h, interaction: discord.Interaction, job_id: str) -> None:
    p = await _record(h, interaction, job_id)
    if p is not None:
        await interaction.response.send_modal(PromptModal(
            f"dreammodal:m:{job_id}", _("Remix (same seed and settings)"), p.request.prompt,
            p.request.negative_prompt, _("Prompt")))


async def pick_region(h, interaction: discord.Interaction, job_id: str, index: int) -> None:
    p = await _record(h, interaction, job_id)
    if p is None:
        return
    view = discord.ui.View(timeout=None)  # see buttons.result_view: a stopped view would unregister the picker
    view.add_item(RegionSelect(job_id, index))
    await interaction.response.send_message(
        _("🎯 Which parts of image {n} of `{job_id}` should be redrawn? Everything else stays as it is.").format(
            n=index + 1, job_id=job_id),
        view=view, ephemeral=True, allowed_mentions=NO_MENTIONS)


def _inputs(interaction: discord.Interaction) -> dict[str, str]:
    """A modal submit's text inputs by custom id (in action rows, or in labels)."""
    out = {}
    for top in (interaction.data or {}).get("components") or []:
        inner = top.get("components") or ([top["component"]] if "component" in top else [])
        for c in inner:
            if "custom_id" in c:
                out[c["custom_id"]] = str(c.get("value") or "")
    return out


async def on_modal_submit(h, interaction: discord.Interaction) -> bool:
    """Answer a Remix or Vary (Region) modal's submit; False when the custom id isn't one of these."""
    m = MODAL.fullmatch(str((interaction.data or {}).get("custom_id") or ""))
    if m is None or h is None:
        return False
    values = _inputs(interaction)
    extra = {"prompt": values.get("prompt", ""), "negative_prompt": values.get("negative", "")}
    if m["job"]:
        await h.follow_up(interaction, m["job"], "remix", extra=extra)
    else:
        await h.follow_up(interaction, m["gjob"], "region", int(m["i"]), extra=extra | {"cells": int(m["cells"], 16)})
    return True
