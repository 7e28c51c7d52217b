"""What /dreamadmin shows: every limit with its value and range, a member's usage, the audit trail, the
key autocompletion; each answer fit to one Discord message, typed values kept from breaking the markdown."""

from __future__ import annotations

from typing import Any

import discord
from discord import app_commands
from discord.utils import escape_markdown

from dreamcore.cost import left_text, units_text
from dreamcore.limit_messages import human_duration
from dreamcore.limits import CHOICE_KEYS, KNOWN_KEYS, GuildLimits, limit_range
from dreamcore.present import clip, code

MAX_MESSAGE = 2000
MAX_VALUE_SHOWN = 240

# What the keys that are not a number take (the numbers show their range from GuildLimits).
_SHAPES = {
    "paused": "true / false",
    "channels": "instance:channel ids (e.g. bot1:123,456); none = every channel",
    "exempt_roles": "roles (ids or @mentions), +add / -remove / clear; up to 100",
    "priority_roles": "roles (ids or @mentions), +add / -remove / clear; up to 100",
    "blocked_words": "words or phrases, comma-separated, +add / -remove / clear; up to 500",
    "adult_words": "words or phrases, comma-separated, +add / -remove / clear; up to 500",
} | {key: " / ".join(words) for key, words in CHOICE_KEYS.items()}

LIST_KEYS = ("exempt_roles", "priority_roles", "blocked_words", "adult_words")


def range_text(key: str) -> str:
    """What `key` may be set to: "0–3600" for a number, a short shape for the rest."""
    r = limit_range(key)
    if r is not None:
        return f"{r[0]}–{r[1]}"
    return _SHAPES.get(key, "see the docs")


def describe(key: str) -> str:
    info = GuildLimits.model_fields.get(key)
    return (info.description or "") if info else ""


def render(key: str, value: Any) -> str:
    """A limit's value as an admin reads it (also the JSON forms the audit trail keeps)."""
    if value is None:
        return "none"
    if isinstance(value, bool):
        return "true" if value else "false"
    if key in ("exempt_roles", "priority_roles"):
        text = " ".join(f"<@&{int(r)}>" for r in value) or "none"
    elif key == "channels":
        text = "; ".join(f"{escape_markdown(str(inst))}: " + " ".join(f"<#{int(c)}>" for c in ids)
                         for inst, ids in dict(value).items()) or "every channel"
    elif key in ("blocked_words", "adult_words"):
        text = ", ".join(f"||{escape_markdown(str(w))}||" for w in value) or "none"
    elif isinstance(value, float):
        text = f"{value:g}"
    elif isinstance(value, (list, tuple)):
        text = ", ".join(escape_markdown(str(v)) for v in value) or "none"
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
    head = "**Dream limits on this server**"
    if limits.paused:
        head += " (dreams are **paused**: /dreamadmin resume)"
    lines = [head]
    for key in KNOWN_KEYS:
        where = "set here" if key in overrides else "default"
        lines.append(f"{code(key)} = **{render(key, getattr(limits, key))}** · {where} · {range_text(key)}")
    lines.append("-# Change one with /dreamadmin set; the value `default` goes back to the default.")
    return _fit(lines)


def flags_text(flags: dict[str, dict[str, int]], limits: GuildLimits) -> list[str]:
    """The content filter's lines of /dreamadmin usage: flagged images today and this week, by outcome."""
    def line(counts: dict[str, int]) -> str:
        parts = [f"{counts.get(k, 0)} {label}" for k, label in
                 (("withheld", "withheld"), ("spoilered", "spoilered"),
                  ("shown_age_restricted", "shown in age-restricted channels"))]
        return f"{sum(counts.values())} flagged: " + ", ".join(parts)
    policy = f"threshold {limits.nsfw_threshold:g}, {limits.nsfw_action.replace('_', ' ')}"
    return [f"**Content filter** ({policy})",
            f"today (UTC): {line(flags.get('today', {}))}",
            f"last 7 days: {line(flags.get('week', {}))}"]


def usage_text(user: discord.abc.User, usage: dict[str, Any], limits: GuildLimits, exempt: bool,
               flags: dict[str, dict[str, int]] | None = None) -> str:
    cd = float(usage.get("cooldown_remaining_s") or 0.0)
    if limits.cooldown_s <= 0:
        cooldown = "none on this server"
    elif cd > 0:
        cooldown = f"{human_duration(cd)} left (cooldown {human_duration(limits.cooldown_s)})"
    else:
        cooldown = f"ready (cooldown {human_duration(limits.cooldown_s)})"
    turbo = limits.allows("turbo")
    lines = [
        f"**Usage of <@{user.id}> on this server**" + (" (exempt: a role of theirs skips cooldown, quotas "
                                                        "and caps)" if exempt else ""),
        f"standard images this hour: {units_text(usage['user_images_hour'])} / {limits.user_images_hour}",
        f"standard images in the last 24 h: {units_text(usage['user_images_day'])} / {limits.user_images_day}",
        f"left: this hour {left_text(max(0.0, limits.user_images_hour - usage['user_images_hour']), turbo)}; "
        f"24 h {left_text(max(0.0, limits.user_images_day - usage['user_images_day']), turbo)}",
        f"dreams queued or running: {usage['user_active']} / {limits.user_max_active}",
        f"cooldown: {cooldown}",
        "**The whole server**",
        f"standard images this hour: {units_text(usage['guild_images_hour'])} / {limits.guild_images_hour}",
        f"standard images in the last 24 h: {units_text(usage['guild_images_day'])} / {limits.guild_images_day}",
        f"left: this hour {left_text(max(0.0, limits.guild_images_hour - usage['guild_images_hour']), turbo)}",
        f"dreams queued or running: {usage['guild_active']} / {limits.guild_max_queued}",
        f"modes: default {limits.mode}; turbo {limits.turbo}; relax {limits.relax} (relax counts against no quota)",
    ]
    if flags is not None:
        lines += flags_text(flags, limits)
    return _fit(lines)


def audit_line(entry: dict[str, Any]) -> str:
    try:
        when = f"<t:{int(float(entry.get('ts', 0)))}:R>"
    except (TypeError, ValueError):
        when = "at an unknown time"
    actor = entry.get("actor_id")
    who = f"<@{int(actor)}>" if isinstance(actor, int) or str(actor).isdigit() else "someone"
    key = str(entry.get("key", "?"))
    if key == "reset_user":
        target = entry.get("old")
        whom = f"<@{int(target)}>" if str(target).isdigit() else "a member"
        return f"{when} {who} reset the usage and cooldown of {whom}"
    old, new = render(key, entry.get("old")), render(key, entry.get("new"))
    room = MAX_VALUE_SHOWN // 3
    line = f"{when} {who} {code(key)}: {clip(old, room)} → {clip(new, room)}"
    if entry.get("reset_to_default"):
        line += " (back to the default)"
    return line


def audit_text(entries: list[dict[str, Any]]) -> str:
    if not entries:
        return "No limit has been changed on this server yet."
    return _fit([f"**The last {len(entries)} changes to this server's dream limits**",
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
    return [c for _, _, c in sorted(ranked, key=lambda t: t[:2])][:25]
