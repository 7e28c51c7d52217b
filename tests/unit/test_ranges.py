"""One source for every range (dreamcore/ranges.py): the dream model, the /dream command Discord shows, the
guild limits, their defaults in the settings and /dreamadmin's ranges all say what the table says."""

from __future__ import annotations

import re

import discord
import pytest
from discord import app_commands

from dreamcore import ranges
from dreamcore.job import DreamRequest
from dreamcore.limits.model import GuildLimits, limit_range
from dreamcore.settings import Settings, SettingsError, load_settings


def _bounds(model, name: str) -> tuple:
    meta = model.model_fields[name].metadata
    return (next(m.ge for m in meta if getattr(m, "ge", None) is not None),
            next(m.le for m in meta if getattr(m, "le", None) is not None))


@pytest.mark.parametrize(("field", "bounds"), [("seed", ranges.SEED), ("count", ranges.IMAGES),
                                               ("steps", ranges.STEPS), ("guidance", ranges.GUIDANCE),
                                               ("split", ranges.SPLIT)])
def test_the_dream_model_and_the_slash_command_take_the_same_ranges(field, bounds):
    assert _bounds(DreamRequest, field) == (bounds.lo, bounds.hi)
    from bot.commands import dream_command

    tree = app_commands.CommandTree(discord.Client(intents=discord.Intents.none()))
    tree.add_command(dream_command(load_settings()))
    options = {o["name"]: o for o in tree.get_command("dream").to_dict(tree)["options"]}
    option = options["count" if field == "count" else field]
    assert (option["min_value"], option["max_value"]) == (bounds.lo, bounds.hi)


@pytest.mark.parametrize("key", sorted(ranges.LIMITS))
def test_every_limit_its_default_and_the_admin_command_take_one_range(key):
    want = (ranges.LIMITS[key].lo, ranges.LIMITS[key].hi)
    assert _bounds(GuildLimits, key) == want
    assert _bounds(Settings, f"limit_{key}") == want
    assert limit_range(key) == want  # what /dreamadmin shows and checks
    env = f"DREAMBOT_LIMIT_{key.upper()}"
    with pytest.raises(SettingsError, match=env) as err:
        load_settings(**{env: str(want[1] + 1)})
    # The operator reads the range by the variable's name, as an admin does in /dreamadmin.
    assert f"(allowed {want[0]} to {want[1]}), got '{want[1] + 1}'" in str(err.value)


def test_every_numeric_limit_is_in_the_table():
    numeric = {k for k, f in GuildLimits.model_fields.items() if f.annotation in (int, float)}
    assert numeric == set(ranges.LIMITS)


# A range written as "1 to 4", "0.5-1.0" or "1 to {max_steps}": numbers on either side of "to" or a dash.
LITERAL_RANGE = re.compile(r"(?<![\w{])\d+(?:\.\d+)?\s*(?:to|-|–)\s*(?:\d|\{)|\}\s*(?:to|-|–)\s*\d")


def test_no_command_description_or_help_text_writes_a_range_itself():
    """What Discord shows under a command and what /dreamhelp says take their ranges from dreamcore.ranges
    (Bounds.shown, into placeholders): a range spelt out in a text would stay behind when the table changes."""
    from dreambot.catalogs import template

    checked = 0
    for message in template():
        where = {path for path, _line in message.locations}
        if not message.id or not where & {"<commands>", "bot/help.py"}:
            continue
        for text in message.id if isinstance(message.id, tuple) else (message.id,):
            checked += 1
            assert not LITERAL_RANGE.search(text), f"a range written in the text, not from dreamcore.ranges: {text!r}"
    assert checked > 50  # every command's texts and the help's were seen


def test_the_shown_ranges_are_the_tables():
    from bot.client import command_tree
    from bot.help import help_parts

    options = {o["name"]: o for o in command_tree().get_command("dream").to_dict(command_tree())["options"]}
    for name, bounds in (("seed", ranges.SEED), ("count", ranges.IMAGES), ("steps", ranges.STEPS),
                         ("guidance", ranges.GUIDANCE), ("split", ranges.SPLIT), ("change", ranges.STRENGTH)):
        shown = bounds.shown()
        assert f"{shown['lo']}" in options[name]["description"] and f"{shown['hi']}" in options[name]["description"]
    text = "\n".join(help_parts(Settings(), GuildLimits(), None))
    for bounds in (ranges.GUIDANCE, ranges.SPLIT, ranges.STRENGTH):
        assert "{lo} to {hi}".format(**bounds.shown()) in text
