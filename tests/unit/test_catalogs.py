"""The translation catalogs against the code: every text the code can show has an entry in every language,
each translation keeps its original's placeholders, and Discord's length limits hold in every language."""

from __future__ import annotations

import ast

import pytest

from dreambot import catalogs
from dreamcore import i18n
from tests.support import ROOT


@pytest.fixture(scope="module")
def template():
    return catalogs.template()


def test_the_template_holds_the_messages_and_every_command_text(template):
    ids = {m.id if isinstance(m.id, str) else m.id[0] for m in template if m.id}
    assert "Queued:" in ids and "Please wait {duration} before asking again." in ids
    names = {m.id for m in template if m.context == i18n.NAME}
    assert {"dream", "settings", "show", "reset", "prompt", "dreamhelp"} <= names
    assert "Dream up images with SDXL (base + refiner)" in ids  # a command description
    assert "Seed, {lo} to {hi}: the same seed and settings make the same picture (random if left out)" in ids


@pytest.mark.parametrize("locale", list(i18n.LANGUAGES))
def test_every_language_is_complete_keeps_placeholders_and_fits_discord(locale, template):
    found = catalogs.problems(locale, template)
    assert not found, "\n".join(found[:40]) + f"\n... {len(found)} problems in all"


def test_the_checks_catch_a_dropped_placeholder_a_long_description_and_a_bad_name(template, tmp_path, monkeypatch):
    from babel.messages.catalog import Catalog
    from babel.messages.pofile import write_po

    cat = Catalog(locale="pl", domain=i18n.DOMAIN)
    for m in template:
        if m.id:
            cat.add(m.id, m.id, context=m.context)
    cat.get("Please wait {duration} before asking again.").string = "Proszę czekać."
    cat.get("Dream up images with SDXL (base + refiner)").string = "x" * 101
    cat.get("dream", context=i18n.NAME).string = "Śnij Teraz"
    monkeypatch.setattr(i18n, "LOCALE_DIR", tmp_path)
    path = catalogs.catalog_path("pl")
    path.parent.mkdir(parents=True)
    with path.open("wb") as fh:
        write_po(fh, cat)
    found = "\n".join(catalogs.problems("pl", template))
    assert "placeholders [] != ['duration']" in found
    assert "over 100 characters" in found
    assert "not a valid command name: 'Śnij Teraz'" in found


def _modules():
    for folder in catalogs.SOURCES:
        yield from (ROOT / folder).rglob("*.py")


def test_translated_texts_are_literals_and_no_module_hides_the_translation_function():
    """`_(f"...")` or `_(x + y)` can't be in a catalog; `_` reassigned (`for _, x in ...`) would turn a later
    `_("...")` in that function into a call of whatever it holds."""
    bad = []
    for path in _modules():
        tree = ast.parse(path.read_text(), str(path))
        imports_ = any(isinstance(n, ast.ImportFrom) and n.module == "dreamcore.i18n" or
                       isinstance(n, ast.ImportFrom) and n.module == "i18n" and n.level >= 1  # subpackages too
                       for n in ast.walk(tree)) and any(
            a.name == "_" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) for a in n.names)
        for node in ast.walk(tree):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in ("_", "N_", "ngettext"):
                literal = [a for a in node.args[:2 if node.func.id == "ngettext" else 1]]
                if not all(isinstance(a, ast.Constant) and isinstance(a.value, str) for a in literal) and \
                        node.func.id != "_":
                    bad.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.func.id}() of a non-literal")
                if node.func.id == "_" and node.args and isinstance(node.args[0], ast.JoinedStr):
                    bad.append(f"{path.relative_to(ROOT)}:{node.lineno} _() of an f-string")
            if imports_ and isinstance(node, ast.Name) and node.id == "_" and isinstance(node.ctx, ast.Store):
                bad.append(f"{path.relative_to(ROOT)}:{node.lineno} assigns to _")
    assert not bad, "\n".join(bad)


