"""How a result reads to a member: one place, so the bot and the local demo say the same thing.

Whatever a member typed goes into a post as literal text (`shown`): Discord's markdown escaped, so a prompt
can't make a masked link under the bot's name, a heading, a spoiler, a mention or a clickable URL (and every
post also goes out with no mentions allowed: bot.toolkit.NO_MENTIONS)."""

from __future__ import annotations

import re

from .cost import img2img_steps
from .job import ASPECT_LABELS, DreamRequest
from .modes import MODE_LABELS
from .results import DreamResult
from .styles import load_styles


def settings_line(req: DreamRequest, size: tuple[int, int] | None = None) -> str:
    style = "no style" if req.style == "none" else load_styles()[req.style].label
    w, h = size or req.size
    faces = "" if req.faces == "auto" else f" · faces {req.faces}"
    if req.mode == "turbo":
        return f"⚡ Turbo · {w}x{h} · {style} · {req.steps} fixed steps (base + Lightning, no guidance){faces}"
    refiner = "base only" if req.split >= 1.0 else f"refiner from {req.split:.0%}"
    mode = "🌙 Relax · " if req.mode == "relax" else ""
    return f"{mode}{w}x{h} · {style} · {req.steps} steps ({refiner}) · guidance {req.guidance:g}{faces}"


def mode_note(req: DreamRequest) -> str | None:
    """What a member should know about the mode their dream runs in, said once when it is queued."""
    if req.mode == "turbo" and req.negative_prompt:
        return "Turbo runs without guidance, so it can't use your negative prompt; use mode:quality for that."
    if req.mode == "relax":
        return "Relax runs when the GPUs have nothing faster to do, and counts against no quota."
    return None


# The stage times a worker reports, by name: nothing else a result carries is shown as a stage.
STAGES = ("encode_s", "base_s", "refiner_s", "decode_s", "faces_s", "safety_s", "png_s")
# Everything a result's timings may hold: the stages, and the counts of the call it shared and of its face pass
# (kept here rather than as fields of their own, so a bot of an earlier release still reads the result).
TIMINGS = (*STAGES, "total_s", "batch_images", "batch_jobs", "parts", "faces_found", "faces_redrawn")


def faces_text(timings: dict[str, float]) -> str | None:
    """'2 faces found, 1 redrawn' after a face pass; None where none ran."""
    if "faces_found" not in timings:
        return None
    found, redrawn = int(timings["faces_found"]), int(timings.get("faces_redrawn", 0))
    return f"{found} face{'s' * (found != 1)} found, {redrawn} redrawn"


def stages_text(timings: dict[str, float]) -> str:
    """'encode 0.01s · base 2.87s · ...', and the batch it was made in when it shared one (a batch's stage
    times are the whole batch's)."""
    # A refiner that ran no step (base only, or turbo) is no stage of this image.
    text = " · ".join(f"{k.removesuffix('_s')} {timings[k]:.2f}s" for k in STAGES
                      if k in timings and not (k == "refiner_s" and not timings[k]))
    jobs, images = int(timings.get("batch_jobs", 1)), int(timings.get("batch_images", 0))
    if jobs > 1:
        text += f" · in a batch of {images} images from {jobs} dreams"
    return text


def result_text(result: DreamResult, limit: int = 2000) -> str:
    if result.status == "failed" or result.request is None:
        # A worker's words: a mention in them is shown (and pings nobody), but no link can be made of them.
        return f"Couldn't dream this one: {_no_links(result.error or 'unknown error')}"[:limit]
    req = result.request
    seeds = ", ".join(str(i.seed) for i in result.images)
    t = result.timings
    size = (result.images[0].width, result.images[0].height) if result.images else None
    lines = [
        f"**{shown(req.prompt, 900)}**",
        f"seed {seeds} · {settings_line(req, size)}",
    ]
    if req.negative_prompt:
        lines.insert(1, f"not: {shown(req.negative_prompt, 300)}")
    made = made_from(result.kind, result.source)
    if made:
        lines.insert(0, made)
    if t:
        lines.append(f"-# {t.get('total_s', 0):.1f}s ({stages_text(t)})")
    if t.get("faces_redrawn"):
        lines.append(f"-# 🙂 {faces_text(t)} close up")
    if result.prompt_note:
        lines.append(f"-# {shown(result.prompt_note, 300)}")
    return "\n".join(lines)[:limit]


PAN_ARROWS = {"left": "⬅️", "right": "➡️", "up": "⬆️", "down": "⬇️"}


def made_from(kind: str, source) -> str | None:
    """The line that says what a variation, an upscale or a picture job started from; None for a plain dream."""
    if kind == "variation" and source is not None:
        return f"🔀 Variations of image {source.index + 1} of `{source.job_id}` (strength {source.strength:g})"
    if kind == "upscale" and source is not None:
        return f"⬆️ Image {source.index + 1} of `{source.job_id}` upscaled 2x (strength {source.strength:g})"
    if kind == "edit" and source is not None and source.edit is not None:
        e, which = source.edit, f"image {source.index + 1} of `{source.job_id}`"
        if e.op == "zoom":
            return f"🔭 Zoomed out {e.zoom:g}x from {which}"
        if e.op == "pan":
            return f"{PAN_ARROWS[e.direction]} Panned {e.direction} from {which}"
        if e.op == "square":
            return f"🔲 Made square from {which}"
        return f"🖌️ A region of {which} redrawn"
    if kind == "picture" and source is not None:
        return f"🖼️ From the picture sent with `{source.job_id}` (change {source.strength:g})"
    if kind == "faces" and source is not None:
        return f"🙂 Faces of image {source.index + 1} of `{source.job_id}` redrawn close up (strength {source.strength:g})"
    return None


