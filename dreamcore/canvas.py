"""Where an edit puts its source image and what it paints: the canvas of a Zoom Out, a Pan, Make Square or
Vary (Region), in whole pixels. No pixels here: the bot sizes a job with it (its cost, the size it shows)
and the worker builds the picture and the mask from it (worker/inpaint.py).

Every canvas is scaled to about one megapixel, with sides that are multiples of 64, so an edit costs what a
dream costs and runs on shapes the models know. A Zoom Out puts the source in the middle of a canvas
`zoom` times larger; a Pan adds half the source's width (or height) on one side; Make Square centres it on a
square; a Region keeps the canvas of the source and paints the cells asked for.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from .i18n import _, number

TARGET_PIXELS = 1024 * 1024
MULTIPLE = 64
PAN = 0.5  # a Pan adds this share of the source's side
MAX_RATIO = 4.0  # past this a canvas is too thin for the models to fill
GRID = 6  # a Region's cells: a 6x6 grid (a 3x3 cell is 2x2 of them; a half is 3 columns or rows)


class CanvasError(ValueError):
    """An edit that would make a canvas the models can't fill; `str()` is fit to show the member, in the
    language of the moment."""


@dataclass(frozen=True)
class Canvas:
    width: int
    height: int
    box: tuple[int, int, int, int]  # where the source lies on the canvas: x0, y0, x1, y1
    cells: int | None = None  # a Region: the cells painted (a GRID x GRID bitmask, row-major)

    @property
    def size(self) -> tuple[int, int]:
        return self.width, self.height

    def cell_boxes(self) -> list[tuple[int, int, int, int]]:
        """A Region's painted cells as canvas boxes."""
        if not self.cells:
            return []
        xs = [round(i * self.width / GRID) for i in range(GRID + 1)]
        ys = [round(i * self.height / GRID) for i in range(GRID + 1)]
        return [(xs[c], ys[r], xs[c + 1], ys[r + 1]) for r in range(GRID) for c in range(GRID)
                if self.cells >> (r * GRID + c) & 1]


def _round(v: float) -> int:
    return max(MULTIPLE, int(round(v / MULTIPLE)) * MULTIPLE)


def plan(edit, width: int, height: int) -> Canvas:
    """The canvas of `edit` (a dreamcore.job.Edit) over a source of `width` x `height`."""
    w, h = float(width), float(height)
    if edit.op == "zoom":
        cw, ch = w * edit.zoom, h * edit.zoom
    elif edit.op == "pan":
        horizontal = edit.direction in ("left", "right")
        cw, ch = (w * (1 + PAN), h) if horizontal else (w, h * (1 + PAN))
    elif edit.op == "square":
        if width == height:
            raise CanvasError(_("that image is square already"))
        cw = ch = max(w, h)
    else:  # region
        cw, ch = w, h
    if max(cw, ch) / min(cw, ch) > MAX_RATIO:
        raise CanvasError(_("that would make a canvas more than {ratio} times longer than it is wide; try Make "
                            "Square or a Pan the other way").format(ratio=number(MAX_RATIO)))
    W, H = native_size(cw, ch)
    if edit.op == "region":  # the whole picture, at the canvas's size
        return Canvas(W, H, (0, 0, W, H), edit.cells)
    # One scale for the source, so it keeps its shape: what rounding the canvas to 64 adds or takes is
    # painted, never a squeeze of the picture (which a chain of edits would compound).
    s = min(W / cw, H / ch)
    bw, bh = min(W, round(w * s)), min(H, round(h * s))
    x = {"left": W - bw, "right": 0}.get(edit.direction, (W - bw) // 2) if edit.op == "pan" else (W - bw) // 2
    y = {"up": H - bh, "down": 0}.get(edit.direction, (H - bh) // 2) if edit.op == "pan" else (H - bh) // 2
    return Canvas(W, H, (x, y, x + bw, y + bh))


def native_size(width: float, height: float) -> tuple[int, int]:
    """The size of that shape at about one megapixel, sides multiples of 64: where the models work best."""
    scale = math.sqrt(TARGET_PIXELS / (width * height))
    return _round(width * scale), _round(height * scale)


def region_cells(choices: list[str]) -> int:
    """The 6x6 bitmask of a Region picker's choices: "c<r><c>" for a cell of the 3x3 grid (r, c in 0..2), or
    "left", "right", "top", "bottom" for a half."""
    bits = 0
    for choice in choices:
        if choice in ("left", "right", "top", "bottom"):
            for r in range(GRID):
                for c in range(GRID):
                    inside = {"left": c < GRID // 2, "right": c >= GRID // 2,
                              "top": r < GRID // 2, "bottom": r >= GRID // 2}[choice]
                    bits |= inside << (r * GRID + c)
        elif len(choice) == 3 and choice[0] == "c" and choice[1] in "012" and choice[2] in "012":
            r3, c3 = int(choice[1]), int(choice[2])
            for r in (2 * r3, 2 * r3 + 1):
                for c in (2 * c3, 2 * c3 + 1):
                    bits |= 1 << (r * GRID + c)
        else:
            raise ValueError(f"not a region choice: {choice!r}")
    return bits


def variation_size(requested: tuple[int, int], width: int, height: int) -> tuple[int, int]:
    """The size a variation of a `width` x `height` image comes out at: the request's when the image has its
    shape (an upscale is scaled back down to it), else the image's own shape at about one megapixel (the
    result of a Pan or Make Square is never squeezed back into the dream's shape)."""
    if abs(math.log((width / height) / (requested[0] / requested[1]))) < 0.01:
        return requested
    return native_size(width, height)
