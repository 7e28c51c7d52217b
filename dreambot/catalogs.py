"""`dreambot catalogs extract|update|init|compile|check`: the translation catalogs, through Babel's own API.

Why not `pybabel` alone: half of what a member reads is registered with the commands (names, descriptions,
choices), not written as `_()` calls, so the template is Babel's extraction of the source plus a walk of the
bot's command tree (bot.translator.command_texts). The rest is Babel: its Catalog, its .po reader and writer,
its update (merge) and its .mo compiler.

    dreambot catalogs update        # after changing texts: the template, and every .po merged with it
    dreambot catalogs init pl       # a new language (a Discord locale code), then translate its .po
    dreambot catalogs compile       # every .po to .mo (the images run this at build)
    dreambot catalogs check         # what tests/unit/test_catalogs.py checks: complete, placeholders, lengths
"""

from __future__ import annotations

import re
import string
from collections.abc import Iterator
from pathlib import Path

from babel.messages.catalog import Catalog, Message
from babel.messages.extract import extract_from_dir
from babel.messages.mofile import write_mo
from babel.messages.pofile import read_po, write_po

from dreamcore import i18n

ROOT = Path(__file__).resolve().parent.parent
SOURCES = ("dreamcore", "bot", "worker", "dreambot")
KEYWORDS = {"_": None, "N_": None, "ngettext": (1, 2)}
TEMPLATE = i18n.LOCALE_DIR / f"{i18n.DOMAIN}.pot"
# Discord's limits (tests/unit/test_catalogs.py holds every language to them).
NAME_LIMIT, DESCRIPTION_LIMIT, MESSAGE_LIMIT = 32, 100, 2000


def template() -> Catalog:
    """Every text the code can show a member, with where it comes from."""
    cat = Catalog(domain=i18n.DOMAIN, project="dreambot", charset="utf-8")
    for folder in SOURCES:
        for filename, lineno, message, comments, context in extract_from_dir(
                ROOT / folder, method_map=[("**.py", "python")], keywords=KEYWORDS, comment_tags=("NOTE:",),
                strip_comment_tags=True):
            cat.add(message, locations=[(f"{folder}/{filename}", lineno)], auto_comments=comments,
                    context=context, flags=("python-brace-format",) if _fields(_first(message)) else ())
    for text, context in _command_texts():
        loc = ("<commands>", 0)
        existing = cat.get(text, context=context)
        if existing is not None:
            existing.locations.append(loc)
            continue
        comment = ["a command or option name: 1-32 characters, lowercase, no spaces"] if context else \
            ["registered with a command: at most 100 characters"]
        cat.add(text, locations=[loc], context=context, auto_comments=comment,
                flags=("python-brace-format",) if _fields(text) else ())
    return cat


def _command_texts() -> Iterator[tuple[str, str | None]]:
    from bot.client import command_tree
    from bot.translator import command_texts

    yield from command_texts(command_tree())


def catalog_path(locale: str, suffix: str = "po") -> Path:
    return i18n.LOCALE_DIR / i18n.catalog_name(locale) / "LC_MESSAGES" / f"{i18n.DOMAIN}.{suffix}"


def read(locale: str) -> Catalog:
    with catalog_path(locale).open("rb") as fh:
        return read_po(fh, locale=i18n.catalog_name(locale), domain=i18n.DOMAIN)


