"""Per-guild limits that server admins set, stored in Redis and enforced atomically across every bot process.

Three pieces:

* `GuildLimits`: one guild's limits, every value range-checked; a limit the admins never set follows the
  defaults from the settings (DREAMBOT_LIMIT_*), so changing a default reaches every guild that kept it.
* `LimitStore`: reads and changes them (`/limits set cooldown_s 30`), keeps an audit trail, reports usage.
* `Limiter`: `acquire()` decides whether a dream may be queued. The static checks (paused, channel,
  blocked words, images and steps per dream) run here in Python; everything that counts (cooldown, active
  jobs, hourly/daily image quotas, the guild's queue) is checked AND consumed by one Lua script, so a
  member firing through ten bots at once gets exactly what the limits allow. `release()` hands the job's
  slot back when it ends (and its images too, for a cancelled or failed job).

Every key lives under ``dream:limits:{<guild>}:`` (the braces make a Redis Cluster keep a guild's keys
together); everything that counts expires on its own. See `LimitKeys`.
"""

from __future__ import annotations

import json
import logging
import math
import re
import time
import unicodedata
from collections.abc import Iterable
from dataclasses import dataclass
from functools import lru_cache
from typing import Annotated, Any, Literal

import redis
from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationError, field_validator

from .job import clean_text
from .keys import LimitKeys
from .limits_lua import ACQUIRE_LUA, DAY_BUCKET_S, HOUR_BUCKET_S, RELEASE_LUA
from .settings import Settings, get_settings, parse_id_list

log = logging.getLogger(__name__)

HOUR = 3600
DAY = 86400
AUDIT_KEEP = 500  # newest audit entries kept per guild
AUDIT_TTL_S = 400 * DAY  # an audit trail nobody has added to for this long goes
KEY_SLACK_S = 120  # added to every TTL, so a key never expires while its window can still see it
INSTANCE_PATTERN = r"^[a-z0-9][a-z0-9_-]{0,31}$"

Snowflake = Annotated[int, Field(ge=1, le=2**64 - 1)]
Word = Annotated[str, StringConstraints(min_length=1, max_length=64)]
InstanceName = Annotated[str, StringConstraints(pattern=INSTANCE_PATTERN)]

Kind = Literal[
    "paused", "channel", "blocked_word", "adult_word", "max_images", "max_steps", "cooldown", "user_active",
    "user_hour", "user_day", "guild_hour", "guild_day", "guild_queued",
]


class LimitError(ValueError):
    """A limit an admin tried to set is unknown or out of range; `str()` is fit to show them."""

    def __init__(self, message: str, key: str | None = None):
        super().__init__(message)
        self.key = key


def _default(name: str):
    return lambda: getattr(get_settings(), f"limit_{name}")


