"""How a result reads to a member: one place, so the bot and the local demo say the same thing.

Whatever a member typed goes into a post as literal text (`shown`): Discord's markdown escaped, so a prompt
can't make a masked link under the bot's name, a heading, a spoiler, a mention or a clickable URL (and every
post also goes out with no mentions allowed: bot.toolkit.NO_MENTIONS)."""

from __future__ import annotations

import re
from decimal import Decimal

from babel.numbers import format_decimal

from .cost import img2img_steps
from .i18n import N_, _, babel_locale, ngettext
from .job import ASPECT_LABELS, DreamRequest
from .modes import MODE_LABELS
from .results import DreamResult
from .styles import load_styles


def _fixed(value: float, digits: int) -> str:
    """`value` with exactly `digits` decimals (2.87), with the decimal sign of the language of the moment
    (2,87): rounded as Python rounds it, never grouped, so English reads as `f"{value:.2f}"` always did."""
    return format_decimal(Decimal(f"{value:.{digits}f}"), format="0." + "0" * digits if digits else "0", locale=babel_locale())


def _short(value: float) -> str:
    """A setting as `f"{value:g}"` writes it (7.5, 0.35, 2), with the decimal sign of the language of the
    moment (7,5)."""
    text = f"{value:g}"
    if not re.fullmatch(r"-?\d+(\.\d+)?", text):  # an exponent, inf or nan: as Python writes it
        return text
    return format_decimal(Decimal(text), format="0.##########", locale=babel_locale())


def settings_line(req: DreamRequest, size: tuple[int, int] | None = None) -> str:
    """'1024x1024 · Cinematic · 40 steps (refiner from 80%) · guidance 7': facts, each translated alone,
    joined by " · " (a list: no sentence runs across them)."""
    style = _("no style") if req.style == "none" else load_styles()[req.style].label
    w, h = size or req.size
    parts = [f"{w}x{h}", style]
    if req.mode == "turbo":
        parts = [_("⚡ Turbo"), *parts,
                 # English says "steps" for any number; the plural forms are the other languages'.
                 ngettext("{steps} fixed steps (base + Lightning, no guidance)",
                          "{steps} fixed steps (base + Lightning, no guidance)", req.steps).format(steps=req.steps)]
    else:
        refiner = (_("base only") if req.split >= 1.0 else
                   _("refiner from {percent}").format(percent=f"{req.split:.0%}"))
        if req.mode == "relax":
            parts.insert(0, _("🌙 Relax"))
        parts += [ngettext("{steps} steps ({refiner})", "{steps} steps ({refiner})", req.steps).format(
                      steps=req.steps, refiner=refiner),
                  _("guidance {guidance}").format(guidance=_short(req.guidance))]
    if req.faces != "auto":
        parts.append(_("faces {faces}").format(faces=req.faces))
    return " · ".join(parts)


def mode_note(req: DreamRequest) -> str | None:
    """What a member should know about the mode their dream runs in, said once when it is queued."""
    if req.mode == "turbo" and req.negative_prompt:
        return _("Turbo runs without guidance, so it can't use your negative prompt; use mode:quality for that.")
    if req.mode == "relax":
        return _("Relax runs when the GPUs have nothing faster to do, and counts against no quota.")
    return None


# The stage times a worker reports, by name: nothing else a result carries is shown as a stage.
STAGES = ("encode_s", "base_s", "refiner_s", "decode_s", "faces_s", "safety_s", "png_s")
# Each stage's name as a member reads it (the base and the refiner are the two models).
STAGE_NAMES = {
    "encode_s": N_("encode"), "base_s": N_("base"), "refiner_s": N_("refiner"), "decode_s": N_("decode"),
    "faces_s": N_("faces"), "safety_s": N_("safety"), "png_s": N_("png"),
}
# Everything a result's timings may hold: the stages, and the counts of the call it shared and of its face pass.
# Compatibility: the counts are kept here rather than as fields of their own, so a bot of a release before
# them still reads the result; goes when no bot of such a release runs.
TIMINGS = (*STAGES, "total_s", "batch_images", "batch_jobs", "parts", "faces_found", "faces_redrawn")


def faces_text(timings: dict[str, float]) -> str | None:
    """'2 faces found, 1 redrawn' after a face pass; None where none ran."""
    if "faces_found" not in timings:
        return None
    found, redrawn = int(timings["faces_found"]), int(timings.get("faces_redrawn", 0))
    return ngettext("{found} face found, {redrawn} redrawn", "{found} faces found, {redrawn} redrawn",
                    found).format(found=found, redrawn=redrawn)


