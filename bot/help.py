"""/dreamhelp: what /dream takes, this server's limits, and what the member has left."""

from __future__ import annotations

import asyncio

import discord
import redis
from discord import app_commands

from dreamcore.cost import left_text, turbo_image, units_text
from dreamcore.job import ASPECT_LABELS, MAX_PROMPT_CHARS, PICTURE_STRENGTH
from dreamcore.limit_messages import human_duration
from dreamcore.styles import load_styles

from . import calls
from .toolkit import NO_MENTIONS


def help_text(settings, limits, usage: dict | None) -> str:
    styles = ", ".join(st.label for st in load_styles().values())
    aspects = ", ".join(ASPECT_LABELS.values())
    lines = [
        "**/dream** makes pictures with SDXL: the base model sketches, the refiner finishes.",
        f"- `prompt` what to dream (up to {MAX_PROMPT_CHARS} characters; long prompts are encoded in 75-token chunks)",
        "- `negative` what to keep out",
        f"- `style` {styles}",
        f"- `aspect` {aspects}",
        "- `seed` the same seed and settings give the same picture; each picture's seed is shown",
        f"- `count` 1 to {limits.max_images}, `steps` 1 to {limits.max_steps} (default {settings.default_steps}), "
        f"`guidance` 0 to 30 (default {settings.default_guidance:g}), `split` 0.5 to 1.0: share of steps on the base "
        f"(default {settings.default_split:g}; 1.0 skips the refiner)",
        f"- `image` a picture of yours to start from, `change` how much of it to redraw, 0.05 to 1.0 (default "
        f"{PICTURE_STRENGTH:g})" + {"off": " (not on this server)", "age_restricted": " (in age-restricted channels "
                                    "here)"}.get(limits.images_in, ""),
        f"- `faces` small faces redrawn close up after the refiner: auto (the small ones), on (every face), off "
        f"(this server's default: {limits.faces}); 🙂 Fix faces does it afterwards",
        f"- `mode` quality (base + refiner), turbo (4 fixed steps, no negative, {units_text(turbo_image())} of a "
        f"standard image{'' if limits.allows('turbo') else '; off here'}), relax (quality, unlimited, when the GPUs "
        f"are free{'' if limits.allows('relax') else '; off here'}); default here: {limits.mode}",
        "Also: **/dreamqueue** your dreams and their ETA · **/cancel** a dream · buttons under each result.",
        "",
        "**This server's limits**" + (" (dreaming is paused here)" if limits.paused else ""),
        f"- {limits.user_images_hour} standard images an hour and {limits.user_images_day} a day per member; "
        f"{limits.guild_images_hour} an hour and {limits.guild_images_day} a day for the server (a standard image: "
        "1024x1024, 40 steps; others count their GPU time)",
        f"- {limits.cooldown_s} s between dreams, at most {limits.user_max_active} queued or running per member",
    ]
    if usage is not None:
        left_h = max(0, limits.user_images_hour - usage["user_images_hour"])
        left_d = max(0, limits.user_images_day - usage["user_images_day"])
        cooldown = usage["cooldown_remaining_s"]
        turbo = limits.allows("turbo")
        lines += ["", "**You**",
                  f"- this hour: {left_text(left_h, turbo)}; in 24 h: {left_text(left_d, turbo)}"
                  + ("; relax dreams count against neither" if limits.allows("relax") else ""),
                  f"- {units_text(left_h)} standard images left this hour, {units_text(left_d)} in the last 24 h; "
                  f"{usage['user_active']} dream(s) queued or running"
                  + (f"; next dream in {human_duration(cooldown)}" if cooldown > 0 else "")]
    return "\n".join(lines)[:2000]


def register_help(tree: app_commands.CommandTree, client) -> None:
    @tree.command(name="dreamhelp", description="How to dream, this server's limits, and your remaining quota")
    async def dreamhelp(interaction: discord.Interaction):
        store = client.backend.store
        try:
            limits, usage = await asyncio.wait_for(calls.command(
                lambda: (store.get(interaction.guild_id),
                         store.usage(interaction.guild_id, interaction.user.id) if interaction.guild_id else None)),
                2.0)
        except (asyncio.TimeoutError, redis.RedisError):
            limits, usage = store.defaults(), None
        await interaction.response.send_message(help_text(client.settings, limits, usage), ephemeral=True,
                                                allowed_mentions=NO_MENTIONS)
