"""Blocked words: what a prompt is compared in (fold) and the whole-word match against a guild's list."""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable
from functools import lru_cache

from ..job import clean_text


def fold(text: str) -> str:
    """What blocked-word matching compares: clean_text, then compatibility forms (fullwidth, ligatures)
    folded and case folded, so "ＢＡＤ", "Bad" and "b\u200bad" are all "bad"."""
    text = unicodedata.normalize("NFKC", clean_text(text)).casefold()
    return unicodedata.normalize("NFKC", text)


@lru_cache(maxsize=512)
def _word_pattern(words: tuple[str, ...]) -> re.Pattern[str] | None:
    folded = sorted({fold(w) for w in words} - {""}, key=len, reverse=True)
    if not folded:
        return None
    alts = [r"\s+".join(re.escape(part) for part in w.split()) for w in folded]
    # \w is unicode-aware on str patterns: "bad" does not match inside "badge" or "sinbad" or "bad_x".
    return re.compile(r"(?<!\w)(?:" + "|".join(alts) + r")(?!\w)")


def find_blocked_word(blocked: Iterable[str], *texts: str) -> tuple[int, str] | None:
    """(index of the text, the blocked word as folded) for the first whole-word hit, else None."""
    pattern = _word_pattern(tuple(blocked))
    if pattern is None:
        return None
    for i, text in enumerate(texts):
        m = pattern.search(fold(text or ""))
        if m:
            return i, m.group(0)
    return None


def mask(word: str) -> str:
    return word[0] + "*" * (len(word) - 1) if len(word) > 1 else "*"