def stages_text(timings: dict[str, float]) -> str:
    """'encode 0.01s · base 2.87s · ...', and the batch it was made in when it shared one (a batch's stage
    times are the whole batch's)."""
    # A refiner that ran no step (base only, or turbo) is no stage of this image.
    text = " · ".join(_("{stage} {seconds}s").format(stage=_(STAGE_NAMES[k]), seconds=_fixed(timings[k], 2))
                      for k in STAGES if k in timings and not (k == "refiner_s" and not timings[k]))
    jobs, images = int(timings.get("batch_jobs", 1)), int(timings.get("batch_images", 0))
    if jobs > 1:
        # Two counts: the plural forms go by the dreams' (more than one here: English's are always plural).
        text += " · " + ngettext("in a batch of {images} images from {jobs} dreams",
                                 "in a batch of {images} images from {jobs} dreams", jobs).format(
            images=images, jobs=jobs)
    return text


def result_text(result: DreamResult, limit: int = 2000) -> str:
    if result.status == "failed" or result.request is None:
        # A worker's words: a mention in them is shown (and pings nobody), but no link can be made of them.
        # A worker's reason is literal text; the ones it says in fixed words (marked N_ there) are in the catalogs.
        why = _no_links(_(result.error) if result.error else _("unknown error"))
        return _("Couldn't dream this one: {reason}").format(reason=why)[:limit]
    req = result.request
    seeds = ", ".join(str(i.seed) for i in result.images)
    t = result.timings
    size = (result.images[0].width, result.images[0].height) if result.images else None
    lines = [
        f"**{shown(req.prompt, 900)}**",
        _("seed {seeds}").format(seeds=seeds) + " · " + settings_line(req, size),
    ]
    if req.negative_prompt:
        lines.insert(1, _("not: {negative}").format(negative=shown(req.negative_prompt, 300)))
    made = made_from(result.kind, result.source)
    if made:
        lines.insert(0, made)
    if t:
        lines.append(_("-# {seconds}s ({stages})").format(seconds=_fixed(t.get("total_s", 0), 1),
                                                           stages=stages_text(t)))
    if t.get("faces_redrawn"):
        found, redrawn = int(t.get("faces_found", 0)), int(t["faces_redrawn"])
        lines.append(ngettext("-# 🙂 {found} face found, {redrawn} redrawn close up",
                              "-# 🙂 {found} faces found, {redrawn} redrawn close up", found).format(
            found=found, redrawn=redrawn))
    if result.prompt_note:
        lines.append(f"-# {shown(result.prompt_note, 300)}")
    return "\n".join(lines)[:limit]


PAN_ARROWS = {"left": "⬅️", "right": "➡️", "up": "⬆️", "down": "⬇️"}
# An edit's line, by what it did; `{arrow}` is the pan's own (PAN_ARROWS).
EDITS = {
    "zoom": N_("🔭 Zoomed out {zoom}x from image {index} of `{job_id}`"),
    "square": N_("🔲 Made square from image {index} of `{job_id}`"),
    "region": N_("🖌️ A region of image {index} of `{job_id}` redrawn"),
}
PANNED = {
    "left": N_("{arrow} Panned left from image {index} of `{job_id}`"),
    "right": N_("{arrow} Panned right from image {index} of `{job_id}`"),
    "up": N_("{arrow} Panned up from image {index} of `{job_id}`"),
    "down": N_("{arrow} Panned down from image {index} of `{job_id}`"),
}


def made_from(kind: str, source) -> str | None:
    """The line that says what a variation, an upscale or a picture job started from; None for a plain dream."""
    if source is None:
        return None
    index, job_id, strength = source.index + 1, source.job_id, _short(source.strength)
    if kind == "variation":
        return _("🔀 Variations of image {index} of `{job_id}` (strength {strength})").format(
            index=index, job_id=job_id, strength=strength)
    if kind == "upscale":
        return _("⬆️ Image {index} of `{job_id}` upscaled 2x (strength {strength})").format(
            index=index, job_id=job_id, strength=strength)
    if kind == "edit" and source.edit is not None:
        e = source.edit
        if e.op == "zoom":
            return _(EDITS["zoom"]).format(zoom=_short(e.zoom), index=index, job_id=job_id)
        if e.op == "pan":
            return _(PANNED[e.direction]).format(arrow=PAN_ARROWS[e.direction], index=index, job_id=job_id)
        return _(EDITS["square" if e.op == "square" else "region"]).format(index=index, job_id=job_id)
    if kind == "picture":
        return _("🖼️ From the picture sent with `{job_id}` (change {strength})").format(
            job_id=job_id, strength=strength)
    if kind == "faces":
        return _("🙂 Faces of image {index} of `{job_id}` redrawn close up (strength {strength})").format(
            index=index, job_id=job_id, strength=strength)
    return None


# A job's kind (dreamcore.job.Kind) as a member reads it.
KINDS = {
    "dream": N_("dream"), "variation": N_("variation"), "upscale": N_("upscale"), "picture": N_("picture"),
    "edit": N_("edit"), "faces": N_("faces"),
}


def kind_text(kind: str) -> str:
    return _(KINDS[kind]) if kind in KINDS else kind


