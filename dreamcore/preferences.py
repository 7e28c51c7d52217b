"""A member's own defaults (`/settings`): what `/dream` takes where they leave an option out, whether their
results are theirs alone, and the language they read.

One JSON record per member (`dream:member:<user>`, keys.member_key), the same in every server and read by
every bot instance. Kept MEMBER_TTL_S from its last change, deleted by `/settings reset`. A server's
limits still win: `apply` lowers a default the server doesn't allow and says so in the member's language.
Precedence for an option: what the member typed, their default, the server's default, the operator's.
"""

from __future__ import annotations

import logging
from typing import Literal

import redis
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from . import keys, ranges
from .i18n import LANGUAGES, SOURCE, _
from .job import ASPECTS, DreamJob, FaceChoice, make_job, make_request
from .limits.model import GuildLimits
from .modes import Mode, allowed
from .styles import load_styles

log = logging.getLogger("dreambot.preferences")

MEMBER_TTL_S = 365 * 86400  # a member who hasn't changed a setting in a year starts afresh
# The /dream options a member can give a default of their own, in the order /settings shows them.
DEFAULTABLE = ("style", "aspect", "count", "steps", "mode", "faces")
Language = Literal[tuple([SOURCE, *LANGUAGES])]  # type: ignore[valid-type]


class Preferences(BaseModel):
    """What a member set; None: they set nothing (the server's or the operator's default applies)."""

    model_config = ConfigDict(extra="ignore", frozen=True)  # a newer release's field is kept out, not fatal

    style: str | None = Field(None, max_length=64)
    aspect: Literal[tuple(ASPECTS)] | None = None  # type: ignore[valid-type]
    count: int | None = Field(None, ge=ranges.IMAGES.lo, le=ranges.IMAGES.hi)
    steps: int | None = Field(None, ge=ranges.STEPS.lo, le=ranges.STEPS.hi)
    mode: Mode | None = None
    faces: FaceChoice | None = None
    private: bool = False
    language: Language | None = None  # None: their Discord client's language

    @property
    def empty(self) -> bool:
        return self == Preferences()


class Loaded(BaseModel):
    prefs: Preferences = Preferences()
    unreadable: bool = False  # a record was there and could not be read: kept until the member saves


def load(conn: redis.Redis, user_id: int) -> Loaded:
    raw = conn.get(keys.member_key(user_id))
    if raw is None:
        return Loaded()
    try:
        return Loaded(prefs=Preferences.model_validate_json(raw))
    except ValidationError as err:
        log.warning("unreadable member settings", extra={"user_id": user_id, "error": str(err)[:300]})
        return Loaded(unreadable=True)


def save(conn: redis.Redis, user_id: int, prefs: Preferences) -> None:
    key = keys.member_key(user_id)
    if prefs.empty:
        conn.delete(key)
    else:
        conn.set(key, prefs.model_dump_json(exclude_defaults=True), ex=MEMBER_TTL_S)


def change(conn: redis.Redis, user_id: int, **fields: object) -> Preferences:
    """The member's settings with `fields` changed (validated: ValidationError when a value isn't one),
    saved. An unreadable record is replaced."""
    prefs = Preferences.model_validate(load(conn, user_id).prefs.model_dump() | fields)
    save(conn, user_id, prefs)
    return prefs


def reset(conn: redis.Redis, user_id: int) -> bool:
    """Forget the member's settings; True when there were any."""
    return bool(conn.delete(keys.member_key(user_id)))


def apply(job: DreamJob, limits: GuildLimits, prefs: Preferences, left_out: frozenset[str]) -> tuple[DreamJob, list[str]]:
    """`job` with the member's defaults and then the server's (faces, mode) for the options they left out,
    public where the server keeps no result private, and a note (in the language of the moment) for each
    setting of theirs the server lowered or can't take."""
    update: dict[str, object] = {}
    notes: list[str] = []
    mine = {k: getattr(prefs, k) for k in DEFAULTABLE if k in left_out and getattr(prefs, k) is not None}
    if "style" in mine and mine["style"] not in load_styles():
        notes.append(_("Your default style `{style}` is no longer offered, so none was used.").format(
            style=mine.pop("style")))
    if mine.get("count", 0) > limits.max_images:
        notes.append(_("Your default of {mine} images was lowered to this server's limit of {limit}.").format(
            mine=mine["count"], limit=limits.max_images))
        mine["count"] = limits.max_images
    if mine.get("steps", 0) > limits.max_steps:
        notes.append(_("Your default of {mine} steps was lowered to this server's limit of {limit}.").format(
            mine=mine["steps"], limit=limits.max_steps))
        mine["steps"] = limits.max_steps
    if "mode" in mine and not allowed(mine["mode"], limits.turbo, limits.relax):
        notes.append(_("This server doesn't take {mode} dreams, so your default mode gave way to the "
                       "server's ({server}).").format(mode=mine.pop("mode"), server=limits.mode))
    if prefs.private and limits.private == "off":
        notes.append(_("This server posts every result in its channel, so this one isn't private."))
        job = job.model_copy(update={"origin": job.origin.model_copy(update={"private": False})})
    update.update(mine)
    for k in ("faces", "mode"):  # the server's defaults, for what neither the member nor their settings chose
        if k in left_out and k not in update:
            update[k] = getattr(limits, k)
    update = {k: v for k, v in update.items() if getattr(job.request, k) != v}
    if not update:
        return job, notes
    request = make_request(**(job.request.model_dump() | update))
    return make_job(request, job.origin, job.priority, job.job_id, job.kind, job.source), notes
