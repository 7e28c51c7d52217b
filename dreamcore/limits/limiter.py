"""`Limiter`: whether a dream may be queued, decided and counted atomically across every bot.

The static checks (paused, channel, blocked words, images and steps per dream) run here in Python;
everything that counts (cooldown, active jobs, hourly/daily image quotas, the guild's queue) is checked AND
consumed by one Lua script (acquire.lua), so a member firing through ten bots at once gets exactly what
the limits allow. `release()` (release.lua) hands the job's slot back when it ends (and its images too, for
a cancelled or failed job)."""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import redis

from .. import servers
from ..i18n import _, duration, ngettext
from ..keys import LimitKeys
from ..lua import LuaScript
from ..modes import fast
from ..servers import Priority
from .buckets import BUCKET_FIELD, DAY_BUCKET_S, HOUR_BUCKET_S, OLD_USAGE_SEP, UNITS_EPS
from .model import DAY, HOUR, KEY_SLACK_S, Kind, limit_range
from .refusals import quota_message
from .stored import LimitStore, decode
from .words import find_blocked_word, mask

log = logging.getLogger("dreamcore.limits")  # the package's name: one logger for every part of the limits

_CONSTS = {
    "HOUR": HOUR, "DAY": DAY, "HOUR_BUCKET_S": HOUR_BUCKET_S, "DAY_BUCKET_S": DAY_BUCKET_S,
    "BUCKET_FIELD": BUCKET_FIELD, "UNITS_EPS": UNITS_EPS, "OLD_USAGE_SEP": OLD_USAGE_SEP,
    "KEY_SLACK_S": KEY_SLACK_S,
    # The cooldown key outlives the longest cooldown an admin may set, so lowering or raising it applies at once.
    "COOLDOWN_KEY_TTL_S": (limit_range("cooldown_s") or (0, HOUR))[1] + KEY_SLACK_S,
}
_COUNTED = ("user_hour", "user_day", "guild_hour", "guild_day", "user_active", "guild_active", "job",
            "old_user_usage", "old_guild_usage")
ACQUIRE = LuaScript(Path(__file__).with_name("acquire.lua"), keys=("cooldown", *_COUNTED), consts=_CONSTS)
RELEASE = LuaScript(Path(__file__).with_name("release.lua"), keys=_COUNTED, consts=_CONSTS)


def _keys(g: int | None, u: int, job_id: str) -> dict[str, str]:
    """The keys both scripts use, by the names they use them under (the server's under LimitKeys.counted)."""
    c = LimitKeys.counted(g, u)
    return {"user_hour": LimitKeys.user_hour(g, u), "user_day": LimitKeys.user_day(g, u),
            "guild_hour": LimitKeys.guild_hour(c), "guild_day": LimitKeys.guild_day(c),
            "user_active": LimitKeys.user_active(g, u), "guild_active": LimitKeys.guild_active(c),
            "job": LimitKeys.job(g, job_id), "old_user_usage": LimitKeys.old_user_usage(g, u),
            "old_guild_usage": LimitKeys.old_guild_usage(g)}


@dataclass(frozen=True)
class Decision:
    ok: bool
    kind: Kind | None = None
    message: str = ""  # for the member: which limit, and when it frees up
    retry_after_s: float | None = None  # None: unknown (a job must finish first) or never
    priority: Priority = "default"  # the queue: the operator's grant to the server (dreamcore.servers)
    tier: int = 0  # 1: a priority role of the member's own server, served first inside its share


def roles_of(guild_id: int | None, role_ids: Iterable[int], listed: Iterable[int]) -> bool:
    """Whether a member holds one of the `listed` roles of their server. The @everyone role (its id is the
    server's) never counts: it would make every member "priority" or "exempt"; LimitStore refuses it."""
    return bool({int(r) for r in role_ids} & (set(listed) - {guild_id}))


