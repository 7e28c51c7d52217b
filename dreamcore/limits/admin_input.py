"""What an admin types for a limit (`/dreamadmin set KEY VALUE`), parsed into the value GuildLimits
holds, or a LimitError that says what is wrong in words fit to show them."""

from __future__ import annotations

import re
from typing import Any

from pydantic import ValidationError

from ..i18n import _, ngettext
from ..job import clean_text
from ..problems import problems
from ..settings import parse_id_list
from .model import (
    CHOICE_KEYS,
    FLOAT_KEYS,
    ID_LIST_KEYS,
    INSTANCE_PATTERN,
    INT_KEYS,
    KNOWN_KEYS,
    WORD_LIST_KEYS,
    GuildLimits,
    LimitError,
    limit_range,
)
from .words import fold

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
    return LimitError(_("{key} must be between {lo} and {hi}, got {got}").format(key=key, lo=lo, hi=hi, got=got),
                      key=key)


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
    if key in INT_KEYS:
        if not re.fullmatch(r"[+-]?\d{1,18}", raw):
            lo, hi = limit_range(key) or ("?", "?")
            raise LimitError(_("{key} must be a whole number between {lo} and {hi}, got {got}").format(
                key=key, lo=lo, hi=hi, got=_shown(raw_value)), key=key)
        value = int(raw)
        lo, hi = limit_range(key) or (None, None)
        if lo is not None and not lo <= value <= hi:
            raise _range_error(key, value)
        return value
    if key in FLOAT_KEYS:
        lo, hi = limit_range(key) or ("?", "?")
        value = float(raw) if re.fullmatch(r"[+-]?(\d+(\.\d*)?|\.\d+)", raw) else None  # no inf, nan, 1e9
        if value is None:
            raise LimitError(_("{key} must be a number between {lo} and {hi}, got {got}").format(
                key=key, lo=lo, hi=hi, got=_shown(raw_value)), key=key)
        if not lo <= value <= hi:
            raise _range_error(key, raw)
        return value
    if key in CHOICE_KEYS:
        low = raw.lower().replace("-", "_").replace(" ", "_")
        allowed = CHOICE_KEYS[key]
        if low not in allowed:
            said = _("{choices} or {last}").format(choices=", ".join(allowed[:-1]), last=allowed[-1])
            raise LimitError(_("{key} must be {choices}, got {got}").format(key=key, choices=said,
                                                                            got=_shown(raw_value)), key=key)
        return low
    if key == "paused":
        low = raw.lower()
        if low in _TRUE:
            return True
        if low in _FALSE:
            return False
        raise LimitError(_("paused must be true/false (or on/off, yes/no), got {got}").format(got=_shown(raw_value)),
                         key=key)
    if key in ID_LIST_KEYS:
        return _edit_list(list(getattr(current, key)), raw, lambda s: _ids(key, s))
    if key in WORD_LIST_KEYS:
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
                _("channels must be written instance:channel_id,channel_id (e.g. dreambot:123,456; "
                  "dreambot: alone lets that bot answer in every channel), or clear"), key=key)
        channels[name] = _edit_list(channels.get(name, []), rest, lambda s: _ids(key, s))
        return channels
    raise LimitError(_("unknown limit {key}; known limits: {keys}").format(key=repr(key), keys=", ".join(KNOWN_KEYS)),
                     key=key)


def validation_error(key: str, value: Any, err: ValidationError) -> LimitError:
    e = err.errors()[0]
    if e["type"] in ("greater_than_equal", "less_than_equal") and len(e["loc"]) == 1:
        return _range_error(key, value)
    if e["type"] == "too_long" and len(e["loc"]) == 1:
        most = e["ctx"]["max_length"]
        return LimitError(ngettext("{key} allows at most {most} entries, got {got}",
                                   "{key} allows at most {most} entries, got {got}", most).format(
            key=key, most=most, got=len(value)), key=key)
    (_field, text), *_others = problems(err, GuildLimits, name=lambda loc: " ".join([key, *loc[1:]]))
    return LimitError(text, key=key)
