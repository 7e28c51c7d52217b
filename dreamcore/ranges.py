"""Every bounded number a member, an admin or an operator can set, declared once.

A dream's options (DreamRequest, and the /dream command's `app_commands.Range`s, so Discord's own form refuses
what the model would), a guild's limits (GuildLimits, and their defaults DREAMBOT_LIMIT_* in Settings) all
read their bounds from here; a test checks each of those places against this table.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pydantic import Field


@dataclass(frozen=True)
class Bounds:
    lo: int | float
    hi: int | float

    def field(self, *args: Any, **kwargs: Any) -> Any:
        """A pydantic Field with these bounds (ge=lo, le=hi); other arguments as Field takes them."""
        return Field(*args, ge=self.lo, le=self.hi, **kwargs)

    def shown(self, prefix: str = "") -> dict[str, str]:
        """The bounds as a member reads them, for a text's `{lo}` and `{hi}` (`{<prefix>lo}`, `{<prefix>hi}`
        where one text names several ranges): a float in its shortest form (30, 0.05), so a text that shows a
        range never writes its numbers itself (tests/unit/test_ranges.py)."""
        return {f"{prefix}lo": _shown(self.lo), f"{prefix}hi": _shown(self.hi)}


def _shown(bound: int | float) -> str:
    return f"{bound:g}" if isinstance(bound, float) else str(bound)


MAX_SEED = 2**32 - 1
MAX_PROMPT_CHARS = 1500

# --- A dream's options --------------------------------------------------------------------------------
SEED = Bounds(0, MAX_SEED)
IMAGES = Bounds(1, 4)  # per dream: four is what one 2x2 grid (and one GPU batch slot group) holds
STEPS = Bounds(1, 100)
GUIDANCE = Bounds(0.0, 30.0)
# The base's share of the steps; below 0.5 the refiner (trained on the low-noise end only) would start on
# noise it never saw.
SPLIT = Bounds(0.5, 1.0)
# How far an image is pushed back into noise before it is redrawn (img2img's strength; /dream's `change`).
STRENGTH = Bounds(0.05, 1.0)

# --- A guild's limits, by GuildLimits key -------------------------------------------------------------
LIMITS: dict[str, Bounds] = {
    "cooldown_s": Bounds(0, 3600),
    "user_max_active": Bounds(1, 50),
    "user_images_hour": Bounds(1, 1000),
    "user_images_day": Bounds(1, 5000),
    "guild_images_hour": Bounds(1, 1_000_000),
    "guild_images_day": Bounds(1, 10_000_000),
    "max_images": IMAGES,  # a limit on images per dream can't exceed what a dream may ask for
    "max_steps": STEPS,
    "guild_max_queued": Bounds(1, 100_000),
    "nsfw_threshold": Bounds(0.0, 1.0),
}