class Limiter:
    """Decides whether a dream may be queued, and consumes what it uses, atomically across processes."""

    def __init__(self, redis_client: redis.Redis, store: LimitStore | None = None):
        self.r = redis_client
        self.store = store or LimitStore(redis_client)

    def acquire(self, guild_id: int | None, user_id: int, job_id: str, images: int, steps: int,
                role_ids: Iterable[int] = (), instance: str = "", channel_id: int | None = None,
                prompt: str = "", negative_prompt: str = "", now: float | None = None,
                channel_nsfw: bool = False, units: float | None = None, mode: str = "quality") -> Decision:
        """Check every limit; if all pass, record the job (call `release` when it ends) and return ok.

        `images` is what the dream asks for (max_images); `units` what it costs (dreamcore.cost; by default
        one per image), which the quotas count, except for a relax dream (`mode`), which draws from none of them.
        Priority and exempt roles act inside the member's own server:
        exempt skips the member's own limits, never the server's; priority orders the server's own dreams.
        The server's queue and ceilings are the operator's (dreamcore.servers). Calling it again with an
        already accepted job id returns ok without consuming anything twice. `now` (seconds) is for tests;
        by default the Redis server's clock, shared by every bot host.
        """
        if not isinstance(images, int) or images < 1:
            raise ValueError(f"images must be a positive whole number, got {images!r}")
        if not job_id or not isinstance(job_id, str):
            raise ValueError(f"job_id must be a non-empty string, got {job_id!r}")
        units = float(images if units is None else units)
        limits = self.store.get(guild_id)
        policy = servers.get(self.r, guild_id)
        roles = list(role_ids)
        priority, tier = policy.priority, int(roles_of(guild_id, roles, limits.priority_roles))
        exempt = roles_of(guild_id, roles, limits.exempt_roles)

        def refuse(kind: Kind, message: str, retry: float | None = None) -> Decision:
            log.info("dream refused by a guild limit", extra={
                "guild_id": guild_id, "user_id": user_id, "job_id": job_id, "limit": kind,
                "retry_after_s": retry})
            return Decision(False, kind, message, retry, priority, tier)

        # Static checks: nothing to count, so no need for the script.
        if limits.paused:
            return refuse("paused", _("dreams are paused on this server by its admins"))
        allowed = limits.channels.get(instance)
        if allowed and channel_id not in allowed:
            where = ", ".join(f"<#{c}>" for c in allowed[:5]) + (", ..." if len(allowed) > 5 else "")
            return refuse("channel", _("I don't take dreams in this channel here; try {channels}").format(
                channels=where))
        hit = find_blocked_word(limits.blocked_words, prompt, negative_prompt)
        if hit:
            text = (_("your prompt contains a word this server has blocked ({word})") if hit[0] == 0 else
                    _("your negative prompt contains a word this server has blocked ({word})"))
            return refuse("blocked_word", text.format(word=mask(hit[1])))
        adult = None if channel_nsfw else find_blocked_word(limits.adult_words, prompt, negative_prompt)
        if adult:
            text = (_("your prompt has a word this server keeps to age-restricted channels ({word}); try it "
                      "in an age-restricted channel") if adult[0] == 0 else
                    _("your negative prompt has a word this server keeps to age-restricted channels ({word}); "
                      "try it in an age-restricted channel"))
            return refuse("adult_word", text.format(word=mask(adult[1])))
        if not limits.allows(mode):
            return refuse("mode", _("this server doesn't take {mode} dreams; try mode:quality").format(mode=mode))
        # English says "images" and "steps" for any limit (1 too); the plural forms are the other languages'.
        if not exempt and images > limits.max_images:
            return refuse("max_images", ngettext(
                "this server allows at most {limit} images per dream (you asked for {asked})",
                "this server allows at most {limit} images per dream (you asked for {asked})",
                limits.max_images).format(limit=limits.max_images, asked=images))
        if not exempt and steps > limits.max_steps:
            return refuse("max_steps", ngettext(
                "this server allows at most {limit} steps per dream (you asked for {asked})",
                "this server allows at most {limit} steps per dream (you asked for {asked})",
                limits.max_steps).format(limit=limits.max_steps, asked=steps))

        u = int(user_id)
        args = {
            "job_id": job_id, "user_id": str(u), "exempt": exempt,
            "units": units if fast(mode) else 0.0,  # the script counts no quota for a job of 0 units
            "cooldown_s": limits.cooldown_s, "user_max_active": limits.user_max_active,
            "user_images_hour": limits.user_images_hour, "user_images_day": limits.user_images_day,
            "guild_images_hour": _ceiling(limits.guild_images_hour, policy.units_hour),
            "guild_images_day": _ceiling(limits.guild_images_day, policy.units_day),
            "guild_max_queued": _ceiling(limits.guild_max_queued, policy.max_queued),
            "active_ttl_s": self.store.active_ttl_s,
        }
        if now is not None:
            args["now"] = float(now)
        keys = {**_keys(guild_id, u, job_id), "cooldown": LimitKeys.cooldown(guild_id, u)}
        status, kind, used, limit, retry, _at = (decode(x) for x in ACQUIRE(self.r, keys=keys, args=args))
        if status in ("ok", "dup"):
            log.debug("dream accepted by the guild limits",
                      extra={"guild_id": guild_id, "user_id": u, "job_id": job_id, "units": units,
                             "exempt": exempt, "again": status == "dup"})
            return Decision(True, None, "", None, priority, tier)
        wait = float(retry) if retry else None
        if wait is not None and math.isinf(wait):
            wait = None
        if kind == "cooldown":
            return refuse("cooldown", _("cooldown: try again in {wait}").format(wait=duration(wait or 0)), wait)
        if kind == "user_active":
            return refuse("user_active", ngettext(
                "you already have {n} dream queued or running (limit {limit}); try again when one finishes",
                "you already have {n} dreams queued or running (limit {limit}); try again when one finishes",
                int(used)).format(n=int(used), limit=limit))
        if kind == "guild_queued":
            return refuse("guild_queued", ngettext(
                "this server already has {n} dream queued or running (limit {limit}); try again when one "
                "finishes",
                "this server already has {n} dreams queued or running (limit {limit}); try again when one "
                "finishes",
                int(used)).format(n=int(used), limit=limit))
        return refuse(kind, quota_message(kind, float(used), int(limit), units, wait), wait)  # type: ignore[arg-type]

    def release(self, guild_id: int | None, user_id: int, job_id: str, refund: bool = False,
                settle: float | None = None) -> bool:
        """The job ended: free its active slots; `refund=True` (cancelled or failed) also gives its units
        back to the quotas; `settle` (a finished job's measured cost, dreamcore.cost.made) puts what it cost
        in place of what was charged before it ran (a face pass redraws as many faces as it finds).
        Idempotent: True the first time, False for a job already released or unknown."""
        u = int(user_id)
        args = {"job_id": job_id, "user_id": str(u), "refund": refund}
        if settle is not None and not refund:
            args["settle"] = float(settle)
        res = int(RELEASE(self.r, keys=_keys(guild_id, u, job_id), args=args))
        if res == -1:
            log.warning("release for a job that belongs to another member; ignored",
                        extra={"guild_id": guild_id, "user_id": u, "job_id": job_id})
        return res > 0


def _ceiling(admins: int, operators: int | None) -> int:
    """A server limit under the operator's ceiling for that server, if any."""
    return admins if operators is None else min(admins, operators)