def write(cat: Catalog, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("wb") as fh:
        write_po(fh, cat, width=110, sort_by_file=False, omit_header=False)


def extract() -> Catalog:
    cat = template()
    write(cat, TEMPLATE)
    return cat


def update() -> None:
    """Extract, then merge every language's catalog with the template (new texts empty, changed ones fuzzy)."""
    tmpl = extract()
    for locale in i18n.LANGUAGES:
        if catalog_path(locale).exists():
            cat = read(locale)
            cat.update(tmpl, update_header_comment=False)
            write(cat, catalog_path(locale))


def init(locale: str) -> Path:
    tmpl = extract()
    cat = Catalog(locale=i18n.catalog_name(locale), domain=i18n.DOMAIN, project="dreambot", charset="utf-8",
                  fuzzy=False)  # a fuzzy header makes `pybabel compile` skip the whole catalog
    cat.update(tmpl)
    write(cat, catalog_path(locale))
    return catalog_path(locale)


def compile_all() -> list[str]:
    """Every .po to its .mo; the errors Babel finds (a broken placeholder in printf-style text) stop it."""
    out = []
    for locale in i18n.LANGUAGES:
        if not catalog_path(locale).exists():
            continue
        cat = read(locale)
        errors = [f"{locale}: {msg.id!r}: {err}" for msg, errs in cat.check() for err in errs]
        if errors:
            raise SystemExit("\n".join(errors))
        with catalog_path(locale, "mo").open("wb") as fh:
            write_mo(fh, cat, use_fuzzy=False)
        out.append(locale)
    return out


def _first(message: str | tuple) -> str:
    return message[0] if isinstance(message, tuple) else message


def _fields(text: str) -> set[str]:
    """The {placeholders} of a message (format specs included: they must be kept as they are)."""
    try:
        return {f"{name}:{spec}" if spec else name for _lit, name, spec, _conv in string.Formatter().parse(text)
                if name is not None}
    except ValueError:
        return {"<unbalanced braces>"}


def problems(locale: str, tmpl: Catalog | None = None) -> list[str]:
    """What is wrong with `locale`'s catalog against the code: a text with no translation (or only a fuzzy
    one), a translation that drops or adds a placeholder, or one past Discord's limits."""
    tmpl = tmpl or template()
    if not catalog_path(locale).exists():
        return [f"{locale}: no catalog"]
    cat = read(locale)
    out = [f"{locale}: the header is fuzzy (pybabel compile would leave the whole catalog out)"] if cat.fuzzy else []
    for msg in tmpl:
        if not msg.id:
            continue
        found: Message | None = cat.get(msg.id, context=msg.context)
        ids = msg.id if isinstance(msg.id, tuple) else (msg.id,)
        strings = None if found is None else (found.string if isinstance(found.string, tuple) else (found.string,))
        if found is None or found.fuzzy or not strings or not all(strings):
            out.append(f"{locale}: untranslated: {ids[0]!r}")
            continue
        wanted = _fields(ids[-1]) | _fields(ids[0])
        for s in strings:
            # A plural form for one may say "one" in words where the English says {n}: it may drop a placeholder
            # that the other forms keep, never add one.
            got = _fields(s)
            if got - wanted or (len(ids) == 1 and got != wanted):
                out.append(f"{locale}: placeholders {sorted(got)} != {sorted(wanted)} in {s!r} (for {ids[0]!r})")
        locations = {path for path, _line in msg.locations}
        for s in strings:
            if msg.context == i18n.NAME:
                if not (1 <= len(s) <= NAME_LIMIT) or s != s.lower() or not _valid_name(s):
                    out.append(f"{locale}: not a valid command name: {s!r} (for {ids[0]!r})")
            elif "<commands>" in locations and len(s) > DESCRIPTION_LIMIT:
                out.append(f"{locale}: over {DESCRIPTION_LIMIT} characters: {s!r}")
            elif len(s) > MESSAGE_LIMIT:
                out.append(f"{locale}: over {MESSAGE_LIMIT} characters: {s[:60]!r}")
    return out


def _valid_name(name: str) -> bool:
    return re.fullmatch(r"[-_'\w\u0900-\u097F\u0E00-\u0E7F]{1,32}", name) is not None


def main(action: str, locale: str | None = None) -> int:
    if action == "extract":
        print(f"{len(extract())} texts -> {TEMPLATE.relative_to(ROOT)}")
    elif action == "update":
        update()
        print("template extracted, catalogs merged")
    elif action == "init":
        if not locale:
            raise SystemExit("init needs a Discord locale code, e.g. pl")
        print(f"new catalog: {init(locale).relative_to(ROOT)}; add {locale!r} to dreamcore.i18n.LANGUAGES")
    elif action == "compile":
        print("compiled: " + ", ".join(compile_all()))
    elif action == "check":
        tmpl = template()
        found = [p for loc in i18n.LANGUAGES for p in problems(loc, tmpl)]
        for line in found:
            print(line)
        print(f"{len(found)} problems in {len(i18n.LANGUAGES)} catalogs of {len(tmpl)} texts")
        return 1 if found else 0
    return 0
