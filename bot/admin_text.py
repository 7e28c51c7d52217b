"""What /dreamadmin shows: every limit with its value and range, a member's usage, the audit trail, the
key autocompletion; each answer fit to one Discord message, typed values kept from breaking the markdown."""

from __future__ import annotations

from typing import Any

import discord
from discord import app_commands
from discord.utils import escape_markdown

from dreamcore.cost import left_text, units_text
from dreamcore.i18n import N_, _, duration, ngettext
from dreamcore.limits.model import CHOICE_KEYS, KNOWN_KEYS, GuildLimits, limit_range
from dreamcore.present import clip, code

MAX_MESSAGE = 2000
MAX_VALUE_SHOWN = 240

# What the keys that are not a number take (the numbers show their range from GuildLimits): in words, which
# are translated where shown, or as the values an admin types, which stay as they are.
_SHAPES = {
    "channels": N_("instance:channel ids (e.g. bot1:123,456); none = every channel"),
    "exempt_roles": N_("roles (ids or @mentions), +add / -remove / clear; up to 100"),
    "priority_roles": N_("roles (ids or @mentions), +add / -remove / clear; up to 100"),
    "blocked_words": N_("words or phrases, comma-separated, +add / -remove / clear; up to 500"),
    "adult_words": N_("words or phrases, comma-separated, +add / -remove / clear; up to 500"),
}
_VALUES = {"paused": "true / false"} | {key: " / ".join(words) for key, words in CHOICE_KEYS.items()}

LIST_KEYS = ("exempt_roles", "priority_roles", "blocked_words", "adult_words")


def range_text(key: str) -> str:
    """What `key` may be set to: "0–3600" for a number, a short shape for the rest."""
    r = limit_range(key)
    if r is not None:
        return f"{r[0]}–{r[1]}"
    if key in _SHAPES:
        return _(_SHAPES[key])
    if key in _VALUES:
        return _VALUES[key]
    return _("see the docs")


def describe(key: str) -> str:
    info = GuildLimits.model_fields.get(key)
    return _(info.description) if info and info.description else ""


def render(key: str, value: Any) -> str:
    """A limit's value as an admin reads it (also the JSON forms the audit trail keeps)."""
    if value is None:
        return _("none")
    if isinstance(value, bool):
        return "true" if value else "false"
    if key in ("exempt_roles", "priority_roles"):
        text = " ".join(f"<@&{int(r)}>" for r in value) or _("none")
    elif key == "channels":
        text = "; ".join(f"{escape_markdown(str(inst))}: " + " ".join(f"<#{int(c)}>" for c in ids)
                         for inst, ids in dict(value).items()) or _("every channel")
    elif key in ("blocked_words", "adult_words"):
        text = ", ".join(f"||{escape_markdown(str(w))}||" for w in value) or _("none")
    elif isinstance(value, float):
        text = f"{value:g}"
    elif isinstance(value, (list, tuple)):
        text = ", ".join(escape_markdown(str(v)) for v in value) or _("none")
    else:
        text = escape_markdown(str(value))
    return clip(text, MAX_VALUE_SHOWN)


def _fit(lines: list[str], tail: str = "…") -> str:
    """Join lines, dropping whole lines from the end so the message stays under Discord's 2000 chars."""
    out: list[str] = []
    size = 0
    for line in lines:
        if size + len(line) + 1 > MAX_MESSAGE - len(tail) - 1:
            out.append(tail)
            break
        out.append(line)
        size += len(line) + 1
    return "\n".join(out)


def show_text(limits: GuildLimits, overrides: dict[str, Any]) -> str:
    head = (_("**Dream limits on this server** (dreams are **paused**: /dreamadmin resume)") if limits.paused
            else _("**Dream limits on this server**"))
    lines = [head]
    for key in KNOWN_KEYS:
        where = _("set here") if key in overrides else _("default")
        lines.append(f"{code(key)} = **{render(key, getattr(limits, key))}** · {where} · {range_text(key)}")
    lines.append(_("-# Change one with /dreamadmin set; the value `default` goes back to the default."))
    return _fit(lines)


def flags_text(flags: dict[str, dict[str, int]], limits: GuildLimits) -> list[str]:
    """The content filter's lines of /dreamadmin usage: flagged images today and this week, by outcome."""
    def line(counts: dict[str, int]) -> str:
        withheld, spoilered, shown = (counts.get(k, 0) for k in ("withheld", "spoilered", "shown_age_restricted"))
        parts = [ngettext("{n} withheld", "{n} withheld", withheld).format(n=withheld),
                 ngettext("{n} spoilered", "{n} spoilered", spoilered).format(n=spoilered),
                 ngettext("{n} shown in age-restricted channels", "{n} shown in age-restricted channels",
                          shown).format(n=shown)]
        total = sum(counts.values())
        return ngettext("{n} flagged: {outcomes}", "{n} flagged: {outcomes}", total).format(
            n=total, outcomes=", ".join(parts))
    return [_("**Content filter** (threshold {threshold}, {action})").format(
                threshold=f"{limits.nsfw_threshold:g}", action=limits.nsfw_action.replace("_", " ")),
            _("today (UTC): {flagged}").format(flagged=line(flags.get("today", {}))),
            _("last 7 days: {flagged}").format(flagged=line(flags.get("week", {})))]


