"""One source for every range (dreamcore/ranges.py): the dream model, the /dream command Discord shows, the
guild limits, their defaults in the settings and /dreamadmin's ranges all say what the table says."""

from __future__ import annotations

from types import SimpleNamespace

import discord
import pytest
from discord import app_commands

from dreamcore import ranges
from dreamcore.job import DreamRequest
from dreamcore.limits import GuildLimits, limit_range
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
    from bot.commands import DreamCommands

    tree = app_commands.CommandTree(discord.Client(intents=discord.Intents.none()))
    DreamCommands(SimpleNamespace(), load_settings(), backend=None).register(tree)
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
