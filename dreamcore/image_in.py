"""A member's picture, made safe to dream from: checked before it is downloaded, decoded under a pixel cap,
turned into one plain RGB image at the SDXL size nearest its shape, and re-encoded as PNG.

Pillow decodes; nothing here trusts a file's name or the content type Discord was told. The order matters:
what Discord reports (name, content type, byte size, and for images width and height) is checked before a
byte is fetched (`check_declared`); the bytes' own signature must be a picture of the kind the name says;
the pixel count is read from the header and checked before any pixel is decoded (`prepare`). What comes out
is a fresh PNG the project made itself: no metadata, no second frame, no colour profile left to surprise
a decoder later. No torch here: the bot runs it.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass, field

from PIL import Image, ImageOps, UnidentifiedImageError

from .job import ASPECTS
from .present import code

# What a member may send: the extension names the format, and the bytes must be that format.
FORMATS = {"png": "PNG", "jpeg": "JPEG", "webp": "WEBP", "gif": "GIF"}
EXTENSIONS = {"png": "png", "jpg": "jpeg", "jpeg": "jpeg", "jfif": "jpeg", "webp": "webp", "gif": "gif"}
CONTENT_TYPES = {"image/png": "png", "image/jpeg": "jpeg", "image/jpg": "jpeg", "image/webp": "webp",
                 "image/gif": "gif"}
NAMES = {"png": "a PNG", "jpeg": "a JPEG", "webp": "a WebP", "gif": "a GIF"}
TAKEN = "PNG, JPEG, WebP or GIF"

# Signatures of what people send by mistake (or on purpose) named as a picture.
_SIGNATURES: list[tuple[bytes, int, str]] = [
    (b"\x89PNG\r\n\x1a\n", 0, "png"), (b"\xff\xd8\xff", 0, "jpeg"), (b"GIF87a", 0, "gif"), (b"GIF89a", 0, "gif"),
    (b"PK\x03\x04", 0, "a ZIP archive"), (b"PK\x05\x06", 0, "a ZIP archive"), (b"%PDF", 0, "a PDF document"),
    (b"\x1f\x8b", 0, "a gzip archive"), (b"Rar!", 0, "a RAR archive"), (b"7z\xbc\xaf", 0, "a 7-Zip archive"),
    (b"\x7fELF", 0, "a program"), (b"MZ", 0, "a program"), (b"BM", 0, "a BMP image (not taken)"),
    (b"II*\x00", 0, "a TIFF image (not taken)"), (b"MM\x00*", 0, "a TIFF image (not taken)"),
    (b"ftypheic", 4, "a HEIC photo (not taken: export it as JPEG)"),
    (b"ftypavif", 4, "an AVIF image (not taken)"),
]


# Pillow warns past this many pixels and refuses past twice it. Set once, at import: our own cap
# (DREAMBOT_INPUT_MAX_MEGAPIXELS, at most 150) is checked first, so Pillow's only speaks past it.
Image.MAX_IMAGE_PIXELS = 150_000_000


class PictureError(ValueError):
    """A picture that can't be dreamed from; `str()` is the reason, fit to show the member."""


@dataclass(frozen=True)
class Prepared:
    """The member's picture as the worker will read it."""

    png: bytes
    aspect: str  # the /dream aspect whose size it now has
    width: int
    height: int
    original: tuple[int, int]  # its size as sent, upright
    notes: list[str] = field(default_factory=list)  # what was done to it, said to the member


def megabytes(n: int) -> str:
    return f"{n / 1_000_000:.1f} MB" if n < 10_000_000 else f"{n / 1_000_000:.0f} MB"


def format_of_name(filename: str) -> str | None:
    ext = filename.rsplit(".", 1)[-1].lower() if "." in filename else ""
    return EXTENSIONS.get(ext)


def check_declared(filename: str, content_type: str | None, size: int, width: int | None, height: int | None,
                   max_bytes: int, max_pixels: int) -> str:
    """What Discord reports about an attachment, checked before it is downloaded. Returns the format its name
    says; PictureError names what is wrong."""
    fmt = format_of_name(filename)
    if fmt is None:
        raise PictureError(f"{code(filename, 80)} is not a picture I take: send a {TAKEN} file.")
    declared = (content_type or "").split(";", 1)[0].strip().lower()
    if declared and declared not in CONTENT_TYPES:
        raise PictureError(f"{code(filename, 80)} was sent as {code(declared, 80)}, not as a picture: send a {TAKEN} "
                           "file.")
    if declared and CONTENT_TYPES[declared] != fmt:
        raise PictureError(f"{code(filename, 80)} is named as {NAMES[fmt]} but was sent as "
                           f"{NAMES[CONTENT_TYPES[declared]]}: save it again with the right extension.")
    if size <= 0:
        raise PictureError(f"{code(filename, 80)} is empty (0 bytes).")
    if size > max_bytes:
        raise PictureError(f"{code(filename, 80)} is {megabytes(size)}; pictures may be up to {megabytes(max_bytes)}.")
    if width and height and width * height > max_pixels:
        raise PictureError(_too_many_pixels(filename, width, height, max_pixels))
    return fmt


def sniff(data: bytes) -> str:
    """The format the bytes themselves say: png/jpeg/gif/webp, or a description of what else they are."""
    for sig, at, what in _SIGNATURES:
        if data[at:at + len(sig)] == sig:
            return what
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "webp"
    head = data[:512].lstrip().lower()
    if head.startswith((b"<!doctype html", b"<html", b"<head", b"<body")) or b"<html" in head:
        return "an HTML page"
    if head.startswith((b"<?xml", b"<svg")) and b"<svg" in data[:4096].lower():
        return "an SVG drawing (not taken)"
    if head.startswith((b"{", b"[")):
        return "a JSON file"
    return "not a picture"


