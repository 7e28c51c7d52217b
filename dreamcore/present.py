"""How a result reads to a member: one place, so the bot and the local demo say the same thing."""

from __future__ import annotations

from .job import ASPECT_LABELS, DreamRequest
from .results import DreamResult
from .styles import load_styles


def settings_line(req: DreamRequest) -> str:
    style = load_styles()[req.style].label
    w, h = req.size
    refiner = "base only" if req.split >= 1.0 else f"refiner from {req.split:.0%}"
    return f"{w}x{h} · {style} · {req.steps} steps ({refiner}) · guidance {req.guidance:g}"


def result_text(result: DreamResult, limit: int = 2000) -> str:
    if result.status == "failed" or result.request is None:
        return f"Couldn't dream this one: {result.error or 'unknown error'}"[:limit]
    req = result.request
    seeds = ", ".join(str(i.seed) for i in result.images)
    t = result.timings
    lines = [
        f"**{_clip(req.prompt, 900)}**",
        f"seed {seeds} · {settings_line(req)}",
    ]
    if req.negative_prompt:
        lines.insert(1, f"not: {_clip(req.negative_prompt, 300)}")
    if t:
        stages = " · ".join(f"{k.removesuffix('_s')} {v:.2f}s" for k, v in t.items() if k != "total_s")
        lines.append(f"-# {t.get('total_s', 0):.1f}s ({stages})")
    if result.prompt_note:
        lines.append(f"-# {result.prompt_note}")
    return "\n".join(lines)[:limit]


def aspect_choices() -> dict[str, str]:
    return dict(ASPECT_LABELS)


def _clip(text: str, n: int) -> str:
    return text if len(text) <= n else text[: n - 1] + "…"
