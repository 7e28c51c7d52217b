"""/settings: a member's own defaults for /dream, private results and their language (dreamcore.preferences),
shown in one ephemeral panel with select menus and buttons, changed there or by the command's options.

`/settings show [options]` changes what its options name and shows the panel; `/settings reset` forgets
everything. The panel's components are matched on their custom id alone (like the result buttons), so any
bot instance, started any time, answers a click; a click changes the clicking member's own settings, which
is the only member who can see the ephemeral panel anyway.
"""

from __future__ import annotations

import asyncio
import logging
import re

import discord
import redis
from discord import app_commands
from discord.app_commands import locale_str
from pydantic import ValidationError

from dreamcore import i18n, preferences, ranges
from dreamcore.i18n import N_, _, ngettext
from dreamcore.job import ASPECT_LABELS, FACE_LABELS
from dreamcore.modes import MODE_LABELS
from dreamcore.preferences import Preferences
from dreamcore.styles import load_styles

from . import members, toolkit
from .commands import complete_style
from .toolkit import NO_MENTIONS, STORE_DOWN, answer_privately, choices
from .translator import text

log = logging.getLogger("dreambot.bot")

DEFAULT = "default"  # a select's "no default of mine" option
AUTO_LANGUAGE = "auto"  # the language select's "my Discord client's" option
# The buttons that step through a setting's values: None is "no default of mine" (the server's applies).
CYCLES: dict[str, list] = {
    "count": [None, *range(ranges.IMAGES.lo, ranges.IMAGES.hi + 1)],
    "faces": [None, "auto", "on", "off"],
}
LANGUAGE_NAMES = {i18n.SOURCE: "English", **i18n.LANGUAGES}


def panel_text(prefs: Preferences, unreadable: bool = False) -> str:
    """What the panel says, in the language of the moment."""
    server = _("the server's default")

    def shown(value, label=None) -> str:
        return server if value is None else (label or str(value))

    lines = [_("**Your settings** (only you see this; they apply in every server, and a server's limits still win)")]
    if unreadable:
        lines.append(_("-# Your saved settings could not be read; they are kept until you change one."))
    lines += [
        _("- Language: {value}").format(value=LANGUAGE_NAMES[prefs.language] if prefs.language
                                        else _("your Discord language")),
        _("- Style: {value}").format(value=shown(prefs.style, prefs.style and _style_label(prefs.style))),
        _("- Aspect: {value}").format(value=shown(prefs.aspect, prefs.aspect and _(ASPECT_LABELS[prefs.aspect]))),
        _("- Images per dream: {value}").format(value=shown(prefs.count)),
        _("- Steps: {value}").format(value=shown(prefs.steps)),
        _("- Mode: {value}").format(value=shown(prefs.mode, prefs.mode and _(MODE_LABELS[prefs.mode]))),
        _("- Faces: {value}").format(value=shown(prefs.faces, prefs.faces and _(FACE_LABELS[prefs.faces]))),
        _("- Private results: {value}").format(value=_("on: only you see your results; after 15 minutes they "
                                                       "come by direct message") if prefs.private else _("off")),
        _("-# Change them below or with `/settings show`; `/settings reset` forgets them all."),
    ]
    return "\n".join(lines)


def summary(prefs: Preferences) -> str:
    """A member's settings on one line, for /dreamhelp: only what they set."""
    parts = []
    if prefs.style:
        parts.append(_style_label(prefs.style))
    if prefs.aspect:
        parts.append(prefs.aspect)
    if prefs.count:
        parts.append(ngettext("{n} image", "{n} images", prefs.count).format(n=prefs.count))
    if prefs.steps:
        parts.append(ngettext("{n} step", "{n} steps", prefs.steps).format(n=prefs.steps))
    if prefs.mode:
        parts.append(prefs.mode)
    if prefs.faces:
        parts.append(_("faces {faces}").format(faces=prefs.faces))
    if prefs.private:
        parts.append(_("private results"))
    if prefs.language:
        parts.append(LANGUAGE_NAMES[prefs.language])
    return " · ".join(parts) if parts else _("none yet: the server's defaults apply")


