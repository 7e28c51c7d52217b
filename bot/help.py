"""/dreamhelp: what /dream takes, this server's limits, and what the member has left."""

from __future__ import annotations

import asyncio

import discord
import redis
from discord import app_commands

from dreamcore import ranges
from dreamcore.cost import left_text, turbo_image, units_text
from dreamcore.i18n import _, duration, ngettext
from dreamcore.job import ASPECT_LABELS, MAX_PROMPT_CHARS, PICTURE_STRENGTH
from dreamcore.preferences import Preferences
from dreamcore.styles import load_styles

from . import members, toolkit
from .member_settings import summary
from .toolkit import answer_privately

SPLIT = object()  # where the first message ends


def help_parts(settings, limits, usage: dict | None, prefs: Preferences | None = None) -> list[str]:
    """The help in the language of the moment, as two messages: what /dream takes, then this server's limits
    and the member's own (in German or Russian the two together pass Discord's 2,000 characters;
    tests/unit/test_catalogs.py holds each part of every language to it, with the longest values shown)."""
    styles = ", ".join(st.label for st in load_styles().values())
    aspects = ", ".join(ASPECT_LABELS.values())
    if limits.images_in == "off":
        image = _("- `image` a picture of yours to start from, `change` how much of it to redraw, {lo} to {hi} "
                  "(default {strength}) (not on this server)")
    elif limits.images_in == "age_restricted":
        image = _("- `image` a picture of yours to start from, `change` how much of it to redraw, {lo} to {hi} "
                  "(default {strength}) (in age-restricted channels here)")
    else:
        image = _("- `image` a picture of yours to start from, `change` how much of it to redraw, {lo} to {hi} "
                  "(default {strength})")
    turbo_image_units = units_text(turbo_image())
    turbo_mode = (_("turbo (4 fixed steps, no negative, {units} of a standard image)") if limits.allows("turbo")
                  else _("turbo (4 fixed steps, no negative, {units} of a standard image; off here)"))
    relax_mode = (_("relax (quality, unlimited, when the GPUs are free)") if limits.allows("relax")
                  else _("relax (quality, unlimited, when the GPUs are free; off here)"))
    lines = [
        _("**/dream** makes pictures with SDXL: the base model sketches, the refiner finishes."),
        ngettext("- `prompt` what to dream (up to {n} characters; long prompts are encoded in 75-token chunks)",
                 "- `prompt` what to dream (up to {n} characters; long prompts are encoded in 75-token chunks)",
                 MAX_PROMPT_CHARS).format(n=MAX_PROMPT_CHARS),
        _("- `negative` what to keep out"),
        f"- `style` {styles}",
        f"- `aspect` {aspects}",
        _("- `seed` the same seed and settings give the same picture; each picture's seed is shown"),
        # A server's own maximum (limits.max_*) tops the count and the steps; the rest are dreamcore.ranges'.
        _("- `count` {count_lo} to {max_images}, `steps` {steps_lo} to {max_steps} (default {steps}), `guidance` "
          "{guidance_lo} to {guidance_hi} (default {guidance}), `split` {split_lo} to {split_hi}: share of steps on "
          "the base (default {split}; {split_hi} skips the refiner)"
          ).format(**ranges.IMAGES.shown("count_"), **ranges.STEPS.shown("steps_"), **ranges.GUIDANCE.shown("guidance_"),
                   **ranges.SPLIT.shown("split_"), max_images=limits.max_images, max_steps=limits.max_steps,
                   steps=settings.default_steps, guidance=f"{settings.default_guidance:g}",
                   split=f"{settings.default_split:g}"),
        image.format(**ranges.STRENGTH.shown(), strength=f"{PICTURE_STRENGTH:g}"),
        _("- `faces` small faces redrawn close up after the refiner: auto (the small ones), on (every face), off "
          "(this server's default: {faces}); 🙂 Fix faces does it afterwards").format(faces=limits.faces),
        _("- `mode` quality (base + refiner), {turbo}, {relax}; default here: {mode}").format(
            turbo=turbo_mode.format(units=turbo_image_units), relax=relax_mode, mode=limits.mode),
        _("Also: **/dreamqueue** your dreams and their ETA · **/cancel** a dream · buttons under each result."),
        SPLIT,
        _("**This server's limits** (dreaming is paused here)") if limits.paused else _("**This server's limits**"),
        ngettext("- {user_hour} standard images an hour and {user_day} a day per member; {guild_hour} an hour and "
                 "{guild_day} a day for the server (a standard image: 1024x1024, 40 steps; others count their GPU "
                 "time)",
                 "- {user_hour} standard images an hour and {user_day} a day per member; {guild_hour} an hour and "
                 "{guild_day} a day for the server (a standard image: 1024x1024, 40 steps; others count their GPU "
                 "time)", limits.user_images_hour).format(
            user_hour=limits.user_images_hour, user_day=limits.user_images_day,
            guild_hour=limits.guild_images_hour, guild_day=limits.guild_images_day),
        _("- {cooldown} s between dreams, at most {active} queued or running per member").format(
            cooldown=limits.cooldown_s, active=limits.user_max_active),
    ]
    if usage is not None:
        left_h = max(0, limits.user_images_hour - usage["user_images_hour"])
        left_d = max(0, limits.user_images_day - usage["user_images_day"])
        cooldown = usage["cooldown_remaining_s"]
        turbo = limits.allows("turbo")
        left = (_("- this hour: {hour}; in 24 h: {day}; relax dreams count against neither")
                if limits.allows("relax") else _("- this hour: {hour}; in 24 h: {day}"))
        active = usage["user_active"]
        if cooldown > 0:
            used = ngettext("- {hour} standard images left this hour, {day} in the last 24 h; {active} dream(s) "
                            "queued or running; next dream in {wait}",
                            "- {hour} standard images left this hour, {day} in the last 24 h; {active} dream(s) "
                            "queued or running; next dream in {wait}", active)
        else:
            used = ngettext("- {hour} standard images left this hour, {day} in the last 24 h; {active} dream(s) "
                            "queued or running",
                            "- {hour} standard images left this hour, {day} in the last 24 h; {active} dream(s) "
                            "queued or running", active)
        lines += ["", _("**You**"),
                  left.format(hour=left_text(left_h, turbo), day=left_text(left_d, turbo)),
                  used.format(hour=units_text(left_h), day=units_text(left_d), active=active,
                              wait=duration(cooldown) if cooldown > 0 else "")]
    if prefs is not None:
        lines += ["", _("**Your settings** (`/settings show`)"), "- " + summary(prefs)]
    cut = lines.index(SPLIT)
    return ["\n".join(lines[:cut]), "\n".join(lines[cut + 1:])]


@app_commands.command(name="dreamhelp", description="How to dream, this server's limits, and your remaining quota")
async def dreamhelp(interaction: discord.Interaction):
    store = interaction.client.backend.store
    try:
        limits, usage = await toolkit.in_time(
            lambda: (store.get(interaction.guild_id),
                     store.usage(interaction.guild_id, interaction.user.id) if interaction.guild_id else None))
    except (asyncio.TimeoutError, redis.RedisError):
        limits, usage = store.defaults(), None
    first, second = help_parts(interaction.client.settings, limits, usage, members.current().prefs)
    await answer_privately(interaction, first)
    await answer_privately(interaction, second)