class GuildLimits(BaseModel):
    """One guild's limits. Quotas count images, not requests; windows roll (the last hour, the last 24 h, in
    1-minute / 10-minute buckets: see limits_lua)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    cooldown_s: int = Field(default_factory=_default("cooldown_s"), ge=0, le=3600,
                            description="seconds a member waits between accepted dreams (0 = none)")
    user_max_active: int = Field(default_factory=_default("user_max_active"), ge=1, le=50,
                                 description="dreams one member may have queued or running")
    user_images_hour: int = Field(default_factory=_default("user_images_hour"), ge=1, le=1000,
                                  description="images one member may get per rolling hour")
    user_images_day: int = Field(default_factory=_default("user_images_day"), ge=1, le=5000,
                                 description="images one member may get per rolling 24 h")
    guild_images_hour: int = Field(default_factory=_default("guild_images_hour"), ge=1, le=1_000_000,
                                   description="images the whole server may get per rolling hour")
    guild_images_day: int = Field(default_factory=_default("guild_images_day"), ge=1, le=10_000_000,
                                  description="images the whole server may get per rolling 24 h")
    max_images: int = Field(default_factory=_default("max_images"), ge=1, le=4,
                            description="images per dream")
    max_steps: int = Field(default_factory=_default("max_steps"), ge=1, le=100,
                           description="steps per dream")
    guild_max_queued: int = Field(default_factory=_default("guild_max_queued"), ge=1, le=100000,
                                  description="dreams the whole server may have queued or running")
    channels: dict[InstanceName, Annotated[list[Snowflake], Field(max_length=100)]] = Field(
        default_factory=dict, max_length=50,
        description="bot instance -> the channel ids it serves here (absent or empty = every channel)")
    exempt_roles: list[Snowflake] = Field(
        default_factory=list, max_length=100,
        description="roles that skip cooldown, quotas and caps (not paused, channels or blocked words)")
    priority_roles: list[Snowflake] = Field(
        default_factory=list, max_length=100, description="roles whose dreams go to the high-priority queue")
    blocked_words: list[Word] = Field(
        default_factory=list, max_length=500,
        description="whole words (or phrases) refused in prompts, any case")
    paused: bool = Field(False, description="refuse every dream on this server")
    # Output safety (dreamcore/safety.py): what the bot does with an image the worker's classifier flagged.
    nsfw_threshold: float = Field(default_factory=_default("nsfw_threshold"), ge=0.0, le=1.0,
                                  description="images scoring at least this are flagged (0 flags all, 1 none)")
    nsfw_action: Literal["withhold", "spoiler", "age_restricted"] = Field(
        default_factory=_default("nsfw_action"),
        description="a flagged image: withhold, spoiler, or age_restricted (shown only in age-restricted "
                    "channels, withheld elsewhere)")
    adult_words: list[Word] = Field(
        default_factory=list, max_length=500,
        description="whole words (or phrases) that make a prompt adult-only: refused outside age-restricted "
                    "channels")

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

    @field_validator("exempt_roles", "priority_roles")
    @classmethod
    def _dedupe(cls, v: list[int]) -> list[int]:
        return list(dict.fromkeys(v))

    @field_validator("channels")
    @classmethod
    def _drop_empty(cls, v: dict[str, list[int]]) -> dict[str, list[int]]:
        return {k: list(dict.fromkeys(ids)) for k, ids in v.items() if ids}


KNOWN_KEYS: tuple[str, ...] = tuple(GuildLimits.model_fields)
_INT_KEYS = {k for k, f in GuildLimits.model_fields.items() if f.annotation is int}
_ID_LIST_KEYS = {"exempt_roles", "priority_roles"}
_FLOAT_KEYS = {k for k, f in GuildLimits.model_fields.items() if f.annotation is float}
_WORD_LIST_KEYS = ("blocked_words", "adult_words")
# The ones the settings provide (DREAMBOT_LIMIT_*).
_DEFAULTED_KEYS = tuple(k for k in KNOWN_KEYS if k in _INT_KEYS | _FLOAT_KEYS or k == "nsfw_action")


def limit_range(key: str) -> tuple[int, int] | None:
    """(lowest, highest) allowed for a numeric limit, straight from GuildLimits' Field(ge=, le=)."""
    info = GuildLimits.model_fields.get(key)
    if info is None:
        return None
    lo = next((m.ge for m in info.metadata if getattr(m, "ge", None) is not None), None)
    hi = next((m.le for m in info.metadata if getattr(m, "le", None) is not None), None)
    return None if lo is None or hi is None else (lo, hi)


# The cooldown key outlives the longest cooldown an admin may set, so lowering or raising it applies at once.
_COOLDOWN_KEY_TTL_S = (limit_range("cooldown_s") or (0, HOUR))[1] + KEY_SLACK_S


def default_limits(settings: Settings | None = None) -> GuildLimits:
    settings = settings or get_settings()
    return GuildLimits(**{k: getattr(settings, f"limit_{k}") for k in _DEFAULTED_KEYS})


# --- Blocked words ----------------------------------------------------------------------------------