def _style_label(key: str) -> str:
    """A preset's name; a saved one that is no longer offered (preferences.apply drops it) by its key."""
    styles = load_styles()
    return styles[key].label if key in styles else key


def _select(field: str, placeholder: str, options: list[tuple[str, str]], chosen: str) -> discord.ui.Select:
    return discord.ui.Select(custom_id=f"settings:{field}", placeholder=placeholder, min_values=1, max_values=1,
                             options=[discord.SelectOption(label=label[:100], value=value, default=value == chosen)
                                      for value, label in options[:25]])


def panel_view(prefs: Preferences) -> discord.ui.View:
    """Four selects and a row of buttons: Discord's five rows, one setting or one action each."""
    view = discord.ui.View(timeout=None)
    default = (DEFAULT, _("The server's default"))
    view.add_item(_select("language", _("Language"),
                          [(AUTO_LANGUAGE, _("My Discord language"))] + list(LANGUAGE_NAMES.items()),
                          prefs.language or AUTO_LANGUAGE))
    view.add_item(_select("mode", _("Mode"), [default] + [(k, _(v)) for k, v in MODE_LABELS.items()],
                          prefs.mode or DEFAULT))
    view.add_item(_select("aspect", _("Aspect"), [default] + [(k, _(v)) for k, v in ASPECT_LABELS.items()],
                          prefs.aspect or DEFAULT))
    view.add_item(_select("style", _("Style"), [default] + [(k, s.label) for k, s in load_styles().items()],
                          prefs.style or DEFAULT))
    count = _("Images: {n}").format(n=prefs.count) if prefs.count else _("Images: server's")
    faces = _("Faces: {value}").format(value=prefs.faces) if prefs.faces else _("Faces: server's")
    private = _("Private: on") if prefs.private else _("Private: off")
    for field, label, style in (("count", count, discord.ButtonStyle.secondary),
                                ("faces", faces, discord.ButtonStyle.secondary),
                                ("private", private, discord.ButtonStyle.primary if prefs.private
                                 else discord.ButtonStyle.secondary),
                                ("reset", _("Reset all"), discord.ButtonStyle.danger)):
        view.add_item(discord.ui.Button(custom_id=f"settings:{field}", label=label[:80], style=style, row=4))
    return view


class SettingsCommands(app_commands.Group):
    def __init__(self):
        super().__init__(name="settings", description="Your own defaults for /dream, private results and language")

    @app_commands.command(name="show", description="Show your settings and change them; options set them directly")
    @app_commands.describe(
        style="Your default style preset",
        aspect="Your default picture shape",
        count=text("Your default number of pictures, {lo} to {hi}", **ranges.IMAGES.shown()),
        steps=text("Your default steps, {lo} to {hi} (0: the server's default)", **ranges.STEPS.shown()),
        mode="Your default mode",
        faces="Your default face pass",
        private="Results only you see (ephemeral; by direct message after 15 minutes)",
        language="The language I answer you in",
    )
    @app_commands.autocomplete(style=complete_style)
    @app_commands.choices(
        aspect=choices(ASPECT_LABELS), mode=choices(MODE_LABELS), faces=choices(FACE_LABELS),
        language=[app_commands.Choice(name=N_("My Discord language"), value=AUTO_LANGUAGE)]
        + [app_commands.Choice(name=locale_str(label, literal=True), value=code)  # each in itself
                   for code, label in LANGUAGE_NAMES.items()],
    )
    async def show(self, interaction: discord.Interaction, style: str | None = None, aspect: str | None = None,
                   count: app_commands.Range[int, ranges.IMAGES.lo, ranges.IMAGES.hi] | None = None,
                   steps: app_commands.Range[int, 0, ranges.STEPS.hi] | None = None, mode: str | None = None,
                   faces: str | None = None, private: bool | None = None, language: str | None = None):
        given = {k: v for k, v in (("style", style), ("aspect", aspect), ("count", count), ("steps", steps),
                                   ("mode", mode), ("faces", faces), ("private", private),
                                   ("language", language)) if v is not None}
        if given.get("steps") == 0:
            given["steps"] = None
        if given.get("language") == AUTO_LANGUAGE:
            given["language"] = None
        if "style" in given and given["style"] not in load_styles():
            await answer_privately(interaction, _("There is no style `{style}`; pick one from the list.").format(
                style=given["style"]))
            return
        loaded = members.current()
        prefs = loaded.prefs
        if given:
            prefs = await _in_store(interaction, preferences.change,
                                    _("That setting can't be saved: a value is out of range."), **given)
            if prefs is TOLD:
                return
            members.remember(prefs, interaction)
            loaded = preferences.Loaded(prefs=prefs)
        await interaction.response.send_message(panel_text(prefs, loaded.unreadable), view=panel_view(prefs),
                                                ephemeral=True, allowed_mentions=NO_MENTIONS)

    @app_commands.command(name="reset", description="Forget all your settings")
    async def reset(self, interaction: discord.Interaction):
        had = await _in_store(interaction, preferences.reset)
        if had is TOLD:
            return
        members.remember(Preferences(), interaction)
        await answer_privately(interaction, _("Your settings are forgotten: /dream uses the server's defaults again.")
                               if had else _("You had no settings saved."))