def nearest_aspect(width: int, height: int) -> str:
    """The /dream aspect whose shape is closest to width:height (compared as logarithms of the ratios)."""
    ratio = math.log(width / height)
    return min(ASPECTS, key=lambda a: abs(math.log(ASPECTS[a][0] / ASPECTS[a][1]) - ratio))


def prepare(data: bytes, filename: str, max_pixels: int, aspect: str | None = None) -> Prepared:
    """Decode the member's picture safely and bring it to the SDXL size of `aspect` (the nearest to its shape
    when None): cropped to that shape around its centre, then resized. PictureError names what is wrong."""
    name = code(filename, 80)
    if not data:
        raise PictureError(f"{name} is empty (0 bytes).")
    fmt = format_of_name(filename)
    what = sniff(data)
    if what not in FORMATS:
        said = f"named as {NAMES[fmt]}" if fmt else "sent as a picture"
        raise PictureError(f"{name} is {said}, but it is {what}: send a {TAKEN} file.")
    if fmt is not None and what != fmt:
        raise PictureError(f"{name} is named as {NAMES[fmt]} but it is {NAMES[what]}: save it again with the "
                           "right extension.")
    notes: list[str] = []
    try:
        # Only the decoder its signature names: a file can't steer Pillow to another one.
        im = Image.open(io.BytesIO(data), formats=[FORMATS[what]])
        w, h = im.size
        if w * h > max_pixels:  # read from the header: no pixel decoded yet
            raise PictureError(_too_many_pixels(filename, w, h, max_pixels))
        if getattr(im, "is_animated", False) and im.format != "MPO":  # MPO: a phone's photo with its preview
            im.seek(0)
            notes.append("it is animated: I used its first frame")
        if im.format in ("JPEG", "MPO"):
            # The decoder scales a large JPEG down by 2, 4 or 8 as it decodes, to no less than 2048 a side (more
            # than the longest side kept, 1536): a fraction of the memory, no loss after the resize below.
            im.draft(None, (2048, 2048))
        im.load()
    except PictureError:
        raise
    except Image.DecompressionBombError:  # past twice Pillow's own cap: it refuses to read even the header
        raise PictureError(_too_many_pixels(filename, 0, 0, max_pixels)) from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, EOFError) as err:
        reason = "it is cut short (truncated)" if "truncated" in str(err) or isinstance(err, EOFError) \
            else "it can't be decoded"
        raise PictureError(f"{name} is {NAMES[what]} file, but {reason}: send it again or export it anew.") from None
    try:
        upright = ImageOps.exif_transpose(im)
    except Exception:  # a broken EXIF block: the picture as it is stored
        upright = im
    if upright is not im and upright.size != im.size or _orientation(im) not in (None, 1):
        notes.append("turned upright as its camera marked it")
    rgb, converted = _to_rgb(upright)
    notes.extend(converted)
    original = rgb.size
    aspect = aspect or nearest_aspect(*original)
    size = ASPECTS[aspect]
    if abs(math.log((original[0] / original[1]) / (size[0] / size[1]))) > 0.05:  # more than 5% cut off
        notes.append(f"cropped around its centre to {aspect}")
    out = ImageOps.fit(rgb, size, Image.Resampling.LANCZOS, centering=(0.5, 0.5))
    buf = io.BytesIO()
    out.save(buf, format="PNG", compress_level=6)
    return Prepared(buf.getvalue(), aspect, size[0], size[1], original, notes)


def _to_rgb(im: Image.Image) -> tuple[Image.Image, list[str]]:
    """One 8-bit RGB image, and what was done to get it."""
    notes = []
    mode = im.mode
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        # Pillow's plain convert clips 16-bit values at 255 (a white picture); scale them instead.
        hi = 65535 if mode.startswith("I;16") or (im.getextrema() or (0, 0))[1] > 255 else 255
        im = im.point(lambda v: v * (255 / hi), mode="L") if mode != "I" else \
            im.point(lambda v: v * (255 / hi)).convert("L")
        notes.append("16 bits a channel: brought to 8")
        mode = im.mode
    if mode == "CMYK":
        notes.append("CMYK colours converted to RGB")
        return im.convert("RGB"), notes
    has_alpha = mode in ("RGBA", "LA", "PA", "La", "RGBa") or (mode == "P" and "transparency" in im.info) \
        or (mode in ("RGB", "L") and "transparency" in im.info)
    if has_alpha:
        rgba = im.convert("RGBA")
        alpha = rgba.getchannel("A")
        if alpha.getextrema()[0] < 255:
            notes.append("transparent parts filled with white")
        out = Image.new("RGB", rgba.size, (255, 255, 255))
        out.paste(rgba, mask=alpha)
        return out, notes
    return im.convert("RGB"), notes


def _orientation(im: Image.Image) -> int | None:
    try:
        return im.getexif().get(0x0112)
    except Exception:  # a broken EXIF block: treated as none
        return None


def _too_many_pixels(filename: str, width: int, height: int, max_pixels: int) -> str:
    size = f" is {width:,} x {height:,} pixels" if width and height else " has too many pixels"
    return (f"{code(filename, 80)}{size}; pictures may have up to {max_pixels / 1e6:g} million pixels. "
            "Scale it down and send it again.")
