"""`LimitStore`: a guild's limits in Redis (only what its admins changed; the rest follows the defaults),
changed with an audit trail, and a member's usage for /dreamadmin usage."""

from __future__ import annotations

import json
import logging
import time
from typing import Any

import redis
from pydantic import ValidationError

from ..i18n import _
from ..keys import LimitKeys
from ..settings import Settings, get_settings
from .admin_input import parse_limit, validation_error
from .buckets import DAY_BUCKET_S, HOUR_BUCKET_S, OLD_USAGE_SEP, counts_until
from .model import (
    DAY,
    HOUR,
    ID_LIST_KEYS,
    KNOWN_KEYS,
    GuildLimits,
    LimitError,
    default_limits,
)

log = logging.getLogger("dreamcore.limits")  # the package's name: one logger for every part of the limits

AUDIT_KEEP = 500  # newest audit entries kept per guild
AUDIT_TTL_S = 400 * DAY  # an audit trail nobody has added to for this long goes


def decode(b: Any) -> str:
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
            name, text = decode(f), decode(v)
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
        overrides, _corrupt = self._read_overrides(self.r, guild_id)
        return self._merge(overrides, guild_id)

    def overrides(self, guild_id: int | None) -> dict[str, Any]:
        """Only what the guild's admins set (valid values), for showing "default" next to the rest."""
        overrides, _corrupt = self._read_overrides(self.r, guild_id)
        limits = self._merge(overrides, guild_id)
        return {k: getattr(limits, k) for k in overrides}

    # changing

    def set(self, guild_id: int | None, key: str, raw_value: str, actor_id: int) -> GuildLimits:
        """Parse `raw_value` for `key`, check it, store it, audit it; returns the guild's new limits.

        "default" removes the guild's own value so the limit follows the default again.
        Raises LimitError (unknown key, bad value, out of range) and changes nothing then.
        """
        if key not in GuildLimits.model_fields:
            raise LimitError(_("unknown limit {key}; known limits: {keys}").format(
                key=repr(key), keys=", ".join(KNOWN_KEYS)), key=key)
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
                        if key in ID_LIST_KEYS and guild_id is not None and int(guild_id) in value:
                            raise LimitError(_(
                                "{key}: {role} is @everyone, which every member has; a role there would apply to "
                                "the whole server. Pick the roles that should count.").format(
                                key=key, role=f"<@&{guild_id}>"), key=key)
                        try:
                            updated = GuildLimits(**{**current.model_dump(), key: value})
                        except ValidationError as err:
                            raise validation_error(key, value, err) from None
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
        # Compatibility: an older release's usage zset of the member goes too; goes when every deployment is
        # over 24 h past its upgrade to bucket counters (74a9068).
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
            # Compatibility: an older release's usage zsets, the entries not folded into the buckets yet;
            # goes when every deployment is over 24 h past its upgrade to bucket counters (74a9068).
            pipe.zrangebyscore(LimitKeys.old_user_usage(guild_id, user_id), f"({now - DAY!r}", "+inf",
                               withscores=True)
            pipe.zrangebyscore(LimitKeys.old_guild_usage(guild_id), f"({now - DAY!r}", "+inf", withscores=True)
            pipe.zcount(LimitKeys.user_active(guild_id, user_id), active_from, "+inf")
            pipe.zcount(LimitKeys.guild_active(LimitKeys.counted(guild_id, user_id)), active_from, "+inf")
            pipe.get(LimitKeys.cooldown(guild_id, user_id))
            uh, ud, gh, gd, old_u, old_g, ua, ga, cd = pipe.execute()

        def images(buckets: dict, width: int, span: int, old: list) -> float:
            # The scripts' rule (buckets.counts_until); an older release's entries not folded in yet count
            # as acquire.lua will count them once it has. Units of cost (dreamcore.cost), two decimals.
            live = sum(float(n) for b, n in buckets.items() if counts_until(int(b), width, span) > now)
            return round(live + sum(int(decode(m).split(OLD_USAGE_SEP, 1)[0]) for m, t in old
                                    if counts_until(int(t // width), width, span) > now), 2)
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