def info_text(p, images_kept_s: int | None = None, limit: int = 2000, chain: list | None = None) -> str:
    """Everything about one result (a dreamcore.params.JobParams), for the ephemeral Info answer. `chain`: the
    records of what it was made from, nearest first (its source's, that one's source's, ...)."""
    req = p.request
    style = load_styles().get(req.style)
    size = f"{p.images[0].width}x{p.images[0].height}" if p.images else "{}x{}".format(*req.size)
    if p.channel_id:
        head = _("**Job `{job_id}`** ({kind}) by <@{user_id}> in <#{channel_id}>")
    else:
        head = _("**Job `{job_id}`** ({kind}) by <@{user_id}>")
    lines = [head.format(job_id=p.job_id, kind=kind_text(p.kind), user_id=p.user_id, channel_id=p.channel_id)]
    made = made_from(p.kind, p.source)
    if made:
        lines.append(made)
    for earlier in chain or []:
        what = made_from(earlier.kind, earlier.source) or _("{kind}: {prompt}").format(
            kind=kind_text(earlier.kind), prompt=shown(earlier.request.prompt, 80))
        lines.append(_("-# ↳ `{job_id}`: {what}").format(job_id=earlier.job_id, what=what))
    lines.append(_("prompt: **{prompt}**").format(prompt=shown(req.prompt, 700)))
    if req.negative_prompt:
        lines.append(_("negative: {negative}").format(negative=shown(req.negative_prompt, 300)))
    n = len(p.images) or req.count
    lines.append(ngettext("style: {style} (`{key}`) · aspect {aspect} · {size} · {n} image",
                          "style: {style} (`{key}`) · aspect {aspect} · {size} · {n} images", n).format(
        style=style.label if style else req.style, key=req.style, aspect=req.aspect, size=size, n=n))
    seeds = ", ".join(str(i.seed) for i in p.images) or ", ".join(map(str, req.seeds))
    lines.append(_("seeds: {seeds}").format(seeds=seeds))
    lines.append(_("mode: {mode}").format(mode=_(MODE_LABELS[req.mode])))
    if req.mode == "turbo":
        lines.append(_("steps: {steps} fixed ({base} run on the base with SDXL-Lightning's LoRA, Euler on trailing "
                       "timesteps, no refiner) · no guidance, so no negative prompt").format(
            steps=req.steps, base=p.base_steps))
    elif p.kind == "dream":
        split = _("base only") if req.split >= 1.0 else _("split {split}").format(split=_short(req.split))
        lines.append(_("steps: {steps} ({base} base + {refiner} refiner, {split}) · guidance {guidance}").format(
            steps=req.steps, base=p.base_steps, refiner=p.refiner_steps, split=split,
            guidance=_short(req.guidance)))
    elif p.kind == "faces" and p.source is not None:
        ran = img2img_steps(req.steps, p.source.strength)[1]
        lines.append(_("steps: {steps} at strength {strength} ({ran} a face, on the refiner) · "
                       "guidance {guidance}").format(steps=req.steps, strength=_short(p.source.strength), ran=ran,
                                                     guidance=_short(req.guidance)))
    else:
        ran = p.base_steps + p.refiner_steps
        if p.kind == "variation":
            text = _("steps: {steps} at strength {strength} ({ran} run on the base) · guidance {guidance}")
        elif p.kind == "upscale":
            text = _("steps: {steps} at strength {strength} ({ran} run on the refiner, per tile) · "
                     "guidance {guidance}")
        elif p.kind == "edit":
            text = _("steps: {steps} at strength {strength} ({ran} run on the base {base} + refiner {refiner}, "
                     "painting from noise where the edit adds or redraws; the rest is the source's own pixels) · "
                     "guidance {guidance}")
        else:
            text = _("steps: {steps} at strength {strength} ({ran} run on the base {base} + refiner {refiner}) · "
                     "guidance {guidance}")
        strength = _short(p.source.strength) if p.source is not None else "?"
        lines.append(text.format(steps=req.steps, strength=strength, ran=ran, base=p.base_steps,
                                 refiner=p.refiner_steps, guidance=_short(req.guidance)))
    t = p.timings
    faces = faces_text(t)
    if faces:
        lines.append(_("faces: {faces} ({how})").format(
            faces=faces, how=_("Fix faces") if p.kind == "faces" else req.faces))
    elif req.faces == "off":
        lines.append(_("faces: no face pass (off)"))
    elif p.kind == "upscale":
        lines.append(_("faces: no face pass on an upscale"))
    if t:
        lines.append(_("timings: total {seconds}s ({stages})").format(seconds=_fixed(t.get("total_s", 0), 2),
                                                                      stages=stages_text(t)))
    if p.prompt_note:
        lines.append(_("note: {note}").format(note=shown(p.prompt_note, 300)))
    if p.finished_at:
        lines.append(_("made by {worker} <t:{time}:R>").format(worker=shown(p.worker or "?", 80),
                                                               time=int(p.finished_at)))
    if images_kept_s:
        days = images_kept_s // 86400
        kept = (ngettext("{n} day", "{n} days", days).format(n=days) if days else
                _("{n} min").format(n=images_kept_s // 60))
        lines.append(_("-# Variations and Upscale work while the images are kept ({kept}).").format(kept=kept))
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