def usage_text(user: discord.abc.User, usage: dict[str, Any], limits: GuildLimits, exempt: bool,
               flags: dict[str, dict[str, int]] | None = None) -> str:
    cd = float(usage.get("cooldown_remaining_s") or 0.0)
    if limits.cooldown_s <= 0:
        cooldown = _("none on this server")
    elif cd > 0:
        cooldown = _("{left} left (cooldown {cooldown})").format(left=duration(cd),
                                                                 cooldown=duration(limits.cooldown_s))
    else:
        cooldown = _("ready (cooldown {cooldown})").format(cooldown=duration(limits.cooldown_s))
    turbo = limits.allows("turbo")
    head = (_("**Usage of {member} on this server** (exempt: a role of theirs skips cooldown, quotas and caps)")
            if exempt else _("**Usage of {member} on this server**"))
    hour = _("standard images this hour: {used} / {limit}")
    day = _("standard images in the last 24 h: {used} / {limit}")
    active = _("dreams queued or running: {active} / {limit}")
    lines = [
        head.format(member=f"<@{user.id}>"),
        hour.format(used=units_text(usage["user_images_hour"]), limit=limits.user_images_hour),
        day.format(used=units_text(usage["user_images_day"]), limit=limits.user_images_day),
        _("left: this hour {hour}; 24 h {day}").format(
            hour=left_text(max(0.0, limits.user_images_hour - usage["user_images_hour"]), turbo),
            day=left_text(max(0.0, limits.user_images_day - usage["user_images_day"]), turbo)),
        active.format(active=usage["user_active"], limit=limits.user_max_active),
        _("cooldown: {cooldown}").format(cooldown=cooldown),
        _("**The whole server**"),
        hour.format(used=units_text(usage["guild_images_hour"]), limit=limits.guild_images_hour),
        day.format(used=units_text(usage["guild_images_day"]), limit=limits.guild_images_day),
        _("left: this hour {hour}").format(
            hour=left_text(max(0.0, limits.guild_images_hour - usage["guild_images_hour"]), turbo)),
        active.format(active=usage["guild_active"], limit=limits.guild_max_queued),
        _("modes: default {mode}; turbo {turbo}; relax {relax} (relax counts against no quota)").format(
            mode=limits.mode, turbo=limits.turbo, relax=limits.relax),
    ]
    if flags is not None:
        lines += flags_text(flags, limits)
    return _fit(lines)


def audit_line(entry: dict[str, Any]) -> str:
    try:
        when = f"<t:{int(float(entry.get('ts', 0)))}:R>"
    except (TypeError, ValueError):
        when = _("at an unknown time")
    actor = entry.get("actor_id")
    who = f"<@{int(actor)}>" if isinstance(actor, int) or str(actor).isdigit() else _("someone")
    key = str(entry.get("key", "?"))
    if key == "reset_user":
        target = entry.get("old")
        whom = f"<@{int(target)}>" if str(target).isdigit() else _("a member")
        return _("{when} {who} reset the usage and cooldown of {whom}").format(when=when, who=who, whom=whom)
    old, new = render(key, entry.get("old")), render(key, entry.get("new"))
    room = MAX_VALUE_SHOWN // 3
    shown = {"when": when, "who": who, "key": code(key), "old": clip(old, room), "new": clip(new, room)}
    if entry.get("reset_to_default"):
        return _("{when} {who} {key}: {old} → {new} (back to the default)").format(**shown)
    return _("{when} {who} {key}: {old} → {new}").format(**shown)


def audit_text(entries: list[dict[str, Any]]) -> str:
    if not entries:
        return _("No limit has been changed on this server yet.")
    n = len(entries)
    return _fit([ngettext("**The last {n} changes to this server's dream limits**",
                          "**The last {n} changes to this server's dream limits**", n).format(n=n),
                 *(audit_line(e) for e in entries)])


def key_choices(current: str) -> list[app_commands.Choice[str]]:
    """Autocomplete for `key`: each label says what the limit does and what it may be (max 100 chars)."""
    needle = (current or "").strip().lower()
    ranked = []
    for i, key in enumerate(KNOWN_KEYS):
        desc = describe(key)
        # Names that start with what was typed first, then names that contain it, then descriptions.
        rank = 0 if key.startswith(needle) else 1 if needle in key else 2 if needle in desc.lower() else None
        if rank is None:
            continue
        label = f"{key} ({range_text(key)}): {desc}" if limit_range(key) else f"{key}: {desc}"
        ranked.append((rank, i, app_commands.Choice(name=clip(label, 100), value=key)))
    return [c for _rank, _i, c in sorted(ranked, key=lambda t: t[:2])][:25]