def test_a_language_without_a_catalog_reads_english_and_never_fails():
    assert i18n.resolve("pl") == i18n.SOURCE and i18n.resolve("en-GB") == i18n.SOURCE
    assert i18n.resolve("es-419") == "es-ES" and i18n.resolve("zh-TW") == "zh-TW" and i18n.resolve(None) == "en-US"
    with i18n.speaking("pl"):
        assert i18n._("Queued:") == "Queued:"
        assert i18n.duration(250) == "4 min 10 s"
    with i18n.speaking("xx-YY"):
        assert i18n._("Queued:") == "Queued:"


def test_durations_and_numbers_are_written_per_language():
    with i18n.speaking("en-US"):
        assert [i18n.duration(s) for s in (23, 250, 18720)] == ["23 s", "4 min 10 s", "5 h 12 min"]
        assert i18n.number(1234.5) == "1,234.5"
    with i18n.speaking("zh-CN"):
        assert i18n.duration(250) == "4分钟10秒"
    with i18n.speaking("de"):
        assert i18n.number(1234.5) == "1.234,5"
        assert "Min" in i18n.duration(250)
    with i18n.speaking("ja"):
        assert "分" in i18n.duration(250)


@pytest.mark.parametrize("locale", [i18n.SOURCE, *i18n.LANGUAGES])
def test_dreamhelp_is_one_message_in_every_language_with_its_longest_parts(locale):
    from bot.help import help_parts
    from dreamcore.limits.model import GuildLimits
    from dreamcore.preferences import Preferences
    from dreamcore.settings import Settings

    usage = {"user_images_hour": 3, "user_images_day": 10, "cooldown_remaining_s": 4000, "user_active": 2}
    from dreamcore.ranges import LIMITS

    longest = GuildLimits(images_in="age_restricted", paused=True, **{
        k: LIMITS[k].hi for k in ("user_images_hour", "user_images_day", "guild_images_hour", "guild_images_day",
                                  "cooldown_s", "user_max_active")})
    prefs = Preferences(style="photographic", aspect="13:19", count=4, steps=100, mode="turbo", faces="on",
                        private=True, language="pt-BR")
    with i18n.speaking(locale):
        parts = help_parts(Settings(), longest, usage, prefs)
    with i18n.speaking(i18n.SOURCE):
        english = help_parts(Settings(), longest, usage, prefs)
    assert [len(p) <= 2000 for p in parts] == [True, True], [len(p) for p in parts]
    if locale != i18n.SOURCE:
        assert all(p != e for p, e in zip(parts, english, strict=True))


def test_the_translator_registers_valid_names_and_short_descriptions_in_every_language():
    import asyncio

    import discord

    from bot.client import command_tree
    from bot.translator import CatalogTranslator

    tree = command_tree()

    async def payloads():
        await tree.set_translator(CatalogTranslator())
        return [await c.get_translated_payload(tree, tree.translator) for c in tree.get_commands()]

    out = asyncio.run(payloads())
    dream = next(c for c in out if c["name"] == "dream")
    assert set(dream["description_localizations"]) >= {loc for loc in i18n.LANGUAGES}
    assert "es-419" in dream["description_localizations"]  # read from es-ES
    assert "en-GB" not in dream["description_localizations"]
    prompt = next(o for o in dream["options"] if o["name"] == "prompt")
    assert prompt["description_localizations"]["zh-CN"] != prompt["description"]
    known = {loc.value for loc in discord.Locale}

    def walk(spec):
        for loc, name in (spec.get("name_localizations") or {}).items():
            assert loc in known
            if "choices" in spec or "options" in spec or "type" in spec:
                assert len(name) <= 100
        for loc, desc in (spec.get("description_localizations") or {}).items():
            assert loc in known and 1 <= len(desc) <= 100, (loc, desc)
        for sub in spec.get("options") or []:
            walk(sub)
        for choice in spec.get("choices") or []:
            for name in (choice.get("name_localizations") or {}).values():
                assert 1 <= len(name) <= 100

    for spec in out:
        walk(spec)