TOLD = object()  # what _in_store returns once the member has read why their settings were not saved


async def _in_store(interaction: discord.Interaction, change, refusal: str = "", **fields):
    """`change` (preferences.change or .reset) for the member, within toolkit.in_time; TOLD once they have read
    `refusal` (a value the settings refuse) or STORE_DOWN (the store didn't answer in time)."""
    try:
        return await toolkit.in_time(change, interaction.client.backend.conn, interaction.user.id, **fields)
    except ValidationError:
        await answer_privately(interaction, refusal)
    except (asyncio.TimeoutError, redis.RedisError):
        await answer_privately(interaction, _(STORE_DOWN))
    return TOLD


async def _panel_click(interaction: discord.Interaction, field: str, values: list[str]) -> None:
    """A select picked or a button pressed on a panel: change the clicker's own setting, redraw the panel."""
    prefs = members.current().prefs
    # A stale panel offers something this release no longer takes.
    stale = _("That choice isn't offered any more; run /settings show again.")
    if field == "reset":
        if await _in_store(interaction, preferences.reset) is TOLD:
            return
        prefs = Preferences()
    else:
        try:
            value = _panel_value(field, values, prefs)
        except Stale:
            await answer_privately(interaction, stale)
            return
        prefs = await _in_store(interaction, preferences.change, stale, **{field: value})
        if prefs is TOLD:
            return
    members.remember(prefs, interaction)
    await interaction.response.edit_message(content=panel_text(prefs), view=panel_view(prefs),
                                            allowed_mentions=NO_MENTIONS)


def _panel_value(field: str, values: list[str], prefs: Preferences):
    if field == "private":
        return not prefs.private
    if field in CYCLES:
        cycle = CYCLES[field]
        now = getattr(prefs, field)
        return cycle[(cycle.index(now) + 1) % len(cycle)] if now in cycle else cycle[0]
    value = values[0] if values else DEFAULT
    if value in (DEFAULT, AUTO_LANGUAGE):
        return None
    if field == "style" and value not in load_styles():
        raise Stale(value)
    return value


class Stale(Exception):
    """A panel made by an earlier release offered a value this one no longer has."""


class _PanelItem:
    """What every component of a panel does when used: a button steps its setting, a select sets it."""

    field: str

    @classmethod
    async def from_custom_id(cls, interaction, item, match: re.Match[str], /):
        await members.meet(interaction, interaction.client.backend.conn)
        return cls(match["field"])

    async def callback(self, interaction: discord.Interaction) -> None:
        await _panel_click(interaction, self.field, list((interaction.data or {}).get("values") or []))


class PanelSelect(_PanelItem, discord.ui.DynamicItem[discord.ui.Select],
                  template=r"settings:(?P<field>language|mode|aspect|style)"):
    def __init__(self, field: str):
        super().__init__(discord.ui.Select(custom_id=f"settings:{field}", options=[discord.SelectOption(label="-")]))
        self.field = field


class PanelButton(_PanelItem, discord.ui.DynamicItem[discord.ui.Button],
                  template=r"settings:(?P<field>count|faces|private|reset)"):
    def __init__(self, field: str):
        super().__init__(discord.ui.Button(custom_id=f"settings:{field}", label="-"))
        self.field = field