def fold(text: str) -> str:
    """What blocked-word matching compares: clean_text, then compatibility forms (fullwidth, ligatures)
    folded and case folded, so "ＢＡＤ", "Bad" and "b\u200bad" are all "bad"."""
    text = unicodedata.normalize("NFKC", clean_text(text)).casefold()
    return unicodedata.normalize("NFKC", text)


@lru_cache(maxsize=512)
def _word_pattern(words: tuple[str, ...]) -> re.Pattern[str] | None:
    folded = sorted({fold(w) for w in words} - {""}, key=len, reverse=True)
    if not folded:
        return None
    alts = [r"\s+".join(re.escape(part) for part in w.split()) for w in folded]
    # \w is unicode-aware on str patterns: "bad" does not match inside "badge" or "sinbad" or "bad_x".
    return re.compile(r"(?<!\w)(?:" + "|".join(alts) + r")(?!\w)")


def find_blocked_word(blocked: Iterable[str], *texts: str) -> tuple[int, str] | None:
    """(index of the text, the blocked word as folded) for the first whole-word hit, else None."""
    pattern = _word_pattern(tuple(blocked))
    if pattern is None:
        return None
    for i, text in enumerate(texts):
        m = pattern.search(fold(text or ""))
        if m:
            return i, m.group(0)
    return None


def _mask(word: str) -> str:
    return word[0] + "*" * (len(word) - 1) if len(word) > 1 else "*"


# --- Messages ---------------------------------------------------------------------------------------


def human_duration(seconds: float) -> str:
    """Rounded up, so a member who waits that long is never refused again: 23 s, 4 min 10 s, 5 h 12 min."""
    s = max(1, math.ceil(seconds - 1e-6))
    if s < 60:
        return f"{s} s"
    if s < HOUR:
        m, r = divmod(s, 60)
        return f"{m} min {r} s" if r else f"{m} min"
    h, m = divmod(math.ceil(s / 60), 60)
    return f"{h} h {m} min" if m else f"{h} h"


def _dreams(n: int) -> str:
    return f"{n} dream" if n == 1 else f"{n} dreams"


def _quota_message(kind: str, used: int, limit: int, images: int, retry: float | None) -> str:
    who = "this server's " if kind.startswith("guild") else ""
    span = "hourly" if kind.endswith("hour") else "daily"
    label = f"{who}{span} quota"
    if retry is None:
        return (f"this dream asks for {images} images but {label} is {limit}; ask for fewer images")
    if used >= limit:
        return f"{label} {used}/{limit} images, resets in {human_duration(retry)}"
    return (f"{label} {used}/{limit} images and this dream needs {images}; "
            f"enough frees up in {human_duration(retry)}")


# --- Keys ---------------------------------------------------------------------------------------------


# --- Parsing what an admin typed ------------------------------------------------------------------------

_TRUE = {"true", "on", "yes", "1", "enable", "enabled"}
_FALSE = {"false", "off", "no", "0", "disable", "disabled"}
_CLEAR = {"", "none", "clear"}
_MENTION = re.compile(r"<(?:@&|#)(\d+)>")


def _shown(raw: Any, limit: int = 80) -> str:
    """The value an admin typed, quoted for an error message and clipped: a 1500-character value of
    zero-width characters is 9000 characters once escaped, past what one Discord message can carry."""
    text = repr(raw)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _range_error(key: str, got: Any) -> LimitError:
    lo, hi = limit_range(key) or ("?", "?")
    return LimitError(f"{key} must be between {lo} and {hi}, got {got}", key=key)


def _ids(key: str, raw: str) -> list[int]:
    try:
        return parse_id_list(_MENTION.sub(r"\1", raw))
    except ValueError as err:
        text = str(err)  # names the bad part, which can be 1500 characters long
        raise LimitError(f"{key}: {text if len(text) <= 200 else text[:199] + '…'}", key=key) from None


