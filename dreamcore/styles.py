"""Style presets: prompt templates kept in one data file (styles.json beside this module)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources


@dataclass(frozen=True)
class Style:
    key: str
    label: str
    prompt: str
    negative_prompt: str

    def apply(self, prompt: str, negative: str) -> tuple[str, str]:
        """The member's prompt inside the template; both negatives kept, theirs first."""
        styled = self.prompt.replace("{prompt}", prompt)
        neg = ", ".join(p for p in (negative.strip(), self.negative_prompt) if p)
        return styled, neg


@lru_cache(maxsize=1)
def load_styles() -> dict[str, Style]:
    raw = json.loads(resources.files("dreamcore").joinpath("styles.json").read_text("utf-8"))
    styles = {}
    for key, spec in raw.items():
        if key.startswith("_"):
            continue
        if "{prompt}" not in spec["prompt"]:
            raise ValueError(f"style {key!r}: its prompt template lacks {{prompt}}")
        styles[key] = Style(key, spec["label"], spec["prompt"], spec.get("negative_prompt", ""))
    if "none" not in styles:
        raise ValueError("styles.json must define the style 'none'")
    return styles


def style_names() -> list[str]:
    return list(load_styles())
