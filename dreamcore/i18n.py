"""Every word a member reads, in their language: gettext catalogs (Babel), the language of the moment, and
numbers and durations written the way that language writes them.

The catalogs are `dreamcore/locale/<lang>/LC_MESSAGES/dreambot.po`, managed with Babel (README, "Adding a
language"): the English text in the code is the message id, so a message with no entry, or a language with
no catalog, reads English and never fails. The build compiles each `.po` to a `.mo` beside it
(`pybabel compile`, in both images); a checkout that has not compiled them (an editable install, a test run)
compiles a catalog in memory the first time it is used.

Which language: a command's answers (its reply, the edits of that reply, its private follow-ups) are in the
member's (their `/settings` override, else their Discord client's `interaction.locale`); what the bot posts
to a channel on its own (a result after the interaction expired, a vote's close) is in the server's
(`interaction.guild_locale`, recorded with the job). The language is a context variable: a command's task
sets it once (bot/client.py), and code that speaks for a job later says whose it is (`speaking(locale)`).
Threads the bot hands work to run in a copy of the caller's context (bot/toolkit.py), so a message made there
is in the same language.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import io
import logging
import math
from collections.abc import Iterator
from pathlib import Path

from babel import Locale, UnknownLocaleError
from babel.lists import format_list
from babel.messages.mofile import write_mo
from babel.messages.pofile import read_po
from babel.numbers import format_decimal
from babel.support import NullTranslations, Translations
from babel.units import format_unit

log = logging.getLogger("dreambot.i18n")

DOMAIN = "dreambot"
LOCALE_DIR = Path(__file__).with_name("locale")
SOURCE = "en-US"  # the language the code is written in: its text is every message's id

# Discord's locale codes of the languages with a catalog, and each one's name in itself (for /settings).
# Order: what was asked first, then by how many members speak them on Discord.
LANGUAGES: dict[str, str] = {
    "zh-CN": "简体中文",
    "zh-TW": "繁體中文",
    "ja": "日本語",
    "ko": "한국어",
    "es-ES": "Español",
    "pt-BR": "Português do Brasil",
    "de": "Deutsch",
    "fr": "Français",
    "ru": "Русский",
}

# What each Discord locale without a catalog of its own reads: the nearest one that has one.
NEAREST = {"es-419": "es-ES"}

# Command and option names are translated with a context of their own, so a name and a message that happen
# to be spelt alike ("cancel") are translated apart, each under its own rules (a name: lowercase, no spaces).
NAME = "command name"

_current: contextvars.ContextVar[str] = contextvars.ContextVar("dreambot_language", default=SOURCE)


def N_(message: str) -> str:
    """Marks a text for the catalogs where it is defined (a constant, a table) and translated where it is used."""
    return message


def catalog_name(locale: str) -> str:
    """Discord's `zh-CN` is gettext's `zh_CN`: the folder its catalog lives in."""
    return locale.replace("-", "_")


def resolve(locale: str | None) -> str:
    """The language a member with Discord locale `locale` reads: its own catalog, the nearest one, or the
    source language (en-US, en-GB, and anything unknown or malformed)."""
    if not locale:
        return SOURCE
    locale = str(locale)
    if locale in LANGUAGES:
        return locale
    if locale in NEAREST:
        return NEAREST[locale]
    language = locale.split("-", 1)[0]
    same = [code for code in LANGUAGES if code.split("-", 1)[0] == language]
    return same[0] if len(same) == 1 else SOURCE


def current() -> str:
    return _current.get()


def use(locale: str | None) -> str:
    """Speak `locale` (resolved) from here on in this context: once, at the start of a command's task."""
    resolved = resolve(locale)
    _current.set(resolved)
    return resolved


@contextlib.contextmanager
def speaking(locale: str | None) -> Iterator[str]:
    """Speak `locale` inside the block: for code that speaks for a job or a server, not for the command that
    is running (the result relay, a vote's close)."""
    token = _current.set(resolve(locale))
    try:
        yield _current.get()
    finally:
        _current.reset(token)


@functools.cache
def translations(locale: str) -> NullTranslations:
    """The compiled catalog of `locale` (a resolved Discord locale): its .mo when the build made one no older
    than the .po, else the .po compiled here; no catalog at all reads the source language."""
    if locale == SOURCE:
        return NullTranslations()
    folder = LOCALE_DIR / catalog_name(locale) / "LC_MESSAGES"
    po, mo = folder / f"{DOMAIN}.po", folder / f"{DOMAIN}.mo"
    if mo.exists() and (not po.exists() or mo.stat().st_mtime >= po.stat().st_mtime):
        with mo.open("rb") as fh:
            return Translations(fh, domain=DOMAIN)
    if not po.exists():
        log.warning("no catalog for a language: English is used", extra={"locale": locale})
        return NullTranslations()
    with po.open("rb") as fh:
        cat = read_po(fh, locale=catalog_name(locale), domain=DOMAIN)
    buf = io.BytesIO()
    write_mo(buf, cat, use_fuzzy=False)
    buf.seek(0)
    return Translations(buf, domain=DOMAIN)


def _(message: str) -> str:
    """`message` in the language of the moment."""
    return translations(_current.get()).gettext(message)


def ngettext(singular: str, plural: str, n: int) -> str:
    """The form of a message that counts `n` in the language of the moment (one, few, many: the catalog's
    plural rule)."""
    return translations(_current.get()).ngettext(singular, plural, n)


def name(english: str, locale: str) -> str:
    """A command's, option's or group's name in `locale` (resolved): the English one where the catalog has
    none."""
    return translations(resolve(locale)).pgettext(NAME, english)


def babel_locale(locale: str | None = None) -> Locale:
    code = resolve(locale if locale is not None else _current.get())
    try:
        return Locale.parse(code, sep="-")
    except (UnknownLocaleError, ValueError):
        return Locale.parse("en_US")


def number(value: float, digits: int = 2) -> str:
    """A number as the language of the moment writes it (1,234.5 / 1.234,5 / 1 234,5), at most `digits`
    decimals, none shown when it is whole."""
    fmt = "#,##0" + ("." + "#" * digits if digits else "")
    return format_decimal(value, format=fmt, locale=babel_locale())


def duration(seconds: float) -> str:
    """Rounded up, so a member who waits that long is never refused again: 23 s, 4 min 10 s, 5 h 12 min, in
    the language of the moment (CLDR's short units through Babel; English keeps the compact form the
    README and the tests quote)."""
    s = max(1, math.ceil(seconds - 1e-6))
    if s < 60:
        parts = [(s, "second")]
    elif s < 3600:
        m, r = divmod(s, 60)
        parts = [(m, "minute")] + ([(r, "second")] if r else [])
    else:
        h, m = divmod(math.ceil(s / 60), 60)
        parts = [(h, "hour")] + ([(m, "minute")] if m else [])
    if resolve(_current.get()) == SOURCE:
        short = {"second": "s", "minute": "min", "hour": "h"}
        return " ".join(f"{n} {short[unit]}" for n, unit in parts)
    loc = babel_locale()
    words = [format_unit(n, f"duration-{unit}", length="short", locale=loc) for n, unit in parts]
    # unit-narrow: the one list style Babel can format in every listed language (es's unit-short lacks a pattern)
    return format_list(words, style="unit-narrow", locale=loc)