def _edit_list(current: list, raw: str, parse) -> list:
    """"a,b" replaces the list, "+a,b" adds, "-a,b" removes, "" / "none" / "clear" empties it."""
    raw = raw.strip()
    if raw.lower() in _CLEAR:
        return []
    if raw[0] in "+-":
        items = parse(raw[1:])
        if raw[0] == "+":
            return [*current, *items]
        drop = {fold(x) if isinstance(x, str) else x for x in items}
        return [x for x in current if (fold(x) if isinstance(x, str) else x) not in drop]
    return parse(raw)


def parse_limit(key: str, raw_value: str, current: GuildLimits) -> Any:
    """Turn the text an admin typed into the new value of `key` (not yet range-checked for lists)."""
    raw = str(raw_value).strip()
    if key in _INT_KEYS:
        if not re.fullmatch(r"[+-]?\d{1,18}", raw):
            lo, hi = limit_range(key) or ("?", "?")
            raise LimitError(f"{key} must be a whole number between {lo} and {hi}, got {_shown(raw_value)}", key=key)
        value = int(raw)
        lo, hi = limit_range(key) or (None, None)
        if lo is not None and not lo <= value <= hi:
            raise _range_error(key, value)
        return value
    if key in _FLOAT_KEYS:
        lo, hi = limit_range(key) or ("?", "?")
        value = float(raw) if re.fullmatch(r"[+-]?(\d+(\.\d*)?|\.\d+)", raw) else None  # no inf, nan, 1e9
        if value is None:
            raise LimitError(f"{key} must be a number between {lo} and {hi}, got {_shown(raw_value)}", key=key)
        if not lo <= value <= hi:
            raise _range_error(key, raw)
        return value
    if key == "nsfw_action":
        low = raw.lower().replace("-", "_").replace(" ", "_")
        if low not in ("withhold", "spoiler", "age_restricted"):
            raise LimitError(f"nsfw_action must be withhold, spoiler or age_restricted, got {_shown(raw_value)}",
                             key=key)
        return low
    if key == "paused":
        low = raw.lower()
        if low in _TRUE:
            return True
        if low in _FALSE:
            return False
        raise LimitError(f"paused must be true/false (or on/off, yes/no), got {_shown(raw_value)}", key=key)
    if key in _ID_LIST_KEYS:
        return _edit_list(list(getattr(current, key)), raw, lambda s: _ids(key, s))
    if key in _WORD_LIST_KEYS:
        return _edit_list(list(getattr(current, key)), raw,
                          lambda s: [w for w in (clean_text(p) for p in s.split(",")) if w])
    if key == "channels":
        channels = {k: list(v) for k, v in current.channels.items()}
        if raw.lower() in _CLEAR:
            return {}
        name, sep, rest = raw.partition(":")
        name = name.strip().lower()
        if not sep or not re.fullmatch(INSTANCE_PATTERN, name):
            raise LimitError(
                "channels must be written instance:channel_id,channel_id (e.g. dreambot:123,456; "
                "dreambot: alone lets that bot answer in every channel), or clear", key=key)
        channels[name] = _edit_list(channels.get(name, []), rest, lambda s: _ids(key, s))
        return channels
    raise LimitError(f"unknown limit {key!r}; known limits: {', '.join(KNOWN_KEYS)}", key=key)


def _validation_to_limit_error(key: str, value: Any, err: ValidationError) -> LimitError:
    e = err.errors()[0]
    if e["type"] in ("greater_than_equal", "less_than_equal") and len(e["loc"]) == 1:
        return _range_error(key, value)
    if e["type"] == "too_long" and len(e["loc"]) == 1:
        return LimitError(f"{key} allows at most {e['ctx']['max_length']} entries, got {len(value)}", key=key)
    where = ".".join(str(x) for x in e["loc"][1:])
    return LimitError(f"{key}{' ' + where if where else ''}: {e['msg']}", key=key)


