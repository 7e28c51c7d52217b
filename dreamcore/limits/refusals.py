"""What a member reads when a limit refuses their dream: durations rounded up (dreamcore.i18n.duration),
quotas with when they free up."""

from __future__ import annotations

from ..cost import plural_n, units_text
from ..i18n import N_, _, duration, ngettext

# Which quota refused, by the limit's kind (dreamcore.limits.model.Kind): the start of the member's sentence.
QUOTAS = {
    "user_hour": N_("hourly quota"),
    "user_day": N_("daily quota"),
    "guild_hour": N_("this server's hourly quota"),
    "guild_day": N_("this server's daily quota"),
}


def dreams(n: int) -> str:
    return ngettext("{n} dream", "{n} dreams", n).format(n=n)


def quota_message(kind: str, used: float, limit: int, units: float, retry: float | None) -> str:
    """Quotas count units of cost (dreamcore.cost): one standard image (1024x1024, 40 steps) is one."""
    who = "guild" if kind.startswith("guild") else "user"
    span = "hour" if kind.endswith("hour") else "day"
    quota = _(QUOTAS[f"{who}_{span}"])
    if retry is None:
        return ngettext(
            "this dream counts as {units} standard image but {quota} is {limit}; ask for fewer or smaller images",
            "this dream counts as {units} standard images but {quota} is {limit}; ask for fewer or smaller images",
            plural_n(units)).format(units=units_text(units), quota=quota, limit=limit)
    if used >= limit:
        return _("{quota} {used}/{limit} standard images used, resets in {wait}").format(
            quota=quota, used=units_text(used), limit=limit, wait=duration(retry))
    return ngettext(
        "{quota} {used}/{limit} standard images used and this dream counts as {units} standard image; "
        "enough frees up in {wait}",
        "{quota} {used}/{limit} standard images used and this dream counts as {units} standard images; "
        "enough frees up in {wait}",
        plural_n(units)).format(quota=quota, used=units_text(used), limit=limit, units=units_text(units),
                                wait=duration(retry))