def info_text(p, images_kept_s: int | None = None, limit: int = 2000, chain: list | None = None) -> str:
    """Everything about one result (a dreamcore.params.JobParams), for the ephemeral Info answer. `chain`: the
    records of what it was made from, nearest first (its source's, that one's source's, ...)."""
    req = p.request
    style = load_styles().get(req.style)
    size = f"{p.images[0].width}x{p.images[0].height}" if p.images else "{}x{}".format(*req.size)
    where = f" in <#{p.channel_id}>" if p.channel_id else ""
    lines = [f"**Job `{p.job_id}`** ({p.kind}) by <@{p.user_id}>{where}"]
    made = made_from(p.kind, p.source)
    if made:
        lines.append(made)
    for earlier in chain or []:
        lines.append(f"-# ↳ `{earlier.job_id}`: " + (made_from(earlier.kind, earlier.source)
                                                     or f"{earlier.kind}: {shown(earlier.request.prompt, 80)}"))
    lines.append(f"prompt: **{shown(req.prompt, 700)}**")
    if req.negative_prompt:
        lines.append(f"negative: {shown(req.negative_prompt, 300)}")
    lines.append(f"style: {style.label if style else req.style} (`{req.style}`) · aspect {req.aspect} · {size} · "
                 f"{len(p.images) or req.count} image{'s' * ((len(p.images) or req.count) > 1)}")
    seeds = ", ".join(str(i.seed) for i in p.images) or ", ".join(map(str, req.seeds))
    lines.append(f"seeds: {seeds}")
    lines.append(f"mode: {MODE_LABELS[req.mode]}")
    if req.mode == "turbo":
        lines.append(f"steps: {req.steps} fixed ({p.base_steps} run on the base with SDXL-Lightning's LoRA, Euler on "
                     "trailing timesteps, no refiner) · no guidance, so no negative prompt")
    elif p.kind == "dream":
        split = "base only" if req.split >= 1.0 else f"split {req.split:g}"
        lines.append(f"steps: {req.steps} ({p.base_steps} base + {p.refiner_steps} refiner, {split}) · "
                     f"guidance {req.guidance:g}")
    elif p.kind == "faces" and p.source is not None:
        ran = img2img_steps(req.steps, p.source.strength)[1]
        lines.append(f"steps: {req.steps} at strength {p.source.strength:g} ({ran} a face, on the refiner) · "
                     f"guidance {req.guidance:g}")
    else:
        ran = p.base_steps + p.refiner_steps
        on = {"variation": "base", "upscale": "refiner, per tile"}.get(
            p.kind, f"base {p.base_steps} + refiner {p.refiner_steps}")
        if p.kind == "edit":
            on += ", painting from noise where the edit adds or redraws; the rest is the source's own pixels"
        strength = f"{p.source.strength:g}" if p.source is not None else "?"
        lines.append(f"steps: {req.steps} at strength {strength} ({ran} run on the {on}) · "
                     f"guidance {req.guidance:g}")
    t = p.timings
    faces = faces_text(t)
    if faces:
        lines.append(f"faces: {faces} ({'Fix faces' if p.kind == 'faces' else req.faces})")
    elif req.faces == "off" or p.kind == "upscale":
        lines.append("faces: no face pass" + (" (off)" if req.faces == "off" else " on an upscale"))
    if t:
        lines.append(f"timings: total {t.get('total_s', 0):.2f}s ({stages_text(t)})")
    if p.prompt_note:
        lines.append(f"note: {shown(p.prompt_note, 300)}")
    if p.finished_at:
        lines.append(f"made by {shown(p.worker or '?', 80)} <t:{int(p.finished_at)}:R>")
    if images_kept_s:
        days = images_kept_s // 86400
        kept = f"{days} day{'s' * (days > 1)}" if days else f"{images_kept_s // 60} min"
        lines.append(f"-# Variations and Upscale work while the images are kept ({kept}).")
    return "\n".join(lines)[:limit]


def aspect_choices() -> dict[str, str]:
    return dict(ASPECT_LABELS)


# Every character Discord's markdown gives a meaning to, and "://" (a clickable link): escaped with a backslash.
_MARKDOWN = re.compile(r"([\\*_~|`>#\-\[\]()<@]|:(?=//))")


_LINKS = re.compile(r"([\\\[\]()])|:(?=//)")


def _no_links(text: str) -> str:
    """`text` with no masked link and no clickable URL left in it (for a failure reason a worker wrote)."""
    return _LINKS.sub(lambda m: "\\" + m.group(0), text)


def escape_markdown(text: str) -> str:
    return _MARKDOWN.sub(r"\\\1", text)


def shown(text: str, n: int) -> str:
    """`text` as literal text in a post, at most `n` characters (escapes included; never cut mid-escape)."""
    out = escape_markdown(text)
    if len(out) <= n:
        return out
    cut = out[: n - 1]
    if (len(cut) - len(cut.rstrip("\\"))) % 2:  # a lone backslash would escape the ellipsis
        cut = cut[:-1]
    return cut + "…"


def clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def code(text, limit: int = 64) -> str:
    """Inline code that a typed value (or a file's name) cannot break out of: no backtick, no line break or
    other control character, at most `limit` characters."""
    s = "".join(c if c.isprintable() else " " for c in str(text)).replace("`", "'")
    return f"`{clip(s, limit)}`" if s else "``"
