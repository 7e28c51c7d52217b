"""`GuildLimits`: one guild's limits, the model the rest of dreamcore.limits reads and changes.

Every value is range-checked here (the one place the ranges are declared); a limit the admins never set
follows the defaults from the settings (DREAMBOT_LIMIT_*), so changing a default reaches every guild that
kept it."""

from __future__ import annotations

from typing import Annotated, Any, Literal, get_args, get_origin

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, field_validator, model_validator

from ..i18n import N_
from ..job import FaceChoice, clean_text
from ..modes import Mode, allowed
from ..ranges import LIMITS
from ..settings import Settings, get_settings
from .words import fold

HOUR = 3600
DAY = 86400
KEY_SLACK_S = 120  # added to every TTL, so a key never expires while its window can still see it
INSTANCE_PATTERN = r"^[a-z0-9][a-z0-9_-]{0,31}$"

Snowflake = Annotated[int, Field(ge=1, le=2**64 - 1)]
Word = Annotated[str, StringConstraints(min_length=1, max_length=64)]
InstanceName = Annotated[str, StringConstraints(pattern=INSTANCE_PATTERN)]

Kind = Literal[
    "paused", "channel", "blocked_word", "adult_word", "max_images", "max_steps", "cooldown", "user_active",
    "user_hour", "user_day", "guild_hour", "guild_day", "guild_queued", "mode",
]


class LimitError(ValueError):
    """A limit an admin tried to set is unknown or out of range; `str()` is fit to show them."""

    def __init__(self, message: str, key: str | None = None):
        super().__init__(message)
        self.key = key


def _default(name: str):
    """The operator's DREAMBOT_LIMIT_<NAME>, read when a guild's limits are: a changed default reaches every
    guild that kept it."""
    return lambda: getattr(get_settings(), f"limit_{name}")


def _limit(name: str, description: str):
    """A counted limit's field: its range (dreamcore.ranges) and its default, by its one name."""
    return LIMITS[name].field(default_factory=_default(name), description=description)


