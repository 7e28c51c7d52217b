"""The commands in every member's language: discord.py's Translator over the same catalogs as the messages
(dreamcore.i18n), and the list of every text a command registers, for the catalogs.

Discord shows a command's, option's and choice's localized name and description to a member whose client is
in that language (`name_localizations`, `description_localizations`); discord.py asks a Translator for each
one at sync. Names are translated in their own gettext context (i18n.NAME) and must stay valid command names
(tests/unit/test_catalogs.py checks every catalog against Discord's rules). A text whose English depends on a value
(a range declared in dreamcore.ranges) is registered as `text(template, **values)`: the catalog holds the
template, and the values are put into its translation.
"""

from __future__ import annotations

from collections.abc import Iterator

import discord
from discord import app_commands
from discord.app_commands import TranslationContextLocation as Where
from discord.app_commands import locale_str

from dreamcore import i18n

NAMES = (Where.command_name, Where.group_name, Where.parameter_name)


def text(template: str, **values: object) -> locale_str:
    """A description or choice name with values in it: English now, each language's template filled in at sync."""
    return locale_str(template.format(**values), template=template, values=values)


class CatalogTranslator(app_commands.Translator):
    async def translate(self, string: locale_str, locale: discord.Locale,
                        context: app_commands.TranslationContextTypes) -> str | None:
        """`string` in `locale`, or None where that language reads the English (no catalog, no entry)."""
        language = i18n.resolve(locale.value)
        if language == i18n.SOURCE or string.extras.get("literal"):
            return None
        if context.location in NAMES:
            out = i18n.name(string.message, language)
        else:
            template = string.extras.get("template", string.message)
            with i18n.speaking(language):
                out = i18n._(template)
            values = string.extras.get("values")
            if values:
                out = out.format(**values)
        return out if out != string.message else None


def command_texts(tree: app_commands.CommandTree) -> Iterator[tuple[str, str | None]]:
    """(text, gettext context) for every name, description and choice name `tree`'s commands register."""
    def desc(s: str | locale_str) -> str:
        return s.extras.get("template", s.message) if isinstance(s, locale_str) else str(s)

    def walk(cmd) -> Iterator[tuple[str, str | None]]:
        yield cmd.name, i18n.NAME
        yield desc(getattr(cmd, "_locale_description", None) or cmd.description), None  # no public accessor
        if isinstance(cmd, app_commands.Group):
            for sub in cmd.commands:
                yield from walk(sub)
            return
        for param in cmd.parameters:
            yield param.name, i18n.NAME
            yield desc(param.locale_description or param.description), None
            for choice in param.choices:
                name = choice._locale_name or locale_str(choice.name)  # Choice has no public accessor
                if not name.extras.get("literal"):  # a name that reads the same in every language
                    yield desc(name), None

    for cmd in tree.get_commands():
        yield from walk(cmd)
