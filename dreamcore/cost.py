"""What a job costs, in the one unit that quotas, the fair queue's counters, backpressure and ETAs all use.

One unit is one standard image: 1024x1024, 40 steps of base + refiner with classifier-free guidance, what a
default /dream makes. Anything else costs the UNet work it runs relative to that: pixels x steps run, plus
a fixed share per image that every image costs whatever its step count (the VAE decode, the output
classifier, the PNG), counted as FIXED_STEPS steps. So the image-count limits an admin sets keep their
meaning for a standard dream, a 20-step dream counts about half, and an upscale counts its tiles: 2048 ->
4096 is 25 tiles of the refiner, about 8 units, not one image.

A face pass (worker/faces.py) costs a native-size img2img per face it redraws; the bot charges what it can
know before the pass has looked (CHARGED_FACES), the worker's measure counts the faces it redrew.

Guidance at or below 1 runs no unconditional pass (diffusers skips classifier-free guidance there), so it
halves the UNet share. The estimate is made by the bot before a job is queued, from what the job will run;
the worker measures its seconds per unit afterwards (dreamcore.stats) for the ETAs.
"""

from __future__ import annotations

import math
from decimal import Decimal

from babel.numbers import format_decimal

from .i18n import babel_locale, ngettext
from .modes import TURBO

STANDARD_PIXELS = 1024 * 1024
STANDARD_STEPS = 40
FIXED_STEPS = 2  # per image: VAE decode, the classifier and the encoder cost about two UNet steps
FACE_SIDE = 1024  # the face pass redraws each face at the models' native size (worker/faces.py)
# What a face pass is charged before it runs, per image, when it is asked for ("on", or a Fix faces job): it
# only learns how many faces there are when it looks. "auto" is charged nothing up front (most images have no
# small face); what a pass really ran counts in the pool's measured speed (worker/publish.units_made).
CHARGED_FACES = 1


def img2img_steps(steps: int, strength: float) -> tuple[int, int]:
    """(num_inference_steps to ask for, steps that will run): diffusers' img2img runs
    int(num_inference_steps * strength) of them and refuses zero, so ask for enough that at least one runs."""
    n = max(1, steps)
    while int(n * strength) < 1:
        n += 1
    return n, min(int(n * strength), n)


def tile_spans(length: int, tile: int, overlap: int) -> list[tuple[int, int]]:
    """Equal spans (start, end) covering [0, length): each at most `tile` long and a multiple of 8 (the
    VAE's factor), neighbours sharing at least `overlap` (less one for rounding). As few as the tile
    allows, and no longer than needed, so the overlap is not wasted work."""
    if length <= tile:
        return [(0, length)]
    n = math.ceil((length - overlap) / (tile - overlap))
    size = min(tile, math.ceil((length + (n - 1) * overlap) / n / 8) * 8)
    starts = [round(i * (length - size) / (n - 1)) for i in range(n)]
    return [(s, s + size) for s in starts]


def image_units(width: int, height: int, steps_run: int, guidance: float = 7.0) -> float:
    """One image of `width` x `height` after `steps_run` UNet steps, in standard images."""
    cfg = 1.0 if guidance > 1.0 else 0.5
    return (width * height / STANDARD_PIXELS) * (steps_run * cfg + FIXED_STEPS) / (STANDARD_STEPS + FIXED_STEPS)


def dream_units(width: int, height: int, steps: int, count: int, guidance: float) -> float:
    """A text-to-image dream: every step runs once per image (base and refiner share the steps)."""
    return count * image_units(width, height, steps, guidance)


def variation_units(width: int, height: int, steps: int, strength: float, count: int, guidance: float) -> float:
    """Variations (and dreams from a member's picture): img2img runs `strength` of the steps."""
    return count * image_units(width, height, img2img_steps(steps, strength)[1], guidance)