class GuildLimits(BaseModel):
    """One guild's limits. Quotas count images, not requests; windows roll (the last hour, the last 24 h, in
    1-minute / 10-minute buckets: see buckets.py)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    cooldown_s: int = _limit("cooldown_s", N_("seconds a member waits between accepted dreams (0 = none)"))
    user_max_active: int = _limit("user_max_active", N_("dreams one member may have queued or running"))
    user_images_hour: int = _limit("user_images_hour", N_("images one member may get per rolling hour"))
    user_images_day: int = _limit("user_images_day", N_("images one member may get per rolling 24 h"))
    guild_images_hour: int = _limit("guild_images_hour", N_("images the whole server may get per rolling hour"))
    guild_images_day: int = _limit("guild_images_day", N_("images the whole server may get per rolling 24 h"))
    max_images: int = _limit("max_images", N_("images per dream"))
    max_steps: int = _limit("max_steps", N_("steps per dream"))
    guild_max_queued: int = _limit("guild_max_queued", N_("dreams the whole server may have queued or running"))
    channels: dict[InstanceName, Annotated[list[Snowflake], Field(max_length=100)]] = Field(
        default_factory=dict, max_length=50,
        description=N_("bot instance -> the channel ids it serves here (absent or empty = every channel)"))
    exempt_roles: list[Snowflake] = Field(
        default_factory=list, max_length=100,
        description=N_("roles that skip cooldown, quotas and caps (not paused, channels or blocked words)"))
    priority_roles: list[Snowflake] = Field(
        default_factory=list, max_length=100, description=N_("roles whose dreams go to the high-priority queue"))
    blocked_words: list[Word] = Field(
        default_factory=list, max_length=500,
        description=N_("whole words (or phrases) refused in prompts, any case"))
    paused: bool = Field(False, description=N_("refuse every dream on this server"))
    # Output safety (dreamcore/moderation.py): what the bot does with an image the worker's classifier flagged.
    nsfw_threshold: float = _limit("nsfw_threshold",
                                   N_("images scoring at least this are flagged (0 flags all, 1 none)"))
    nsfw_action: Literal["withhold", "spoiler", "age_restricted"] = Field(
        default_factory=_default("nsfw_action"),
        description=N_("a flagged image: withhold, spoiler, or age_restricted (shown only in age-restricted "
                    "channels, withheld elsewhere)"))
    images_in: Literal["on", "off", "age_restricted"] = Field(
        default_factory=_default("images_in"),
        description=N_("members' own pictures in /dream: on, off, or age_restricted (only in age-restricted "
                    "channels)"))
    faces: FaceChoice = Field(
        default_factory=_default("faces"),
        description=N_("the face pass where /dream leaves it out: auto (redraws the small faces it finds), on "
                    "(every face it finds) or off"))
    # The modes (dreamcore.modes): the one /dream takes where it leaves the mode out, and whether members may
    # choose turbo and relax (quality, the product itself, always runs).
    mode: Mode = Field(default_factory=_default("mode"), description=N_("the mode where /dream leaves it out: "
                       "quality, turbo (4 steps, about a tenth of the GPU time) or relax (unlimited, when idle)"))
    turbo: Literal["on", "off"] = Field(default_factory=_default("turbo"), description=N_("whether members may "
                                        "choose turbo"))
    relax: Literal["on", "off"] = Field(default_factory=_default("relax"), description=N_("whether members may "
                                        "choose relax (drawn from no quota)"))
    private: Literal["on", "off"] = Field(default_factory=_default("private"), description=N_(
        "whether members' private results (their /settings) stay private here; off: every result is posted"))
    adult_words: list[Word] = Field(
        default_factory=list, max_length=500,
        description=N_("whole words (or phrases) that make a prompt adult-only: refused outside age-restricted "
                    "channels"))

    @field_validator("blocked_words", "adult_words", mode="before")
    @classmethod
    def _clean_words(cls, v: Any) -> Any:
        if not isinstance(v, list):
            return v
        out, seen = [], set()
        for w in v:
            if not isinstance(w, str):
                out.append(w)
                continue
            w = clean_text(w)
            if w and fold(w) not in seen:
                seen.add(fold(w))
                out.append(w)
        return out

    @model_validator(mode="after")
    def _default_mode_allowed(self) -> GuildLimits:
        if not self.allows(self.mode):
            raise ValueError(f"the default mode is {self.mode}, which is off here: turn {self.mode} on, or set "
                             "mode to one that is on")
        return self

    def allows(self, mode: str) -> bool:
        return allowed(mode, self.turbo, self.relax)

    @field_validator("exempt_roles", "priority_roles")
    @classmethod
    def _dedupe(cls, v: list[int]) -> list[int]:
        return list(dict.fromkeys(v))

    @field_validator("channels")
    @classmethod
    def _drop_empty(cls, v: dict[str, list[int]]) -> dict[str, list[int]]:
        return {k: list(dict.fromkeys(ids)) for k, ids in v.items() if ids}


KNOWN_KEYS: tuple[str, ...] = tuple(GuildLimits.model_fields)
INT_KEYS = {k for k, f in GuildLimits.model_fields.items() if f.annotation is int}
ID_LIST_KEYS = {"exempt_roles", "priority_roles"}
FLOAT_KEYS = {k for k, f in GuildLimits.model_fields.items() if f.annotation is float}
WORD_LIST_KEYS = ("blocked_words", "adult_words")
# Keys that take one of a few words (nsfw_action, images_in): key -> the words, as the model declares them.
CHOICE_KEYS: dict[str, tuple[str, ...]] = {k: get_args(f.annotation) for k, f in GuildLimits.model_fields.items()
                                           if get_origin(f.annotation) is Literal}
# The ones the settings provide (DREAMBOT_LIMIT_*).
_DEFAULTED_KEYS = tuple(k for k in KNOWN_KEYS if k in INT_KEYS | FLOAT_KEYS | set(CHOICE_KEYS))


def limit_range(key: str) -> tuple[int, int] | None:
    """(lowest, highest) allowed for a numeric limit, straight from GuildLimits' Field(ge=, le=)."""
    info = GuildLimits.model_fields.get(key)
    if info is None:
        return None
    lo = next((m.ge for m in info.metadata if getattr(m, "ge", None) is not None), None)
    hi = next((m.le for m in info.metadata if getattr(m, "le", None) is not None), None)
    return None if lo is None or hi is None else (lo, hi)


def default_limits(settings: Settings | None = None) -> GuildLimits:
    settings = settings or get_settings()
    return GuildLimits(**{k: getattr(settings, f"limit_{k}") for k in _DEFAULTED_KEYS})