# --- The store ----------------------------------------------------------------------------------------


def _decode(b: Any) -> str:
    return b.decode("utf-8", "replace") if isinstance(b, bytes) else str(b)


def _server_now(r: redis.Redis) -> float:
    sec, usec = r.time()
    return sec + usec / 1e6


class LimitStore:
    """Guild limits in Redis: what admins set, merged over the defaults; the audit trail; usage."""

    def __init__(self, redis_client: redis.Redis, settings: Settings | None = None,
                 active_ttl_s: float | None = None):
        self.r = redis_client
        self.settings = settings or get_settings()
        # A job the bot never released (the bot crashed) stops holding its member's slot after this long:
        # every try of the job has timed out by then, plus an hour of queueing.
        self.active_ttl_s = float(active_ttl_s or
                                  self.settings.job_timeout_s * (self.settings.job_retries + 1) + HOUR)

    # reading

    def defaults(self) -> GuildLimits:
        return default_limits(self.settings)

    def _read_overrides(self, client: Any, guild_id: int | None) -> tuple[dict[str, Any], bool]:
        """(what admins set, whether the stored config is unreadable as a whole)."""
        key = LimitKeys.config(guild_id)
        try:
            raw = client.hgetall(key)
        except redis.ResponseError as err:  # WRONGTYPE: something else was written there
            log.warning("stored guild limits are corrupt; using the defaults",
                        extra={"guild_id": guild_id, "redis_key": key, "error": str(err)})
            return {}, True
        out: dict[str, Any] = {}
        for f, v in raw.items():
            name, text = _decode(f), _decode(v)
            if name not in GuildLimits.model_fields:
                log.warning("stored guild limit is unknown; ignored",
                            extra={"guild_id": guild_id, "limit": name, "value": text[:200]})
                continue
            try:
                out[name] = json.loads(text)
            except ValueError:
                log.warning("stored guild limit is not JSON; using its default",
                            extra={"guild_id": guild_id, "limit": name, "value": text[:200]})
        return out, False

    def _merge(self, overrides: dict[str, Any], guild_id: int | None) -> GuildLimits:
        base = self.defaults().model_dump()
        for name, value in overrides.items():
            try:
                checked = GuildLimits(**{**base, name: value})
            except (ValidationError, TypeError) as err:
                log.warning("stored guild limit is invalid; using its default",
                            extra={"guild_id": guild_id, "limit": name, "value": repr(value)[:200],
                                   "error": str(err).splitlines()[0] if str(err) else ""})
                continue
            base[name] = getattr(checked, name)
        return GuildLimits(**base)

    def get(self, guild_id: int | None) -> GuildLimits:
        """The guild's limits: what its admins set over the defaults. Never raises on bad stored data."""
        overrides, _ = self._read_overrides(self.r, guild_id)
        return self._merge(overrides, guild_id)

    def overrides(self, guild_id: int | None) -> dict[str, Any]:
        """Only what the guild's admins set (valid values), for showing "default" next to the rest."""
        overrides, _ = self._read_overrides(self.r, guild_id)
        limits = self._merge(overrides, guild_id)
        return {k: getattr(limits, k) for k in overrides}

    # changing

    def set(self, guild_id: int | None, key: str, raw_value: str, actor_id: int) -> GuildLimits:
        """Parse `raw_value` for `key`, check it, store it, audit it; returns the guild's new limits.

        "default" removes the guild's own value so the limit follows the default again.
        Raises LimitError (unknown key, bad value, out of range) and changes nothing then.
        """
        if key not in GuildLimits.model_fields:
            raise LimitError(f"unknown limit {key!r}; known limits: {', '.join(KNOWN_KEYS)}", key=key)
        cfg, audit = LimitKeys.config(guild_id), LimitKeys.audit(guild_id)
        with self.r.pipeline() as pipe:
            while True:
                try:
                    pipe.watch(cfg)
                    overrides, corrupt = self._read_overrides(pipe, guild_id)
                    current = self._merge(overrides, guild_id)
                    reset = str(raw_value).strip().lower() == "default"
                    if reset:
                        updated = self._merge({k: v for k, v in overrides.items() if k != key}, guild_id)
                    else:
                        value = parse_limit(key, raw_value, current)
                        try:
                            updated = GuildLimits(**{**current.model_dump(), key: value})
                        except ValidationError as err:
                            raise _validation_to_limit_error(key, value, err) from None
                    old, new = getattr(current, key), getattr(updated, key)
                    entry = {"ts": round(time.time(), 3), "actor_id": int(actor_id), "key": key,
                             "old": _jsonable(old), "new": _jsonable(new)}
                    if reset:
                        entry["reset_to_default"] = True
                    pipe.multi()
                    if corrupt:
                        pipe.delete(cfg)
                    if reset:
                        pipe.hdel(cfg, key)
                    else:
                        pipe.hset(cfg, key, json.dumps(_jsonable(new)))
                    pipe.lpush(audit, json.dumps(entry))
                    pipe.ltrim(audit, 0, AUDIT_KEEP - 1)
                    pipe.expire(audit, AUDIT_TTL_S)
                    pipe.execute()
                    break
                except redis.WatchError:
                    continue
        log.info("guild limit changed", extra={
            "guild_id": guild_id, "actor_id": int(actor_id), "limit": key,
            "old": json.dumps(_jsonable(old)), "new": json.dumps(_jsonable(new))})
        return updated

    def audit(self, guild_id: int | None, n: int = 20) -> list[dict[str, Any]]:
        """The newest `n` changes, newest first: {ts, actor_id, key, old, new}."""
        out = []
        for raw in self.r.lrange(LimitKeys.audit(guild_id), 0, max(0, n) - 1) if n > 0 else []:
            try:
                out.append(json.loads(raw))
            except ValueError:
                continue
        return out

    def reset_user(self, guild_id: int | None, user_id: int, actor_id: int | None = None) -> None:
        """Forget a member's cooldown, hourly/daily usage and active jobs here (the server's totals keep
        their images: they were really made). A job reset away can still be released later."""
        self.r.delete(LimitKeys.cooldown(guild_id, user_id), LimitKeys.user_hour(guild_id, user_id),
                      LimitKeys.user_day(guild_id, user_id), LimitKeys.old_user_usage(guild_id, user_id),
                      LimitKeys.user_active(guild_id, user_id))
        extra = {"guild_id": guild_id, "user_id": int(user_id), "actor_id": actor_id}
        log.info("guild member's limits reset", extra=extra)
        if actor_id is not None:
            audit = LimitKeys.audit(guild_id)
            entry = {"ts": round(time.time(), 3), "actor_id": int(actor_id), "key": "reset_user",
                     "old": int(user_id), "new": None}
            with self.r.pipeline() as pipe:
                pipe.lpush(audit, json.dumps(entry)).ltrim(audit, 0, AUDIT_KEEP - 1).expire(audit, AUDIT_TTL_S)
                pipe.execute()

    # usage

    def usage(self, guild_id: int | None, user_id: int, now: float | None = None) -> dict[str, Any]:
        """What the member and the guild have used: images in the last hour / 24 h, active jobs, and the
        member's cooldown left (seconds), as of `now` (default: the Redis server's clock)."""
        now = _server_now(self.r) if now is None else float(now)
        limits = self.get(guild_id)
        active_from = f"({now - self.active_ttl_s!r}"
        with self.r.pipeline(transaction=True) as pipe:
            for key in LimitKeys.usage_keys(guild_id, user_id):
                pipe.hgetall(key)
            pipe.zrangebyscore(LimitKeys.old_user_usage(guild_id, user_id), f"({now - DAY!r}", "+inf",
                               withscores=True)
            pipe.zrangebyscore(LimitKeys.old_guild_usage(guild_id), f"({now - DAY!r}", "+inf", withscores=True)
            pipe.zcount(LimitKeys.user_active(guild_id, user_id), active_from, "+inf")
            pipe.zcount(LimitKeys.guild_active(guild_id), active_from, "+inf")
            pipe.get(LimitKeys.cooldown(guild_id, user_id))
            uh, ud, gh, gd, old_u, old_g, ua, ga, cd = pipe.execute()

        def images(buckets: dict, width: int, span: int, old: list) -> int:
            # The script's rule (limits_lua): bucket b counts until (b + 1) * width + span. An older
            # release's entries not folded in yet count as the script will count them once it has.
            live = sum(int(n) for b, n in buckets.items() if (int(b) + 1) * width + span > now)
            return live + sum(int(_decode(m).split(":", 1)[0]) for m, t in old
                              if (t // width + 1) * width + span > now)
        cooldown_left = 0.0
        if cd is not None and limits.cooldown_s > 0:
            cooldown_left = max(0.0, float(cd) + limits.cooldown_s - now)
        return {
            "user_images_hour": images(uh, HOUR_BUCKET_S, HOUR, old_u),
            "user_images_day": images(ud, DAY_BUCKET_S, DAY, old_u),
            "user_active": int(ua), "cooldown_remaining_s": cooldown_left,
            "guild_images_hour": images(gh, HOUR_BUCKET_S, HOUR, old_g),
            "guild_images_day": images(gd, DAY_BUCKET_S, DAY, old_g),
            "guild_active": int(ga),
        }


def _jsonable(v: Any) -> Any:
    if isinstance(v, dict):
        return {str(k): list(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return list(v)
    return v


# --- The limiter ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Decision:
    ok: bool
    kind: Kind | None = None
    message: str = ""  # for the member: which limit, and when it frees up
    retry_after_s: float | None = None  # None: unknown (a job must finish first) or never
    priority: Literal["high", "default"] = "default"


class Limiter:
    """Decides whether a dream may be queued, and consumes what it uses, atomically across processes."""

    def __init__(self, redis_client: redis.Redis, store: LimitStore | None = None):
        self.r = redis_client
        self.store = store or LimitStore(redis_client)
        self._acquire = redis_client.register_script(ACQUIRE_LUA)
        self._release = redis_client.register_script(RELEASE_LUA)

    def acquire(self, guild_id: int | None, user_id: int, job_id: str, images: int, steps: int,
                role_ids: Iterable[int] = (), instance: str = "", channel_id: int | None = None,
                prompt: str = "", negative_prompt: str = "", now: float | None = None,
                channel_nsfw: bool = False) -> Decision:
        """Check every limit; if all pass, record the job (call `release` when it ends) and return ok.

        Calling it again with an already accepted job id returns ok without consuming anything twice.
        `now` (seconds) is for tests; by default the Redis server's clock, shared by every bot host.
        """
        if not isinstance(images, int) or images < 1:
            raise ValueError(f"images must be a positive whole number, got {images!r}")
        if not job_id or not isinstance(job_id, str):
            raise ValueError(f"job_id must be a non-empty string, got {job_id!r}")
        limits = self.store.get(guild_id)
        roles = {int(r) for r in role_ids}
        priority: Literal["high", "default"] = "high" if roles & set(limits.priority_roles) else "default"
        exempt = bool(roles & set(limits.exempt_roles))

        def refuse(kind: Kind, message: str, retry: float | None = None) -> Decision:
            log.info("dream refused by a guild limit", extra={
                "guild_id": guild_id, "user_id": user_id, "job_id": job_id, "limit": kind,
                "retry_after_s": retry})
            return Decision(False, kind, message, retry, priority)

        # Static checks: nothing to count, so no need for the script.
        if limits.paused:
            return refuse("paused", "dreams are paused on this server by its admins")
        allowed = limits.channels.get(instance)
        if allowed and channel_id not in allowed:
            where = ", ".join(f"<#{c}>" for c in allowed[:5]) + (", ..." if len(allowed) > 5 else "")
            return refuse("channel", f"I don't take dreams in this channel here; try {where}")
        hit = find_blocked_word(limits.blocked_words, prompt, negative_prompt)
        if hit:
            which = "prompt" if hit[0] == 0 else "negative prompt"
            return refuse("blocked_word",
                          f"your {which} contains a word this server has blocked ({_mask(hit[1])})")
        adult = None if channel_nsfw else find_blocked_word(limits.adult_words, prompt, negative_prompt)
        if adult:
            which = "prompt" if adult[0] == 0 else "negative prompt"
            return refuse("adult_word",
                          f"your {which} has a word this server keeps to age-restricted channels "
                          f"({_mask(adult[1])}); try it in an age-restricted channel")
        if not exempt and images > limits.max_images:
            return refuse("max_images", f"this server allows at most {limits.max_images} images per dream "
                                        f"(you asked for {images})")
        if not exempt and steps > limits.max_steps:
            return refuse("max_steps", f"this server allows at most {limits.max_steps} steps per dream "
                                       f"(you asked for {steps})")

        g, u = guild_id, int(user_id)
        keys = [LimitKeys.cooldown(g, u), *LimitKeys.usage_keys(g, u), LimitKeys.user_active(g, u),
                LimitKeys.guild_active(g), LimitKeys.job(g, job_id), LimitKeys.old_user_usage(g, u),
                LimitKeys.old_guild_usage(g)]
        args = ["" if now is None else repr(float(now)), job_id, str(images), "1" if exempt else "0",
                limits.cooldown_s, limits.user_max_active, limits.user_images_hour, limits.user_images_day,
                limits.guild_images_hour, limits.guild_images_day, limits.guild_max_queued,
                repr(self.store.active_ttl_s), KEY_SLACK_S, u, _COOLDOWN_KEY_TTL_S]
        status, kind, used, limit, retry, _at = (_decode(x) for x in self._acquire(keys=keys, args=args))
        if status in ("ok", "dup"):
            log.debug("dream accepted by the guild limits",
                      extra={"guild_id": guild_id, "user_id": u, "job_id": job_id, "images": images,
                             "exempt": exempt, "again": status == "dup"})
            return Decision(True, None, "", None, priority)
        wait = float(retry) if retry else None
        if wait is not None and math.isinf(wait):
            wait = None
        if kind == "cooldown":
            return refuse("cooldown", f"cooldown: try again in {human_duration(wait or 0)}", wait)
        if kind == "user_active":
            return refuse("user_active",
                          f"you already have {_dreams(int(used))} queued or running (limit {limit}); "
                          "try again when one finishes")
        if kind == "guild_queued":
            return refuse("guild_queued",
                          f"this server already has {_dreams(int(used))} queued or running (limit {limit}); "
                          "try again when one finishes")
        return refuse(kind, _quota_message(kind, int(float(used)), int(limit), images, wait), wait)  # type: ignore[arg-type]

    def release(self, guild_id: int | None, user_id: int, job_id: str, refund: bool = False) -> bool:
        """The job ended: free its active slots; `refund=True` (cancelled or failed) also gives its images
        back to the quotas. Idempotent: True the first time, False for a job already released or unknown."""
        g, u = guild_id, int(user_id)
        keys = [LimitKeys.job(g, job_id), *LimitKeys.usage_keys(g, u), LimitKeys.user_active(g, u),
                LimitKeys.guild_active(g), LimitKeys.old_user_usage(g, u), LimitKeys.old_guild_usage(g)]
        res = int(self._release(keys=keys, args=[job_id, "1" if refund else "0", u]))
        if res == -1:
            log.warning("release for a job that belongs to another member; ignored",
                        extra={"guild_id": guild_id, "user_id": u, "job_id": job_id})
        return res > 0