def upscale_units(width: int, height: int, steps: int, strength: float, guidance: float, tile: int,
                  overlap: int) -> float:
    """An upscale to `width` x `height`: the refiner in img2img over every tile (worker/img2img.upscale)."""
    run = img2img_steps(steps, strength)[1]
    xs, ys = tile_spans(width, tile, overlap), tile_spans(height, tile, overlap)
    return sum(image_units(x1 - x0, y1 - y0, run, guidance) for y0, y1 in ys for x0, x1 in xs)


def face_units(steps: int, strength: float, faces: int, guidance: float) -> float:
    """`faces` faces redrawn by the face pass: each a native-size img2img at `strength` (worker/faces.py)."""
    return faces * image_units(FACE_SIDE, FACE_SIDE, img2img_steps(steps, strength)[1], guidance)


def rounded(units: float) -> float:
    """Units as they are stored and shown: two decimals, never below 0.01 (no job is free)."""
    return max(0.01, round(units, 2))


def units_text(units: float) -> str:
    """12 / 12.5 / 0.25: what a member reads, with the decimal sign of the language of the moment (12,5). Rounded
    to two decimals as Python rounds it, and never grouped (1234.5), so English reads as it always did."""
    return format_decimal(Decimal(f"{units:.2f}"), format="0.##", locale=babel_locale())


def plural_n(units: float) -> int:
    """The count a text about `units` takes its plural form by (ngettext's n): a whole number is itself, a
    fraction reads as plural, as English reads it (0.5 standard images, 1.25 standard images)."""
    return int(units) if float(units).is_integer() else 2


def turbo_image() -> float:
    """One 1024x1024 turbo image, in units: what "N turbo" is counted in."""
    return rounded(image_units(1024, 1024, TURBO.steps, TURBO.guidance))


def left_text(units: float, turbo: bool = True) -> str:
    """`units` of quota left, in dreams a member pictures: "about 12 more standard dreams, or 126 turbo"."""
    standard, fast = int(units + 1e-9), int(units / turbo_image() + 1e-9)
    if turbo:
        return ngettext("about {standard} more standard dream, or {turbo} turbo",
                        "about {standard} more standard dreams, or {turbo} turbo", standard).format(
            standard=standard, turbo=fast)
    return ngettext("about {standard} more standard dream", "about {standard} more standard dreams",
                    standard).format(standard=standard)


def of_job(job, tile: int, overlap: int, size: tuple[int, int] | None = None, faces: int | None = None) -> float:
    """A job's cost (a dreamcore.job.DreamJob): before it runs, as the bot charges it, or, given the `faces` its
    face pass redrew, what it ran. `size`: the output size where it is not the request's (an upscale's,
    twice its source's; the bot knows it from the source's record)."""
    req = job.request
    face_pass = job.face_pass
    if faces is None:  # charged before the pass has looked
        on = face_pass is not None and face_pass.mode == "on"
        faces = CHARGED_FACES * (1 if job.kind == "faces" else req.count) if on else 0
    redraws = face_units(req.steps, face_pass.strength, faces, req.guidance) if face_pass and faces else 0.0
    if job.kind == "faces":  # the source image as it is, its faces redrawn
        return rounded(redraws)
    return rounded(_made_units(job, tile, overlap, size) + redraws)


def made(job, tile: int, overlap: int, size: tuple[int, int], timings: dict) -> float:
    """What a finished job cost: at the size it came out, with the faces its pass redrew (its result's
    timings). The worker measures the pool's speed by it; the bot settles the member's quota to it."""
    return of_job(job, tile, overlap, size, faces=int(timings.get("faces_redrawn", 0)))


def _made_units(job, tile: int, overlap: int, size: tuple[int, int] | None) -> float:
    req = job.request
    if job.kind == "upscale":
        w, h = size or (req.size[0] * 2, req.size[1] * 2)
        return upscale_units(w, h, req.steps, job.source.strength, req.guidance, tile, overlap)
    w, h = size or req.size
    if job.kind in ("variation", "picture"):  # a picture job's base and refiner share its img2img steps
        return variation_units(w, h, req.steps, job.source.strength, req.count, req.guidance)
    return dream_units(w, h, req.steps, req.count, req.guidance)
